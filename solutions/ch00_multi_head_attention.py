"""Chapter 00 solutions: multi-head attention from scratch."""

import math

import torch
from torch import Tensor


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    # S = Q K^T / sqrt(d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., N, M)
    if mask is not None:
        # hidden keys get -inf BEFORE the softmax, so they receive exactly 0 weight
        scores = scores.masked_fill(~mask, float("-inf"))
    # stable softmax over the keys: subtracting the row max cancels in the ratio
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = scores.exp()
    weights = weights / weights.sum(dim=-1, keepdim=True)  # (..., N, M)
    return weights @ v, weights


def split_heads(x: Tensor, H: int) -> Tensor:
    B, N, D = x.shape
    return x.view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, d)


def merge_heads(x: Tensor) -> Tensor:
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)  # (B, N, D)


def multi_head_attention(x: Tensor, params: dict[str, Tensor], H: int, mask: Tensor | None = None) -> Tensor:
    B, N, D = x.shape
    d = D // H
    q, k, v = (split_heads(x @ params[name], H) for name in ("w_q", "w_k", "w_v"))  # (B, H, N, d)
    heads, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, N, d)
    w_o = params["w_o"].reshape(H, d, D)  # W_O^h: (H, d, D)
    # MHA(X) = Σ_h A_h V_h W_O^h
    return torch.einsum("bhnd,hde->bne", heads, w_o)


def causal_mask(N: int, M: int | None = None) -> Tensor:
    M = N if M is None else M
    # query i sits at position i + (M - N) and sees keys j <= i + (M - N)
    return torch.ones(N, M, dtype=torch.bool).tril(diagonal=M - N)
