"""Chapter 07 solutions: Mixture of heads."""

import torch
from torch import Tensor


def moh_gates(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int) -> Tensor:
    # p = softmax(W_r x) over the routed heads
    p = torch.softmax(x @ w_r.T, dim=-1)  # (B, N, E)
    keep = torch.zeros_like(p).scatter_(-1, p.topk(k, dim=-1).indices, 1.0)  # (B, N, E) 0/1
    # g_r = k · p / Σ_top-k p on the kept heads
    routed = k * p * keep / (p * keep).sum(-1, keepdim=True)
    if w_s is None:
        return routed
    # g_s = h_s · softmax(W_s x); [α₁, α₂] = 2 · softmax(W_h x)
    shared = w_s.shape[0] * torch.softmax(x @ w_s.T, dim=-1)  # (B, N, h_s)
    alpha = 2 * torch.softmax(x @ w_h.T, dim=-1)  # (B, N, 2)
    return torch.cat([alpha[..., :1] * shared, alpha[..., 1:] * routed], dim=-1)
