"""The common mistakes of chapter 06's exercises, declared for the checks of ``ch06_spectral_mixing``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake
from .ch06_spectral_mixing import _reference_factors


def _half_spectrum(x, Ny, Nx):
    B, N, D = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.fft.rfft2(x.to(work).reshape(B, Ny, Nx, D), dim=(1, 2), norm="ortho"), work


def _complex(weight, work=torch.float64):
    return torch.view_as_complex(weight.to(work).contiguous())


@mistake(
    "ch06.spectral_gating",
    "fft2 + .real: a full (Ny, Nx) spectrum times the filter, then only the real part kept; the filter has "
    "Nx//2+1 columns (rfft2's half-spectrum), and a learned complex W has no Hermitian twin in fft2's "
    "negative columns, so .real drops part of the answer: use rfft2 ... irfft2(s=(Ny, Nx))",
)
def gating_fft2_real(x, weight, hw):
    Ny, Nx = hw
    B, N, D = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    X = torch.fft.fft2(x.to(work).reshape(B, Ny, Nx, D), dim=(1, 2), norm="ortho")  # (B, Ny, Nx, D)
    W = torch.zeros(Ny, Nx, D, dtype=X.dtype)
    W[:, : Nx // 2 + 1] = _complex(weight, work)  # the half filter, the other columns left at 0
    return torch.fft.ifft2(X * W, dim=(1, 2), norm="ortho").real.reshape(B, N, D)


@mistake(
    "ch06.spectral_gating",
    "irfft2 without s=(Ny, Nx): from Nx//2+1 frequency columns it rebuilds an even width 2·(Nx//2), "
    "so an odd Nx comes back one column short",
)
def gating_irfft2_without_size(x, weight, hw):
    Ny, Nx = hw
    X, work = _half_spectrum(x, Ny, Nx)
    W = _complex(weight, work)
    return torch.fft.irfft2(X * W, dim=(1, 2), norm="ortho").reshape(x.shape[0], -1, x.shape[2])


@mistake(
    "ch06.spectral_gating",
    "the output is 1/sqrt(Ny·Nx) too small: the normalisation is applied twice (norm='ortho' forward, then "
    "the default 'backward' inverse divides by Ny·Nx again); use norm='ortho' in both transforms",
)
def gating_norm_twice(x, weight, hw):
    Ny, Nx = hw
    X, work = _half_spectrum(x, Ny, Nx)
    W = _complex(weight, work)
    return torch.fft.irfft2(X * W, s=(Ny, Nx), dim=(1, 2)).reshape(x.shape)


@mistake(
    "ch06.spectral_gating",
    "the result is cast back to float16; half-precision input is computed and returned in float32",
)
def gating_casts_back(x, weight, hw):
    Ny, Nx = hw
    X, work = _half_spectrum(x, Ny, Nx)
    W = _complex(weight, work)
    return torch.fft.irfft2(X * W, s=(Ny, Nx), dim=(1, 2), norm="ortho").reshape(x.shape).to(x.dtype)


@mistake(
    "ch06.filter_kernel",
    "the kernel is sqrt(Ny·Nx) times too large: irfft2 with norm='ortho'; the two ortho factors of the layer "
    "multiply to 1/(Ny·Nx), which is the default ('backward') inverse alone",
)
def kernel_ortho(weight, hw):
    Ny, Nx = hw
    return torch.fft.irfft2(_complex(weight), s=(Ny, Nx), dim=(0, 1), norm="ortho").permute(2, 0, 1)


@mistake(
    "ch06.filter_kernel",
    "the taps are flipped, W_conv[c, -dy, -dx]: those are the taps of a correlation (what F.conv2d "
    "computes), not of the circular convolution y = sum W_conv[dy, dx] x[y - dy, x - dx]",
)
def kernel_flipped(weight, hw):
    Ny, Nx = hw
    K = torch.fft.irfft2(_complex(weight), s=(Ny, Nx), dim=(0, 1)).permute(2, 0, 1)
    return torch.roll(K.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))


@mistake(
    "ch06.filter_kernel",
    "irfft2 without s=(Ny, Nx): an odd width Nx comes back as 2·(Nx//2), one column short",
)
def kernel_without_size(weight, hw):
    return torch.fft.irfft2(_complex(weight), dim=(0, 1)).permute(2, 0, 1)


def _ramp(hw, D, shift, sign):
    Ny, Nx = hw
    k_y = torch.fft.fftfreq(Ny, d=1.0 / Ny, dtype=torch.float64)[:, None]
    k_x = torch.arange(Nx // 2 + 1, dtype=torch.float64)[None, :]
    phase = sign * 2 * math.pi * (k_y * shift[0] / Ny + k_x * shift[1] / Nx)
    ramp = torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)
    return ramp[:, :, None, :].expand(Ny, Nx // 2 + 1, D, 2)


@mistake(
    "ch06.shift_filter",
    "the phase has the wrong sign: exp(+2πi(...)) rolls by (-s_y, -s_x); a delay by s is exp(-2πi k s / n)",
)
def shift_wrong_sign(hw, D, shift):
    return _ramp(hw, D, shift, +1.0)


@mistake(
    "ch06.shift_filter",
    "the two shifts are swapped: s_y goes with the row frequency k_y (over Ny), s_x with k_x (over Nx)",
)
def shift_axes_swapped(hw, D, shift):
    return _ramp(hw, D, (shift[1], shift[0]), -1.0)


# The mistakes below answer from the cached reference runs (seed 0) rather than training again,
# which keeps the generated tests fast; what each returns is what the mistake produces.
@mistake(
    "ch06.frequency_accuracy",
    "the accuracy on the whole class (frequency and same together) was returned; the task asks for the "
    "frequency factor alone: predicted class // 2 compared with test_set.frequency",
)
def experiment_class_accuracy(n_spectral, seed):
    return _reference_factors(n_spectral, 0)["class"]


@mistake(
    "ch06.frequency_accuracy",
    "the accuracy on the 'same' factor (class % 2) was returned; the frequency factor is class // 2",
)
def experiment_same_factor(n_spectral, seed):
    return _reference_factors(n_spectral, 0)["same"]
