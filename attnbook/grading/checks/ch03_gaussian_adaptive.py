"""Checks for chapter 03's exercises (Gaussian adaptive attention, GAAM).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.gaussian_adaptive: explicit products of Gaussian pdfs divided by their sum,
computed in float64 with a loop over the Gaussians and an explicit loop over the heads.

The chapter's common mistakes (the @mistake declarations) live in the companion module
``ch03_gaussian_adaptive_mistakes.py``, which the grader loads with this one (it imports every
``checks/ch03_*.py`` of the chapter).
"""

from __future__ import annotations

import functools
import math

import torch

from ...tasks.drifting_layers import drifting_layers
from ..core import CheckFailed, case, task
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
