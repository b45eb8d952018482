"""Checks for chapter 12's exercises (the retrieval score, the query-masking ablation).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.retrieval_heads: the score as the paper's double loop over steps, layers
and heads with Python numbers; the ablation one query at a time in float64.

Each @mistake declares a common wrong answer once, with the hint a learner gets when their
answer matches it; tests/exercises/test_ch12_retrieval_heads.py checks that every declared
mistake fails its task and gets its own hint.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator


def _score_reference(attn, prompt_ids, gen_ids, span, correct, *, mass=False, match=True, inside=True):
    """Σ_t [s <= j* < e][x_{j*} = ŷ_t] / (e - s), one step, layer and head at a time (float64).

    The keyword switches compute the declared wrong answers with the same loop.
    """
    S, L, H, _ = attn.shape
    s, e = span
    score = torch.zeros(L, H, dtype=torch.float64)
    if not correct:
        return score
    for t in range(S):
        for layer in range(L):
            for h in range(H):
                row = attn[t, layer, h].double().tolist()
                if mass:  # the attention mass on the span
                    score[layer, h] += sum(row[s:e]) / (e - s)
                    continue
                j = row.index(max(row))  # the first maximal key
                in_span = s <= j < e if inside else j < len(prompt_ids)
                same = j < len(prompt_ids) and int(prompt_ids[j]) == int(gen_ids[t])
                if in_span and (same or not match):
                    score[layer, h] += 1 / (e - s)
    return score


def _planted(gen, span, N, M, dtype):
    """Rows for 4 heads: (0, 0) copies the span, (0, 1) reads position 0, (1, 0) reads a copy of
    the emitted token outside the span, (1, 1) reads the span one token late (a wrong token)."""
    s, e = span
    S = e - s
    prompt = torch.randint(100, 200, (N,), generator=gen)  # distinct from the span's tokens
    prompt[s:e] = torch.randperm(50, generator=gen)[:S]  # distinct tokens in the span
    emitted = prompt[s:e].clone()
    outside = [j for j in range(1, N) if not s <= j < e][:S]
    prompt[outside] = emitted  # the emitted tokens recur outside the span
    logits = torch.rand(S, 2, 2, M, generator=gen, dtype=torch.float64)
    steps = torch.arange(S)
    logits[steps, 0, 0, s + steps] = 6.0
    logits[:, 0, 1, 0] = 6.0
    logits[steps, 1, 0, torch.tensor(outside)] = 6.0
    logits[steps, 1, 1, s + (steps + 1) % S] = 6.0
    return logits.softmax(-1).to(dtype), prompt, emitted


SCORE_HINT = (
    "at each step t and for each head take j* = argmax of its attention row (the first maximal index); "
    "add 1/(e - s) when s <= j* < e and prompt_ids[j*] == gen_ids[t]; return zeros when correct is False"
)


@task("ch12.retrieval_score", points=3)
def check_retrieval_score(fn):
    """Copy-paste counts: argmax key in the span holding the emitted token, / (e - s); correct trials only."""
    gen, _ = fresh_generator()
    planted = [
        ((4, 9), 12, 14, torch.float32),
        ((3, 4), 8, 8, torch.float64),
        ((0, 5), 11, 14, torch.float16),
    ]
    for span, N, M, dtype in planted:
        with case():
            attn, prompt, emitted = _planted(gen, span, N, M, dtype)
            inputs = describe({"span": span, "N": N, "M": M, "dtype": dtype})
            what = f"retrieval_score on planted heads ({inputs})"
            answer = fn(attn.clone(), prompt.clone(), emitted.clone(), span, True)
            expected = _score_reference(attn, prompt, emitted, span, True).float()
            expect_close(answer, expected, what=what, check_dtype=False, atol=1e-5, rtol=0, hint=SCORE_HINT)
    for S, L, H, N, M, dtype, correct in (
        (5, 3, 2, 7, 9, torch.float64, True),
        (2, 2, 3, 11, 11, torch.float32, True),
        (4, 2, 2, 10, 12, torch.float32, False),
    ):
        with case():
            prompt = torch.randint(3, (N,), generator=gen)  # few ids: tokens recur everywhere
            emitted = torch.randint(3, (S,), generator=gen)
            attn = torch.rand(S, L, H, M, generator=gen, dtype=torch.float64).mul(3).softmax(-1).to(dtype)
            s = int(torch.randint(N - 3, (1,), generator=gen))
            span = (s, s + 3)
            if not correct:  # plant copies, so that a forgotten flag shows
                attn[:, 0, 0] = 0
                attn[:, 0, 0, s] = 1
                emitted[:] = prompt[s]
            what = (
                f"retrieval_score({describe({'S': S, 'L': L, 'H': H, 'N': N, 'M': M, 'correct': correct})})"
            )
            answer = fn(attn.clone(), prompt.clone(), emitted.clone(), span, correct)
            expected = _score_reference(attn, prompt, emitted, span, correct).float()
            expect_close(answer, expected, what=what, check_dtype=False, atol=1e-5, rtol=0, hint=SCORE_HINT)
    with case():  # a tie goes to the first maximal key (torch.argmax's rule)
        attn = torch.zeros(1, 1, 2, 4)
        attn[0, 0, 0, [0, 1]] = 0.5
        attn[0, 0, 1, [1, 3]] = 0.5
        answer = fn(attn, torch.tensor([7, 7, 5, 9]), torch.tensor([7]), (1, 2), True)
        expect_close(
            answer,
            torch.tensor([[0.0, 1.0]]),
            what="retrieval_score with tied rows (keys 0 and 1 tied, then 1 and 3)",
            check_dtype=False,
            hint="on a tie take the first maximal index, as torch.argmax does",
        )


@mistake(
    "ch12.retrieval_score",
    "the attention mass on the span was summed; the score counts steps whose argmax key lies in the span "
    "AND holds the emitted token",
)
def score_attention_mass(attn, prompt_ids, gen_ids, span, correct):
    return _score_reference(attn, prompt_ids, gen_ids, span, correct, mass=True).float()


@mistake(
    "ch12.retrieval_score",
    "the argmax key in the span was counted whatever its token; it must also hold the emitted token "
    "(prompt_ids[j*] == gen_ids[t])",
)
def score_without_token_match(attn, prompt_ids, gen_ids, span, correct):
    return _score_reference(attn, prompt_ids, gen_ids, span, correct, match=False).float()


@mistake(
    "ch12.retrieval_score",
    "a key holding the emitted token OUTSIDE the span was counted; tokens recur in the haystack, so "
    "require s <= j* < e",
)
def score_outside_span(attn, prompt_ids, gen_ids, span, correct):
    return _score_reference(attn, prompt_ids, gen_ids, span, correct, inside=False).float()


@mistake("ch12.retrieval_score", "a wrong trial was scored; return zeros when correct is False")
def score_ignores_correct(attn, prompt_ids, gen_ids, span, correct):
    return _score_reference(attn, prompt_ids, gen_ids, span, True).float()


# ---------------------------------------------------------------------------------------------
def _ablation_reference(q, k, v, ablate, mode, *, leak=False, zero_uniform=False):
    """One query at a time in float64: causal softmax, or uniform / zero for an ablated head."""
    B, H, N, d = q.shape
    q64, k64, v64 = q.double(), k.double(), v.double()
    out = torch.zeros(B, H, N, d, dtype=torch.float64)
    for h in range(H):
        for i in range(N):
            if bool(ablate[h]) and (mode == "zero" or zero_uniform):
                continue  # z_h = 0
            if bool(ablate[h]):
                visible = N if leak else i + 1
                # q = 0: a[i, j] = 1 / (i + 1) for j <= i, the running mean of V
                out[:, h, i] = v64[:, h, :visible].mean(dim=1)
                continue
            scores = k64[:, h, : i + 1] @ q64[:, h, i, :, None] / math.sqrt(d)  # (B, i+1, 1)
            out[:, h, i] = (torch.softmax(scores, dim=1) * v64[:, h, : i + 1]).sum(dim=1)
    return out.to(q.dtype)


ABLATION_CASES = (
    (2, 3, 5, 4, torch.float64, (False, True, False), "uniform"),
    (1, 4, 7, 6, torch.float32, (True, False, True, False), "uniform"),
    (2, 2, 1, 8, torch.float64, (True, True), "uniform"),
    (3, 3, 6, 5, torch.float32, (False, True, True), "zero"),
    (1, 2, 4, 4, torch.float64, (False, False), "uniform"),
)


@task("ch12.ablated_attention", points=3)
def check_ablated_attention(fn):
    """Causal attention; an ablated head's query is 0 ("uniform") or its output 0 ("zero")."""
    gen, _ = fresh_generator()
    for B, H, N, d, dtype, heads, mode in ABLATION_CASES:
        with case():
            q, k, v = (
                torch.randn(B, H, N, d, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3)
            )
            ablate = torch.tensor(heads)
            inputs = describe({"B": B, "H": H, "N": N, "d": d, "dtype": dtype})
            what = f"ablated_attention({inputs}, ablate={list(heads)}, mode={mode!r})"
            answer = fn(q.clone(), k.clone(), v.clone(), ablate.clone(), mode)
            expect_close(
                answer,
                _ablation_reference(q, k, v, ablate, mode),
                what=what,
                hint="a kept head: softmax(q k^T / sqrt(d)) with future keys hidden, times v; an ablated "
                "head in 'uniform' mode: the mean of v over the keys j <= i; in 'zero' mode: zeros",
            )


