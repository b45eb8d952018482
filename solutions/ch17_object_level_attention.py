"""Chapter 17 solutions: Object-level attention."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_gaussian_pe(n_pos: int, dim: int, sigma: float, steps: int, lr: float, seed: int) -> Tensor:
    idx = torch.arange(n_pos, dtype=torch.float64)
    # K_ab = exp(-(a - b)² / (2σ²))
    target = torch.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2 * sigma**2))
    W = torch.randn(n_pos, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    W.requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        unit = F.normalize(W, dim=-1)
        norms = W.norm(dim=-1)
        # L = [Σ (cos - K)² + mean (|W_a| - mean |W|)²] / (R (R - 1))
        loss = ((unit @ unit.T - target) ** 2).sum() + ((norms - norms.mean()) ** 2).mean()
        (loss / max(n_pos * (n_pos - 1), 1)).backward()
        opt.step()
    return W.detach()


def object_tokens(app: Tensor, rc: Tensor, pe: Tensor) -> Tensor:
    # e_i = [a_i ; pe[r_i] ; pe[c_i]]
    return torch.cat([app, pe[rc[..., 0]], pe[rc[..., 1]]], dim=-1)


def pointer_logits(
    enc: Tensor, dec: Tensor, We: Tensor, Wd: Tensor, readout: Tensor, pad: Tensor | None = None
) -> Tensor:
    k = torch.einsum("bnd,cde->bcne", enc, We)  # (B, C, N, dk)
    q = torch.einsum("btd,cde->bcte", dec, Wd)  # (B, C, T, dk)
    # s^c_{t,i} = q·k / sqrt(dk); logit = Σ_c r_c s^c
    logits = torch.einsum("bcte,bcne,c->btn", q, k, readout) / math.sqrt(We.shape[-1])  # (B, T, N)
    if pad is not None:
        logits = logits.masked_fill(pad[:, None, :], float("-inf"))
    return torch.cat([logits, logits.new_zeros(*logits.shape[:2], 1)], dim=-1)  # (B, T, N + 1)


def normalized_levenshtein(a: list[int], b: list[int]) -> float:
    if not a and not b:
        return 0.0
    row = list(range(len(b) + 1))  # distances from a[:0] to b[:j]
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            # d[i][j] = min(d[i-1][j] + 1, d[i][j-1] + 1, d[i-1][j-1] + [x != y])
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1] / max(len(a), len(b))
