"""Chapter 06 solutions: Spectral mixing before attention."""

import torch
from torch import Tensor


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    h, w = hw
    B, N, C = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    # X̂ = rfft2(x) over the grid: (B, h, w//2+1, C) complex
    spectrum = torch.fft.rfft2(x.to(work).reshape(B, h, w, C), dim=(1, 2), norm="ortho")
    # W = W_re + i W_im: (h, w//2+1, C)
    filt = torch.view_as_complex(weight.to(work).contiguous())
    # y = irfft2(X̂ ⊙ W, s=(h, w)): the size given, since an odd w cannot be guessed
    return torch.fft.irfft2(spectrum * filt, s=(h, w), dim=(1, 2), norm="ortho").reshape(B, N, C)
