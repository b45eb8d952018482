"""Chapter 02 solutions: in-context linear regression with multi-head softmax attention."""

import math

import torch
from torch import Tensor


def icl_batch(
    B: int, L: int, d: int, sigma2: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw B in-context regression prompts (see the exercise file for the full statement)."""
    beta = torch.randn(B, d, generator=generator) / math.sqrt(d)  # β ~ N(0, I/d)
    x = torch.randn(B, L + 1, d, generator=generator)  # the L context covariates and x_q
    y = torch.einsum("bld,bd->bl", x, beta) + math.sqrt(sigma2) * torch.randn(B, L + 1, generator=generator)
    Z = torch.cat([x[:, :L], y[:, :L, None]], dim=-1)  # (B, L, d+1)
    zq = torch.cat([x[:, L], torch.zeros(B, 1)], dim=-1)  # (B, d+1), label slot empty
    return Z, zq, y[:, L]


def icl_forward(Z: Tensor, zq: Tensor, A: Tensor, u: Tensor) -> Tensor:
    """ŷ = Σ_h Σ_ℓ softmax_ℓ(z_ℓᵀ A_h z_q / sqrt(D)) u_hᵀ z_ℓ."""
    D = Z.shape[-1]
    scores = torch.einsum("bld,hde,be->bhl", Z, A, zq) / math.sqrt(D)  # (B, H, L)
    weights = torch.softmax(scores, dim=-1)  # over the L context tokens
    values = torch.einsum("hd,bld->bhl", u, Z)  # (B, H, L)
    return (weights * values).sum(dim=(1, 2))


def debiased_gd(Z: Tensor, zq: Tensor, eta: float) -> Tensor:
    """ŷ = (η/L) Σ_ℓ y_ℓ (x_ℓ - x̄)ᵀ x_q."""
    x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
    centred = x - x.mean(dim=1, keepdim=True)
    return eta * torch.einsum("bl,bld,bd->b", y, centred, xq) / x.shape[1]


def extract_omega_mu(A: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    """ω_h, μ_h and the off-diagonal ratio of the block of A that acts on x_q."""
    D = A.shape[-1]
    d = D - 1
    diag = torch.diagonal(A, dim1=-2, dim2=-1)[:, :d]  # (H, d)
    omega = diag.mean(-1) / math.sqrt(D)
    mu = u[:, -1]
    off = ~torch.eye(D, d, dtype=torch.bool)  # (D, d): all but the x-diagonal
    ratio = A[:, :, :d][:, off].abs().mean() / diag.abs().mean()
    return omega, mu, ratio.item()
