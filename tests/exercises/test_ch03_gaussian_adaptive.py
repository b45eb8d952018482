"""Chapter 03: grade the target (solutions by default) and check that known mistakes fail."""
import math
import warnings

import torch

from tests.exercises.grading import graded_task_test, rejects_test

test_task = graded_task_test("03")


# --- common wrong answers the checks must reject ------------------------------------------
def _weights(x, delta, c, axis=1, eps=1e-8, *, unbiased=True, offset_in_z=False, mixture=False, c_as_var=False):
    n = x.shape[axis]
    mean = x.mean(dim=axis, keepdim=True)
    var = x.var(dim=axis, keepdim=True, unbiased=unbiased) if n > 1 else torch.zeros_like(mean)
    s = torch.sqrt(var + eps)
    terms = []
    for d, cg in zip(delta, c):
        y = (x - mean) / s - d if offset_in_z else (x - (mean + d)) / s
        terms.append(-y ** 2 / (2 * (cg.abs() if c_as_var else cg ** 2)))
    logits = torch.logsumexp(torch.stack(terms), 0) if mixture else sum(terms)
    return torch.softmax(logits, dim=axis)


def weights_biased_variance(x, delta, c, axis=1, eps=1e-8):
    return _weights(x, delta, c, axis, eps, unbiased=False)


def weights_wrong_axis(x, delta, c, axis=1, eps=1e-8):
    other = 2 if axis % x.ndim == 1 else 1
    return _weights(x, delta, c, other, eps)


def weights_offset_not_divided_by_s(x, delta, c, axis=1, eps=1e-8):
    return _weights(x, delta, c, axis, eps, offset_in_z=True)


def weights_mixture_instead_of_product(x, delta, c, axis=1, eps=1e-8):
    return _weights(x, delta, c, axis, eps, mixture=True)


def weights_c_as_variance(x, delta, c, axis=1, eps=1e-8):
    return _weights(x, delta, c, axis, eps, c_as_var=True)


