"""Chapter 02 solutions: in-context linear regression with multi-head softmax attention."""

import math

import torch
from torch import Tensor


def icl_batch(
    B: int, M: int, d_x: int, sigma2: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw B in-context regression prompts (see the exercise file for the full statement)."""
    beta = torch.randn(B, d_x, generator=generator) / math.sqrt(d_x)  # β ~ N(0, I/d_x)
    x = torch.randn(B, M + 1, d_x, generator=generator)  # the M context covariates and x_q
    # y = βᵀx + ξ, ξ ~ N(0, σ²)
    y = torch.einsum("bjd,bd->bj", x, beta) + math.sqrt(sigma2) * torch.randn(B, M + 1, generator=generator)
    Z = torch.cat([x[:, :M], y[:, :M, None]], dim=-1)  # (B, M, d_x+1)
    zq = torch.cat([x[:, M], torch.zeros(B, 1)], dim=-1)  # (B, d_x+1), label slot empty
    return Z, zq, y[:, M]


def icl_forward(Z: Tensor, zq: Tensor, W_kq: Tensor, u: Tensor) -> Tensor:
    """ŷ = Σ_h Σ_j softmax_j(z_jᵀ W_KQ^h z_q / sqrt(D)) u_hᵀ z_j."""
    D = Z.shape[-1]
    scores = torch.einsum("bjd,hde,be->bhj", Z, W_kq, zq) / math.sqrt(D)  # (B, H, M)
    weights = torch.softmax(scores, dim=-1)  # over the M context tokens
    values = torch.einsum("hd,bjd->bhj", u, Z)  # (B, H, M)
    return (weights * values).sum(dim=(1, 2))


def debiased_gd(Z: Tensor, zq: Tensor, eta: float) -> Tensor:
    """ŷ = (η/M) Σ_j y_j (x_j - x̄)ᵀ x_q."""
    x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
    centred = x - x.mean(dim=1, keepdim=True)
    return eta * torch.einsum("bj,bjd,bd->b", y, centred, xq) / x.shape[1]


def extract_omega_mu(W_kq: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    """ω_h, μ_h and the off-diagonal ratio of the block of W_KQ that acts on x_q."""
    D = W_kq.shape[-1]
    d_x = D - 1
    diag = torch.diagonal(W_kq, dim1=-2, dim2=-1)[:, :d_x]  # (H, d_x)
    omega = diag.mean(-1) / math.sqrt(D)
    mu = u[:, -1]
    off = ~torch.eye(D, d_x, dtype=torch.bool)  # (D, d_x): all but the x-diagonal
    ratio = W_kq[:, :, :d_x][:, off].abs().mean() / diag.abs().mean()
    return omega, mu, ratio.item()


def pair_distance_to_dgd(omega: float, seed: int) -> float:
    """Relative RMS distance of the pair (ω, η/(2ω)), (-ω, -η/(2ω)) to debiased GD, η = 0.9."""
    eta, M, d_x = 0.9, 40, 5
    D = d_x + 1
    Z, zq, _ = icl_batch(8000, M, d_x, 0.1, torch.Generator().manual_seed(seed))
    Z, zq = Z.double(), zq.double()
    omegas = torch.tensor([omega, -omega], dtype=torch.float64)
    mus = eta / (2 * omega) * torch.tensor([1.0, -1.0], dtype=torch.float64)
    x_block = torch.diag(torch.tensor([1.0] * d_x + [0.0], dtype=torch.float64))  # diag(I_{d_x}, 0)
    W_kq = math.sqrt(D) * omegas[:, None, None] * x_block  # (2, D, D)
    u = torch.zeros(2, D, dtype=torch.float64)
    u[:, -1] = mus  # u_h = μ_h e_D
    pred, target = icl_forward(Z, zq, W_kq, u), debiased_gd(Z, zq, eta)
    return ((pred - target).pow(2).mean() / target.pow(2).mean()).sqrt().item()
