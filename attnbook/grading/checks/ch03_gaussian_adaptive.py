"""Checks for chapter 03's exercises (Gaussian adaptive attention, GAAM), and their common mistakes.

The references are written here, independently of the learner's code and of
attnbook.mechanisms.gaussian_adaptive: explicit products of Gaussian pdfs divided by their sum,
computed in float64 with a loop over the Gaussians and an explicit loop over the heads.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch

from ...tasks.drifting_layers import drifting_layers
from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tuple, fresh_generator


def _pdf_weights(x, delta, c, axis, eps=1e-8, *, ddof=1, offset_in_z=False, mixture=False, c_is_var=False):
    """Reference weights: Π_r N((x - x̄ - b_r)/σ_x; 0, σ_r²) / Σ_axis, in float64, then x's dtype.

    The pdfs are multiplied in log space and rescaled by their maximum before exp(), so that
    narrow Gaussians do not underflow to 0/0.

    The keyword arguments switch on known mistakes (biased variance, offset added after
    standardising, a mixture of pdfs (``mixture=True``) or of unnormalised kernels
    (``mixture="kernel"``) instead of a product, c used as a variance).
    """
    x64 = x.double().movedim(axis, -1)  # (..., n)
    n = x64.shape[-1]
    m = x64.mean(dim=-1, keepdim=True)
    var = ((x64 - m) ** 2).sum(dim=-1, keepdim=True) / max(n - ddof, 1)
    s = torch.sqrt(var + eps)
    log_pdfs = []
    for d, cg in zip(delta.double().tolist(), c.double().tolist()):
        y = (x64 - m) / s - d if offset_in_z else (x64 - (m + d)) / s
        width = abs(cg) if c_is_var else cg * cg
        # log N(y; 0, width) = -y² / (2 width) - log sqrt(2π width)
        log_norm = 0.0 if mixture == "kernel" else 0.5 * math.log(2 * math.pi * width)
        log_pdfs.append(-(y**2) / (2 * width) - log_norm)
    stacked = torch.stack(log_pdfs)  # (G, ..., n)
    # product of pdfs (log: sum) or mixture (log: logsumexp); then divide by the sum along the axis
    log_density = torch.logsumexp(stacked, dim=0) if mixture else stacked.sum(dim=0)
    density = torch.exp(log_density - log_density.amax(dim=-1, keepdim=True))  # rescaled to avoid underflow
    a = density / density.sum(dim=-1, keepdim=True)
    return a.movedim(-1, axis).to(x.dtype)


def _random_params(G, gen, dtype, scale=1.0):
    delta = (torch.rand(G, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    c = 0.6 + 1.4 * torch.rand(G, generator=gen, dtype=torch.float64)
    return delta.to(dtype), c.to(dtype)


def _column_shift(x, axis, gen):
    """A random constant per column, the same for every element along ``axis``."""
    shape = list(x.shape)
    shape[axis] = 1
    return 5 * torch.randn(shape, generator=gen, dtype=torch.float64).to(x.dtype)


# (B, n, C, G, axis, dtype, offset, scale): odd sizes, both axes, both dtypes, non-stationary inputs
WEIGHT_CASES = [
    (2, 7, 5, 1, 1, torch.float64, 0.0, 1.0),
    (3, 5, 4, 2, 1, torch.float32, 2.0, 3.0),
    (2, 6, 9, 3, -1, torch.float64, -4.0, 0.5),
    (4, 13, 2, 2, 1, torch.float64, 10.0, 5.0),
    (1, 4, 3, 1, 2, torch.float32, 0.0, 2.0),
]


@task("ch03.gaam_weights", points=3)
def check_gaam_weights(fn):
    """softmax along the axis of Σ_r -((x - x̄ - b_r) / σ_x)² / (2 σ_r²), σ_x² the unbiased variance + eps."""
    gen, _ = fresh_generator()
    for B, n, C, G, axis, dtype, offset, scale in WEIGHT_CASES:
        with case():
            x = (offset + scale * torch.randn(B, n, C, generator=gen, dtype=torch.float64)).to(dtype)
            delta, c = _random_params(G, gen, dtype, scale)
            case_text = describe({"x": x, "G": G, "axis": axis, "dtype": dtype})
            expect_close(
                fn(x.clone(), delta.clone(), c.clone(), axis=axis),
                _pdf_weights(x, delta, c, axis),
                what=f"weights for {case_text}",
                hint="standardise each column with its own mean and unbiased variance along `axis`, "
                "add the log-densities of the G Gaussians, softmax along `axis`",
            )
            # the anchors, checked on their own so that the message names them
            shifted = fn(x + _column_shift(x, axis, gen), delta.clone(), c.clone(), axis=axis)
            expect_close(
                shifted,
                _pdf_weights(x, delta, c, axis),
                what=f"weights after adding a constant along the axis ({case_text})",
                hint="adding the same number to a whole column must not change its weights, "
                "whatever the offsets b_r (delta) are",
            )
    with case():  # a column of one element: torch's unbiased var is NaN there; the weight must be 1
        x = torch.randn(3, 1, 4, generator=gen, dtype=torch.float64)
        delta, c = _random_params(2, gen, torch.float64)
        expect_close(
            fn(x.clone(), delta, c, axis=1),
            torch.ones_like(x),
            what="weights for n = 1 (one element per column)",
            hint="a single weight along the axis must be 1",
        )


@mistake(
    "ch03.gaam_weights",
    "biased variance (divided by n); use the unbiased one, divided by n - 1 (torch.var's default)",
)
def weights_biased_variance(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, axis, eps, ddof=0)


@mistake(
    "ch03.gaam_weights",
    "normalised over the wrong axis: standardise and softmax along `axis`, not along the "
    "other non-batch axis",
)
def weights_wrong_axis(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, 2 if axis % x.ndim == 1 else 1, eps)


@mistake(
    "ch03.gaam_weights",
    "the offset was added after standardising, (ζ - b_r); it belongs to the mean, "
    "(x - (x̄ + b_r)) / σ_x, so it enters as b_r / σ_x",
)
def weights_offset_not_divided_by_s(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, axis, eps, offset_in_z=True)


@mistake(
    "ch03.gaam_weights",
    "the G Gaussian pdfs were summed (a mixture); this exercise multiplies them (the current reference code)",
)
def weights_mixture_of_pdfs(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, axis, eps, mixture=True)


@mistake(
    "ch03.gaam_weights",
    "the G Gaussians exp(-y²/(2σ_r²)) were summed (an earlier version's mixture); this "
    "exercise multiplies them",
)
def weights_mixture_instead_of_product(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, axis, eps, mixture="kernel")


@mistake(
    "ch03.gaam_weights", "c was used as a variance, exp(-y²/(2σ_r)); c holds the widths σ_r, exp(-y²/(2σ_r²))"
)
def weights_c_as_variance(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta, c, axis, eps, c_is_var=True)


@mistake(
    "ch03.gaam_weights",
    "only the first Gaussian was used; the weights multiply all G of them (add their log-densities)",
)
def weights_first_gaussian_only(x, delta, c, axis=1, eps=1e-8):
    return _pdf_weights(x, delta[:1], c[:1], axis, eps)


@mistake(
    "ch03.gaam_weights",
    "with one element along the axis the unbiased variance is 0/0 = NaN; guard it "
    "(use variance 0) so that the single weight is 1",
)
def weights_no_single_element_guard(x, delta, c, axis=1, eps=1e-8):
    mean = x.mean(dim=axis, keepdim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = torch.sqrt(x.var(dim=axis, keepdim=True) + eps)  # NaN when n = 1
    return torch.softmax(
        sum(-(((x - (mean + d)) / s) ** 2) / (2 * cg**2) for d, cg in zip(delta, c)), dim=axis
    )


@mistake(
    "ch03.gaam_weights",
    "the pdfs were multiplied as numbers and underflowed to 0 (weights 0 instead of 1); "
    "add the log-densities and take a softmax along the axis",
)
def weights_pdf_product_underflows(x, delta, c, axis=1, eps=1e-8):
    # the reference code's literal form, pdf product / clamp(sum, eps)
    n = x.shape[axis]
    mean = x.mean(dim=axis, keepdim=True)
    s = torch.sqrt((x.var(dim=axis, keepdim=True) if n > 1 else torch.zeros_like(mean)) + eps)
    dens = torch.ones_like(x)
    for d, cg in zip(delta, c):
        y = (x - (mean + d)) / s
        dens = dens * torch.exp(-(y**2) / (2 * cg**2)) / torch.sqrt(2 * math.pi * cg**2)
    return dens / dens.sum(dim=axis, keepdim=True).clamp(min=eps)


# ---------------------------------------------------------------------------------------------
def _chunked(x, deltas, cs, axis, sizes):
    """x ⊙ a where head h normalises the next sizes[h] elements along the axis."""
    pieces, start = [], 0
    for h, size in enumerate(sizes):
        chunk = x.narrow(axis, start, size)
        pieces.append(chunk * _pdf_weights(chunk, deltas[h], cs[h], axis))
        start += size
    return torch.cat(pieces, dim=axis)


def _head_sizes(n, H):
    """n // H elements per head, the last head the remainder."""
    return [n // H] * (H - 1) + [n - (H - 1) * (n // H)]


def _global_variant(x, deltas, cs, axis, *, global_stats, global_softmax):
    """Heads that share the statistics and/or the softmax of the whole axis (known mistakes)."""
    n, H = x.shape[axis], deltas.shape[0]
    size = n // H
    x64 = x.double()
    m_all = x64.mean(dim=axis, keepdim=True)
    s_all = torch.sqrt(x64.var(dim=axis, keepdim=True) + 1e-8)
    logits = []
    for h in range(H):
        stop = (h + 1) * size if h < H - 1 else n
        chunk = x64.narrow(axis, h * size, stop - h * size)
        if global_stats:
            m, s = m_all, s_all
        else:
            m = chunk.mean(dim=axis, keepdim=True)
            with warnings.catch_warnings():  # a one-element chunk: var is NaN, as the mistake makes it
                warnings.simplefilter("ignore")
                s = torch.sqrt(chunk.var(dim=axis, keepdim=True) + 1e-8)
        logits.append(
            sum(
                -(((chunk - (m + d)) / s) ** 2) / (2 * cg**2)
                for d, cg in zip(deltas[h].tolist(), cs[h].tolist())
            )
        )
    if global_softmax:
        a = torch.softmax(torch.cat(logits, dim=axis), dim=axis)
    else:
        a = torch.cat([torch.softmax(lg, dim=axis) for lg in logits], dim=axis)
    return (x64 * a).to(x.dtype)


# (B, n, C, H, G, axis, dtype): n not divisible by H, H = 1, n = H, both dtypes
HEAD_CASES = [
    (2, 10, 3, 4, 1, 1, torch.float64),
    (3, 7, 2, 3, 2, 1, torch.float32),
    (2, 8, 5, 1, 2, 1, torch.float64),
    (2, 4, 11, 3, 1, -1, torch.float64),
    (1, 5, 3, 5, 1, 1, torch.float32),
]


@task("ch03.multi_head_gaam", points=2)
def check_multi_head_gaam(fn):
    """x ⊙ a where head h normalises its own contiguous chunk of the axis (last chunk: the remainder)."""
    gen, _ = fresh_generator()
    for B, n, C, H, G, axis, dtype in HEAD_CASES:
        with case():
            x = (1.0 + 2.0 * torch.randn(B, n, C, generator=gen, dtype=torch.float64)).to(dtype)
            params = [_random_params(G, gen, dtype, 2.0) for _ in range(H)]
            deltas, cs = torch.stack([p[0] for p in params]), torch.stack([p[1] for p in params])
            case_text = describe({"x": x, "H": H, "G": G, "axis": axis, "dtype": dtype})
            # reference: an explicit loop over the heads
            ref = _chunked(x, deltas, cs, axis, _head_sizes(x.shape[axis], H))
            expect_close(
                fn(x.clone(), deltas.clone(), cs.clone(), axis=axis),
                ref,
                what=f"output for {case_text}",
                hint="heads split the NORMALISATION axis into contiguous chunks (not the feature axis); "
                "each chunk is standardised and softmaxed on its own",
            )


@mistake(
    "ch03.multi_head_gaam",
    "torch.chunk-style heads (chunks of ceil(n / H)); the reference gives every head "
    "n // H and the last one the remainder",
)
def multi_torch_chunk(x, deltas, cs, axis=1, eps=1e-8):
    n, ceil = x.shape[axis], -(-x.shape[axis] // deltas.shape[0])
    return _chunked(x, deltas, cs, axis, [min(ceil, n - h * ceil) for h in range(-(-n // ceil))])


@mistake(
    "ch03.multi_head_gaam",
    "the last n % H elements were dropped; the LAST head takes the remainder, so the output keeps x's shape",
)
def multi_drops_remainder(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    return _chunked(x, deltas, cs, axis, [n // H] * H)


@mistake(
    "ch03.multi_head_gaam",
    "the remainder went to the first heads (np.array_split); it belongs to the LAST head",
)
def multi_remainder_to_first_heads(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    return _chunked(x, deltas, cs, axis, [n // H + (h < n % H) for h in range(H)])


@mistake(
    "ch03.multi_head_gaam",
    "the mean and variance were taken over the whole axis; each head uses its own chunk's statistics",
)
def multi_global_statistics(x, deltas, cs, axis=1, eps=1e-8):
    return _global_variant(x, deltas, cs, axis, global_stats=True, global_softmax=False)


@mistake(
    "ch03.multi_head_gaam", "one softmax over the whole axis; each head's chunk must sum to 1 on its own"
)
def multi_global_softmax(x, deltas, cs, axis=1, eps=1e-8):
    return _global_variant(x, deltas, cs, axis, global_stats=False, global_softmax=True)


@mistake(
    "ch03.multi_head_gaam",
    "the heads split the feature axis; they split the normalisation axis `axis` into contiguous chunks",
)
def multi_split_features(x, deltas, cs, axis=1, eps=1e-8):
    feat = 2 if axis % x.ndim == 1 else 1
    n, H = x.shape[feat], deltas.shape[0]
    size, pieces = max(n // H, 1), []
    for h in range(H):
        start = min(h * size, n - 1)
        length = size if h < H - 1 else n - start
        ch = x.narrow(feat, start, length)
        pieces.append(ch * _pdf_weights(ch, deltas[h], cs[h], axis))
    return torch.cat(pieces, dim=feat)[tuple(slice(0, s) for s in x.shape)]


@mistake("ch03.multi_head_gaam", "the residual x was added; return only the gated part x ⊙ a")
def multi_with_residual(x, deltas, cs, axis=1, eps=1e-8):
    return x + _chunked(x, deltas, cs, axis, _head_sizes(x.shape[axis], deltas.shape[0]))


@mistake("ch03.multi_head_gaam", "every head used head 0's parameters")
def multi_shared_parameters(x, deltas, cs, axis=1, eps=1e-8):
    H = deltas.shape[0]
    return _chunked(
        x, deltas[:1].expand_as(deltas), cs[:1].expand_as(cs), axis, _head_sizes(x.shape[axis], H)
    )


# ---------------------------------------------------------------------------------------------
def _collapse_reference(delta, c):
    d, cc = delta.double(), c.double()
    c_eff_sq = 1.0 / (1.0 / cc**2).sum()
    return (c_eff_sq * (d / cc**2).sum()).to(delta.dtype), torch.sqrt(c_eff_sq).to(delta.dtype)


@task("ch03.collapse_product", points=2)
def check_collapse_product(fn):
    """A product of Gaussians is one Gaussian: 1/σ_prod² = Σ 1/σ_r², b_prod = σ_prod² Σ b_r / σ_r²."""
    gen, _ = fresh_generator()
    for G, dtype, negative in [
        (1, torch.float64, False),
        (2, torch.float64, False),
        (3, torch.float32, True),
        (5, torch.float64, False),
        (4, torch.float32, False),
    ]:
        with case():
            delta, c = _random_params(G, gen, dtype, 2.0)
            if negative:
                c = c * torch.tensor([-1.0] + [1.0] * (G - 1), dtype=dtype)  # only c² matters
            case_text = describe({"G": G, "dtype": dtype, "negative c": negative})
            d_eff, c_eff = expect_tuple(fn(delta.clone(), c.clone()), ("delta_eff", "c_eff"), case_text)
            ref_d, ref_c = _collapse_reference(delta, c)
            expect_close(
                c_eff,
                ref_c,
                what=f"c_eff for {case_text}",
                hint="return the positive width c_eff = σ_prod with 1 / σ_prod² = Σ_r 1 / σ_r²",
            )
            expect_close(
                d_eff,
                ref_d,
                what=f"delta_eff for {case_text}",
                hint="delta_eff = b_prod = σ_prod² Σ_r b_r / σ_r², "
                "the precision-weighted mean of the offsets",
            )
            # the point of the exercise: the weights agree on an input
            x = 3 * torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
            loose = dtype == torch.float32
            expect_close(
                _pdf_weights(x, d_eff.reshape(1).double(), c_eff.reshape(1).double(), 1),
                _pdf_weights(x, delta.double(), c.double(), 1),
                what=f"GAAM weights of your single Gaussian ({case_text})",
                atol=1e-4 if loose else None,
                rtol=1e-3 if loose else None,
            )


@mistake(
    "ch03.collapse_product",
    "the widths were combined, 1/σ = Σ 1/σ_r; it is the PRECISIONS that add, 1/σ_prod² = Σ 1/σ_r²",
)
def collapse_scales_not_squared(delta, c):
    c_eff = 1 / (1 / c.abs()).sum()
    return c_eff**2 * (delta / c**2).sum(), c_eff


@mistake(
    "ch03.collapse_product",
    "the variances were added, σ_prod² = Σ σ_r²: that is the rule for a sum of random "
    "variables, not a product of densities",
)
def collapse_variances_add(delta, c):
    c_eff_sq = (c**2).sum()
    return c_eff_sq * (delta / c**2).sum(), torch.sqrt(c_eff_sq)


def _precision_sum(delta, c, *, offset=None, sign=False):
    c_eff_sq = 1 / (1 / c**2).sum()
    delta_eff = c_eff_sq * (delta / c**2).sum() if offset is None else offset(c_eff_sq)
    return delta_eff, torch.sqrt(c_eff_sq) * (torch.sign(c.prod()) if sign else 1)


@mistake(
    "ch03.collapse_product", "delta_eff is the plain mean of the b_r; weight each by its precision 1/σ_r²"
)
def collapse_plain_mean_offset(delta, c):
    return _precision_sum(delta, c, offset=lambda c_eff_sq: delta.mean())


@mistake("ch03.collapse_product", "Σ b_r / σ_r² was not multiplied by σ_prod²")
def collapse_forgets_c_eff_sq(delta, c):
    return _precision_sum(delta, c, offset=lambda c_eff_sq: (delta / c**2).sum())


@mistake(
    "ch03.collapse_product",
    "c_eff came out negative (the signs of the σ_r leaked in); only σ_r² matters: return the positive width",
)
def collapse_negative_scale(delta, c):
    return _precision_sum(delta, c, sign=True)


# ---------------------------------------------------------------------------------------------
@task("ch03.importance_factor", points=1)
def check_importance_factor(fn):
    """Mean weight over the samples, min-max scaled to [0, 1] over the whole (n, C) map."""
    gen, _ = fresh_generator()
    for S, n, C, dtype in [
        (5, 8, 3, torch.float64),
        (1, 4, 6, torch.float32),
        (7, 5, 5, torch.float64),
        (3, 9, 2, torch.float32),
    ]:
        with case():
            A = torch.softmax(2 * torch.randn(S, n, C, generator=gen, dtype=torch.float64), dim=1).to(dtype)
            mean = A.double().mean(0)
            ref = ((mean - mean.min()) / (mean.max() - mean.min())).to(dtype)
            expect_close(
                fn(A.clone()),
                ref,
                what=f"importance factor for {describe({'A': A, 'dtype': dtype})}",
                hint="IF = (ā - min ā) / (max ā - min ā) with ā = A.mean(0)",
            )
    with case():
        flat = torch.full((4, 6, 3), 1 / 6, dtype=torch.float64)
        expect_close(
            fn(flat.clone()),
            torch.zeros(6, 3, dtype=torch.float64),
            what="importance factor of constant weights",
            hint="when every mean weight is equal, return zeros",
        )


@mistake(
    "ch03.importance_factor", "scaled per column (over n only); the min and max are over the whole (n, C) map"
)
def if_per_column(A):
    mean = A.mean(0)
    return (mean - mean.min(0).values) / (mean.max(0).values - mean.min(0).values)


@mistake("ch03.importance_factor", "each sample was min-max scaled before averaging; average first")
def if_scale_before_average(A):
    low, high = A.amin((1, 2), keepdim=True), A.amax((1, 2), keepdim=True)
    return ((A - low) / (high - low)).mean(0)


@mistake("ch03.importance_factor", "divided by the maximum without subtracting the minimum")
def if_no_min(A):
    mean = A.mean(0)
    return mean / mean.max()


@mistake(
    "ch03.importance_factor",
    "constant weights give max - min = 0, and 0/0 = NaN: return zeros when every mean weight is equal",
)
def if_nan_on_constant(A):
    mean = A.mean(0)
    return (mean - mean.min()) / (mean.max() - mean.min())


# ---------------------------------------------------------------------------------------------
# EXPERIMENT: the gain sweep. A fixed head (b_1 = 0.9 in raw units, σ_1 = 0.2) on drift-free samples
# of the drifting-layers task multiplied by a gain κ_gain; the measured quantity is the share of each
# head's weight that lands on the informative layers. The reference runs the experiment on three
# seeds and accepts mean ± max(4 spread, 0.01).
SWEEP_OFFSET, SWEEP_SCALE, SWEEP_HEADS, SWEEP_SAMPLES = 0.9, 0.2, 4, 1000
SWEEP_SEEDS = (0, 1, 2)


def _sweep_data(seed, **drift):
    settings = dict(offset=0.0, gain=1.0) | drift
    return drifting_layers(SWEEP_SAMPLES, torch.Generator().manual_seed(seed), **settings)


def _share(a, role, H=SWEEP_HEADS):
    """Mean over samples and features of Σ_{j informative} a_j / H: (B, M, D) weights, (B, M) roles."""
    return ((a * (role[:, :, None] == 1)).sum(1) / H).mean().item()


def _sweep_weights(x):
    """The fixed head's weights on (B, M, D) x, chunk by chunk (the explicit-pdf reference)."""
    M = x.shape[1]
    b, sigma = torch.tensor([SWEEP_OFFSET]), torch.tensor([SWEEP_SCALE])
    pieces, start = [], 0
    for size in _head_sizes(M, SWEEP_HEADS):
        pieces.append(_pdf_weights(x.narrow(1, start, size), b, sigma, 1))
        start += size
    return torch.cat(pieces, dim=1)


@functools.cache
def _sweep_reference(gain, seed):
    data = _sweep_data(seed)
    return _share(_sweep_weights(gain * data.x), data.role)


def _sweep_range(gain):
    values = torch.tensor([_sweep_reference(gain, s) for s in SWEEP_SEEDS], dtype=torch.float64)
    mean, spread = values.mean().item(), values.std().item()
    return mean, spread, max(4 * spread, 0.01)


@task("ch03.gain_sweep_share", points=2)
def check_gain_sweep_share(fn):
    """The measured share of weight on the informative layers at gains 0.5, 1 and 2, within the range
    the reference experiment gives over three seeds (learner run on a fourth seed)."""
    for gain in (1.0, 2.0, 0.5):
        with case():
            mean, spread, tol = _sweep_range(gain)
            got = fn(gain, seed=3)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if not isinstance(got, (int, float)) or not math.isfinite(got):
                raise CheckFailed(f"gain {gain}: expected a finite float, got {got!r}")
            if abs(got - mean) > tol:
                raise CheckFailed(
                    f"gain {gain}: your share of weight on the informative layers is {got:.4f}; the "
                    f"reference experiment gives {mean:.4f} ± {spread:.4f} over seeds {SWEEP_SEEDS} "
                    f"(accepted: ± {tol:.4f})",
                    hint="multiply the drift-free sample by the gain, apply the fixed head chunk by chunk, "
                    "sum the weights on the informative layers, divide by H and average",
                )


@mistake("ch03.gain_sweep_share", "the gain was never applied: multiply the drift-free x by `gain` first")
def sweep_gain_not_applied(gain, seed=0):
    return _sweep_reference(1.0, seed)


@mistake(
    "ch03.gain_sweep_share",
    "the weights on the informative layers were summed over the H heads but not divided by H: "
    "a head's share is at most 1",
)
def sweep_not_divided_by_heads(gain, seed=0):
    return SWEEP_HEADS * _sweep_reference(gain, seed)


@mistake(
    "ch03.gain_sweep_share",
    "the sample was drawn with its drift switched on; draw it drift-free "
    "(offset=0.0, gain=1.0) so that `gain` is the only change",
)
def sweep_drift_left_on(gain, seed=0):
    data = _sweep_data(seed, offset=3.0, gain=1.43)
    return _share(_sweep_weights(gain * data.x), data.role)


@mistake(
    "ch03.gain_sweep_share",
    "the mean weight over ALL layers was returned (1/8 per head chunk, whatever the gain); "
    "keep only the informative layers (role == 1)",
)
def sweep_all_layers(gain, seed=0):
    data = _sweep_data(seed)
    return _sweep_weights(gain * data.x).mean().item()
