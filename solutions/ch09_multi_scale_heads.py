"""Chapter 09 solutions: MEDUSA's multi-scale heads and the gates they drive."""

import torch
import torch.nn.functional as F
from torch import Tensor


def gate(F_s: Tensor, A: Tensor, mode: str = "mul") -> Tensor:
    if mode not in ("mul", "residual"):
        raise ValueError(f"mode must be 'mul' or 'residual', got {mode!r}")
    a = F.interpolate(A, size=F_s.shape[-2:], mode="bilinear", align_corners=False)  # (B, 1, H, W)
    # F' = F ⊙ A   or   F' = F ⊙ (1 + A)
    return F_s * a if mode == "mul" else F_s * (1 + a)


def medusa_heads(dec: list[Tensor], weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    # A_s = σ(Σ_c w_c D_c + b), one channel kept: (B, 1, h_s, w_s)
    return [
        torch.sigmoid(torch.einsum("bchw,c->bhw", D, w) + b)[:, None] for D, w, b in zip(dec, weights, biases)
    ]
