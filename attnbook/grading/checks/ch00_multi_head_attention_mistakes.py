"""The common mistakes of chapter 00's exercises, declared for the checks of ``ch00_multi_head_attention``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import mistake
from .ch00_multi_head_attention import _reference_accuracies, _scores


def _sdpa(q, k, v, mask, *, scale=None, dim=-1):
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1]) if scale is None else scale), dim=dim)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "softmax over the query axis (dim=-2) instead of the key axis (dim=-1)",
)
def sdpa_softmax_over_queries(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, dim=-2)


@mistake("ch00.scaled_dot_product_attention", "scores not divided by sqrt(d)")
def sdpa_no_scale(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1.0)


@mistake("ch00.scaled_dot_product_attention", "scores divided by d instead of sqrt(d)")
def sdpa_divided_by_d(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / q.shape[-1])


@mistake(
    "ch00.scaled_dot_product_attention",
    "scores divided by the square root of the model width D = H·d (here 4d); inside one head "
    "the scale is 1/sqrt(d), d = q.shape[-1]",
)
def sdpa_scaled_by_sqrt_model_width(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / math.sqrt(4 * q.shape[-1]))


@mistake("ch00.scaled_dot_product_attention", "mask applied after the softmax (rows no longer sum to 1)")
def sdpa_mask_after_softmax(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, None, 1 / math.sqrt(q.shape[-1])), dim=-1)
    w = w if mask is None else w * mask
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "the mask was added as (~mask) * -inf, and 0 · (-inf) is NaN on every visible key; "
    "use scores.masked_fill(~mask, float('-inf'))",
)
def sdpa_nan_from_inf_times_zero(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + (~mask) * float("-inf")
    w = torch.softmax(s, dim=-1)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "scores divided by sqrt(d_v), the width of the VALUES; the scale uses the query/key width "
    "d = q.shape[-1]",
)
def sdpa_scaled_by_value_width(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / math.sqrt(v.shape[-1]))


@mistake(
    "ch00.scaled_dot_product_attention",
    "softmax written as exp(s) / Σ exp(s) without subtracting the row max: for scores near 1e3, exp "
    "overflows to inf and inf / inf is NaN; subtract scores.amax(-1, keepdim=True) first",
)
def sdpa_naive_softmax(q, k, v, mask=None):
    e = _scores(q, k, mask, 1 / math.sqrt(q.shape[-1])).exp()
    w = e / e.sum(dim=-1, keepdim=True)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "F.scaled_dot_product_attention does the exercise for you (and returns no weights); "
    "write the scores, the masked softmax and weights @ v yourself",
)
def sdpa_calls_torch(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out, torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1])), dim=-1)


@mistake(
    "ch00.scaled_dot_product_attention",
    "k and v were cut to the first N keys, as if M = N; with M ≠ N every query attends to all M keys",
)
def sdpa_assumes_square(q, k, v, mask=None):
    N = q.shape[-2]
    return _sdpa(q, k[..., :N, :], v[..., :N, :], None if mask is None else mask[:, :N])


@mistake("ch00.split_heads", "x.view(B, H, N, d) without a transpose mixes tokens and heads")
def split_view_without_transpose(x, H):
    B, N, D = x.shape
    return x.reshape(B, H, N, D // H)


@mistake("ch00.split_heads", "columns dealt to heads round-robin (view as (B, N, d, H))")
def split_round_robin(x, H):
    B, N, D = x.shape
    return x.reshape(B, N, D // H, H).permute(0, 3, 1, 2)


@mistake("ch00.merge_heads", "x.reshape(B, N, H*d) without moving the head axis first")
def merge_reshape_without_transpose(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


@mistake("ch00.merge_heads", "heads concatenated in reverse order")
def merge_reversed_heads(x):
    return torch.cat([x[:, h] for h in reversed(range(x.shape[1]))], dim=-1)


def _mha_heads(x, params, H, mask, *, width=None, scrambled=False):
    """The H heads' outputs [(B, N, d)] of a from-scratch MHA; keywords make the mistakes."""
    B, N, D = x.shape
    d = D // H
    heads = []
    for name in ("w_q", "w_k", "w_v"):
        y = x @ params[name]
        # scrambled: a reshape to (B, H, N, d) with no transpose
        heads.append(y.reshape(B, H, N, d) if scrambled else y.reshape(B, N, H, d).transpose(1, 2))
    q, k, v = heads
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(d if width is None else width)), dim=-1)
    return w @ v  # (B, H, N, d)


def _merge(heads):
    B, H, N, d = heads.shape
    return heads.transpose(1, 2).reshape(B, N, H * d)


@mistake("ch00.multi_head_attention", "scores divided by sqrt(D) instead of sqrt(d) = sqrt(D / H)")
def mha_sqrt_model_width(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask, width=x.shape[-1])) @ params["w_o"]


@mistake("ch00.multi_head_attention", "the output projection W_O is missing")
def mha_forgets_w_o(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask))


@mistake("ch00.multi_head_attention", "heads concatenated in the wrong order before W_O")
def mha_heads_in_wrong_order(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask).flip(1)) @ params["w_o"]


@mistake(
    "ch00.multi_head_attention",
    "Q, K, V were split with a reshape to (B, H, N, d) and merged with a reshape to (B, N, D), with no "
    "transpose: tokens and heads get mixed; view as (B, N, H, d), then transpose(1, 2)",
)
def mha_scrambled_split(x, params, H, mask=None):
    B, N, D = x.shape
    return _mha_heads(x, params, H, mask, scrambled=True).reshape(B, N, D) @ params["w_o"]


def _ones(N, M):
    return torch.ones(N, N if M is None else M, dtype=torch.bool)


@mistake("ch00.causal_mask", "the diagonal is hidden (a query must see its own position)")
def causal_off_by_one(N, M=None):
    M = N if M is None else M
    return _ones(N, M).tril(M - N - 1)


@mistake(
    "ch00.causal_mask", "the queries are aligned to the START of the keys; they are the LAST N positions"
)
def causal_queries_at_start(N, M=None):
    return _ones(N, M).tril(0)


@mistake("ch00.causal_mask", "True marks the hidden (future) keys; here True means 'may attend'")
def causal_true_means_hidden(N, M=None):
    M = N if M is None else M
    return ~_ones(N, M).tril(M - N)


@mistake(
    "ch00.causal_mask",
    "a 0/1 float mask: return a boolean mask (dtype torch.bool), True where a query may attend",
)
def causal_float_mask(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M).tril(M - N)


# The two mistakes below answer from the cached reference runs (seed 0) rather than training again,
# which keeps the generated tests fast; what each returns is what the mistake produces.
@mistake(
    "ch00.heads_experiment",
    "the accuracy was returned in percent; return the fraction of correct test answers, in [0, 1]",
)
def heads_experiment_in_percent(H, seed):
    return 100 * _reference_accuracies(H)[0]


@mistake(
    "ch00.heads_experiment",
    "the model always gets 4 heads (H is ignored): build it with ModelConfig(..., H=H)",
)
def heads_experiment_ignores_H(H, seed):
    return _reference_accuracies(4)[0]
