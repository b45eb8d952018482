"""The files of a freshly scaffolded chapter (used by tools/new_chapter.py).

Every place the author still has to write is marked ``SCAFFOLD``; the chapter contract test
refuses the marker in a chapter whose status is "written". The example exercise (one task
and one declared mistake) is a complete, working instance of the grader's form, so the
draft's exercise tests run from the first day.
"""

from __future__ import annotations

import textwrap

MARKER = "SCAFFOLD"


def _fill(template: str, ch, task: str) -> str:
    summary = textwrap.fill(f"The mechanism: {ch.mechanism} ({ch.paper}).", width=96)
    return (
        template.replace("@NN@", ch.number)
        .replace("@NAME@", ch.name)
        .replace("@TITLE@", ch.title)
        .replace("@TASK@", task)
        .replace("@SUMMARY@", summary)
    )


# --- attnbook/mechanisms/<name>.py ---------------------------------------------------------
MECHANISM = '''\
"""Chapter @NN@ · @TITLE@.

@SUMMARY@

SCAFFOLD: derive the mechanism here as the chapter does, from chapter 00's notation
(S = Q K^T / sqrt(d), A = softmax(S) over the keys, out = sum_h A_h V_h W_O^h), changing one
thing at a time; then write its functional form (a pure function of tensors, shapes in the
docstring, the equation in a comment above the line that computes it) and, when it has
parameters, a small nn.Module using it.

Most mechanisms are multi-head attention with one thing changed. Plug that one thing into
attnbook.attention.MultiHeadAttention instead of copying its skeleton:

    qk_transform(q, k, pos_q, pos_k) -> (q, k)   rotate/convolve queries and keys  (B, H, ., d)
    score_mod(scores, q, k) -> scores            add a bias or change the scores   (B, H, N, M)
    mask_mod(N, M, device) -> mask               hide keys, or add to the scores   (N, M)
    head_gate(x) -> gates                        weight each head per query token  (B, N, H)
    value_transform(v) -> v                      change the value path             (B, H, M, d)
    weights_transform(A) -> A                    edit weights after the softmax    (B, H, N, M)
    head_transform(z) -> z                       edit head outputs before W_O      (B, H, N, d)

and build the chapter's model as TinyTransformer(config, attn=...). A mechanism that is a
different computation (pooling, search, a kernel) stands alone and says why.
"""

from __future__ import annotations

__all__: list[str] = []  # SCAFFOLD: the public functions and modules, once written

# SCAFFOLD: the shape a mechanism usually takes, shown on a learned distance bias on the
# scores (replace it with the chapter's own):
#
# import torch
# from torch import Tensor, nn
#
# from attnbook.attention import MultiHeadAttention
# from attnbook.masks import query_positions
# from attnbook.models import ModelConfig, TinyTransformer
#
#
# def distance_bias(scores: Tensor, slopes: Tensor) -> Tensor:
#     """Subtract slope_h * |p_i - j| from the scores.
#
#     Args:
#         scores: (B, H, N, M) scaled scores; the N queries are the last N of M positions.
#         slopes: (H,) one slope per head.
#     Returns:
#         (B, H, N, M) scores, same dtype and device.
#     """
#     N, M = scores.shape[-2:]
#     # |p_i - j| with p_i = i + M - N
#     distance = (query_positions(N, M, device=scores.device)[:, None]
#                 - torch.arange(M, device=scores.device)).abs()                # (N, M)
#     # S'_hij = S_hij - m_h |p_i - j|
#     return scores - slopes.to(scores.dtype)[:, None, None] * distance          # (B, H, N, M)
#
#
# class DistanceBias(nn.Module):
#     """A score_mod with one learned slope per head."""
#
#     def __init__(self, H: int):
#         super().__init__()
#         self.slopes = nn.Parameter(torch.zeros(H))
#
#     def forward(self, scores: Tensor, q: Tensor, k: Tensor) -> Tensor:
#         return distance_bias(scores, self.slopes)
#
#
# config = ModelConfig(D=32, H=4, vocab=16)
# model = TinyTransformer(config, attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H,
#                                                                    score_mod=DistanceBias(cfg.H)))
'''

