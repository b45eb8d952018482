r"""Synthetic "radiographs": nodules inside the lung fields (positive) or outside them (distractor).

Each image is ``size`` × ``size`` pixels, one channel: a smooth random tissue background, two
elliptical lung fields (darker, their centres and radii jittered) and pixel noise. A cluster of
3 to 6 faint Gaussian nodules is drawn around a random centre:

- kind 0, **positive**: the centre and every nodule lie inside the lungs;
- kind 1, **distractor**: the same nodules, all outside the lungs (a negative);
- kind 2, **clean**: no nodules (a negative).

The label is ``kind == 0``. Telling a positive from a distractor needs the fine scale (a nodule
is one or two pixels wide) *and* the global layout (where the lungs are). The lung masks are
returned: they are free by construction. Everything is drawn in a few tensor operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..validate import require_int

__all__ = ["Radiographs", "radiographs"]


@dataclass
class Radiographs:
    images: Tensor  # (B, 1, size, size) float32
    lungs: Tensor  # (B, size, size) bool: the two lung fields
    kind: Tensor  # (B,) int64: 0 positive, 1 distractor, 2 clean
    target: Tensor  # (B,) float32: 1.0 for a positive (kind 0)


def radiographs(
    batch_size: int,
    *,
    size: int = 32,
    p_positive: float = 0.5,
    p_distractor: float = 0.25,
    contrast: float = 0.3,
    nodule: float = 0.35,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
) -> Radiographs:
    """Draw a batch of synthetic radiographs (see the module's docstring).

    Args:
        batch_size: number of images B.
        size: image side in pixels (>= 16); lung sizes and nodule widths scale with it.
        p_positive, p_distractor: probabilities of kinds 0 and 1 (clean gets the rest).
        contrast: how much darker the lungs are than the tissue.
        nodule: the peak brightness of one nodule.
        noise: standard deviation of the pixel noise.
        generator: the random source (seed it for reproducible data).
    Returns:
        a :class:`Radiographs` batch.
    """
    B = require_int(batch_size, "batch_size", minimum=1)
    n = require_int(size, "size", minimum=16)
    if not (0 <= p_positive and 0 <= p_distractor and p_positive + p_distractor <= 1):
        raise ValueError(
            f"need 0 <= p_positive, p_distractor and a sum <= 1, got {p_positive}, {p_distractor}"
        )
    g = generator

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(B, *shape, generator=g)

    u = n / 64  # lengths below are for a 64-pixel image
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )
    # two ellipses: centres (cy, cx_left / cx_right), radii (ry, rx), jittered per image and side
    cx = torch.stack([uniform(17 * u, 23 * u), uniform(41 * u, 47 * u)], dim=1)  # (B, 2)
    cy, ry, rx = uniform(29 * u, 35 * u, 2), uniform(15 * u, 20 * u, 2), uniform(7 * u, 10 * u, 2)
    inside = ((yy - cy[..., None, None]) / ry[..., None, None]) ** 2 + (
        (xx - cx[..., None, None]) / rx[..., None, None]
    ) ** 2 <= 1  # (B, 2, n, n)
    lungs = inside.any(dim=1)  # (B, n, n)
    # smooth tissue: white noise averaged over a (n/4 + 1)-pixel window
    k = n // 4 + 1
    tissue = F.avg_pool2d(torch.randn(B, 1, n + k - 1, n + k - 1, generator=g), k, 1)[:, 0]
    images = 0.6 + 0.6 * tissue - contrast * lungs.float()

    r = torch.rand(B, generator=g)
    kind = torch.where(r < p_positive, 0, torch.where(r < p_positive + p_distractor, 1, 2))
    # the cluster's centre: a uniform pixel of the allowed region (inside for 0, outside for 1),
    # away from the border; its nodules: uniform pixels of that region within 5u of the centre
    border = (yy >= 3 * u) & (yy < n - 3 * u) & (xx >= 3 * u) & (xx < n - 3 * u)
    region = torch.where((kind == 0)[:, None, None], lungs, ~lungs)  # (B, n, n)
    centre = torch.multinomial((region & border).flatten(1).float(), 1, generator=g)[:, 0]  # (B,)
    c_y, c_x = (centre // n).float(), (centre % n).float()
    near = (yy - c_y[:, None, None]) ** 2 + (xx - c_x[:, None, None]) ** 2 <= (5 * u) ** 2
    spots = torch.multinomial((region & near).flatten(1).float(), 6, replacement=True, generator=g)  # (B, 6)
    count = torch.randint(3, 7, (B, 1), generator=g)
    used = (torch.arange(6)[None] < count).float() * (kind < 2).float()[:, None]  # (B, 6)
    py = (spots // n).float() + uniform(-0.5, 0.5, 6)
    px = (spots % n).float() + uniform(-0.5, 0.5, 6)
    width = max(1.3 * u, 0.7)
    d2 = (yy - py[..., None, None]) ** 2 + (xx - px[..., None, None]) ** 2  # (B, 6, n, n)
    images = images + nodule * (used[..., None, None] * torch.exp(-d2 / (2 * width**2))).sum(1)
    images = images + noise * torch.randn(B, n, n, generator=g)
    return Radiographs(images[:, None].float(), lungs, kind, (kind == 0).float())
