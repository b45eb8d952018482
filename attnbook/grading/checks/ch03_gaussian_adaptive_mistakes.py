"""The common mistakes of chapter 03's exercises, declared for the checks of ``ch03_gaussian_adaptive``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math
import warnings

import torch

from ..core import mistake
from .ch03_gaussian_adaptive import (
    SWEEP_HEADS,
    _chunked,
    _head_sizes,
    _pdf_weights,
    _share,
    _sweep_data,
    _sweep_reference,
    _sweep_weights,
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
