"""Chapter 15 checks: aggregating cross-attention, occlusion saliency and their correlation.

Each @task grades one function of exercises/ch15_attention_vs_saliency.py on fresh random inputs against a
reference written here (explicit loops over heads, windows, masks and cells, numpy's corrcoef), apart
from the library's attnbook.mechanisms.attention_vs_saliency; the experiment's reference takes only the
toy model itself (mixing_toy) from the library. Each @mistake declares a common wrong answer with the
hint a learner gets when their answer matches it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...mechanisms.attention_vs_saliency_experiment import mixing_toy
from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_number, fresh_generator


def _unchanged(before: dict, after: dict, what: str) -> None:
    for name, tensor in before.items():
        if not torch.equal(tensor, after[name]):
            raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


# ---- aggregate_ca ------------------------------------------------------------------------------

# (L, H, N, M, layers, heads, dtype): one head, one layer, negative indices, all, odd sizes
AGG_CASES = (
    (2, 4, 3, 7, [1], [2], torch.float64),
    (3, 2, 5, 4, [-1], None, torch.float32),
    (2, 3, 1, 9, None, [0, 2], torch.float64),
    (1, 1, 2, 3, None, None, torch.float32),
    (4, 3, 3, 5, [0, 2, 3], [1, -1], torch.float64),
)


@task("ch15.aggregate_ca", points=1)
def check_aggregate_ca(fn):
    """The mean of CA over the chosen set 𝓗 = layers × heads, (N, M), rows still summing to 1."""
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
                hint="average over the |𝓗| = len(layers) · len(heads) chosen maps",
            )


@mistake("ch15.aggregate_ca", "a sum over the chosen heads, not a mean: divide by |𝓗| so rows sum to 1")
def aggregate_ca_sum(ca, layers=None, heads=None):
    L, H = ca.shape[:2]
    rows = list(range(L)) if layers is None else [i % L for i in layers]
    cols = list(range(H)) if heads is None else [i % H for i in heads]
    return ca[rows][:, cols].sum((0, 1))


# ---- reduce_saliency ---------------------------------------------------------------------------

# (N, n_frame, n_freq, t_out = M, freq, time, dtype): M not dividing n_frame, the mixed reductions
REDUCE_CASES = (
    (2, 11, 5, 6, "max", "mean", torch.float64),
    (3, 9, 4, 4, "max", "max", torch.float32),
    (1, 7, 6, 3, "mean", "max", torch.float64),
    (2, 8, 3, 8, "mean", "mean", torch.float64),
    (4, 13, 2, 5, "max", "mean", torch.float32),
)


@task("ch15.reduce_saliency", points=1)
def check_reduce_saliency(fn):
    """Frequency reduced first, then time pooled over the adaptive windows [floor(jn/M), ceil((j+1)n/M))."""
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
                hint="window j covers frames floor(j n_frame / M) ... ceil((j+1) n_frame / M) - 1",
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


@mistake(
    "ch15.reduce_saliency",
    "pooled with a fixed stride n_frame // M, which drops the last frames when M does not divide "
    "n_frame: use the adaptive windows",
)
def reduce_fixed_stride(sm, t_out, freq="max", time="max"):
    per_frame = sm.amax(-1) if freq == "max" else sm.mean(-1)  # (N, n_frame)
    k = sm.shape[1] // t_out
    pool = torch.nn.functional.max_pool1d if time == "max" else torch.nn.functional.avg_pool1d
    return pool(per_frame[:, None, :], k)[:, 0, :t_out]


# ---- occlusion_saliency ------------------------------------------------------------------------


def _forced_decoder(g, T, F, I, V, dtype):
    """A fixed random 'model': ŷ_i(x) = softmax(W_i tanh(x) + b_i), (B, n_frame, n_freq) -> (B, N, V)."""
    W = torch.randn(I, V, T, F, generator=g, dtype=dtype)
    b = torch.randn(I, V, generator=g, dtype=dtype)

    def f(xb):
        return torch.softmax(torch.einsum("ivtf,btf->biv", W, torch.tanh(xb)) + b, -1)

    return f


# (n_frame, n_freq, N, V, n_occ, π_occ, dtype): a cell no mask hides in the last case
OCC_CASES = (
    (4, 3, 2, 5, 40, 0.5, torch.float64),
    (5, 2, 3, 4, 33, 0.3, torch.float32),
    (3, 4, 1, 6, 25, 0.6, torch.float64),
)


@task("ch15.occlusion_saliency", points=2)
def check_occlusion_saliency(fn):
    """SM_{i,tν} = mean of KL(ŷ_i(x) ‖ ŷ_i^(r)) over the masks r that hide cell (t, ν) (0 if none)."""
    g, _ = fresh_generator()
    for n, (T, F, I, V, M, p, dtype) in enumerate(OCC_CASES):
        f = _forced_decoder(g, T, F, I, V, dtype)
        x = torch.randn(T, F, generator=g, dtype=dtype)
        masks = torch.rand(M, T, F, generator=g) < p
        if n == len(OCC_CASES) - 1:
            masks[:, 0, 0] = False
        what = (
            f"occlusion_saliency({describe({'n_frame': T, 'n_freq': F, 'N': I, 'n_occ': M, 'dtype': dtype})})"
        )
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
    "averaged over all n_occ masks: divide each cell's sum by the number of masks that hide it",
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


# ---- mixing_gap (experiment) -------------------------------------------------------------------

MIX_ALPHAS = (0.0, 0.6)
MIX_TOL = 1e-6


def _mixing_maps(alpha, seed, *, same_masks=True, x_through_encoder=True, score=None, over_all=False):
    """(CA, SM^X, SM^C) of the recipe on mixing_toy(alpha), each (N, M); the keywords make its mistakes."""
    toy = mixing_toy(alpha)
    T, F = toy.x.shape
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(200, T, 1, generator=g) < 0.5).expand(-1, -1, F)
    masks_c = masks if same_masks else (torch.rand(200, T, 1, generator=g) < 0.5).expand(-1, -1, F)
    c = toy.encode(toy.x[None])[0]
    ca = toy.cross_attention(c[None])[0]

    def occ(f, x, m):
        with torch.no_grad():
            total, hidden = _occlusion(f, x, m, score or _kl)
        return (total / (m.shape[0] if over_all else hidden.clamp(min=1))).amax(-1)

    if x_through_encoder:
        sm_x = occ(lambda xb: toy.decode(toy.encode(xb)), toy.x, masks)
    else:
        sm_x = occ(toy.decode, c, masks)
    return ca, sm_x, occ(toy.decode, c, masks_c)


def _rho(a, b):
    return float(np.corrcoef(a.reshape(-1).numpy(), b.reshape(-1).numpy())[0, 1])


def _reference_gap(alpha, seed):
    ca, sm_x, sm_c = _mixing_maps(alpha, seed)
    return _rho(ca, sm_c) - _rho(ca, sm_x)


@task("ch15.mixing_gap", points=2)
def check_mixing_gap(fn):
    """corr(CA, SM^C) - corr(CA, SM^X) on the mixing toy: the recipe fixes the masks, so per seed the
    answer must equal the reference's within 1e-6 (0 at alpha = 0)."""
    gen, _ = fresh_generator()
    first = int(torch.randint(10, 1000, (1,), generator=gen))
    for alpha in MIX_ALPHAS:
        with case():
            for seed in (first, first + 1, first + 2):
                what = f"mixing_gap({alpha}, {seed})"
                value = expect_number(fn(alpha, seed), what, expected="a float")
                expected = _reference_gap(alpha, seed)
                if not abs(value - expected) <= MIX_TOL:
                    why = (
                        "at alpha = 0 the encoder is the identity (C = X): with one draw of masks for both "
                        "maps the two maps are equal and the gap is 0"
                        if alpha == 0
                        else f"the recipe fixes the masks, so the answer is {expected:.6f} within {MIX_TOL:g}"
                    )
                    raise CheckFailed(
                        f"{what} = {value:.6f}; {why}",
                        hint="ONE draw of masks from the seed for both maps; SM^X occludes toy.x and runs "
                        "toy.encode then toy.decode, SM^C occludes C = toy.encode(x) and runs toy.decode "
                        "alone; KL scores averaged over the masks that hide each frame, max over the "
                        "features; return corr(CA, SM^C) - corr(CA, SM^X) (Pearson)",
                    )


