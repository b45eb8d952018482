"""Chapter 08 solutions: multi-branch attention pooling (ACMIL)."""

import torch
from torch import Tensor


def multi_branch_attention(h: Tensor, V: Tensor, U: Tensor, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # κ_i = tanh(V h_i) ⊙ sigmoid(U h_i)
    keys = torch.tanh(h @ V.T) * torch.sigmoid(h @ U.T)  # (N, D)
    # A = W κ^T
    logits = W @ keys.T  # (K, N)
    # a_k = softmax_i(A_k)
    a = torch.softmax(logits, dim=1)
    # f_k = Σ_i a_{k,i} h_i ;  f_slide = Σ_i ā_i h_i
    return a, a @ h, a.mean(dim=0) @ h


def stkim_mask(
    logits: Tensor, k_top: int, p: float, generator: torch.Generator, training: bool = True
) -> Tensor:
    if not training:
        return logits
    K, N = logits.shape
    top = min(k_top, N)
    n = int(top * p)
    candidates = torch.topk(logits, top, dim=1).indices  # (K, top)
    order = torch.argsort(torch.rand(K, top, generator=generator, device=logits.device), dim=1)
    hidden = torch.zeros_like(logits, dtype=torch.bool).scatter(1, candidates.gather(1, order[:, :n]), True)
    return logits.masked_fill(hidden, float("-inf"))


def diversity_loss(a: Tensor) -> Tensor:
    K = a.shape[0]
    if K == 1:
        return a.sum() * 0.0
    unit = a / a.norm(dim=1, keepdim=True)
    j, k = torch.triu_indices(K, K, offset=1, device=a.device)
    # mean over j < k of cos(a_j, a_k)
    return (unit @ unit.T)[j, k].mean()
