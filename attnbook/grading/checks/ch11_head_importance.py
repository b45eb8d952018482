"""Checks for chapter 11's exercises (head gates, attention-distance profiles).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.head_importance: gated attention one head at a time (and, with every gate
at 1, torch.nn.MultiheadAttention itself); distance profiles with an explicit loop over the
pairs of patches. The common mistakes live in ``ch11_head_importance_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..core import CheckFailed, case, task
from ..expect import expect_accuracy, expect_close, expect_tuple, fresh_generator, one_thread

# (B, N, D, H, dtype): N = 1, D not a power of two, an odd number of heads, both dtypes
MHA_CASES = (
    (2, 5, 12, 3, torch.float64),
    (1, 1, 6, 2, torch.float32),
    (3, 7, 15, 5, torch.float64),
    (2, 4, 20, 4, torch.float32),
)


def _gated_reference(x, w_qkv, w_o, H, mask):
    """Σ_h g_h softmax(Q_h K_h^T / sqrt(d)) V_h W_O^h, one head at a time, in float64."""
    x, w_qkv, w_o, mask = x.double(), w_qkv.double(), w_o.double(), mask.double()
    D = x.shape[-1]
    d = D // H
    w_q, w_k, w_v = w_qkv.chunk(3)
    out = torch.zeros_like(x)
    weights = []
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        q, k, v = x @ w_q[rows].T, x @ w_k[rows].T, x @ w_v[rows].T  # (B, N, d)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, N, N)
        weights.append(a)
        out = out + mask[h] * (a @ v) @ w_o[:, rows].T
    return out, torch.stack(weights, dim=1)


def _mha_inputs(g, B, N, D, H, dtype):
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    w_qkv = (torch.randn(3 * D, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    w_o = (torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    # gates: one head removed, one kept, the others real numbers (a gate scales its head)
    mask = (2 * torch.rand(H, generator=g, dtype=torch.float64) - 0.5).to(dtype)
    mask[0] = 0.0
    if H > 1:
        mask[1] = 1.0
    return x, w_qkv, w_o, mask


@task("ch11.masked_mha", points=2)
def check_masked_mha(fn):
    """Σ_h g_h A_h V_h W_O^h: the gate scales each head's output; the weights are unchanged."""
    g, _ = fresh_generator()
    for B, N, D, H, dtype in MHA_CASES:
        with case():  # every gate at 1: torch's own multi-head attention
            x, w_qkv, w_o, _ = _mha_inputs(g, B, N, D, H, dtype)
            ref = nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(dtype)
            with torch.no_grad():
                ref.in_proj_weight.copy_(w_qkv)
                ref.out_proj.weight.copy_(w_o)
                expected, expected_w = ref(x, x, x, need_weights=True, average_attn_weights=False)
            got = fn(x.clone(), w_qkv.clone(), w_o.clone(), H, torch.ones(H, dtype=dtype))
            out, weights = expect_tuple(got, ("out", "weights"))
            what = f"masked_mha with every gate 1, (B, N, D, H) = {(B, N, D, H)}, {dtype}"
            expect_close(
                out, expected, what=f"out, {what}", hint="with g = 1 this is plain multi-head attention"
            )
            expect_close(weights, expected_w, what=f"weights, {what}")
        with case():  # real gates, one of them 0
            x, w_qkv, w_o, mask = _mha_inputs(g, B, N, D, H, dtype)
            inputs = (x.clone(), w_qkv.clone(), w_o.clone(), H, mask.clone())
            out, weights = expect_tuple(fn(*inputs), ("out", "weights"))
            if not torch.equal(inputs[-1], mask) or not torch.equal(inputs[0], x):
                raise CheckFailed("masked_mha changed its input x or head_mask in place")
            ref_out, ref_w = _gated_reference(x, w_qkv, w_o, H, mask)
            what = f"masked_mha with head_mask {[round(float(m), 3) for m in mask]}, {dtype}"
            expect_close(
                out,
                ref_out.to(dtype),
                what=f"out, {what}",
                hint="out = Σ_h g_h (A_h V_h) W_O^h: multiply head h's output z_h (B, N, d) by g_h "
                "before W_O",
            )
            expect_close(weights, ref_w.to(dtype), what=f"weights, {what}")


