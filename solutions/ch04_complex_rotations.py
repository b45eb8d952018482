"""Chapter 04 solutions: RoPE as a complex rotation, and adaptive (Euler) rotations."""

import math

import torch
from torch import Tensor


def _pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape[-1] % 2:
        raise ValueError(
            f"the last dimension of x must be even (pairs of coordinates), got shape {tuple(x.shape)}"
        )
    return x[..., 0::2], x[..., 1::2]  # interleaved: (2j, 2j+1)


def _interleave(r: Tensor, p: Tensor) -> Tensor:
    return torch.stack([r, p], dim=-1).flatten(-2)  # (..., d/2, 2) -> (..., d)


def rope(x: Tensor, pos: Tensor, theta: Tensor) -> Tensor:
    r, p = _pairs(x)
    z = torch.complex(r, p)  # (..., N, d/2)
    angle = pos.to(x.dtype)[:, None] * theta  # (N, d/2): m θ_j
    # z' = z · e^{i m θ_j}
    z = z * torch.polar(torch.ones_like(angle), angle)
    return _interleave(z.real, z.imag)


def euler_rotate(x: Tensor, pos: Tensor, theta: Tensor, delta, bias, eps: float = 1e-12) -> Tensor:
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    r, p = _pairs(x.to(work))
    lam = torch.sqrt(r * r + p * p + eps)  # λ = |z|, finite gradient at z = 0
    phi = torch.atan2(p, r)  # φ = arg z ∈ (-π, π]
    delta = torch.as_tensor(delta, dtype=work)
    bias = torch.as_tensor(bias, dtype=work)
    # angle = δ φ + m θ + b
    angle = delta * phi + pos.to(work)[:, None] * theta.to(work) + bias
    return _interleave(lam * torch.cos(angle), lam * torch.sin(angle)).to(x.dtype)


def complex_scores(
    q: Tensor, k: Tensor, pos: Tensor, theta: Tensor, delta, bias, eps: float = 1e-12
) -> Tensor:
    rq, pq = _pairs(q)
    rk, pk = _pairs(k)
    lq, fq = torch.sqrt(rq * rq + pq * pq + eps), torch.atan2(pq, rq)  # (..., N, d/2)
    lk, fk = torch.sqrt(rk * rk + pk * pk + eps), torch.atan2(pk, rk)
    delta = torch.as_tensor(delta, dtype=q.dtype)
    bias = torch.as_tensor(bias, dtype=q.dtype)
    if delta.ndim:
        delta = delta[..., None, :]  # add the key axis: (..., 1, 1, d/2)
    if bias.ndim:
        bias = bias[..., None, :]
    pos = pos.to(q.dtype)
    rel = (pos[:, None] - pos[None, :])[..., None] * theta  # (N, N, d/2): (m - n) θ_j
    # angle = δ (φq_m - φk_n) + b + (m - n) θ
    angle = delta * (fq[..., :, None, :] - fk[..., None, :, :]) + bias + rel  # (..., N, N, d/2)
    scores = (lq[..., :, None, :] * lk[..., None, :, :] * torch.cos(angle)).sum(-1)
    return scores / math.sqrt(q.shape[-1])


def rope_deviation(delta: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    return (delta - 1).pow(2).mean(-1).sqrt(), bias.pow(2).mean(-1).sqrt()
