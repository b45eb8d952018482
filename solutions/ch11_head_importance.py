"""Chapter 11 solutions: Head importance."""

import math

import torch
from torch import Tensor


def masked_mha(
    x: Tensor, w_qkv: Tensor, w_o: Tensor, n_heads: int, head_mask: Tensor
) -> tuple[Tensor, Tensor]:
    B, N, D = x.shape
    H, d = n_heads, D // n_heads
    # Q, K, V split into heads: (B, N, D) -> (B, H, N, d)
    q, k, v = ((x @ w.T).view(B, N, H, d).transpose(1, 2) for w in w_qkv.chunk(3, dim=0))
    # A_h = softmax(Q_h K_h^T / sqrt(d)) over the keys
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, H, N, N)
    # z_h = m_h A_h V_h: the gate scales the head's output, never its weights
    z = (weights @ v) * head_mask[:, None, None]  # (B, H, N, d)
    # out = concat_h(z_h) W_O = Σ_h z_h W_O^h
    out = z.transpose(1, 2).reshape(B, N, D) @ w_o.T  # (B, N, D)
    return out, weights


def distance_profile(attn: Tensor, grid: int, has_cls: bool, metric: str, normalize: str) -> Tensor:
    B, H, N, _ = attn.shape
    P = grid * grid
    if N != P + (1 if has_cls else 0) or attn.shape[-1] != N:
        raise ValueError(f"attn has {N} tokens; grid={grid} needs {P + (1 if has_cls else 0)}")
    a = attn
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    idx = torch.arange(P, device=attn.device)
    rows, cols = (idx // grid).double(), (idx % grid).double()
    dr = (rows[:, None] - rows[None, :]).abs()
    dc = (cols[:, None] - cols[None, :]).abs()
    if metric == "chebyshev":
        dist = torch.maximum(dr, dc)
    elif metric == "euclidean":
        dist = torch.sqrt(dr**2 + dc**2)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    # ring id of each pair (i, j): its index among the distinct distances
    bins, ring = torch.unique(dist.round(decimals=9), return_inverse=True)  # (n_bins,), (P, P)
    one_hot = torch.nn.functional.one_hot(ring, len(bins)).to(a.dtype)  # (P, P, n_bins)
    total = torch.einsum("bhij,ijk->hk", a, one_hot)  # (H, n_bins)
    if normalize == "mass":
        return total / (B * P)
    if normalize == "mean":
        return total / (B * one_hot.sum(dim=(0, 1)))
    raise ValueError(f"unknown normalize {normalize!r}")
