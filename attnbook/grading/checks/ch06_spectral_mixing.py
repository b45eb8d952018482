"""Chapter 06 checks: Spectral mixing before attention.

Each @task grades one function of exercises/ch06_spectral_mixing.py on fresh random inputs against an
independent reference; each @mistake declares a common wrong answer once, with the hint a learner gets
when their answer matches it (tests/exercises/test_ch06_spectral_mixing.py checks that every declared
mistake fails its task and gets its own hint).

The reference does not use torch.fft: it builds the spatial kernel K = irfft2(W) from the inverse real
DFT written out term by term and convolves circularly with a sum of torch.roll, in float64.
"""

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator

# (B, h, w, C, x dtype): square, odd widths, non-square, half-precision input (answered in float32)
CASES = (
    (2, 6, 6, 3, torch.float64),
    (1, 6, 5, 2, torch.float32),
    (2, 4, 7, 3, torch.float64),
    (1, 3, 4, 5, torch.float16),
)


def _kernel_reference(weight, h, w):
    """The kernel K = irfft2(W), written out term by term:

    K[y, x, c] = (1/hw) sum_{k_y} sum_{k_x = 0}^{w//2} m_{k_x} Re(W[k_y, k_x, c] e^{2πi(k_y y/h + k_x x/w)}).

    m = 1 for the self-conjugate columns (k_x = 0 and, for even w, k_x = w/2), 2 for the others
    (they stand for their mirrored, negative-frequency twin too).
    """
    W = torch.complex(weight[..., 0].double(), weight[..., 1].double())  # (h, w//2+1, C)
    ys, xs = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
    kernel = torch.zeros(h, w, W.shape[-1], dtype=torch.float64)
    for k_y in range(h):
        for k_x in range(w // 2 + 1):
            m = 1.0 if k_x == 0 or 2 * k_x == w else 2.0
            phase = 2 * math.pi * (k_y * ys[:, None] / h + k_x * xs[None, :] / w)  # (h, w)
            wave = torch.complex(torch.cos(phase), torch.sin(phase))[..., None]  # (h, w, 1)
            kernel += m * (W[k_y, k_x] * wave).real
    return kernel / (h * w)


def _reference(x, weight, h, w):
    """y[y0, x0, c] = sum_{dy, dx} K[dy, dx, c] x[(y0 - dy) mod h, (x0 - dx) mod w, c], in float64."""
    B, N, C = x.shape
    grid = x.double().reshape(B, h, w, C)
    kernel = _kernel_reference(weight, h, w)
    out = torch.zeros_like(grid)
    for dy in range(h):
        for dx in range(w):
            out += kernel[dy, dx] * torch.roll(grid, shifts=(dy, dx), dims=(1, 2))
    return out.reshape(B, N, C)


@task("ch06.spectral_gating", points=2)
def check_spectral_gating(fn):
    """irfft2(rfft2(x) ⊙ W, s=(h, w)) with ortho norm: a per-channel circular convolution."""
    g, _ = fresh_generator()
    for B, h, w, C, dtype in CASES:
        x = torch.randn(B, h * w, C, generator=g, dtype=torch.float64).to(dtype)
        weight = torch.randn(h, w // 2 + 1, C, 2, generator=g, dtype=torch.float64)
        weight = weight.to(torch.float64 if dtype == torch.float64 else torch.float32)
        what = f"spectral_gating({describe({'x': x, 'weight': weight, 'hw': (h, w), 'dtype': dtype})})"
        with case():
            x_before = x.clone()
            answer = fn(x, weight, (h, w))
            if not torch.equal(x, x_before):
                raise CheckFailed(f"{what} changed its input x in place")
            expected = _reference(x, weight, h, w).to(
                torch.float64 if dtype == torch.float64 else torch.float32
            )
            expect_close(answer, expected, what=what)


def _half_spectrum(x, h, w):
    B, N, C = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.fft.rfft2(x.to(work).reshape(B, h, w, C), dim=(1, 2), norm="ortho"), work


@mistake(
    "ch06.spectral_gating",
    "ifft2(...).real on the rfft2 half-spectrum: the mirrored (negative k_x) frequencies are missing; "
    "invert with irfft2, which restores them from the Hermitian symmetry of a real signal's spectrum",
)
def gating_ifft2_real(x, weight, hw):
    h, w = hw
    X, work = _half_spectrum(x, h, w)
    W = torch.view_as_complex(weight.to(work).contiguous())
    return torch.fft.ifft2(X * W, s=(h, w), dim=(1, 2), norm="ortho").real.reshape(x.shape)


@mistake(
    "ch06.spectral_gating",
    "irfft2 without s=(h, w): from w//2+1 frequency columns it rebuilds an even width 2·(w//2), "
    "so an odd w comes back one column short",
)
def gating_irfft2_without_size(x, weight, hw):
    h, w = hw
    X, work = _half_spectrum(x, h, w)
    W = torch.view_as_complex(weight.to(work).contiguous())
    return torch.fft.irfft2(X * W, dim=(1, 2), norm="ortho").reshape(x.shape[0], -1, x.shape[2])


@mistake(
    "ch06.spectral_gating",
    "the output is 1/sqrt(h·w) too small: the normalisation is applied twice (norm='ortho' forward, then "
    "the default 'backward' inverse divides by h·w again); use norm='ortho' in both transforms",
)
def gating_norm_twice(x, weight, hw):
    h, w = hw
    X, work = _half_spectrum(x, h, w)
    W = torch.view_as_complex(weight.to(work).contiguous())
    return torch.fft.irfft2(X * W, s=(h, w), dim=(1, 2)).reshape(x.shape)


@mistake(
    "ch06.spectral_gating",
    "the result is cast back to float16; half-precision input is computed and returned in float32",
)
def gating_casts_back(x, weight, hw):
    h, w = hw
    X, work = _half_spectrum(x, h, w)
    W = torch.view_as_complex(weight.to(work).contiguous())
    return torch.fft.irfft2(X * W, s=(h, w), dim=(1, 2), norm="ortho").reshape(x.shape).to(x.dtype)
