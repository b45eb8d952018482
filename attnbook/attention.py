r"""Scaled dot-product attention and multi-head attention: the book's shared vocabulary.

Notation (chapter 00, used by every chapter; the book-wide table is ``book/notation.md``):

    X ∈ R^{B×N×D}, H heads of width d = D / H,
    Q_h = X W_Q^h,  K_h = C W_K^h,  V_h = C W_V^h          (C = X for self-attention)
    S_h = Q_h K_h^T / sqrt(d)  (+ mask: -inf where a key is hidden)     (B, N, M)
    A_h = softmax_row(S_h)                                              (B, N, M)
    MHA(X) = concat_h(A_h V_h) W_O + b_O = Σ_h A_h V_h W_O^h + b_O      (B, N, D)

W_O^h is the h-th block of d rows of W_O (written as a D×D matrix acting on the right).
The sum-over-heads form is the one that routing, pruning and head-level interpretability
reuse: each head writes its own additive contribution to the output.

**Extension points.** Most chapters are "multi-head attention with one thing changed".
That one thing plugs into :class:`MultiHeadAttention` instead of a copied skeleton:

    qk_transform(q, k, pos_q, pos_k) -> (q, k)   rotate/convolve queries and keys   (B, H, ·, d)
    score_mod(scores, q, k) -> scores            add a bias or change the scores    (B, H, N, M)
    mask_mod(N, M, device) -> mask               hide keys (bool) or add to scores  (N, M) or broadcastable
    head_gate(x) -> gates                        weight each head per query token   (B, N, H)
    value_transform(v) -> v                      change the value path              (B, H, M, d)
    weights_transform(A) -> A                    edit the weights after the softmax (B, H, N, M)
    head_transform(z) -> z                       edit the head outputs before W_O   (B, H, N, d)

Each is a plain callable or an ``nn.Module`` (then its parameters train with the layer).
With ``return_intermediates=True`` the layer also returns an :class:`Intermediates` record:
the transformed q, k, v, the pre-softmax scores, the weights, the per-head outputs, the
gates and each head's additive term of the output.

Masks follow torch's convention (see :mod:`attnbook.masks`): a boolean mask is True where a
query MAY attend to a key; a floating mask is added to the scores. A query whose keys are
all hidden gets zero weights and a zero output (as
torch.nn.functional.scaled_dot_product_attention returns).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .masks import apply_mask, causal_mask, padding_mask, query_positions
from .validate import check_qkv, check_scale, require_int, require_tensor

__all__ = [
    "stable_softmax",
    "attention_scores",
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "split_heads",
    "merge_heads",
    "Intermediates",
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


def attention_scores(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    r"""S = q k^T · scale, scale = 1 / sqrt(d) by default.  q (..., N, d), k (..., M, d) -> (..., N, M)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else check_scale(scale)
    return (q @ k.transpose(-2, -1)) * scale  # (..., N, M)


ScoreMod = Callable[[Tensor, Tensor, Tensor], Tensor]


