"""Chapter 06 checks: Spectral mixing before attention.

Each @task grades one function of exercises/ch06_spectral_mixing.py on fresh random inputs against an
independent reference. The common wrong answers are declared once, with their hints, in
ch06_spectral_mixing_mistakes.py (tests/exercises/test_ch06_spectral_mixing.py checks that every declared
mistake fails its task and gets its own hint).

The reference does not use torch.fft: it builds the spatial kernel W_conv = irfft2(W) from the inverse real
DFT written out term by term and convolves circularly with a sum of torch.roll, in float64.
"""

import functools
import math

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, expect_number, fresh_generator, one_thread

# (B, h, w, C, x dtype): square, odd widths, non-square, half-precision input (answered in float32)
CASES = (
    (2, 6, 6, 3, torch.float64),
    (1, 6, 5, 2, torch.float32),
    (2, 4, 7, 3, torch.float64),
    (1, 3, 4, 5, torch.float16),
)


def _kernel_reference(weight, h, w):
    """The kernel W_conv = irfft2(W), written out term by term:

    W_conv[y,x,c] = (1/hw) sum_{k_y} sum_{k_x=0}^{w//2} m_{k_x} Re(W[k_y, k_x, c] e^{2πi(k_y y/h + k_x x/w)})
    (h, w: the grid's rows and columns, N_y and N_x in the book).

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
    """y[y0, x0, c] = sum_{dy, dx} W_conv[dy, dx, c] x[(y0 - dy) mod h, (x0 - dx) mod w, c], in float64."""
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
    """irfft2(rfft2(x) ⊙ W, s=(Ny, Nx)) with ortho norm: a per-channel circular convolution."""
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


@task("ch06.filter_kernel", points=2)
def check_filter_kernel(fn):
    """The spatial kernel W_conv_c = irfft2(W_spec,c) (backward norm) of the filter, (C, h, w)."""
    g, _ = fresh_generator()
    for h, w, C in ((6, 6, 2), (5, 4, 3), (4, 7, 2), (1, 5, 1)):
        weight = torch.randn(h, w // 2 + 1, C, 2, generator=g, dtype=torch.float64)
        what = f"filter_kernel(weight {tuple(weight.shape)}, hw=({h}, {w}))"
        with case():
            answer = fn(weight, (h, w))
            expected = _kernel_reference(weight, h, w).permute(2, 0, 1)  # (C, h, w)
            expect_close(
                answer,
                expected,
                what=what,
                hint="W_conv must satisfy spectral_gating(x)[y, x, c] = "
                "sum_{dy,dx} W_conv[c, dy, dx] x[(y-dy) mod Ny, (x-dx) mod Nx, c]",
            )


def _roll_reference(h, w, C, shift):
    """A filter that rolls, built without a formula: the spectrum of a one-hot kernel at the shift.

    Rolling by (s_y, s_x) is the circular convolution with a 1 at (s_y mod h, s_x mod w); with ortho
    transforms on both sides, a kernel's filter is its rfft2 with the default (backward) norm.
    """
    kernel = torch.zeros(h, w, dtype=torch.float64)
    kernel[shift[0] % h, shift[1] % w] = 1.0
    W = torch.fft.rfft2(kernel)  # (Ny, Nx//2+1): W_conv = irfft2(W) with the backward norm
    return torch.view_as_real(W)[:, :, None, :].expand(h, w // 2 + 1, C, 2)


@task("ch06.shift_filter", points=1)
def check_shift_filter(fn):
    """The phase ramp W = exp(-2πi(k_y s_y/h + k_x s_x/w)): filtering with it rolls the grid."""
    for h, w, C, shift in ((6, 5, 2, (2, 3)), (4, 6, 3, (-1, 2)), (7, 3, 1, (3, 0)), (5, 8, 2, (0, -5))):
        what = f"shift_filter(hw=({h}, {w}), C={C}, shift={shift})"
        with case():
            answer = fn((h, w), C, shift)
            expect_close(
                answer,
                _roll_reference(h, w, C, shift),
                what=what,
                hint="spectral_gating with this filter must equal "
                "torch.roll(grid, shifts=shift, dims=(rows, cols))",
            )


# ---------------------------------------------------------------------------------------------
# The experiment: the chapter's miniature, scaled down to about a second per model.
DATA = dict(size=8, patch=2, low=1.0, high=2.0, amplitude=0.3, jitter=2.5, noise=0.1, n_colours=2)
RECIPE = dict(grid=4, patch=2, D=16, H=2, layers=2, steps=120, batch_size=32, lr=5e-3)
REFERENCE_SEEDS = (0, 1, 2)


@functools.cache
def _reference_factors(n_spectral: int, seed: int) -> dict[str, float]:
    """The recipe of exercises/ch06_spectral_mixing.py's frequency_accuracy, run by the reference:
    its accuracy on the class and on each factor (cached: it trains a model)."""
    from ...mechanisms.spectral_mixing import factor_accuracy, train_classifier
    from ...tasks.grating_squares import grating_squares

    train_set = grating_squares(1000, generator=torch.Generator().manual_seed(100 + seed), **DATA)
    test_set = grating_squares(500, generator=torch.Generator().manual_seed(1000 + seed), **DATA)
    model = train_classifier(n_spectral, seed, train_set, **RECIPE)
    return factor_accuracy(model, test_set)


def _reference_accuracies(n_spectral: int) -> tuple[float, ...]:
    """The frequency accuracy of the recipe over REFERENCE_SEEDS."""
    return tuple(_reference_factors(n_spectral, seed)["frequency"] for seed in REFERENCE_SEEDS)


def _accepted_range(n_spectral: int) -> tuple[float, float, float, float]:
    accs = torch.tensor(_reference_accuracies(n_spectral), dtype=torch.float64)
    mean, std = accs.mean().item(), accs.std().item()
    half = max(4 * std, 0.08)  # mean ± 4 std over the seeds, at least ± 0.08
    return mean - half, mean + half, mean, std


@task("ch06.frequency_accuracy", points=3, time_limit=60.0)
def check_frequency_accuracy(fn):
    """The learner's measured frequency accuracy (L_spec = 2) lies in the range the reference runs give."""
    gen, _ = fresh_generator()
    seed = int(torch.randint(10, 1000, (1,), generator=gen))  # a seed the reference did not use
    with one_thread():
        with case():
            low, high, mean, std = _accepted_range(2)
            got = expect_number(fn(2, seed), "frequency_accuracy")
            if not low <= got <= high:
                raise CheckFailed(
                    f"frequency_accuracy(n_spectral=2, seed={seed}) = {got:.3f}, but the reference "
                    f"runs give {mean:.3f} ± {std:.3f} over seeds {REFERENCE_SEEDS} "
                    f"(accepted: {low:.3f} ... {high:.3f})",
                    hint="follow the recipe in the docstring and return the accuracy on the frequency "
                    "factor (predicted class // 2 == test_set.frequency)",
                )
