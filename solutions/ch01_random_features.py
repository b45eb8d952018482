"""Chapter 01 solutions: random-feature attention (frozen random QK, trained V)."""

import torch
from torch import Tensor


def _augment(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)


def rfa_features(x0: Tensor, X: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    x0t, Xt = _augment(x0), _augment(X)  # (B, d+1), (B, N, d+1)
    scores = torch.einsum("bi,mij,bnj->bmn", x0t, W, Xt)  # (B, M, N): x~_0^T W_m x~_i
    if act == "relu":
        weights = torch.relu(scores) / X.shape[1]
    elif act == "softmax":
        weights = torch.softmax(scores, dim=-1)  # over the keys
    else:
        raise ValueError(f"act must be 'relu' or 'softmax', got {act!r}")
    phi = torch.einsum("bmn,bnj->bmj", weights, Xt)  # (B, M, d+1)
    return phi.reshape(x0.shape[0], -1)


def ridge_fit(F: Tensor, y: Tensor, lam: float) -> Tensor:
    n, P = F.shape
    if n >= P:  # primal: (F^T F + λI) w = F^T y
        return torch.linalg.solve(F.T @ F + lam * torch.eye(P, dtype=F.dtype), F.T @ y)
    # dual: (F F^T + λI) α = y, w = F^T α
    return F.T @ torch.linalg.solve(F @ F.T + lam * torch.eye(n, dtype=F.dtype), y)


def sample_qk(M: int, d: int, mu: float, generator: torch.Generator) -> Tensor:
    mean = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    mean[:d, :d] = torch.eye(d, dtype=torch.float64)
    return mu * mean + torch.randn(M, d + 1, d + 1, generator=generator, dtype=torch.float64)


def empirical_kernel(F1: Tensor, F2: Tensor, heads: int) -> Tensor:
    return F1 @ F2.T / heads