def _attend(q, k, v, masks, scale, score_mod: ScoreMod | None, weights_transform: Callable | None = None):
    """The one computation behind both forms: scores -> modified -> masked -> softmax -> values."""
    # S = Q K^T / sqrt(d)
    scores = attention_scores(q, k, scale)  # (..., N, M)
    if score_mod is not None:
        # S' = score_mod(S): a bias, a relative-position term, ...
        scores = score_mod(scores, q, k)
        if not isinstance(scores, Tensor) or scores.shape[-2:] != (q.shape[-2], k.shape[-2]):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(f"score_mod must return scores of shape (..., N, M), got {got}")
    for m in masks:
        scores = apply_mask(scores, m)  # -inf where hidden, + where additive
    # A = softmax_row(S), over the KEY axis (each query's weights sum to 1)
    weights = stable_softmax(scores, dim=-1)  # (..., N, M)
    if weights_transform is not None:
        # A' = weights_transform(A): edit the weights after the softmax (e.g. move mass between keys)
        edited = weights_transform(weights)
        if not isinstance(edited, Tensor) or edited.shape != weights.shape:
            got = tuple(edited.shape) if isinstance(edited, Tensor) else type(edited).__name__
            raise ValueError(
                f"weights_transform must return weights of shape {tuple(weights.shape)}, got {got}"
            )
        weights = edited  # (..., N, M)
    return weights @ v, weights, scores  # (..., N, d_v), (..., N, M), (..., N, M)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    score_mod: ScoreMod | None = None,
) -> tuple[Tensor, Tensor]:
    r"""softmax(q k^T / sqrt(d) + mask) v, returning the output and the attention weights.

    Args:
        q: queries (..., N, d).
        k: keys (..., M, d).
        v: values (..., M, d_v).
        mask: boolean (True = may attend) or additive float, broadcastable to (..., N, M).
        causal: also hide future keys; with N ≠ M the queries are the LAST N positions
            (as when decoding with a cache), see :func:`attnbook.masks.causal_mask`.
        scale: a number > 0 that multiplies the scores; default 1 / sqrt(d).
        score_mod: ``score_mod(scores, q, k) -> scores``, applied after scaling and before
            the masks (a bias, a relative-position term).

    Returns:
        out (..., N, d_v) and weights (..., N, M). Rows whose keys are all hidden give zeros.
    """
    check_qkv(q, k, v)
    masks = [causal_mask(q.shape[-2], k.shape[-2], device=q.device)] if causal else []
    masks.append(mask)
    out, weights, _ = _attend(q, k, v, masks, scale, score_mod)
    return out, weights


def split_heads(x: Tensor, H: int) -> Tensor:
    """(B, N, D) -> (B, H, N, d) with d = D / H: head h takes columns h*d ... (h+1)*d - 1."""
    require_tensor(x, "x", ndim=3, shape="(B, N, D)")
    H = require_int(H, "H", minimum=1)
    B, N, D = x.shape
    if D % H:
        raise ValueError(f"model width D={D} must be divisible by the number of heads H={H}")
    # view as (B, N, H, d), then move the head axis in front of the token axis
    return x.view(B, N, H, D // H).transpose(1, 2)  # (B, H, N, d)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H*d): the inverse of :func:`split_heads` (concatenate heads)."""
    require_tensor(x, "x", ndim=4, shape="(B, H, N, d)")
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)  # (B, N, D)