@mistake(
    "ch12.ablated_attention",
    "the ablated head's scores were overwritten with 0 after the causal mask was added, so it also averages "
    "future values; zero its queries (or scores) BEFORE the mask: a running mean over j <= i",
)
def ablation_leaks_future(q, k, v, ablate, mode="uniform"):
    return _ablation_reference(q, k, v, ablate, mode, leak=True)


@mistake(
    "ch12.ablated_attention",
    "'uniform' masking zeroed the head's output; setting the query to 0 makes its attention uniform over "
    "the visible keys, so the output is the running mean of v, not 0",
)
def ablation_uniform_is_zero(q, k, v, ablate, mode="uniform"):
    return _ablation_reference(q, k, v, ablate, mode, zero_uniform=True)


# ---------------------------------------------------------------------------------------------
def _curve_reference(model, tokens, answers, order, ns, *, cumulative=True):
    """Accuracy at the last position with heads masked through the layers' HeadQueryMask buffers."""
    masks = [block.attn.qk_transform for block in model.blocks]
    curve = []
    try:
        for n in ns:
            for mask in masks:
                mask.heads.zero_()
            for layer, h in order[:n] if cumulative else order[max(n - 1, 0) : n]:
                masks[layer].heads[h] = True
            with torch.no_grad():
                curve.append((model(tokens)[:, -1].argmax(-1) == answers).float().mean().item())
    finally:
        for mask in masks:
            mask.heads.zero_()
    return curve


