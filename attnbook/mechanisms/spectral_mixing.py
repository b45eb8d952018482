r"""Chapter 06 · Spectral mixing before attention (SpectFormer 2023, after GFNet 2021).

Attention mixes the N = h·w tokens of an image with input-dependent weights,
out_i = sum_j softmax(S)_ij v_j, at O(N²) cost. A spectral gating layer mixes them with
fixed (learned, input-independent) weights instead, one global filter per channel:

    X̂ = rfft2(x)          over the (h, w) token grid, ortho norm: (B, h, w//2+1, C) complex
    Ŷ = X̂ ⊙ W             W ∈ ℂ^{h × (w//2+1) × C}, one complex gain per frequency and channel
    y = irfft2(Ŷ, s=(h, w))                                       (B, h, w, C) real

The ortho factors cancel, so y_c = x_c ⊛ K_c is a per-channel circular convolution with the
kernel K_c = irfft2(W_c) (backward norm): global mixing at O(N log N). ``s=(h, w)`` is needed,
since an odd width w cannot be recovered from w//2+1 frequency columns. SpectFormer uses these
layers in the first α blocks and ordinary multi-head attention in the rest.

The layer is not multi-head attention with one thing changed (there are no scores to modify):
it replaces the token mixer and stands alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnbook.attention import MultiHeadAttention
from attnbook.models import Block, ModelConfig
from attnbook.validate import require_int, require_tensor

__all__ = [
    "spectral_gating",
    "filter_kernel",
    "shift_filter",
    "SpectralGating",
    "SpectralBlock",
    "SpectFormerEncoder",
]


def _grid(hw: object) -> tuple[int, int]:
    if not isinstance(hw, (tuple, list)) or len(hw) != 2:
        raise TypeError(f"hw must be a pair (h, w) of integers, got {hw!r}")
    return require_int(hw[0], "hw[0] (h)", minimum=1), require_int(hw[1], "hw[1] (w)", minimum=1)


def _check_weight(weight: object, h: int, w: int, C: int | None) -> Tensor:
    weight = require_tensor(weight, "weight", ndim=4, floating=True, shape="(h, w//2+1, C, 2)")
    expected = (h, w // 2 + 1, weight.shape[2] if C is None else C, 2)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"weight must have shape (h, w//2+1, C, 2) = {expected} for the grid (h, w) = ({h}, {w}), "
            f"got {tuple(weight.shape)}"
        )
    return weight


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """GFNet's global filter on the token grid: irfft2(rfft2(x) ⊙ W, s=(h, w)), ortho norm.

    Args:
        x: (B, N, C) tokens, N = h·w in row-major order (token n = row n // w, column n % w).
        weight: (h, w//2+1, C, 2) real; weight[..., 0] + i·weight[..., 1] is the complex filter W.
        hw: the token grid (h, w).
    Returns:
        (B, N, C) mixed tokens, in float64 for float64 input and in float32 otherwise (half
        precision FFTs need power-of-two sizes, so lower precisions are computed in float32).
    """
    h, w = _grid(hw)
    x = require_tensor(x, "x", ndim=3, floating=True, shape="(B, N, C)")
    B, N, C = x.shape
    if N != h * w:
        raise ValueError(f"x has N = {N} tokens, but the grid hw = ({h}, {w}) holds h·w = {h * w}")
    weight = _check_weight(weight, h, w, C)
    if weight.device != x.device:
        raise ValueError(
            f"x and weight must be on one device, got x on {x.device}, weight on {weight.device}"
        )
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    grid = x.to(work).reshape(B, h, w, C)  # (B, h, w, C)
    # X̂[k_y, k_x, c] = (1/sqrt(hw)) sum_{y,x} x[y, x, c] e^{-2πi(k_y y/h + k_x x/w)},  k_x = 0 .. w//2
    spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho")  # (B, h, w//2+1, C) complex
    # W = W_re + i W_im, one complex gain per frequency and channel
    filt = torch.view_as_complex(weight.to(work).contiguous())  # (h, w//2+1, C)
    # y = irfft2(X̂ ⊙ W) with the output size given: an odd w is not recoverable from w//2+1 columns
    mixed = torch.fft.irfft2(spectrum * filt, s=(h, w), dim=(1, 2), norm="ortho")  # (B, h, w, C)
    return mixed.reshape(B, N, C)


def filter_kernel(weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """The spatial kernel of a filter: spectral_gating(x) = x ⊛ K per channel (circular convolution).

    Args:
        weight: (h, w//2+1, C, 2) real filter, as in :func:`spectral_gating`.
        hw: the token grid (h, w).
    Returns:
        (C, h, w) kernels K_c = irfft2(W_c, s=(h, w)) with the default ("backward") norm, so that
        y[y0, x0, c] = sum_{dy, dx} K_c[dy, dx] x[(y0 - dy) mod h, (x0 - dx) mod w, c].
    """
    h, w = _grid(hw)
    weight = _check_weight(weight, h, w, None)
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    filt = torch.view_as_complex(weight.to(work).contiguous())  # (h, w//2+1, C)
    # K_c = irfft2(W_c): ortho forward (1/sqrt(hw)) times ortho inverse (1/sqrt(hw)) = backward inverse (1/hw)
    return torch.fft.irfft2(filt, s=(h, w), dim=(0, 1)).permute(2, 0, 1)  # (C, h, w)


def shift_filter(
    hw: tuple[int, int], C: int, shift: tuple[int, int], *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The phase ramp W = exp(-2πi(k_y s_y/h + k_x s_x/w)): spectral_gating then equals torch.roll.

    Args:
        hw: the token grid (h, w).
        C: the number of channels (every channel gets the same ramp).
        shift: (s_y, s_x), the roll along the grid's rows and columns.
    Returns:
        (h, w//2+1, C, 2) real filter in ``dtype``.
    """
    h, w = _grid(hw)
    C = require_int(C, "C", minimum=1)
    s_y, s_x = require_int(shift[0], "shift[0]"), require_int(shift[1], "shift[1]")
    k_y = torch.fft.fftfreq(h, d=1.0 / h, dtype=torch.float64)[:, None]  # (h, 1): 0, 1, .., -1
    k_x = torch.arange(w // 2 + 1, dtype=torch.float64)[None, :]  # (1, w//2+1)
    # φ = -2π (k_y s_y / h + k_x s_x / w)
    phase = -2 * math.pi * (k_y * s_y / h + k_x * s_x / w)  # (h, w//2+1)
    ramp = torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)  # (h, w//2+1, 2)
    return ramp[:, :, None, :].expand(h, w // 2 + 1, C, 2).to(dtype).contiguous()


class SpectralGating(nn.Module):
    """A learned global filter over an (h, w) token grid: the token mixer of SpectFormer's first α blocks.

    Args:
        hw: the token grid (h, w); the filter's shape is tied to it.
        C: the number of channels.
        init_std: the filter's initial standard deviation (GFNet: 0.02).
    Input (B, h·w, C), output (B, h·w, C).
    """

    def __init__(self, hw: tuple[int, int], C: int, *, init_std: float = 0.02):
        super().__init__()
        self.hw = _grid(hw)
        h, w = self.hw
        C = require_int(C, "C", minimum=1)
        self.weight = nn.Parameter(torch.randn(h, w // 2 + 1, C, 2) * init_std)

    def forward(self, x: Tensor) -> Tensor:
        return spectral_gating(x, self.weight, self.hw)


class SpectralBlock(nn.Module):
    """GFNet's block: x + MLP(LN2(SpectralGating(LN1(x)))), one residual around filter and MLP.

    Args:
        config: the model's sizes (D channels, mlp_ratio; config.norm switches the LayerNorms).
        hw: the token grid (h, w).
    Input (B, h·w, D), output (B, h·w, D).
    """

    def __init__(self, config: ModelConfig, hw: tuple[int, int]):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.D) if config.norm else nn.Identity()
        self.filter = SpectralGating(hw, config.D)
        self.norm2 = nn.LayerNorm(config.D) if config.norm else nn.Identity()
        hidden = max(config.mlp_ratio, 1) * config.D
        self.mlp = nn.Sequential(nn.Linear(config.D, hidden), nn.GELU(), nn.Linear(hidden, config.D))

    def forward(self, x: Tensor) -> Tensor:
        # x <- x + MLP(LN2(SGN(LN1(x))))
        return x + self.mlp(self.norm2(self.filter(self.norm1(x))))  # (B, N, D)


class SpectFormerEncoder(nn.Module):
    """SpectFormer's stack: the first ``alpha`` blocks spectral, the other layers - alpha attention.

    The attention blocks are :class:`attnbook.models.Block` with config.H heads (the reference code
    hard-codes 6; here the number of heads is a parameter). alpha = 0 is a ViT encoder, alpha =
    config.layers is GFNet.

    Args:
        config: the model's sizes; config.causal must be False (image tokens have no order).
        hw: the token grid (h, w).
        alpha: the number of spectral blocks, 0 <= alpha <= config.layers.
    Input (B, h·w, D), output (B, h·w, D) (no embedding, final norm or readout).
    """

    def __init__(self, config: ModelConfig, hw: tuple[int, int], alpha: int):
        super().__init__()
        alpha = require_int(alpha, "alpha", minimum=0)
        if alpha > config.layers:
            raise ValueError(f"alpha must be <= config.layers = {config.layers}, got {alpha}")
        if config.causal:
            raise ValueError("config.causal must be False: the tokens of an image grid have no order")
        self.hw, self.alpha = _grid(hw), alpha
        self.blocks = nn.ModuleList(
            [SpectralBlock(config, self.hw) for _ in range(alpha)]
            + [Block(config, MultiHeadAttention(config.D, config.H)) for _ in range(config.layers - alpha)]
        )

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)  # (B, N, D)
        return x
