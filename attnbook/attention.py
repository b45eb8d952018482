r"""Scaled dot-product attention and multi-head attention: the book's shared vocabulary.

Notation (chapter 00, used by every chapter):

    X ∈ R^{B×N×D}, H heads of width d = D / H,
    Q_h = X W_Q^h,  K_h = C W_K^h,  V_h = C W_V^h          (C = X for self-attention)
    S_h = Q_h K_h^T / sqrt(d)  (+ mask: -inf where a key is hidden)     (B, N, M)
    A_h = softmax_row(S_h)                                              (B, N, M)
    MHA(X) = concat_h(A_h V_h) W_O = Σ_h A_h V_h W_O^h                  (B, N, D)

W_O^h is the h-th block of d rows of W_O (written as a D×D matrix acting on the right).
The sum-over-heads form is the one that routing, pruning and head-level interpretability
reuse: each head writes its own additive contribution to the output.

Masks follow torch's convention: a boolean mask is True where a query MAY attend to a key;
a floating mask is added to the scores. A query whose keys are all hidden gets zero weights
and a zero output (as torch.nn.functional.scaled_dot_product_attention returns).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "stable_softmax",
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "split_heads",
    "merge_heads",
    "MultiHeadAttention",
]


def stable_softmax(scores: Tensor, dim: int = -1) -> Tensor:
    r"""Softmax that subtracts the row maximum and maps fully hidden rows to zeros.

    softmax(s)_j = exp(s_j - max_k s_k) / Σ_k exp(s_k - max_k s_k)

    Subtracting the maximum changes nothing mathematically (it cancels in the ratio) but
    keeps exp() from overflowing. A row whose entries are all -inf has no maximum to
    subtract; such a row is returned as zeros instead of NaN.
    """
    row_max = scores.amax(dim=dim, keepdim=True)
    # A row of only -inf: subtract 0 instead of -inf, so exp() gives 0 rather than NaN.
    row_max = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max)
    exp = torch.exp(scores - row_max)
    total = exp.sum(dim=dim, keepdim=True)
    # An all-hidden row sums to 0: divide by 1 there so it stays 0.
    return exp / torch.where(total == 0, torch.ones_like(total), total)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have shape (..., tokens, width), got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share their last (head-width) dimension d: q is {tuple(q.shape)}, "
            f"k is {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of tokens M: k is {tuple(k.shape)}, v is {tuple(v.shape)}"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            "q, k and v must share their leading (batch, head) dimensions: "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} (..., N queries, M keys)"
        )


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    r"""softmax(q k^T / sqrt(d) + mask) v, returning the output and the attention weights.

    Args:
        q: queries (..., N, d).
        k: keys (..., M, d).
        v: values (..., M, d_v).
        mask: boolean (True = may attend) or additive float, broadcastable to (..., N, M).
        causal: also hide future keys; with N ≠ M the queries are the LAST N positions
            (as when decoding with a cache), see :func:`causal_mask`.
        scale: multiplies the scores; default 1 / sqrt(d).

    Returns:
        out (..., N, d_v) and weights (..., N, M). Rows whose keys are all hidden give zeros.
    """
    _check_qkv(q, k, v)
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # S = Q K^T / sqrt(d)
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., N, M)
    if causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        _check_mask(mask, scores.shape)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    # A = softmax_row(S), over the KEY axis (each query's weights sum to 1)
    weights = stable_softmax(scores, dim=-1)  # (..., N, M)
    return weights @ v, weights  # (..., N, d_v), (..., N, M)


def causal_mask(N: int, M: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    r"""Boolean (N, M) mask, True where query i may attend to key j.

    The N queries are the last N of the M positions (decoding with a cache of M - N
    earlier tokens), so query i sits at position i + (M - N) and sees keys j <= i + M - N.
    With N == M this is the usual lower triangle, diagonal included.
    """
    M = N if M is None else M
    if N < 1 or M < 1:
        raise ValueError(f"causal_mask needs N >= 1 and M >= 1, got N={N}, M={M}")
    if M < N:
        raise ValueError(f"causal_mask with queries at the end needs M >= N, got N={N}, M={M}")
    query_pos = torch.arange(N, device=device)[:, None] + (M - N)  # (N, 1)
    key_pos = torch.arange(M, device=device)[None, :]  # (1, M)
    return key_pos <= query_pos  # (N, M)


def padding_mask(lengths: Tensor | list[int], M: int) -> Tensor:
    r"""Boolean key-padding mask (B, M): True for the first ``lengths[b]`` keys of sequence b.

    Turn it into an attention mask with ``mask[:, None, :]`` for (B, N, M) scores or
    ``mask[:, None, None, :]`` for (B, H, N, M) scores.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if (lengths < 0).any() or (lengths > M).any():
        raise ValueError(f"every entry of lengths must lie in [0, M={M}], got {lengths.tolist()}")
    return torch.arange(M, device=lengths.device)[None, :] < lengths[:, None]  # (B, M)