# (B, H, G, has_cls, metric, normalize, dtype): G = 1 (one patch), CLS and not, both metrics and dtypes
PROFILE_CASES = (
    (2, 3, 3, True, "chebyshev", "mass", torch.float64),
    (1, 2, 4, True, "chebyshev", "mean", torch.float32),
    (2, 2, 3, False, "euclidean", "mass", torch.float64),
    (2, 3, 4, True, "euclidean", "mean", torch.float64),
    (1, 1, 1, True, "chebyshev", "mass", torch.float32),
    (3, 2, 5, False, "chebyshev", "mean", torch.float64),
)


def _delta(i, j, G, metric):
    dr, dc = abs(i // G - j // G), abs(i % G - j % G)
    return float(max(dr, dc)) if metric == "chebyshev" else math.hypot(dr, dc)


def profile_reference(attn, G, has_cls, metric, normalize):
    """Every pair (i, j) of patches by hand; float64 (H, n_bins)."""
    a = attn.double()
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    P = G * G
    deltas = [[round(_delta(i, j, G, metric), 9) for j in range(P)] for i in range(P)]
    bins = sorted({v for row in deltas for v in row})
    total = torch.zeros(a.shape[1], len(bins), dtype=torch.float64)
    count = torch.zeros(len(bins), dtype=torch.float64)
    for i in range(P):
        for j in range(P):
            k = bins.index(deltas[i][j])
            total[:, k] += a[:, :, i, j].sum(0)  # over the batch
            count[k] += 1
    B = a.shape[0]
    return total / (B * P) if normalize == "mass" else total / (B * count)


def _attention(g, B, H, N, dtype):
    return torch.softmax(2 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64), dim=-1).to(dtype)


@task("ch11.distance_profile", points=3)
def check_distance_profile(fn):
    """Ring mass mass(t) or pair mean pair(t) per head; CLS dropped and rows renormalised."""
    g, _ = fresh_generator()
    for B, H, G, has_cls, metric, normalize, dtype in PROFILE_CASES:
        with case():
            attn = _attention(g, B, H, G * G + has_cls, dtype)
            expected = profile_reference(attn, G, has_cls, metric, normalize).to(dtype)
            what = f"distance_profile(B={B}, H={H}, grid={G}, has_cls={has_cls}, {metric!r}, {normalize!r})"
            expect_close(
                fn(attn.clone(), G, has_cls, metric, normalize),
                expected,
                what=what,
                hint="group the pairs (i, j) of patches by dist(i, j); mass: Σ over a ring, averaged over "
                "examples and queries; mean: the ring's total over its number of pairs (and examples)",
            )
    with case():  # identity attention: all the mass at dist = 0
        G, N = 4, 17
        eye = torch.eye(N, dtype=torch.float64).expand(2, 3, N, N).clone()
        got = fn(eye, G, True, "chebyshev", "mass")
        expected = torch.zeros(3, G, dtype=torch.float64)
        expected[:, 0] = 1
        expect_close(got, expected, what="distance_profile of identity attention (all mass at dist = 0)")
    with case():  # a rectangular grid (or a wrong grid) is refused
        try:
            fn(_attention(g, 1, 2, 13, torch.float64), 3, True, "chebyshev", "mass")
        except ValueError:
            pass
        else:
            raise CheckFailed(
                "distance_profile accepted 13 tokens with grid=3 (3² + 1 = 10): raise a ValueError "
                "when N is not grid² (+ 1 with CLS)"
            )


# ---------------------------------------------------------------------------------------------
# Taylor importance: the learner's autograd against central finite differences in float64.
# (B, N, D, H, layers, dtype): one example, several; both dtypes (the reference runs in float64)
TAYLOR_CASES = (
    (4, 5, 12, 3, 2, torch.float64),
    (1, 4, 8, 2, 1, torch.float64),
    (6, 3, 12, 4, 3, torch.float64),
    (5, 6, 16, 4, 2, torch.float32),
)
N_TOKENS, N_CLASSES = 7, 5


def _gated_model(g, N, D, H, layers, dtype):
    """A random gated TinyTransformer (token ids in, logits out), every gate at 1."""
    from ...mechanisms.head_importance import head_masked_transformer
    from ...models import ModelConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        config = ModelConfig(
            D=D, H=H, layers=layers, vocab=N_TOKENS, n_out=N_CLASSES, max_len=N, mlp_ratio=2, causal=False
        )
        model = head_masked_transformer(config).to(dtype)
        for p in model.parameters():  # larger weights: gradients far from zero and of both signs
            p.data.mul_(2.0)
    return model


def _gate_modules(model):
    return [block.attn.head_gate for block in model.blocks]


