"""Chapter 00 solutions: multi-head attention from scratch."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbook.models import ModelConfig, TinyTransformer
from attnbook.tasks import TwoKeyBatch, two_key_recall
from attnbook.train import train


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


class TwoKeyEmbedding(nn.Module):
    """Tokens of a two-key recall batch: one per (key, value) pair, then the query token."""

    def __init__(self, n_keys: int = 12, n_values: int = 6, D: int = 24):
        super().__init__()
        self.key_emb = nn.Embedding(n_keys, D)
        self.value_emb = nn.Embedding(n_values, D)
        self.first = nn.Embedding(n_keys, D)  # the query's first key
        self.second = nn.Embedding(n_keys, D)  # the query's second key

    def forward(self, b: TwoKeyBatch) -> Tensor:
        pairs = self.key_emb(b.keys) + self.value_emb(b.values)  # (B, n_pairs, D)
        query = self.first(b.query[:, 0]) + self.second(b.query[:, 1])  # (B, D)
        return torch.cat([pairs, query[:, None]], dim=1)  # (B, n_pairs + 1, D)


def heads_experiment(H: int, seed: int) -> float:
    torch.manual_seed(seed)
    config = ModelConfig(D=24, H=H, layers=1, n_out=6 * 6, mlp_ratio=0, norm=False, causal=False)
    model = TinyTransformer(config, embed=TwoKeyEmbedding())

    def loss(m: nn.Module, b: TwoKeyBatch) -> Tensor:
        return F.cross_entropy(m(b)[:, -1], b.target)  # the logits at the query token

    train(
        model,
        lambda step, g: two_key_recall(64, 6, 12, 6, g),
        loss,
        steps=100,
        lr=1e-2,
        seed=seed,
        progress=False,
    )
    test = two_key_recall(1000, 6, 12, 6, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (model(test)[:, -1].argmax(-1) == test.target).float().mean().item()
