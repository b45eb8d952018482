"""Chapter 15 checks: aggregating cross-attention, occlusion saliency and their correlation.

Each @task grades one function of exercises/ch15_attention_vs_saliency.py on fresh random inputs against an
independent reference, written here with explicit loops over heads, windows, masks and cells, apart
from attnbook.mechanisms.attention_vs_saliency. Each @mistake declares a common wrong answer with the
hint a learner gets when their answer matches it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_number, fresh_generator


def _unchanged(before: dict, after: dict, what: str) -> None:
    for name, tensor in before.items():
        if not torch.equal(tensor, after[name]):
            raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


# ---- aggregate_ca ------------------------------------------------------------------------------

# (L, H, I, T', layers, heads, dtype): one head, one layer, negative indices, all, odd sizes
AGG_CASES = (
    (2, 4, 3, 7, [1], [2], torch.float64),
    (3, 2, 5, 4, [-1], None, torch.float32),
    (2, 3, 1, 9, None, [0, 2], torch.float64),
    (1, 1, 2, 3, None, None, torch.float32),
    (4, 3, 3, 5, [0, 2, 3], [1, -1], torch.float64),
)


@task("ch15.aggregate_ca", points=1)
def check_aggregate_ca(fn):
    """The mean of CA over the chosen layers × heads, (I, T'), rows still summing to 1."""
    g, _ = fresh_generator()
    for L, H, I, T, layers, heads, dtype in AGG_CASES:
        ca = torch.softmax(3 * torch.randn(L, H, I, T, generator=g, dtype=torch.float64), -1).to(dtype)
        what = f"aggregate_ca({describe({'ca': ca, 'layers': layers, 'heads': heads, 'dtype': dtype})})"
        with case():
            before = {"ca": ca.clone()}
            answer = fn(ca, layers, heads)
            _unchanged(before, {"ca": ca}, what)
            chosen = [(ell % L, h % H) for ell in (layers or range(L)) for h in (heads or range(H))]
            expected = torch.zeros(I, T, dtype=torch.float64)
            for ell, h in chosen:
                expected += ca[ell, h].double()
            expect_close(
                answer,
                (expected / len(chosen)).to(dtype),
                what=what,
                hint="average over the |S| = len(layers) · len(heads) chosen maps",
            )


@mistake("ch15.aggregate_ca", "a sum over the chosen heads, not a mean: divide by |S| so each row sums to 1")
def aggregate_ca_sum(ca, layers=None, heads=None):
    L, H = ca.shape[:2]
    rows = list(range(L)) if layers is None else [i % L for i in layers]
    cols = list(range(H)) if heads is None else [i % H for i in heads]
    return ca[rows][:, cols].sum((0, 1))


# ---- reduce_saliency ---------------------------------------------------------------------------

# (I, T, F, t_out, freq, time, dtype): T not a multiple of t_out, the mixed reductions
REDUCE_CASES = (
    (2, 11, 5, 6, "max", "mean", torch.float64),
    (3, 9, 4, 4, "max", "max", torch.float32),
    (1, 7, 6, 3, "mean", "max", torch.float64),
    (2, 8, 3, 8, "mean", "mean", torch.float64),
    (4, 13, 2, 5, "max", "mean", torch.float32),
)


@task("ch15.reduce_saliency", points=1)
def check_reduce_saliency(fn):
    """Frequency reduced first, then time pooled over adaptive windows [floor(jT/T'), ceil((j+1)T/T'))."""
    g, _ = fresh_generator()
    for I, T, F, t_out, freq, time, dtype in REDUCE_CASES:
        sm = torch.rand(I, T, F, generator=g, dtype=torch.float64).pow(3).to(dtype)
        what = f"reduce_saliency({describe({'sm': sm, 't_out': t_out, 'freq': freq, 'time': time})})"
        with case():
            before = {"sm": sm.clone()}
            answer = fn(sm, t_out, freq, time)
            _unchanged(before, {"sm": sm}, what)
            rows = sm.double().tolist()
            expected = torch.zeros(I, t_out, dtype=torch.float64)
            for i in range(I):
                frame = [max(cells) if freq == "max" else sum(cells) / F for cells in rows[i]]
                for j in range(t_out):
                    window = frame[math.floor(j * T / t_out) : math.ceil((j + 1) * T / t_out)]
                    expected[i, j] = max(window) if time == "max" else sum(window) / len(window)
            expect_close(
                answer,
                expected.to(dtype),
                what=what,
                hint="windows j cover frames floor(j T / T') ... ceil((j+1) T / T') - 1",
            )


@mistake(
    "ch15.reduce_saliency", "time pooled before frequency: reduce over frequency first, then pool in time"
)
def reduce_time_first(sm, t_out, freq="max", time="max"):
    pool = (
        torch.nn.functional.adaptive_max_pool1d if time == "max" else torch.nn.functional.adaptive_avg_pool1d
    )
    pooled = pool(sm.transpose(1, 2), t_out).transpose(1, 2)  # (I, t_out, F)
    return pooled.amax(-1) if freq == "max" else pooled.mean(-1)


# ---- occlusion_saliency ------------------------------------------------------------------------


def _forced_decoder(g, T, F, I, V, dtype):
    """A fixed random 'model': p_i(x) = softmax(W_i tanh(x) + b_i), (B, T, F) -> (B, I, V)."""
    W = torch.randn(I, V, T, F, generator=g, dtype=dtype)
    b = torch.randn(I, V, generator=g, dtype=dtype)

    def f(xb):
        return torch.softmax(torch.einsum("ivtf,btf->biv", W, torch.tanh(xb)) + b, -1)

    return f


# (T, F, I, V, M, p, dtype): a cell no mask occludes in the last case
OCC_CASES = (
    (4, 3, 2, 5, 40, 0.5, torch.float64),
    (5, 2, 3, 4, 33, 0.3, torch.float32),
    (3, 4, 1, 6, 25, 0.6, torch.float64),
)


@task("ch15.occlusion_saliency", points=2)
def check_occlusion_saliency(fn):
    """SM_{i,c} = mean of KL(p_i(x) ‖ p_i(x_m)) over the masks m that occlude cell c (0 if none)."""
    g, _ = fresh_generator()
    for n, (T, F, I, V, M, p, dtype) in enumerate(OCC_CASES):
        f = _forced_decoder(g, T, F, I, V, dtype)
        x = torch.randn(T, F, generator=g, dtype=dtype)
        masks = torch.rand(M, T, F, generator=g) < p
        if n == len(OCC_CASES) - 1:
            masks[:, 0, 0] = False
        what = f"occlusion_saliency({describe({'T': T, 'F': F, 'I': I, 'M': M, 'dtype': dtype})})"
        with case():
            before = {"x": x.clone(), "masks": masks.clone()}
            answer = fn(f, x, masks)
            _unchanged(before, {"x": x, "masks": masks}, what)
            with torch.no_grad():
                clean = f(x[None])[0].double().tolist()  # (I, V)
                scores = []  # scores[m][i]
                for m in range(M):
                    occluded = f(torch.where(masks[m], torch.zeros_like(x), x)[None])[0].double().tolist()
                    scores.append(
                        [
                            sum(
                                pv * (math.log(pv) - math.log(qv))
                                for pv, qv in zip(clean[i], occluded[i])
                                if pv > 0
                            )
                            for i in range(I)
                        ]
                    )
            expected = torch.zeros(I, T, F, dtype=torch.float64)
            for t in range(T):
                for c in range(F):
                    hits = [m for m in range(M) if masks[m, t, c]]
                    for i in range(I):
                        expected[i, t, c] = sum(scores[m][i] for m in hits) / len(hits) if hits else 0.0
            atol = 1e-5 if dtype == torch.float32 else 1e-9
            expect_close(
                answer,
                expected.to(dtype),
                what=what,
                atol=atol,
                rtol=1e-4,
                hint="occlude with 0, score each token by KL(clean ‖ occluded), average per cell",
            )


def _occlusion(f, x, masks, score):
    p = f(x[None])[0]  # (I, V)
    q = f(torch.where(masks, torch.zeros_like(x), x))  # (M, I, V)
    s = score(p, q)  # (M, I)
    return torch.einsum("mi,mtf->itf", s, masks.to(x.dtype)), masks.to(x.dtype).sum(0)


def _kl(p, q):
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


@mistake(
    "ch15.occlusion_saliency",
    "averaged over all M masks: divide each cell's sum by the number of masks that occlude it",
)
def occlusion_over_all_masks(f, x, masks):
    total, _ = _occlusion(f, x, masks, _kl)
    return total / masks.shape[0]


@mistake(
    "ch15.occlusion_saliency",
    "scored only the decoded token's probability drop: score with the KL divergence of the whole "
    "output distribution",
)
def occlusion_argmax_probability(f, x, masks):
    def drop(p, q):
        y = p.argmax(-1)  # (I,)
        return p.gather(-1, y[:, None])[:, 0] - q[:, torch.arange(len(y)), y]

    total, n = _occlusion(f, x, masks, drop)
    return total / n.clamp(min=1)


# ---- pearson_flat ------------------------------------------------------------------------------

# (shape, with a valid mask, dtype, constant map)
PEARSON_CASES = (
    ((4, 9), True, torch.float64, False),
    ((3, 5, 2), False, torch.float32, False),
    ((6, 11), True, torch.float32, False),
    ((3, 4), True, torch.float64, True),
)


@task("ch15.pearson_flat", points=1)
def check_pearson_flat(fn):
    """Pearson ρ of the flattened maps over the valid cells; NaN when a map is constant there."""
    g, _ = fresh_generator()
    for shape, masked, dtype, constant in PEARSON_CASES:
        a = torch.randn(shape, generator=g, dtype=torch.float64)
        b = 0.7 * a + torch.randn(shape, generator=g, dtype=torch.float64)
        valid = None
        if masked:
            valid = torch.rand(shape, generator=g) < 0.6
            valid.view(-1)[:2] = True
            b[~valid] += 10 * torch.randn(int((~valid).sum()), generator=g, dtype=torch.float64)
        if constant:
            a = torch.where(valid, torch.full_like(a, 0.1), a)
        a, b = a.to(dtype), b.to(dtype)
        what = f"pearson_flat({describe({'shape': shape, 'valid': masked, 'dtype': dtype})})"
        with case():
            answer = fn(a, b, valid)
            chosen = (lambda t: t[valid]) if masked else (lambda t: t.reshape(-1))
            if constant:
                value = expect_number(answer, what, expected="a float (NaN for a constant map)")
                if not math.isnan(value):
                    raise CheckFailed(
                        f"{what} = {value:.4g}: a map constant on the valid cells has no "
                        "correlation; return float('nan')"
                    )
                continue
            value = expect_number(answer, what, expected="a correlation in [-1, 1]", low=-1, high=1)
            expected = np.corrcoef(chosen(a).double().numpy(), chosen(b).double().numpy())[0, 1]
            if abs(value - expected) > 1e-5:
                raise CheckFailed(
                    f"{what} = {value:.6f}, expected {expected:.6f}",
                    hint="centre both maps, then Σ a'b' / sqrt(Σ a'² Σ b'²) on the valid cells",
                )


@mistake("ch15.pearson_flat", "the padding was counted: keep only the cells where valid is True")
def pearson_ignores_valid(a, b, valid=None):
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    if a.min() == a.max() or b.min() == b.max():
        return float("nan")
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])