# --- attnbook/grading/checks/chNN_<name>.py ------------------------------------------------
CHECKS = '''\
"""Chapter @NN@ checks: @TITLE@.

Each @task grades one function of exercises/ch@NN@_@NAME@.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch@NN@_@NAME@.py checks that
every declared mistake fails its task and gets its own hint.

SCAFFOLD: @TASK@ is an example of the form; replace it with the chapter's exercises.
"""

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator

# (B, N, M, d, dtype): N = 1, N != M, non-powers of two, both dtypes
CASES = ((1, 1, 1, 4, torch.float64), (2, 3, 5, 8, torch.float32), (3, 7, 4, 6, torch.float64))


@task("ch@NN@.@TASK@", points=1)
def check_@TASK@(fn):
    """softmax(q k^T / sqrt(d)) over the keys, any leading dims, N != M."""
    g, _ = fresh_generator()
    for B, N, M, d, dtype in CASES:
        q = torch.randn(B, N, d, generator=g, dtype=dtype)
        k = torch.randn(B, M, d, generator=g, dtype=dtype)
        what = f"@TASK@({describe({'q': q, 'k': k, 'dtype': dtype})})"
        with case():  # a sub-check: the task earns its points in proportion to the cases passed
            q_before = q.clone()
            answer = fn(q, k)
            if not torch.equal(q, q_before):
                raise CheckFailed(f"{what} changed its input q in place")
            # the reference: exp of the scaled scores (minus the row maximum), normalised over the keys
            scores = torch.einsum("bnd,bmd->bnm", q, k) / math.sqrt(d)
            expected = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
            expected = expected / expected.sum(dim=-1, keepdim=True)
            expect_close(answer, expected, what=what)


@mistake("ch@NN@.@TASK@", "normalise over the keys (the last axis): each query's weights sum to one")
def @TASK@_over_queries(q, k):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
'''

# --- exercises/chNN_<name>.py and solutions/chNN_<name>.py ----------------------------------
EXERCISES = '''\
"""Chapter @NN@ exercises: @TITLE@.

Fill in each function, then grade your work from the repository's root with

    attnbook grade @NN@

or, in a notebook, ``check("ch@NN@.<function name>", your_function)`` from attnbook.grading.
Use only torch@AVOID@.

SCAFFOLD: @TASK@ is an example of the form; replace it with the chapter's exercises.
"""

from torch import Tensor


def @TASK@(q: Tensor, k: Tensor) -> Tensor:
    """The attention weights of one head: softmax(q k^T / sqrt(d)) over the keys.

    Args:
        q: (..., N, d) queries, float32 or float64.
        k: (..., M, d) keys, same dtype and leading dims.

    Returns:
        (..., N, M) weights in q's dtype; each row (one query) sums to 1.
    """
    raise NotImplementedError("ch@NN@.@TASK@")
'''

SOLUTIONS = '''\
"""Chapter @NN@ solutions: @TITLE@.

SCAFFOLD: the chapter is a draft; a function raises NotImplementedError until it is solved
(`attnbook grade @NN@ --solutions` fails it, as CI will once the chapter is written).
"""

from torch import Tensor


def @TASK@(q: Tensor, k: Tensor) -> Tensor:
    raise NotImplementedError("ch@NN@.@TASK@")
'''

# --- tests ---------------------------------------------------------------------------------
EXERCISE_TEST = '''\
"""Chapter @NN@: grade the target (solutions by default) and check that every declared mistake fails."""

from tests.exercises.grading import chapter_tests

test_task, test_mistake = chapter_tests("@NN@")
'''

LIBRARY_TEST = '''\
"""Library tests for chapter @NN@: attnbook/mechanisms/@NAME@.py.

SCAFFOLD: test the functional form against an independent reference and its limit cases, the
module against the functional form, bad input (a clear ValueError or TypeError naming the
argument), float32 and float64, and that the tensors it creates follow the inputs' device.
"""

import pytest

from attnbook.chapters import by_number
from attnbook.mechanisms import @NAME@ as mechanism

CHAPTER = by_number("@NN@")


def test_the_public_names_are_documented():
    if not mechanism.__all__ and CHAPTER.status == "draft":
        pytest.skip("chapter @NN@ is a draft: its mechanism exports nothing yet")
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"
'''