def taylor_reference(model, inputs, loss_fn, eps=1e-5):
    """E_x |∂L_x/∂g_{lh}| by central differences of the per-example losses, in float64."""
    import copy

    m = copy.deepcopy(model).double()
    gates = _gate_modules(m)
    L, H = len(gates), gates[0].H
    out = torch.zeros(L, H, dtype=torch.float64)
    with torch.no_grad():
        for layer, gate in enumerate(gates):
            for h in range(H):
                losses = []
                for sign in (1.0, -1.0):
                    mask = torch.ones(H, dtype=torch.float64)
                    mask[h] += sign * eps
                    gate.mask = mask
                    losses.append(loss_fn(m(inputs)).double())  # (B,)
                gate.mask = torch.ones(H, dtype=torch.float64)
                # ∂L_x/∂g ≈ (L_x(m + ε) - L_x(m - ε)) / 2ε, per example; then E_x |·|
                out[layer, h] = ((losses[0] - losses[1]) / (2 * eps)).abs().mean()
    return out


def _taylor_inputs(g, B, N):
    tokens = torch.randint(0, N_TOKENS, (B, N), generator=g)
    target = torch.randint(0, N_CLASSES, (B,), generator=g)

    def loss_fn(logits):  # (B, N, n_out) -> (B,): read out at token 0
        return nn.functional.cross_entropy(logits[:, 0], target, reduction="none")

    return tokens, loss_fn


@task("ch11.taylor_importance", points=3)
def check_taylor_importance(fn):
    """E_x |∂L_x/∂g_{lh}| at g = 1 against a float64 finite difference; the model left as it was."""
    g, _ = fresh_generator()
    for B, N, D, H, layers, dtype in TAYLOR_CASES:
        with case():
            model = _gated_model(g, N, D, H, layers, dtype)
            tokens, loss_fn = _taylor_inputs(g, B, N)
            expected = taylor_reference(model, tokens, loss_fn)
            before = [p.detach().clone() for p in model.parameters()]
            got = fn(model, tokens, loss_fn)
            what = f"taylor_importance, B={B} examples, {layers} layers × {H} heads, {dtype}"
            tol = {"atol": 1e-7, "rtol": 1e-6} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-3}
            expect_close(
                got,
                expected.to(dtype),
                what=what,
                check_dtype=False,
                hint="one gate per example and head (B, L, H) of ones with requires_grad; backward the "
                "sum of the per-example losses; |gradient| per example, then the mean over examples",
                **tol,
            )
            for gate in _gate_modules(model):
                if not torch.equal(
                    gate.mask.detach().to(torch.float64).flatten().unique(), torch.ones(1).double()
                ):
                    raise CheckFailed(
                        f"{what}: the model's gates are not all 1 after taylor_importance",
                        hint="reset every HeadMask's mask to ones (H,) when you are done",
                    )
            for p, p0 in zip(model.parameters(), before, strict=True):
                if not torch.equal(p.detach(), p0):
                    raise CheckFailed(f"{what}: taylor_importance changed the model's weights")


# ---------------------------------------------------------------------------------------------
# Recentring: an explicit loop over the patches.
RECENTER_CASES = ((3, 0), (3, 4), (4, 7), (4, 12), (5, 24), (1, 0), (6, 9))


def recenter_reference(row, G, i):
    canvas = torch.zeros(2 * G - 1, 2 * G - 1, dtype=row.dtype)
    r_i, c_i = divmod(i, G)
    for j in range(G * G):
        r_j, c_j = divmod(j, G)
        canvas[G - 1 + r_j - r_i, G - 1 + c_j - c_i] = row[j]
    return canvas


@task("ch11.recenter", points=1)
def check_recenter(fn):
    """canvas[G - 1 + r_j - r_i, G - 1 + c_j - c_i] = row[j], zeros elsewhere."""
    g, _ = fresh_generator()
    for G, i in RECENTER_CASES:
        with case():
            dtype = torch.float64 if i % 2 else torch.float32
            row = torch.softmax(torch.randn(G * G, generator=g, dtype=torch.float64), 0).to(dtype)
            expected = recenter_reference(row, G, i)
            expect_close(
                fn(row.clone(), G, i),
                expected,
                what=f"recenter(row, grid={G}, i={i})",
                hint="patch j sits at (j // G, j % G); it goes to (G - 1 + r_j - r_i, G - 1 + c_j - c_i)",
            )
    with case():  # the identity row: one pixel at the centre, for every query
        G = 4
        for i in range(G * G):
            row = torch.zeros(G * G, dtype=torch.float64)
            row[i] = 1
            expected = torch.zeros(2 * G - 1, 2 * G - 1, dtype=torch.float64)
            expected[G - 1, G - 1] = 1
            expect_close(fn(row, G, i), expected, what=f"recenter of query {i}'s identity row, grid={G}")