@mistake("ch15.mixing_gap", "the gap has the wrong sign: return corr(CA, SM^C) - corr(CA, SM^X)")
def mixing_gap_reversed(alpha, seed):
    ca, sm_x, sm_c = _mixing_maps(alpha, seed)
    return _rho(ca, sm_x) - _rho(ca, sm_c)


@mistake(
    "ch15.mixing_gap",
    "SM^X occluded the encoder frames: occlude the input x and run it through toy.encode, then toy.decode",
)
def mixing_gap_without_encoder(alpha, seed):
    ca, sm_x, sm_c = _mixing_maps(alpha, seed, x_through_encoder=False)
    return _rho(ca, sm_c) - _rho(ca, sm_x)


@mistake("ch15.mixing_gap", "two draws of masks: occlude X and C with the SAME masks drawn from the seed")
def mixing_gap_two_mask_sets(alpha, seed):
    ca, sm_x, sm_c = _mixing_maps(alpha, seed, same_masks=False)
    return _rho(ca, sm_c) - _rho(ca, sm_x)


@mistake(
    "ch15.mixing_gap",
    "scored only the decoded token's probability drop: score each mask with the KL divergence of the "
    "whole output distribution",
)
def mixing_gap_drop_score(alpha, seed):
    def drop(p, q):
        y = p.argmax(-1)  # (N,)
        return p.gather(-1, y[:, None])[:, 0] - q[:, torch.arange(len(y)), y]

    ca, sm_x, sm_c = _mixing_maps(alpha, seed, score=drop)
    return _rho(ca, sm_c) - _rho(ca, sm_x)


@mistake(
    "ch15.mixing_gap",
    "averaged each frame's scores over all masks: divide by the number of masks that hide the frame",
)
def mixing_gap_over_all_masks(alpha, seed):
    ca, sm_x, sm_c = _mixing_maps(alpha, seed, over_all=True)
    return _rho(ca, sm_c) - _rho(ca, sm_x)


@mistake("ch15.mixing_gap", "a rank (Spearman) correlation: the gap is between Pearson correlations")
def mixing_gap_spearman(alpha, seed):
    def ranks(t):
        return np.argsort(np.argsort(t.reshape(-1).numpy())).astype(float)

    ca, sm_x, sm_c = _mixing_maps(alpha, seed)
    return float(np.corrcoef(ranks(ca), ranks(sm_c))[0, 1] - np.corrcoef(ranks(ca), ranks(sm_x))[0, 1])