def python_files(ch, task: str) -> dict[str, str]:
    """{path relative to the repository: text} for every Python file of the chapter."""
    avoid = f"; do not import {ch.mechanism_module} (it solves these)" if ch.has_mechanism else ""
    files = {
        ch.check_path: _fill(CHECKS, ch, task),
        ch.exercise_path: _fill(EXERCISES, ch, task).replace("@AVOID@", avoid),
        ch.solution_path: _fill(SOLUTIONS, ch, task),
        ch.exercise_test_path: _fill(EXERCISE_TEST, ch, task),
    }
    if ch.has_mechanism:
        files[ch.mechanism_path] = _fill(MECHANISM, ch, task)
        files[ch.library_test_path] = _fill(LIBRARY_TEST, ch, task)
    return files


# --- book/chapters/NN-slug.ipynb -------------------------------------------------------------
def _cite(ch) -> str:
    return f" {{cite}}`{','.join(ch.bib_keys)}`" if ch.bib_keys else ""


def notebook_cells(ch, task: str) -> list[tuple[str, str, list[str]]]:
    """The chapter's cells after the two header cells: (cell type, source, tags)."""
    nn, name = ch.number, ch.name
    md = lambda text: ("markdown", text, [])
    code = lambda text, tags=(): ("code", text, list(tags))
    mechanism_import = f"from attnbook.mechanisms import {name} as mechanism\n" if ch.has_mechanism else ""
    return [
        md(
            f"# {nn} · {ch.title}\n\n"
            f"**The question.** SCAFFOLD: the question the mechanism answers, in two or three sentences.\n\n"
            f"**The paper.** {ch.paper}{_cite(ch)}: {ch.mechanism}.\n"
            "SCAFFOLD: what it claims, in one sentence, and what this chapter reproduces in miniature.\n\n"
            ":::{admonition} You will learn · you need\n:class: tip\n"
            "**You will learn** SCAFFOLD: three or four outcomes.\n\n"
            "**You need** chapter 00 (the notation and the sum-over-heads form). SCAFFOLD: other chapters.\n"
            ":::\n\n"
            "**New symbols** (the book-wide table is `book/notation.md`; a symbol of that table never\n"
            "means something else here):\n\n"
            "| symbol | meaning | shape |\n|---|---|---|\n| SCAFFOLD | | |"
        ),
        code(
            "import matplotlib.pyplot as plt\nimport torch\nimport torch.nn.functional as F\n\n"
            "from attnbook.attention import scaled_dot_product_attention\n"
            f"{mechanism_import}"
            "from attnbook.masks import causal_mask\nfrom attnbook.notebook import setup\n"
            "from attnbook.viz import plot_heatmap\n\n"
            "device = setup(seed=0)"
        ),
        md(
            "## 1 · Derivation\n\n"
            "Start from chapter 00: $S = QK^\\top/\\sqrt d$, $A = \\mathrm{softmax}(S)$ over the keys,\n"
            "$\\mathrm{MHA}(X) = \\sum_h A_h V_h W_O^h$. SCAFFOLD: change one thing at a time, in LaTeX,\n"
            "until the mechanism stands; every step checkable by the reader. A result taken from\n"
            "elsewhere is cited and marked as not derived here. Interpretations the paper leaves open\n"
            "go in a side box:\n\n"
            ":::{note} The book's reading\n"
            "SCAFFOLD: where the paper is silent, what this chapter assumes.\n:::\n\n"
            "SCAFFOLD: a schematic figure, drawn by code (data flow, shapes, tiles or masks)."
        ),
        code(
            "# SCAFFOLD: draw the mechanism's schematic; until then, the causal mask of chapter 00\n"
            "fig, ax = plt.subplots(figsize=(2.6, 2.6))\n"
            'plot_heatmap(causal_mask(4, 6), ax, title="causal mask (N=4, M=6)", vmin=0, vmax=1)\n'
            'ax.set_xlabel("key")\nax.set_ylabel("query")\nplt.show()'
        ),
        md(
            "## 2 · Implementation\n\n"
            "SCAFFOLD: build the mechanism in small cells, then call the library version and assert\n"
            "that both agree. The cell below shows the pattern on plain attention."
        ),
        code(
            "# NBVAL_CHECK_OUTPUT\n"
            "g = torch.Generator().manual_seed(0)\n"
            "# queries, keys and values (B, H, N, d)\n"
            "q, k, v = (torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64) for _ in range(3))\n"
            "# S = Q K^T / sqrt(d), A = softmax(S) over the keys, out = A V\n"
            "scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5          # (B, H, N, N)\n"
            "by_hand = torch.softmax(scores, dim=-1) @ v                      # (B, H, N, d)\n"
            "library, _ = scaled_dot_product_attention(q, k, v)\n"
            "error = (by_hand - library).abs().max().item()\n"
            "assert error < 1e-12, error\n"
            'print(f"cells vs library, max error < 1e-12: {error < 1e-12}")'
        ),
        md(
            "## 3 · Correctness anchor\n\n"
            "SCAFFOLD: a limit case, an invariance or an equivalence with an independent reference,\n"
            "asserted (e.g. the mechanism switched off is plain attention). The cell below shows the\n"
            "pattern: the library against PyTorch's own attention."
        ),
        code(
            "# NBVAL_CHECK_OUTPUT\n"
            "reference = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
            "ours, _ = scaled_dot_product_attention(q, k, v, causal=True)\n"
            "error = (ours - reference).abs().max().item()\n"
            "assert error < 1e-12, error\n"
            'print(f"library vs torch, causal, max error < 1e-12: {error < 1e-12}")'
        ),
        md(
            "## 4 · Miniature experiment\n\n"
            "SCAFFOLD: the chapter's question as a controlled comparison: the mechanism against its\n"
            "ablation or plain attention at matched size, over at least 3 seeds, reported as mean and\n"
            "spread, with an assertion that the effect is larger than the spread (one a broken\n"
            "mechanism would fail). Quote the paper's headline numbers for context, and claim exactly\n"
            "what the outputs show."
        ),
        code(
            "SEEDS = (0, 1, 2)\n\n\n"
            "def run(seed: int) -> dict[str, float]:\n"
            '    """One seed of the comparison: {variant: metric}.\n\n'
            "    SCAFFOLD: train the mechanism and its ablation at matched size (attnbook.train, a task\n"
            "    from attnbook.tasks) and return e.g. their test accuracies.\n"
            '    """\n'
            "    return {}\n\n\n"
            "results = [run(seed) for seed in SEEDS]\n"
            "for variant in sorted({name for r in results for name in r}):\n"
            "    values = torch.tensor([r[variant] for r in results])\n"
            '    print(f"{variant}: {values.mean():.3f} ± {values.std():.3f} over {len(SEEDS)} seeds")\n'
            "# SCAFFOLD: assert that the effect is larger than the spread, e.g.\n"
            '# gap = torch.tensor([r["mechanism"] - r["baseline"] for r in results])\n'
            "# assert gap.mean() > 2 * gap.std(), gap"
        ),
        md("## 5 · Explore\n\nSCAFFOLD: what the controls change and what to look for."),
        code(
            "import ipywidgets as widgets\n\nfrom attnbook.widgets import explorer\n\n\n"
            "def render(causal):\n"
            "    # SCAFFOLD: draw what the mechanism changes (scores, weights, per-head terms)\n"
            "    _, weights = scaled_dot_product_attention(q[:1, :1], k[:1, :1], v[:1, :1], causal=causal)\n"
            "    fig, ax = plt.subplots(figsize=(2.6, 2.6))\n"
            '    plot_heatmap(weights[0, 0], ax, title="weights", vmin=0, vmax=1)\n'
            "    return fig\n\n\n"
            'explorer(render, title="SCAFFOLD explorer",\n'
            '         causal=widgets.Checkbox(value=False, description="causal"))',
            tags=("nbval-ignore-output",),
        ),
        md(
            "## 6 · Exercises\n\n"
            f"Implement, in `exercises/ch{nn}_{name}.py`:\n\n"
            "| task | difficulty | time | what |\n|---|---|---|---|\n"
            f"| `ch{nn}.{task}` | ★ | 10 min | SCAFFOLD: the example task; at least 4 tasks, ★ to ★★★, one "
            "substantive, one experiment that returns a measured quantity |\n\n"
            f"Grade everything from the repository's root with `attnbook grade {nn}`; in a notebook,\n"
            "grade a function as soon as you write it:"
        ),
        code(
            "from attnbook.grading import check\n\n\n"
            f"def my_{task}(q, k):\n"
            "    # SCAFFOLD: a worked call of check() on a learner's function\n"
            "    raise NotImplementedError\n\n\n"
            f'print(check("ch{nn}.{task}", my_{task}))'
        ),
        md(
            "## Pitfalls\n\nSCAFFOLD: the mistakes the grader names, with why each is wrong.\n\n"
            "## Summary\n\nSCAFFOLD: what the chapter showed, in the words of its outputs."
        ),
        md("## References\n\n```{bibliography}\n:filter: docname in docnames\n```"),
    ]
