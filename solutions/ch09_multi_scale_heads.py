"""Chapter 09 solutions: MEDUSA's multi-scale heads and the gates they drive."""

import torch
import torch.nn.functional as F
from torch import Tensor


def gate(X: Tensor, g: Tensor, mode: str = "mul") -> Tensor:
    if mode not in ("mul", "residual"):
        raise ValueError(f"mode must be 'mul' or 'residual', got {mode!r}")
    a = F.interpolate(g, size=X.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, H, W)
    # X̃ = X ⊙ g   or   X̃ = X ⊙ (1 + g)
    return X * a if mode == "mul" else X * (1 + a)


def medusa_heads(dec: list[Tensor], weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    # g_h = sigmoid(Σ_c w_c E_c + b), one channel kept: (B, 1, h_s, w_s)
    return [
        torch.sigmoid(torch.einsum("bchw,c->bhw", E, w) + b)[:, None] for E, w, b in zip(dec, weights, biases)
    ]


def zscore_image(img: Tensor) -> Tensor:
    x = img if img.is_floating_point() else img.to(torch.float64)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, correction=0)  # population std
    # z = (x - mean) / std, and 0 where std = 0
    return torch.where(std > 0, (x - mean) / torch.where(std > 0, std, 1), 0)


def attention_iou(g: Tensor, mask: Tensor, thr: float = 0.5) -> Tensor:
    a = F.interpolate(g, size=mask.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    attended = a > thr
    inter = (attended & mask).sum(dim=(-2, -1)).to(g.dtype)
    union = (attended | mask).sum(dim=(-2, -1)).to(g.dtype)
    # IoU = |attended ∧ mask| / |attended ∨ mask|, 1 when both are empty
    return torch.where(union > 0, inter / union.clamp(min=1), 1)


def receptive_field(gating: str, seed: int) -> float:
    from attnbook.mechanisms.multi_scale_heads import MedusaNet
    from attnbook.tasks.radiographs import radiographs

    image = radiographs(4, size=32, generator=torch.Generator().manual_seed(seed)).images.requires_grad_()
    torch.manual_seed(seed)
    net = MedusaNet(gating, body_width=8, body_size=(16, 16), mode="residual")
    net(image)
    g = net.maps[0]  # (4, 1, 16, 16): the finest head's map
    g[:, 0, g.shape[-2] // 2, g.shape[-1] // 2].sum().backward()
    # a pixel position counts when its gradient is not exactly 0 in at least one of the 4 images
    return (image.grad != 0).any(dim=0).double().mean().item()
