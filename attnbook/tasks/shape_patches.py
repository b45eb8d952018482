r"""Shape patches: small noisy grey images of one of four shapes, cut into a grid of patches.

Each image is ``size`` × ``size`` pixels, a grid of G × G = (size/patch)² patches, one token per
patch. It shows one shape of pixel value 1 at a random position, on Gaussian noise:

- class 0, a horizontal bar of ``length`` pixels;
- class 1, a vertical bar of ``length`` pixels;
- class 2, an L corner: two arms of ``length - 2`` pixels meeting at the bottom left;
- class 3, two 2 × 2 dots at two independent random positions (possibly far apart).

A bar or a corner spans neighbouring patches (local evidence); the two dots may lie anywhere, so
telling them from a short bar takes a comparison across the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["ShapePatches", "shape_patches", "SHAPE_NAMES"]

SHAPE_NAMES = ("horizontal bar", "vertical bar", "L corner", "two dots")


@dataclass
class ShapePatches:
    images: Tensor  # (B, size, size) float32
    target: Tensor  # (B,) int64: the shape's class, an index into SHAPE_NAMES
    patch: int  # the patch side in pixels

    @property
    def grid(self) -> int:
        """G, the number of patches along a side."""
        return self.images.shape[-1] // self.patch

    @property
    def patches(self) -> Tensor:
        """(B, G², patch²) the pixels of each patch, patches row-major (patch j at row j // G)."""
        B, p, G = self.images.shape[0], self.patch, self.grid
        # (B, G, p, G, p) -> (B, G, G, p, p) -> (B, G², p²)
        blocks = self.images.reshape(B, G, p, G, p).permute(0, 1, 3, 2, 4)
        return blocks.reshape(B, G * G, p * p)

    def __len__(self) -> int:
        return self.images.shape[0]


def shape_patches(
    batch_size: int,
    *,
    size: int = 12,
    patch: int = 2,
    length: int = 6,
    noise: float = 0.3,
    generator: torch.Generator | None = None,
) -> ShapePatches:
    """Draw a batch of shape images (see the module's docstring); vectorised, a few milliseconds.

    Args:
        batch_size: number of images B.
        size: image side in pixels, a multiple of ``patch``.
        patch: patch side in pixels.
        length: the bars' length in pixels (the corner's arms are ``length - 2``); 3 <= length <= size.
        noise: standard deviation of the Gaussian pixel noise.
    """
    B = require_int(batch_size, "batch_size", minimum=1)
    size, patch = require_int(size, "size", minimum=4), require_int(patch, "patch", minimum=1)
    if size % patch:
        raise ValueError(f"size={size} must be a multiple of patch={patch}")
    length = require_int(length, "length", minimum=3)
    if length > size:
        raise ValueError(f"length={length} must be <= size={size}")
    g = generator
    target = torch.randint(0, 4, (B,), generator=g)
    # the shape's top-left corner, so that a length × length box fits in the image
    r, c = (torch.randint(0, size - length + 1, (B,), generator=g)[:, None, None] for _ in range(2))
    # the second dot, anywhere a 2 × 2 dot fits
    r2, c2 = (torch.randint(0, size - 1, (B,), generator=g)[:, None, None] for _ in range(2))
    rows = torch.arange(size)[None, :, None]  # (1, size, 1)
    cols = torch.arange(size)[None, None, :]  # (1, 1, size)
    in_cols = (cols >= c) & (cols < c + length)
    in_rows = (rows >= r) & (rows < r + length)
    mid_r, mid_c = r + length // 2, c + length // 2
    arm = length - 2
    shapes = torch.stack(
        [
            (rows == mid_r) & in_cols,  # horizontal bar
            in_rows & (cols == mid_c),  # vertical bar
            ((cols == c) & (rows >= r) & (rows < r + arm))  # L: the vertical arm ...
            | ((rows == r + arm - 1) & (cols >= c) & (cols < c + arm)),  # ... and the bottom arm
            ((rows >= r) & (rows < r + 2) & (cols >= c) & (cols < c + 2))  # two 2 × 2 dots
            | ((rows >= r2) & (rows < r2 + 2) & (cols >= c2) & (cols < c2 + 2)),
        ],
        dim=1,
    )  # (B, 4, size, size)
    shape = shapes[torch.arange(B), target].float()  # (B, size, size)
    images = shape + noise * torch.randn(B, size, size, generator=g)
    return ShapePatches(images, target, patch)