# ---------------------------------------------------------------------------------------------
# The experiment exercise: a tiny ViT on shape patches, half its heads pruned by Taylor score.
REFERENCE_SEEDS = (0, 1, 2)
ARMS = ("every head", "the 4 lowest-scored heads pruned", "the 4 highest-scored heads pruned")


def _reference_pruning(seed: int) -> tuple[float, float, float]:
    import torch.nn.functional as F

    from ...mechanisms.head_importance import (
        PatchEmbedding,
        head_masked_transformer,
        set_head_masks,
        taylor_importance,
    )
    from ...models import ModelConfig
    from ...tasks import shape_patches
    from ...train import train

    torch.manual_seed(seed)
    config = ModelConfig(D=16, H=4, layers=2, n_out=4, max_len=17, mlp_ratio=2, causal=False)
    model = head_masked_transformer(config, embed=PatchEmbedding(4, 16))
    train(
        model,
        lambda step, g: shape_patches(64, size=8, patch=2, length=5, generator=g),
        lambda m, b: F.cross_entropy(m(b)[:, 0], b.target),
        steps=60,
        lr=3e-3,
        seed=seed,
        progress=False,
    )
    test = shape_patches(256, size=8, patch=2, length=5, generator=torch.Generator().manual_seed(999))

    def accuracy():
        with torch.no_grad():
            return (model(test)[:, 0].argmax(-1) == test.target).float().mean().item()

    order = (
        taylor_importance(
            model, test, lambda logits: F.cross_entropy(logits[:, 0], test.target, reduction="none")
        )
        .flatten()
        .argsort()
    )
    out = [accuracy()]
    for pruned in (order[:4], order[-4:]):
        masks = torch.ones(8)
        masks[pruned] = 0.0
        set_head_masks(model, masks.view(2, 4))
        out.append(accuracy())
        set_head_masks(model, None)
    return tuple(out)


@functools.cache
def _reference_results() -> tuple[tuple[float, float, float], ...]:
    """The reference experiment over REFERENCE_SEEDS (deterministic, computed once per process)."""
    with torch.random.fork_rng(devices=[]), one_thread():
        return tuple(_reference_pruning(s) for s in REFERENCE_SEEDS)


@task("ch11.pruning_experiment", points=2, time_limit=90.0)
def check_pruning_experiment(fn):
    """The three accuracies, averaged over 2 seeds, in the reference's range widened by its spread."""
    gen, _ = fresh_generator()
    first = int(torch.randint(10, 1000, (1,), generator=gen))
    seeds = (first, first + 1)
    reference = _reference_results()
    got = []
    with case(), one_thread():
        for seed in seeds:
            returned = fn(seed)
            if not isinstance(returned, (tuple, list)) or len(returned) != 3:
                raise CheckFailed(
                    f"pruning_experiment({seed}) must return 3 accuracies ({', '.join(ARMS)}), "
                    f"got {type(returned).__name__}"
                )
            got.append(
                [expect_accuracy(v, f"pruning_experiment({seed})[{k}]") for k, v in enumerate(returned)]
            )
    for arm, name in enumerate(ARMS):
        with case():
            ref = [r[arm] for r in reference]
            # single seeds vary: over 20 seeds the reference's accuracies spread over about ±0.1
            # around their mean, so the range is the reference's, widened by max(0.12, 2 · its spread)
            width = max(0.12, 2 * (max(ref) - min(ref)))
            low, high = min(ref) - width, max(ref) + width
            mean = sum(g[arm] for g in got) / len(got)
            if not low <= mean <= high:
                raise CheckFailed(
                    f"with {name}, your accuracy averages {mean:.3f} over seeds {seeds}; the reference "
                    f"reaches {min(ref):.3f} to {max(ref):.3f} over seeds {REFERENCE_SEEDS}, so expect "
                    f"{low:.3f} to {high:.3f}",
                    hint="train exactly as described (60 steps, lr 3e-3, the logits at the CLS token); "
                    "score with E_x |∂L_x/∂g| on the test set, gate the chosen heads to 0, reset the gates",
                )
