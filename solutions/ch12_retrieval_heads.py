"""Chapter 12 solutions: the retrieval score of each head, and the query-masking ablation."""

import math

import torch
from torch import Tensor


def retrieval_score(attn: Tensor, prompt_ids: Tensor, gen_ids: Tensor, span: tuple, correct: bool) -> Tensor:
    s, e = span
    N = prompt_ids.shape[0]
    # j* = argmax_j a_{l,h,t}[j], the first maximal index on ties
    top = attn.argmax(dim=-1)  # (S, L, H)
    # x_{j*} (an index j* >= N lies outside the span; clamp only to read a token)
    attended = prompt_ids[top.clamp(max=N - 1)]  # (S, L, H)
    # [s <= j* < e] · [x_{j*} = w_t]
    copy = (top >= s) & (top < e) & (attended == gen_ids[:, None, None])  # (S, L, H)
    # RS = Σ_t copy / (e - s), zero for a wrong trial
    score = copy.sum(dim=0).float() / (e - s)  # (L, H)
    return score if correct else torch.zeros_like(score)


def ablated_attention(q: Tensor, k: Tensor, v: Tensor, ablate: Tensor, mode: str = "uniform") -> Tensor:
    N, d = q.shape[-2:]
    hidden = ablate.to(q.device)[None, :, None, None]  # (1, H, 1, 1)
    if mode == "uniform":
        # q_h = 0 for an ablated head, BEFORE the causal mask
        q = q.masked_fill(hidden, 0.0)
    # S = q k^T / sqrt(d), future keys hidden
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, N, N)
    future = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    out = weights @ v  # (B, H, N, d)
    if mode == "zero":
        out = out.masked_fill(hidden, 0.0)
    return out
