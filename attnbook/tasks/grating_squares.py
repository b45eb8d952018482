r"""Grating × squares: small RGB images whose class combines a global and a relational cue.

Each image is ``size`` × ``size`` pixels (RGB) cut into ``patch`` × ``patch`` patches, a grid of
Ny × Nx = (size/patch)² tokens. It carries two independent factors:

- **frequency** (0 low, 1 high): a faint, noisy sinusoidal grating over the whole background,
  with ``low`` or ``high`` cycles per image, a random orientation and phase. A global filter
  that passes one band and not the other reads it off directly.
- **same** (0 different, 1 same): two small squares (one patch each, at two random, distinct
  patches) painted in colours from a palette; same-coloured or not. Deciding it needs the
  two patches' contents compared, wherever they are.

The class is ``2 · frequency + same`` (4 classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["GratingSquares", "grating_squares"]

PALETTE = torch.tensor([[1.0, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 1.0], [1.0, 0.9, 0.1]])


@dataclass
class GratingSquares:
    images: Tensor  # (B, 3, size, size) float32
    frequency: Tensor  # (B,) int64: 0 low, 1 high grating frequency
    same: Tensor  # (B,) int64: 1 when the two squares share their colour
    squares: Tensor  # (B, 2) int64: the token (patch) index of each square, row-major
    target: Tensor  # (B,) int64: 2 * frequency + same


def grating_squares(
    batch_size: int,
    *,
    size: int = 16,
    patch: int = 2,
    low: float = 1.0,
    high: float = 4.0,
    amplitude: float = 0.35,
    jitter: float = 1.0,
    noise: float = 0.3,
    n_colours: int = 4,
    generator: torch.Generator | None = None,
) -> GratingSquares:
    """Draw a batch of grating × squares images (see the module's docstring).

    Args:
        batch_size: number of images B.
        size: image side in pixels, a multiple of ``patch``.
        patch: patch side in pixels (one token per patch).
        low, high: the grating's cycles per image for frequency 0 and 1.
        amplitude: the grating's amplitude (the squares have colours of size about 1).
        jitter: each image's amplitude is amplitude · jitter^u, u uniform in [-1, 1]; with jitter >=
            high/low the local contrast no longer tells the frequency, only the pattern across patches does.
        noise: standard deviation of the Gaussian pixel noise.
        n_colours: the squares' palette size (2 to 4).
    """
    B = require_int(batch_size, "batch_size", minimum=1)
    size, patch = require_int(size, "size", minimum=2), require_int(patch, "patch", minimum=1)
    if size % patch:
        raise ValueError(f"size={size} must be a multiple of patch={patch}")
    g = generator
    grid = size // patch
    frequency = torch.randint(0, 2, (B,), generator=g)
    same = torch.randint(0, 2, (B,), generator=g)
    # the grating: amplitude · sin(2π f (x cos θ + y sin θ)/size + φ), the same on the three channels
    cycles = torch.where(frequency == 1, torch.tensor(high), torch.tensor(low))  # (B,)
    theta = torch.rand(B, generator=g) * math.pi
    phi = torch.rand(B, generator=g) * 2 * math.pi
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = coords[:, None], coords[None, :]  # (size, 1), (1, size)
    along = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]  # (B, size, size)
    amp = amplitude * jitter ** (2 * torch.rand(B, generator=g) - 1)  # (B,)
    wave = amp[:, None, None] * torch.sin(
        2 * math.pi * cycles[:, None, None] * along / size + phi[:, None, None]
    )
    images = wave[:, None].expand(B, 3, size, size).clone()
    images += noise * torch.randn(B, 3, size, size, generator=g)
    # two distinct patches, colours equal or different
    scores = torch.rand(B, grid * grid, generator=g)
    squares = scores.topk(2, dim=1).indices  # (B, 2): two distinct token indices
    n_col = require_int(n_colours, "n_colours", minimum=2)
    if n_col > PALETTE.shape[0]:
        raise ValueError(f"n_colours must be <= {PALETTE.shape[0]}, got {n_col}")
    first = torch.randint(0, n_col, (B,), generator=g)
    other = (first + torch.randint(1, n_col, (B,), generator=g)) % n_col  # a different colour
    second = torch.where(same == 1, first, other)
    on = torch.zeros(B, grid * grid, dtype=torch.bool)  # (B, N): the two squares' tokens
    paint = torch.zeros(B, grid * grid, 3)  # (B, N, 3): their colours
    for slot, colour in ((0, first), (1, second)):
        on[torch.arange(B), squares[:, slot]] = True
        paint[torch.arange(B), squares[:, slot]] = PALETTE[colour]
    # token grid -> pixels: every patch × patch block takes its token's value
    on = on.reshape(B, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    paint = paint.reshape(B, grid, grid, 3).permute(0, 3, 1, 2)
    paint = paint.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (B, 3, size, size)
    images = torch.where(on, paint, images)
    return GratingSquares(images, frequency, same, squares, 2 * frequency + same)
