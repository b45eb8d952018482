"""Checks for chapter 00's exercises (multi-head attention from scratch), and their common mistakes.

References are independent of the learner's code and of attnbook's own attention:
torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention, explicit loops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import case, mistake, task
from ..expect import describe, expect_close, expect_tuple, fresh_generator

# (B, N, M, d, dtype, leading head axis?): N = 1, N ≠ M, non-powers of two, both dtypes.
SDPA_CASES = [
    (2, 5, 5, 8, torch.float64, False),
    (1, 1, 7, 4, torch.float32, False),
    (3, 6, 11, 12, torch.float64, True),
    (2, 13, 9, 16, torch.float32, True),
    (1, 3, 1, 5, torch.float64, False),
]


def _random_mask(shape, gen) -> torch.Tensor:
    """A boolean (N, M) mask with at least one visible key per query and some hidden ones."""
    N, M = shape
    mask = torch.rand(N, M, generator=gen) < 0.6
    mask[torch.arange(N), torch.randint(M, (N,), generator=gen)] = True
    return mask


def _scores(q, k, mask, scale):
    """q k^T · scale with hidden keys at -inf."""
    s = q @ k.transpose(-2, -1) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


@task("ch00.scaled_dot_product_attention", points=3)
def check_scaled_dot_product_attention(fn):
    """softmax(q k^T / sqrt(d) + mask) v, returning (out, weights)."""
    gen, _ = fresh_generator()
    for B, N, M, d, dtype, with_heads in SDPA_CASES:
        lead = (B, 2) if with_heads else (B,)
        q = torch.randn(*lead, N, d, generator=gen, dtype=dtype)
        k = torch.randn(*lead, M, d, generator=gen, dtype=dtype)
        v = torch.randn(*lead, M, d + 3, generator=gen, dtype=dtype)
        for mask in (None, _random_mask((N, M), gen)):
            with case():
                out, weights = expect_tuple(fn(q.clone(), k.clone(), v.clone(), mask), ("out", "weights"))
                ref_w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(d)), dim=-1)
                expect_close(
                    weights,
                    ref_w,
                    what="weights",
                    hint="each query's weights over the M keys must sum to 1; hidden keys get exactly 0",
                )
                ref_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                expect_close(out, ref_out, what="out", hint="out = weights @ v")


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
    "k and v were cut to the first N keys, as if M = N; with M ≠ N every query attends to all M keys",
)
def sdpa_assumes_square(q, k, v, mask=None):
    N = q.shape[-2]
    return _sdpa(q, k[..., :N, :], v[..., :N, :], None if mask is None else mask[:, :N])


# ---------------------------------------------------------------------------------------------
@task("ch00.split_heads", points=1)
def check_split_heads(fn):
    """(B, N, D) -> (B, H, N, d): head h owns columns h*d ... (h+1)*d - 1."""
    gen, _ = fresh_generator()
    for B, N, H, d in [(2, 5, 4, 3), (1, 1, 2, 8), (3, 7, 3, 5), (2, 4, 1, 6)]:
        with case():
            x = torch.randn(B, N, H * d, generator=gen, dtype=torch.float64)
            # reference: explicit slicing, one head at a time
            ref = torch.stack([x[:, :, h * d : (h + 1) * d] for h in range(H)], dim=1)  # (B, H, N, d)
            expect_close(fn(x.clone(), H), ref, what=f"split_heads for {describe({'x': x, 'H': H})}")


@mistake("ch00.split_heads", "x.view(B, H, N, d) without a transpose mixes tokens and heads")
def split_view_without_transpose(x, H):
    B, N, D = x.shape
    return x.reshape(B, H, N, D // H)


@mistake("ch00.split_heads", "columns dealt to heads round-robin (view as (B, N, d, H))")
def split_round_robin(x, H):
    B, N, D = x.shape
    return x.reshape(B, N, D // H, H).permute(0, 3, 1, 2)


@task("ch00.merge_heads", points=1)
def check_merge_heads(fn):
    """(B, H, N, d) -> (B, N, H*d): concatenate the heads along the feature axis."""
    gen, _ = fresh_generator()
    for B, H, N, d in [(2, 4, 5, 3), (1, 2, 1, 8), (3, 3, 7, 5), (1, 1, 4, 6)]:
        with case():
            x = torch.randn(B, H, N, d, generator=gen, dtype=torch.float32)
            ref = torch.cat([x[:, h] for h in range(H)], dim=-1)  # (B, N, H*d)
            expect_close(fn(x.clone()), ref, what=f"merge_heads for {describe({'x': x})}")


@mistake("ch00.merge_heads", "x.reshape(B, N, H*d) without moving the head axis first")
def merge_reshape_without_transpose(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


@mistake("ch00.merge_heads", "heads concatenated in reverse order")
def merge_reversed_heads(x):
    return torch.cat([x[:, h] for h in reversed(range(x.shape[1]))], dim=-1)


# ---------------------------------------------------------------------------------------------
def _torch_mha(params, H, x, mask):
    """torch.nn.MultiheadAttention with the learner's weights (our W acts on the right: x @ W)."""
    D = x.shape[-1]
    m = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(x.dtype)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat([params["w_q"].T, params["w_k"].T, params["w_v"].T]))
        m.out_proj.weight.copy_(params["w_o"].T)
    attn_mask = None if mask is None else ~mask  # torch: True = hidden
    out, _ = m(x, x, x, attn_mask=attn_mask, need_weights=False)
    return out.detach()


@task("ch00.multi_head_attention", points=3)
def check_multi_head_attention(fn):
    """Σ_h softmax(Q_h K_h^T / sqrt(d) + mask) V_h W_O^h with params w_q, w_k, w_v, w_o (D, D)."""
    gen, _ = fresh_generator()
    for B, N, D, H, dtype, masked in [
        (2, 5, 12, 3, torch.float64, False),
        (1, 1, 8, 2, torch.float32, False),
        (3, 7, 20, 4, torch.float64, True),
        (2, 6, 6, 1, torch.float32, True),
    ]:
        with case():
            x = torch.randn(B, N, D, generator=gen, dtype=dtype)
            params = {
                n: torch.randn(D, D, generator=gen, dtype=dtype) / math.sqrt(D)
                for n in ("w_q", "w_k", "w_v", "w_o")
            }
            mask = _random_mask((N, N), gen) if masked else None
            given = {n: p.clone() for n, p in params.items()}
            expect_close(
                fn(x.clone(), given, H, mask),
                _torch_mha(params, H, x, mask),
                what="output",
                hint="split Q, K, V into H heads of width d = D / H, attend per head, "
                "then Σ_h head_h @ W_O^h",
            )


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


# ---------------------------------------------------------------------------------------------
@task("ch00.causal_mask", points=2)
def check_causal_mask(fn):
    """Boolean (N, M) mask, True where query i (at position i + M - N) may see key j."""
    for N, M in [(1, 1), (4, 4), (5, 5), (3, 7), (1, 6), (6, 9)]:
        with case():
            ref = torch.tensor([[j <= i + (M - N) for j in range(M)] for i in range(N)])
            got = fn(N, M) if M != N else fn(N)
            expect_close(got, ref, what=f"causal_mask(N={N}{', M=' + str(M) if M != N else ''})")


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