def _curve_inputs(gen):
    """An untrained 2-layer, 2-head model, recall prompts, and its own unmasked answers as targets."""
    from ...mechanisms.retrieval_heads import retrieval_transformer
    from ...models import ModelConfig

    torch.manual_seed(int(torch.randint(1000, (1,), generator=gen)))
    model = retrieval_transformer(ModelConfig(D=16, H=2, layers=2, vocab=16, max_len=9, mlp_ratio=0))
    tokens = torch.randint(16, (200, 9), generator=gen)
    with torch.no_grad():
        answers = model(tokens)[:, -1].argmax(-1)  # the unmasked model scores 1.0
    order = [(int(i) // 2, int(i) % 2) for i in torch.randperm(4, generator=gen)]
    return model, tokens, answers, order


@task("ch12.masking_curve", points=2)
def check_masking_curve(fn):
    """Cumulative masking: the first n heads of the order masked, accuracy at the last position."""
    gen, _ = fresh_generator()
    for ns in ([0, 1, 2, 3, 4], [3, 1, 4]):
        with case():
            model, tokens, answers, order = _curve_inputs(gen)
            with torch.no_grad():
                before = model(tokens)
            got = fn(model, tokens.clone(), answers.clone(), list(order), list(ns))
            with torch.no_grad():
                after = model(tokens)
            expected = _curve_reference(model, tokens, answers, order, ns)
            expect_close(
                torch.tensor(got, dtype=torch.float64),
                torch.tensor(expected, dtype=torch.float64),
                what=f"masking_curve(order={order}, ns={ns})",
                atol=1e-6,
                rtol=0,
                hint="for each n mask the FIRST n heads of order (all of them at once), predict "
                "model(tokens)[:, -1].argmax(-1) and return the fraction equal to answers",
            )
            if not torch.equal(after, before):
                raise CheckFailed(
                    "after masking_curve returned, the model still had masked heads",
                    hint="unmask every head before returning (heads.zero_() in each layer), also on errors",
                )


@mistake(
    "ch12.masking_curve",
    "only the n-th head of the order was masked; the curve is cumulative: the first n heads together",
)
def curve_one_head_at_a_time(model, tokens, answers, order, ns):
    return _curve_reference(model, tokens, answers, order, ns, cumulative=False)


@mistake(
    "ch12.masking_curve",
    "the heads were left masked after the call; unmask every layer before returning (a try/finally)",
)
def curve_leaves_heads_masked(model, tokens, answers, order, ns):
    curve = _curve_reference(model, tokens, answers, order, ns)
    model.blocks[order[0][0]].attn.qk_transform.heads[order[0][1]] = True
    return curve


# ---------------------------------------------------------------------------------------------
# The experiment: the retrieval score that heads get by chance, before any training.
CHANCE_RECIPE = dict(n_keys=16, D=32, H=4, layers=2, trials=500)
CHANCE_REFERENCE_SEEDS = (0, 1, 2, 3, 4)


def _chance_rows(n_pairs: int, seed: int):
    """The recipe: an untrained model's rows at the answer step (T, L, H, N), tokens, answers, spans."""
    from ...mechanisms.retrieval_heads import recall_prompts, retrieval_transformer
    from ...models import ModelConfig
    from ...tasks.associative_recall import associative_recall

    r = CHANCE_RECIPE
    vocab, max_len = 2 * r["n_keys"], 2 * n_pairs + 1
    config = ModelConfig(D=r["D"], H=r["H"], layers=r["layers"], vocab=vocab, max_len=max_len, mlp_ratio=0)
    torch.manual_seed(seed)
    model = retrieval_transformer(config)
    generator = torch.Generator().manual_seed(seed)
    tokens, answers, spans = recall_prompts(
        associative_recall(r["trials"], n_pairs, r["n_keys"], r["n_keys"], generator), r["n_keys"]
    )
    with torch.no_grad():
        _, records = model(tokens, return_intermediates=True)
    rows = torch.stack([rec.weights[:, :, -1] for rec in records], dim=1)  # (T, L, H, N)
    return rows, tokens, answers, spans


def _reference_chance(n_pairs: int, seed: int) -> float:
    """The mean score over trials and heads, every answer taken as emitted, every trial counted."""
    rows, tokens, answers, spans = _chance_rows(n_pairs, seed)
    top = rows.double().argmax(dim=-1)  # (T, L, H): the first maximal key of each row
    attended = tokens.gather(1, top.flatten(1)).view_as(top)  # (T, L, H): the token there
    # a one-token span [s, s + 1): a copy when j* = s and x_{j*} is the answer
    copy = (top == spans[:, 0, None, None]) & (attended == answers[:, None, None])
    return copy.double().mean().item()


@functools.cache
def _chance_range(n_pairs: int) -> tuple[float, float, float, float]:
    runs = torch.tensor([_reference_chance(n_pairs, s) for s in CHANCE_REFERENCE_SEEDS], dtype=torch.float64)
    mean, std = runs.mean().item(), runs.std().item()
    half = max(4 * std, 0.03)  # mean ± 4 std over the reference seeds, at least ± 0.03
    return mean - half, mean + half, mean, std


@task("ch12.chance_score", points=2)
def check_chance_score(fn):
    """The learner's measured chance-level score lies in the range of the reference runs."""
    gen, _ = fresh_generator()
    seed = int(torch.randint(10, 1000, (1,), generator=gen))
    for n_pairs in (4, 8):
        with case():
            low, high, mean, std = _chance_range(n_pairs)
            got = fn(n_pairs, seed)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if not isinstance(got, (float, int)):
                raise CheckFailed(f"chance_score returned {type(got).__name__}; return a float")
            if not low <= float(got) <= high:
                raise CheckFailed(
                    f"chance_score({n_pairs}, seed={seed}) = {float(got):.4f}, but the reference runs give "
                    f"{mean:.4f} ± {std:.4f} over seeds {CHANCE_REFERENCE_SEEDS} (accepted: {low:.4f} ... "
                    f"{high:.4f})",
                    hint="score the attention rows at the LAST position (the answer step) with the "
                    "answer as the emitted token, every trial counted, and average over trials and heads",
                )


@mistake(
    "ch12.chance_score",
    "the attention rows of the FIRST position were scored (weights[:, :, 0]); the answer step is the "
    "last position, weights[:, :, -1]",
)
def chance_first_row(n_pairs, seed):
    from ...mechanisms.retrieval_heads import recall_prompts, retrieval_transformer
    from ...models import ModelConfig
    from ...tasks.associative_recall import associative_recall

    config = ModelConfig(D=32, H=4, layers=2, vocab=32, max_len=2 * n_pairs + 1, mlp_ratio=0)
    torch.manual_seed(seed)
    model = retrieval_transformer(config)
    batch = associative_recall(500, n_pairs, 16, 16, torch.Generator().manual_seed(seed))
    tokens, answers, spans = recall_prompts(batch, 16)
    with torch.no_grad():
        _, records = model(tokens, return_intermediates=True)
    rows = torch.stack([r.weights[:, :, 0] for r in records], dim=1)  # (T, L, H, N): position 0's rows
    top = rows.argmax(dim=-1)  # (T, L, H)
    copy = (top == spans[:, 0, None, None]) & (
        tokens.gather(1, top.flatten(1)).view_as(top) == answers[:, None, None]
    )
    return copy.float().mean().item()