def split_heads(x: Tensor, H: int) -> Tensor:
    """(B, N, D) -> (B, H, N, d) with d = D / H: head h takes columns h*d ... (h+1)*d - 1."""
    if x.ndim != 3:
        raise ValueError(f"split_heads expects x of shape (B, N, D), got {tuple(x.shape)}")
    B, N, D = x.shape
    if H < 1 or D % H:
        raise ValueError(f"model width D={D} must be divisible by the number of heads H={H}")
    # view as (B, N, H, d), then move the head axis in front of the token axis
    return x.view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, d)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H*d): the inverse of :func:`split_heads` (concatenate heads)."""
    if x.ndim != 4:
        raise ValueError(f"merge_heads expects x of shape (B, H, N, d), got {tuple(x.shape)}")
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)  # (B, N, D)


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention in the sum-over-heads form.

    out = Σ_h softmax(Q_h K_h^T / sqrt(d) + mask) V_h W_O^h + b_O

    Args:
        D: model width.
        H: number of heads; D must be divisible by H.
        bias: whether the four projections have biases.
    """

    def __init__(self, D: int, H: int, bias: bool = True):
        super().__init__()
        if H < 1 or D % H:
            raise ValueError(f"model width D={D} must be divisible by the number of heads H={H}")
        self.D, self.H, self.d = D, H, D // H
        self.w_q = nn.Linear(D, D, bias=bias)
        self.w_k = nn.Linear(D, D, bias=bias)
        self.w_v = nn.Linear(D, D, bias=bias)
        self.w_o = nn.Linear(D, D, bias=bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Attend from ``x`` to ``context`` (to ``x`` itself when no context is given).

        Args:
            x: queries' tokens (B, N, D).
            context: keys'/values' tokens (B, M, D); cross-attention when given.
            mask: boolean or additive mask broadcastable to (B, H, N, M).
            key_padding_mask: boolean (B, M), True for real tokens (see :func:`padding_mask`).
            causal: hide future keys (queries at the end when N ≠ M).
            return_weights: also return the per-head weights (B, H, N, M).
        """
        context = x if context is None else context
        if x.ndim != 3 or x.shape[-1] != self.D:
            raise ValueError(f"x must have shape (B, N, D={self.D}), got {tuple(x.shape)}")
        if context.ndim != 3 or context.shape[-1] != self.D or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must have shape (B={x.shape[0]}, M, D={self.D}), got {tuple(context.shape)}"
            )
        B, M = context.shape[0], context.shape[1]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, M) or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be a boolean tensor of shape (B={B}, M={M}), got "
                    f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
            padding = key_padding_mask[:, None, None, :]  # (B, 1, 1, M)
            if mask is None:
                mask = padding
            elif mask.dtype == torch.bool:
                mask = mask & padding
            else:
                mask = mask.masked_fill(~padding, float("-inf"))
        # Q_h = X W_Q^h, K_h = C W_K^h, V_h = C W_V^h, all heads at once
        q = split_heads(self.w_q(x), self.H)  # (B, H, N, d)
        k = split_heads(self.w_k(context), self.H)  # (B, H, M, d)
        v = split_heads(self.w_v(context), self.H)  # (B, H, M, d)
        heads, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal)  # (B, H, N, d)
        # out = Σ_h (A_h V_h) W_O^h + b_O, with W_O^h the h-th (d, D) block of W_O
        w_o = self.w_o.weight.T.reshape(self.H, self.d, self.D)  # (H, d, D)
        out = torch.einsum("bhnd,hde->bne", heads, w_o)  # (B, N, D)
        if self.w_o.bias is not None:
            out = out + self.w_o.bias
        return (out, weights) if return_weights else out

    def head_contributions(self, x: Tensor, context: Tensor | None = None, **kwargs) -> Tensor:
        """Each head's additive term A_h V_h W_O^h of the output, (B, H, N, D) (bias excluded)."""
        context = x if context is None else context
        _, weights = self.forward(x, context, return_weights=True, **kwargs)  # (B, H, N, M)
        v = split_heads(self.w_v(context), self.H)  # (B, H, M, d)
        w_o = self.w_o.weight.T.reshape(self.H, self.d, self.D)  # (H, d, D)
        return torch.einsum("bhnm,bhmd,hde->bhne", weights, v, w_o)  # (B, H, N, D)

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> "MultiHeadAttention":
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same width for q, k, v).

        torch packs W_Q, W_K, W_V row-wise into ``in_proj_weight`` (3D, D); nn.Linear stores
        W^T, so the rows are the output features, exactly like our three Linear layers.
        """
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"from_torch expects torch.nn.MultiheadAttention, got {type(m).__name__}")
        if m.in_proj_weight is None:
            raise ValueError("from_torch needs q, k and v of the same width (kdim == vdim == embed_dim)")
        if m.bias_k is not None or m.add_zero_attn:
            raise ValueError("from_torch does not support add_bias_kv or add_zero_attn")
        D, H = m.embed_dim, m.num_heads
        bias = m.in_proj_bias is not None
        new = cls(D, H, bias=bias).to(device=m.in_proj_weight.device, dtype=m.in_proj_weight.dtype)
        with torch.no_grad():
            w_q, w_k, w_v = m.in_proj_weight.chunk(3, dim=0)  # each (D, D)
            new.w_q.weight.copy_(w_q)
            new.w_k.weight.copy_(w_k)
            new.w_v.weight.copy_(w_v)
            new.w_o.weight.copy_(m.out_proj.weight)
            if bias:
                b_q, b_k, b_v = m.in_proj_bias.chunk(3)
                new.w_q.bias.copy_(b_q)
                new.w_k.bias.copy_(b_k)
                new.w_v.bias.copy_(b_v)
                new.w_o.bias.copy_(m.out_proj.bias)
        return new
