"""Chapter 06 solutions: Spectral mixing before attention."""

import math

import torch
from torch import Tensor


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    h, w = hw
    B, N, D = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    # X̂ = rfft2(x) over the grid: (B, h, w//2+1, C) complex
    spectrum = torch.fft.rfft2(x.to(work).reshape(B, h, w, D), dim=(1, 2), norm="ortho")
    # W = W_re + i W_im: (h, w//2+1, C)
    filt = torch.view_as_complex(weight.to(work).contiguous())
    # y = irfft2(X̂ ⊙ W, s=(h, w)): the size given, since an odd w cannot be guessed
    return torch.fft.irfft2(spectrum * filt, s=(h, w), dim=(1, 2), norm="ortho").reshape(B, N, D)


def filter_kernel(weight: Tensor, hw: tuple[int, int]) -> Tensor:
    h, w = hw
    filt = torch.view_as_complex(weight.to(torch.float64).contiguous())  # (h, w//2+1, C)
    # W_conv_c = irfft2(W_spec,c) with the backward norm (1/N): the two ortho factors of the layer together
    return torch.fft.irfft2(filt, s=(h, w), dim=(0, 1)).permute(2, 0, 1)  # (C, h, w)


def shift_filter(hw: tuple[int, int], D: int, shift: tuple[int, int]) -> Tensor:
    h, w = hw
    k_y = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)[:, None]  # (h, 1)
    k_x = torch.arange(w // 2 + 1, dtype=torch.float64)[None, :]  # (1, w//2+1)
    # φ = -2π (k_y s_y / h + k_x s_x / w); W = e^{iφ}
    phase = -2 * math.pi * (k_y * shift[0] / h + k_x * shift[1] / w)
    ramp = torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)  # (h, w//2+1, 2)
    return ramp[:, :, None, :].expand(h, w // 2 + 1, D, 2).contiguous()


def frequency_accuracy(n_spectral: int, seed: int) -> float:
    from attnbook.mechanisms.spectral_mixing import classify, train_classifier
    from attnbook.tasks.grating_squares import grating_squares

    data = dict(size=8, patch=2, low=1.0, high=2.0, amplitude=0.3, jitter=2.5, noise=0.1, n_colours=2)
    train_set = grating_squares(1000, generator=torch.Generator().manual_seed(100 + seed), **data)
    test_set = grating_squares(500, generator=torch.Generator().manual_seed(1000 + seed), **data)
    model = train_classifier(
        n_spectral, seed, train_set, grid=4, patch=2, D=16, H=2, layers=2, steps=120, batch_size=32, lr=5e-3
    )
    with torch.no_grad():
        predicted = classify(model, test_set.images).argmax(-1)  # (n,): class = 2·frequency + same
    return (predicted // 2 == test_set.frequency).float().mean().item()
