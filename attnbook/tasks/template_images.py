r"""Template images: 8 × 8 grey images of six line drawings, each shifted by at most one pixel.

Pixels are -1 (background) or +1 (ink), plus a little Gaussian noise, the range a diffusion
model's data usually has. The six templates (class 0 to 5):

- 0 a horizontal bar, 1 a vertical bar (2 pixels thick, 6 long);
- 2 a cross (the two bars together); 3 a square outline (6 × 6);
- 4 a diagonal (6 pixels); 5 a corner (an L of two 6-pixel arms).

Each image is its template rolled by (dy, dx) ∈ {-1, 0, 1}²: :data:`PROTOTYPES` lists the
6 × 9 = 54 noiseless images the data can come from, and :func:`nearest_prototype` measures how
far an image is from all of them (a generated image's distance to the data, and its class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int, require_tensor

__all__ = ["TEMPLATE_NAMES", "TemplateImages", "template_images", "prototypes", "nearest_prototype"]

TEMPLATE_NAMES = ("horizontal bar", "vertical bar", "cross", "square", "diagonal", "corner")


def _templates() -> Tensor:
    """(6, 8, 8) the templates in {-1, +1}."""
    t = -torch.ones(6, 8, 8, device="cpu")
    t[0, 3:5, 1:7] = 1
    t[1, 1:7, 3:5] = 1
    t[2, 3:5, 1:7] = 1
    t[2, 1:7, 3:5] = 1
    t[3, 1:7, 1] = t[3, 1:7, 6] = t[3, 1, 1:7] = t[3, 6, 1:7] = 1
    idx = torch.arange(1, 7, device="cpu")
    t[4, idx, idx] = 1
    t[5, 1:7, 1] = t[5, 6, 1:7] = 1
    return t


def prototypes() -> tuple[Tensor, Tensor]:
    """(54, 8, 8) every template under every shift, and (54,) their classes."""
    t = _templates()
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    images = torch.stack([t[c].roll(s, (0, 1)) for c in range(6) for s in shifts])
    return images, torch.arange(6, device="cpu").repeat_interleave(len(shifts))


@dataclass
class TemplateImages:
    images: Tensor  # (B, 8, 8) float32
    target: Tensor  # (B,) int64: the template's class, an index into TEMPLATE_NAMES

    def __len__(self) -> int:
        return self.images.shape[0]


def template_images(
    batch_size: int, *, noise: float = 0.05, generator: torch.Generator | None = None
) -> TemplateImages:
    """Draw B images: a uniformly chosen template and shift, plus Gaussian pixel noise of std ``noise``."""
    B = require_int(batch_size, "batch_size", minimum=1)
    images, classes = prototypes()
    i = torch.randint(0, images.shape[0], (B,), generator=generator)
    return TemplateImages(images[i] + noise * torch.randn(B, 8, 8, generator=generator), classes[i])


def nearest_prototype(x: Tensor) -> tuple[Tensor, Tensor]:
    """The mean squared distance of each image to its nearest prototype, and that prototype's class.

    Args:
        x: (B, 8, 8) images.
    Returns:
        (B,) min_p mean_ij (x_ij - p_ij)², and (B,) int64 classes.
    """
    require_tensor(x, "x", ndim=3, floating=True, shape="(B, 8, 8)")
    if x.shape[1:] != (8, 8):
        raise ValueError(f"x must have shape (B, 8, 8), got {tuple(x.shape)}")
    images, classes = prototypes()
    distance = ((x[:, None] - images.to(x)[None]) ** 2).mean((-1, -2))  # (B, 54)
    best, idx = distance.min(dim=1)
    return best, classes.to(x.device)[idx]
