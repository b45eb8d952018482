"""Chapter 13 solutions: attention sinks, image-centric heads and VAR redistribution."""

import torch
from torch import Tensor


def _in_image(img: slice, M: int, device) -> Tensor:
    start, stop, _ = img.indices(M)
    keys = torch.arange(M, device=device)
    return (keys >= start) & (keys < stop)  # (M,)


def sink_mask(h: Tensor, dims: Tensor, tau: float, eps: float = 1e-6) -> Tensor:
    x = h if h.dtype == torch.float64 else h.float()
    # RMSNorm(x) = x / sqrt(mean(x²) + eps)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (B, N, D)
    # φ = max_{d ∈ dims} |RMSNorm(x)_d|; sink ⇔ φ > τ
    return normed[..., dims].abs().amax(-1) > tau


def image_centric(A: Tensor, img: slice, sink: Tensor, rho: float, summ: float) -> Tensor:
    in_img = _in_image(img, A.shape[-1], A.device)
    vis = sink & in_img  # (B, M)
    # ν = Σ_{j∈I} A_qj
    nu = (A * in_img).sum(-1)  # (B, H, N)
    mass = (A * vis[:, None, None, :]).sum(-1)
    # r = visual-sink mass / ν, 0 where ν = 0
    share = torch.where(nu > 0, mass / torch.where(nu > 0, nu, torch.ones_like(nu)), torch.zeros_like(nu))
    return (nu >= summ) & (share <= rho) & vis.any(-1)[:, None, None]


def redistribute(A: Tensor, sink: Tensor, img: slice, sel: Tensor, p: float) -> Tensor:
    s = sink[:, None, None, :]  # (B, 1, 1, M)
    ns = (_in_image(img, A.shape[-1], A.device) & ~sink)[:, None, None, :]
    # Ω = (1 - p) Σ_{sinks} A_qj;  m_ns = Σ_{I∖sinks} A_qj
    budget = (1 - p) * (A * s).sum(-1, keepdim=True)
    m_ns = (A * ns).sum(-1, keepdim=True)
    safe = torch.where(m_ns > 0, m_ns, torch.ones_like(m_ns))
    # p A on sinks; A + Ω A / m_ns on the non-sink image tokens
    edited = torch.where(s, p * A, A) + torch.where(ns, budget * A / safe, torch.zeros_like(A))
    return torch.where(sel[..., None] & (m_ns > 0), edited, A)