@dataclass
class Intermediates:
    r"""What happened inside one :class:`MultiHeadAttention` call.

    Attributes:
        q: queries after ``qk_transform`` (B, H, N, d).
        k: keys after ``qk_transform`` (B, H, M, d).
        v: values after ``value_transform`` (B, H, M, d).
        scores: pre-softmax scores, after ``score_mod`` and every mask (B, H, N, M).
        weights: A_h = softmax(scores), after ``weights_transform`` (B, H, N, M).
        heads: per-head outputs z_h = g_h A_h V_h as W_O sees them, after ``head_gate`` and
            ``head_transform`` (B, H, N, d).
        gates: per-token head gates g (B, N, H), or None without ``head_gate``.
        contributions: each head's additive term z_h W_O^h (B, H, N, D); the layer's
            output is their sum over h plus b_O.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scores: Tensor
    weights: Tensor
    heads: Tensor
    gates: Tensor | None
    contributions: Tensor


class MultiHeadAttention(nn.Module):
    r"""Multi-head attention in the sum-over-heads form, with extension points.

    out = Σ_h z_h W_O^h + b_O,  z_h = g_h · softmax(score_mod(Q_h K_h^T / sqrt(d)) + mask) V_h
    (then ``head_transform`` may edit z before W_O)

    Args:
        D: model width.
        H: number of heads; D must be divisible by H.
        bias: whether the four projections have biases.
        qk_transform: ``f(q, k, pos_q, pos_k) -> (q, k)`` on (B, H, N, d) and (B, H, M, d);
            pos_q (N,) and pos_k (M,) are the token positions (queries are the last N of M).
        score_mod: ``f(scores, q, k) -> scores`` on (B, H, N, M) scaled scores.
        mask_mod: ``f(N, M, device) -> mask``, boolean or additive, broadcastable to (B, H, N, M).
        head_gate: ``f(x) -> gates`` (B, N, H) from the query tokens x (B, N, D).
        value_transform: ``f(v) -> v`` on (B, H, M, d).
        weights_transform: ``f(A) -> A`` on the weights (B, H, N, M) after the softmax and
            before they multiply the values (to redistribute attention mass between keys).
        head_transform: ``f(z) -> z`` on the head outputs (B, H, N, d), after the gates and
            before W_O (to read, replace or steer one head's activation at chosen positions).
    """

    def __init__(
        self,
        D: int,
        H: int,
        bias: bool = True,
        *,
        qk_transform: Callable | None = None,
        score_mod: ScoreMod | None = None,
        mask_mod: Callable | None = None,
        head_gate: Callable | None = None,
        value_transform: Callable | None = None,
        weights_transform: Callable | None = None,
        head_transform: Callable | None = None,
    ):
        super().__init__()
        D, H = require_int(D, "D", minimum=1), require_int(H, "H", minimum=1)
        if D % H:
            raise ValueError(f"model width D={D} must be divisible by the number of heads H={H}")
        self.D, self.H, self.d = D, H, D // H
        self.w_q = nn.Linear(D, D, bias=bias)
        self.w_k = nn.Linear(D, D, bias=bias)
        self.w_v = nn.Linear(D, D, bias=bias)
        self.w_o = nn.Linear(D, D, bias=bias)
        for name, fn in (
            ("qk_transform", qk_transform),
            ("score_mod", score_mod),
            ("mask_mod", mask_mod),
            ("head_gate", head_gate),
            ("value_transform", value_transform),
            ("weights_transform", weights_transform),
            ("head_transform", head_transform),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"{name} must be callable (a function or an nn.Module), got {type(fn).__name__}"
                )
        # Modules among these register as submodules, so their parameters train with the layer.
        self.qk_transform = qk_transform
        self.score_mod = score_mod
        self.mask_mod = mask_mod
        self.head_gate = head_gate
        self.value_transform = value_transform
        self.weights_transform = weights_transform
        self.head_transform = head_transform

    def _check_inputs(self, x: Tensor, context: Tensor) -> None:
        require_tensor(x, "x", ndim=3, floating=True, shape=f"(B, N, D={self.D})")
        require_tensor(context, "context", ndim=3, floating=True, shape=f"(B, M, D={self.D})")
        if x.shape[-1] != self.D:
            raise ValueError(f"x must have shape (B, N, D={self.D}), got {tuple(x.shape)}")
        if context.shape[-1] != self.D or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context must have shape (B={x.shape[0]}, M, D={self.D}), got {tuple(context.shape)}"
            )
        weight = self.w_q.weight
        for name, t in (("x", x), ("context", context)):
            if t.dtype != weight.dtype:
                raise TypeError(
                    f"{name} is {t.dtype} but the layer's weights are {weight.dtype}: "
                    f"convert one of them (layer.to({t.dtype}) or {name}.to({weight.dtype}))"
                )
            if t.device != weight.device:
                raise ValueError(f"{name} is on {t.device} but the layer's weights are on {weight.device}")

    def _padding(self, key_padding_mask: Tensor | None, B: int, M: int) -> Tensor | None:
        if key_padding_mask is None:
            return None
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a boolean tensor (True = real token), got "
                f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
            )
        if key_padding_mask.shape != (B, M):
            raise ValueError(
                f"key_padding_mask must have shape (B={B}, M={M}), got {tuple(key_padding_mask.shape)}"
            )
        return key_padding_mask[:, None, None, :]  # (B, 1, 1, M)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        return_weights: bool = False,
        return_intermediates: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | tuple[Tensor, Intermediates]:
        r"""Attend from ``x`` to ``context`` (to ``x`` itself when no context is given).

        Args:
            x: queries' tokens (B, N, D).
            context: keys'/values' tokens (B, M, D); cross-attention when given.
            mask: boolean or additive mask broadcastable to (B, H, N, M).
            key_padding_mask: boolean (B, M), True for real tokens (see :func:`padding_mask`).
            causal: hide future keys (queries at the end when N ≠ M).
            return_weights: also return the per-head weights (B, H, N, M).
            return_intermediates: also return an :class:`Intermediates` record.

        Returns:
            out (B, N, D); with ``return_weights`` (out, weights); with
            ``return_intermediates`` (out, intermediates).
        """
        context = x if context is None else context
        self._check_inputs(x, context)
        B, N, M = x.shape[0], x.shape[1], context.shape[1]
        masks = [causal_mask(N, M, device=x.device)] if causal else []
        if self.mask_mod is not None:
            masks.append(self.mask_mod(N, M, x.device))
        masks += [self._padding(key_padding_mask, B, M), mask]
        # Q_h = X W_Q^h, K_h = C W_K^h, V_h = C W_V^h, all heads at once
        q = split_heads(self.w_q(x), self.H)  # (B, H, N, d)
        k = split_heads(self.w_k(context), self.H)  # (B, H, M, d)
        v = split_heads(self.w_v(context), self.H)  # (B, H, M, d)
        if self.qk_transform is not None:
            # positions: the queries are the last N of the M key positions
            pos_q, pos_k = query_positions(N, M, device=x.device), torch.arange(M, device=x.device)
            q, k = self.qk_transform(q, k, pos_q, pos_k)  # (B, H, N, d), (B, H, M, d)
        if self.value_transform is not None:
            v = self.value_transform(v)  # (B, H, M, d)
        heads, weights, scores = _attend(
            q, k, v, masks, None, self.score_mod, self.weights_transform
        )  # (B, H, N, d)
        gates = None
        if self.head_gate is not None:
            gates = self.head_gate(x)  # (B, N, H)
            if not isinstance(gates, Tensor) or gates.shape != (B, N, self.H):
                got = tuple(gates.shape) if isinstance(gates, Tensor) else type(gates).__name__
                raise ValueError(
                    f"head_gate must return gates of shape (B={B}, N={N}, H={self.H}), got {got}"
                )
            # g_h · A_h V_h, per query token
            heads = heads * gates.transpose(1, 2)[..., None]  # (B, H, N, d)
        if self.head_transform is not None:
            edited = self.head_transform(heads)
            if not isinstance(edited, Tensor) or edited.shape != heads.shape:
                got = tuple(edited.shape) if isinstance(edited, Tensor) else type(edited).__name__
                raise ValueError(
                    f"head_transform must return a tensor of shape {tuple(heads.shape)}, got {got}"
                )
            heads = edited  # (B, H, N, d)
        # out = Σ_h (g_h A_h V_h) W_O^h + b_O, with W_O^h the h-th (d, D) block of W_O
        w_o = self.w_o.weight.T.reshape(self.H, self.d, self.D)  # (H, d, D)
        out = torch.einsum("bhnd,hde->bne", heads, w_o)  # (B, N, D)
        if self.w_o.bias is not None:
            out = out + self.w_o.bias
        if return_intermediates:
            contributions = torch.einsum("bhnd,hde->bhne", heads, w_o)  # (B, H, N, D)
            return out, Intermediates(q, k, v, scores, weights, heads, gates, contributions)
        return (out, weights) if return_weights else out

    def head_contributions(self, x: Tensor, context: Tensor | None = None, **kwargs) -> Tensor:
        """Each head's additive term g_h A_h V_h W_O^h of the output, (B, H, N, D) (bias excluded)."""
        _, inter = self.forward(x, context, return_intermediates=True, **kwargs)
        return inter.contributions  # (B, H, N, D)

    @classmethod
    def from_torch(cls, m: nn.MultiheadAttention) -> MultiHeadAttention:
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