def weights_no_single_element_guard(x, delta, c, axis=1, eps=1e-8):
    mean = x.mean(dim=axis, keepdim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = torch.sqrt(x.var(dim=axis, keepdim=True) + eps)  # NaN when n = 1
    return torch.softmax(sum(-((x - (mean + d)) / s) ** 2 / (2 * cg ** 2) for d, cg in zip(delta, c)), dim=axis)


def weights_first_gaussian_only(x, delta, c, axis=1, eps=1e-8):
    return _weights(x, delta[:1], c[:1], axis, eps)


def weights_pdf_product_underflows(x, delta, c, axis=1, eps=1e-8):
    # the reference code's literal form, pdf product / clamp(sum, eps): at n = 1 every pdf underflows to 0
    n = x.shape[axis]
    mean = x.mean(dim=axis, keepdim=True)
    s = torch.sqrt((x.var(dim=axis, keepdim=True) if n > 1 else torch.zeros_like(mean)) + eps)
    dens = torch.ones_like(x)
    for d, cg in zip(delta, c):
        y = (x - (mean + d)) / s
        dens = dens * torch.exp(-y ** 2 / (2 * cg ** 2)) / torch.sqrt(2 * math.pi * cg ** 2)
    return dens / dens.sum(dim=axis, keepdim=True).clamp(min=eps)


def _multi(x, deltas, cs, axis, sizes, weight_fn=_weights):
    pieces, start = [], 0
    for h, size in enumerate(sizes):
        chunk = x.narrow(axis, start, size)
        pieces.append(chunk * weight_fn(chunk, deltas[h], cs[h], axis))
        start += size
    return torch.cat(pieces, dim=axis)


def multi_torch_chunk(x, deltas, cs, axis=1, eps=1e-8):
    chunks = torch.chunk(x, deltas.shape[0], dim=axis)
    return torch.cat([ch * _weights(ch, deltas[h], cs[h], axis) for h, ch in enumerate(chunks)], dim=axis)


def multi_drops_remainder(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    return _multi(x, deltas, cs, axis, [n // H] * H)  # the last n % H elements are lost


def multi_remainder_to_first_heads(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    return _multi(x, deltas, cs, axis, [n // H + (h < n % H) for h in range(H)])


def multi_global_statistics(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    m, s = x.mean(dim=axis, keepdim=True), torch.sqrt(x.var(dim=axis, keepdim=True) + eps)
    size, pieces = n // H, []
    for h in range(H):
        length = size if h < H - 1 else n - h * size
        ch = x.narrow(axis, h * size, length)
        logits = sum(-((ch - (m + d)) / s) ** 2 / (2 * cg ** 2) for d, cg in zip(deltas[h], cs[h]))
        pieces.append(ch * torch.softmax(logits, dim=axis))
    return torch.cat(pieces, dim=axis)


def multi_split_features(x, deltas, cs, axis=1, eps=1e-8):
    feat = 2 if axis % x.ndim == 1 else 1
    n, H = x.shape[feat], deltas.shape[0]
    size, pieces = max(n // H, 1), []
    for h in range(H):
        start = min(h * size, n - 1)
        length = size if h < H - 1 else n - start
        ch = x.narrow(feat, start, length)
        pieces.append(ch * _weights(ch, deltas[h], cs[h], axis))
    return torch.cat(pieces, dim=feat)[tuple(slice(0, s) for s in x.shape)]


def multi_with_residual(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    size = n // H
    return x + _multi(x, deltas, cs, axis, [size] * (H - 1) + [n - (H - 1) * size])


def multi_shared_parameters(x, deltas, cs, axis=1, eps=1e-8):
    n, H = x.shape[axis], deltas.shape[0]
    size = n // H
    return _multi(x, deltas[:1].expand_as(deltas), cs[:1].expand_as(cs), axis, [size] * (H - 1) + [n - (H - 1) * size])


def collapse_scales_not_squared(delta, c):
    c_eff = 1 / (1 / c.abs()).sum()
    return c_eff ** 2 * (delta / c ** 2).sum(), c_eff


def collapse_variances_add(delta, c):
    c_eff_sq = (c ** 2).sum()
    return c_eff_sq * (delta / c ** 2).sum(), torch.sqrt(c_eff_sq)


def collapse_plain_mean_offset(delta, c):
    c_eff_sq = 1 / (1 / c ** 2).sum()
    return delta.mean(), torch.sqrt(c_eff_sq)


def collapse_forgets_c_eff_sq(delta, c):
    c_eff_sq = 1 / (1 / c ** 2).sum()
    return (delta / c ** 2).sum(), torch.sqrt(c_eff_sq)


def collapse_negative_scale(delta, c):
    c_eff_sq = 1 / (1 / c ** 2).sum()
    return c_eff_sq * (delta / c ** 2).sum(), torch.sqrt(c_eff_sq) * torch.sign(c.prod())


def collapse_shape_one(delta, c):
    c_eff_sq = 1 / (1 / c ** 2).sum()
    return (c_eff_sq * (delta / c ** 2).sum()).reshape(1), torch.sqrt(c_eff_sq).reshape(1)


def if_per_column(A):
    mean = A.mean(0)
    return (mean - mean.min(0).values) / (mean.max(0).values - mean.min(0).values)


def if_scale_before_average(A):
    low, high = A.amin((1, 2), keepdim=True), A.amax((1, 2), keepdim=True)
    return ((A - low) / (high - low)).mean(0)


def if_no_min(A):
    mean = A.mean(0)
    return mean / mean.max()


def if_nan_on_constant(A):
    mean = A.mean(0)
    return (mean - mean.min()) / (mean.max() - mean.min())


WRONG_ANSWERS = {
    "ch03.gaam_weights": [
        weights_biased_variance, weights_wrong_axis, weights_offset_not_divided_by_s, weights_mixture_instead_of_product,
        weights_c_as_variance, weights_no_single_element_guard, weights_first_gaussian_only, weights_pdf_product_underflows,
    ],
    "ch03.multi_head_gaam": [
        multi_torch_chunk, multi_drops_remainder, multi_remainder_to_first_heads, multi_global_statistics,
        multi_split_features, multi_with_residual, multi_shared_parameters,
    ],
    "ch03.collapse_product": [
        collapse_scales_not_squared, collapse_variances_add, collapse_plain_mean_offset, collapse_forgets_c_eff_sq,
        collapse_negative_scale, collapse_shape_one,
    ],
    "ch03.importance_factor": [if_per_column, if_scale_before_average, if_no_min, if_nan_on_constant],
}
test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


def test_hints_name_the_mistakes():
    from attnbook.grading import run_task

    expected = {
        (weights_biased_variance, "ch03.gaam_weights"): "biased variance",
        (weights_offset_not_divided_by_s, "ch03.gaam_weights"): "after standardising",
        (multi_remainder_to_first_heads, "ch03.multi_head_gaam"): "LAST head",
        (collapse_variances_add, "ch03.collapse_product"): "variances were added",
        (if_per_column, "ch03.importance_factor"): "per column",
    }
    for (fn, task_id), words in expected.items():
        result = run_task(task_id, fn)
        assert words in result.message, (fn.__name__, result.message)
