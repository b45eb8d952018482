"""Chapter 04 solutions: RoPE as a complex rotation, and adaptive (Euler) rotations."""

import math

import torch
from torch import Tensor


def _pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape[-1] % 2:
        raise ValueError(
            f"the last dimension of x must be even (pairs of coordinates), got shape {tuple(x.shape)}"
        )
    return x[..., 0::2], x[..., 1::2]  # interleaved: (2ν, 2ν+1)


def _interleave(r: Tensor, p: Tensor) -> Tensor:
    return torch.stack([r, p], dim=-1).flatten(-2)  # (..., d/2, 2) -> (..., d)


def rope(x: Tensor, pos: Tensor, theta: Tensor) -> Tensor:
    r, p = _pairs(x)
    z = torch.complex(r, p)  # (..., N, d/2)
    angle = pos.to(x.dtype)[:, None] * theta  # (N, d/2): pos_i θ_ν
    # z' = z · e^{i pos_i θ_ν}
    z = z * torch.polar(torch.ones_like(angle), angle)
    return _interleave(z.real, z.imag)


def euler_rotate(x: Tensor, pos: Tensor, theta: Tensor, gamma, bias, eps: float = 1e-12) -> Tensor:
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    r, p = _pairs(x.to(work))
    rho = torch.sqrt(r * r + p * p + eps)  # ρ = |z|, finite gradient at z = 0
    psi = torch.atan2(p, r)  # ψ = arg z ∈ (-π, π]
    gamma = torch.as_tensor(gamma, dtype=work)
    bias = torch.as_tensor(bias, dtype=work)
    # angle = γ ψ + pos_i θ + b
    angle = gamma * psi + pos.to(work)[:, None] * theta.to(work) + bias
    return _interleave(rho * torch.cos(angle), rho * torch.sin(angle)).to(x.dtype)


def complex_scores(
    q: Tensor, k: Tensor, pos: Tensor, theta: Tensor, gamma, bias, eps: float = 1e-12
) -> Tensor:
    rq, pq = _pairs(q)
    rk, pk = _pairs(k)
    lq, fq = torch.sqrt(rq * rq + pq * pq + eps), torch.atan2(pq, rq)  # (..., N, d/2)
    lk, fk = torch.sqrt(rk * rk + pk * pk + eps), torch.atan2(pk, rk)
    gamma = torch.as_tensor(gamma, dtype=q.dtype)
    bias = torch.as_tensor(bias, dtype=q.dtype)
    if gamma.ndim:
        gamma = gamma[..., None, :]  # add the key axis: (..., 1, 1, d/2)
    if bias.ndim:
        bias = bias[..., None, :]
    pos = pos.to(q.dtype)
    rel = (pos[:, None] - pos[None, :])[..., None] * theta  # (N, N, d/2): (pos_i - pos_j) θ_ν
    # angle = γ (ψq_i - ψk_j) + b + (pos_i - pos_j) θ
    angle = gamma * (fq[..., :, None, :] - fk[..., None, :, :]) + bias + rel  # (..., N, N, d/2)
    scores = (lq[..., :, None, :] * lk[..., None, :, :] * torch.cos(angle)).sum(-1)
    return scores / math.sqrt(q.shape[-1])


def adaptive_attention(q: Tensor, k: Tensor, v: Tensor, theta: Tensor, gamma, bias) -> tuple[Tensor, Tensor]:
    N, M, d = q.shape[-2], k.shape[-2], q.shape[-1]
    pos_q = torch.arange(M - N, M)  # p_i = i + M - N: the last N positions
    pos_k = torch.arange(M)
    q_rot = euler_rotate(q, pos_q, theta, gamma, bias)  # (B, H, N, d): γψ + p_i θ + b
    k_rot = euler_rotate(k, pos_k, theta, gamma, 0.0)  # (B, H, M, d): γψ + j θ, no bias
    # S = τ q' k'^T, key j hidden when j > p_i
    scores = q_rot @ k_rot.transpose(-2, -1) / math.sqrt(d)  # (B, H, N, M)
    scores = scores.masked_fill(pos_k[None, :] > pos_q[:, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def positional_accuracy(mode: str, seed: int) -> float:
    from attnbook.mechanisms.complex_rotations_experiment import train_lookup
    from attnbook.tasks.mixed_lookup import mixed_lookup

    model, _ = train_lookup(mode, seed, N=12, n_sym=6, D=16, H=2, layers=1, steps=60, batch_size=32, lr=2e-2)
    test = mixed_lookup(500, 12, 6, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        correct = model(test.tokens).argmax(-1) == test.targets  # (B, N)
    return correct[test.kind == 0].float().mean().item()  # positional questions only
