"""Checks for chapter 00's exercises (multi-head attention from scratch).

References are independent of the learner's code and of attnbook's own attention:
torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention, explicit loops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import CheckFailed, task
from ..expect import describe, expect_close, fresh_generator

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


def _reference_weights(q, k, mask, scale):
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


@task("ch00.scaled_dot_product_attention", points=3)
def check_scaled_dot_product_attention(fn):
    """softmax(q k^T / sqrt(d) + mask) v, returning (out, weights)."""
    gen, seed = fresh_generator()
    for B, N, M, d, dtype, with_heads in SDPA_CASES:
        lead = (B, 2) if with_heads else (B,)
        q = torch.randn(*lead, N, d, generator=gen, dtype=dtype)
        k = torch.randn(*lead, M, d, generator=gen, dtype=dtype)
        v = torch.randn(*lead, M, d + 3, generator=gen, dtype=dtype)
        for mask in (None, _random_mask((N, M), gen)):
            case = describe({"q": q, "k": k, "v": v, "mask": "yes" if mask is not None else "no", "dtype": dtype, "seed": seed})
            returned = fn(q.clone(), k.clone(), v.clone(), mask)
            if not isinstance(returned, tuple) or len(returned) != 2:
                raise CheckFailed(f"return a tuple (out, weights); got {type(returned).__name__} for {case}")
            out, weights = returned
            scale = 1 / math.sqrt(d)
            ref_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            ref_w = _reference_weights(q, k, mask, scale)
            wrong = {
                "softmax over the query axis (dim=-2) instead of the key axis (dim=-1)": lambda: (
                    torch.softmax((q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float("-inf")) if mask is not None else q @ k.transpose(-2, -1) * scale, dim=-2)
                ),
                "scores not divided by sqrt(d)": lambda: _reference_weights(q, k, mask, 1.0),
                "scores divided by d instead of sqrt(d)": lambda: _reference_weights(q, k, mask, 1 / d),
                "mask applied after the softmax (rows no longer sum to 1)": lambda: _reference_weights(q, k, None, scale) * mask,
            }
            expect_close(weights, ref_w, what=f"weights for {case}", wrong=wrong,
                         hint="each query's weights over the M keys must sum to 1; hidden keys get exactly 0")
            expect_close(out, ref_out, what=f"out for {case}", hint="out = weights @ v")


@task("ch00.split_heads", points=1)
def check_split_heads(fn):
    """(B, N, D) -> (B, H, N, d): head h owns columns h*d ... (h+1)*d - 1."""
    gen, seed = fresh_generator()
    for B, N, H, d in [(2, 5, 4, 3), (1, 1, 2, 8), (3, 7, 3, 5), (2, 4, 1, 6)]:
        x = torch.randn(B, N, H * d, generator=gen, dtype=torch.float64)
        # reference: explicit slicing, one head at a time
        ref = torch.stack([x[:, :, h * d:(h + 1) * d] for h in range(H)], dim=1)  # (B, H, N, d)
        wrong = {
            "x.view(B, H, N, d) without a transpose mixes tokens and heads": lambda: x.reshape(B, H, N, d),
            "columns dealt to heads round-robin (view as (B, N, d, H))": lambda: x.reshape(B, N, d, H).permute(0, 3, 1, 2),
        }
        expect_close(fn(x.clone(), H), ref, what=f"split_heads for {describe({'x': x, 'H': H, 'seed': seed})}", wrong=wrong)


@task("ch00.merge_heads", points=1)
def check_merge_heads(fn):
    """(B, H, N, d) -> (B, N, H*d): concatenate the heads along the feature axis."""
    gen, seed = fresh_generator()
    for B, H, N, d in [(2, 4, 5, 3), (1, 2, 1, 8), (3, 3, 7, 5), (1, 1, 4, 6)]:
        x = torch.randn(B, H, N, d, generator=gen, dtype=torch.float32)
        ref = torch.cat([x[:, h] for h in range(H)], dim=-1)  # (B, N, H*d)
        wrong = {
            "x.reshape(B, N, H*d) without moving the head axis first": lambda: x.reshape(B, N, H * d),
            "heads concatenated in reverse order": lambda: torch.cat([x[:, h] for h in reversed(range(H))], dim=-1),
        }
        expect_close(fn(x.clone()), ref, what=f"merge_heads for {describe({'x': x, 'seed': seed})}", wrong=wrong)


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


def _mha_variant(params, H, x, mask, *, scale_by_D=False, skip_w_o=False, reversed_heads=False):
    """Known mistakes, computed from scratch so hints can name them."""
    B, N, D = x.shape
    d = D // H
    q, k, v = (x @ params[n] for n in ("w_q", "w_k", "w_v"))
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        s = q[..., sl] @ k[..., sl].transpose(-2, -1) / math.sqrt(D if scale_by_D else d)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        heads.append(torch.softmax(s, -1) @ v[..., sl])
    if reversed_heads:
        heads = heads[::-1]
    concat = torch.cat(heads, dim=-1)
    return concat if skip_w_o else concat @ params["w_o"]


@task("ch00.multi_head_attention", points=3)
def check_multi_head_attention(fn):
    """Σ_h softmax(Q_h K_h^T / sqrt(d) + mask) V_h W_O^h with params w_q, w_k, w_v, w_o (D, D)."""
    gen, seed = fresh_generator()
    for B, N, D, H, dtype, masked in [(2, 5, 12, 3, torch.float64, False), (1, 1, 8, 2, torch.float32, False),
                                      (3, 7, 20, 4, torch.float64, True), (2, 6, 6, 1, torch.float32, True)]:
        x = torch.randn(B, N, D, generator=gen, dtype=dtype)
        params = {n: torch.randn(D, D, generator=gen, dtype=dtype) / math.sqrt(D) for n in ("w_q", "w_k", "w_v", "w_o")}
        mask = _random_mask((N, N), gen) if masked else None
        ref = _torch_mha(params, H, x, mask)
        case = describe({"x": x, "H": H, "mask": "yes" if masked else "no", "dtype": dtype, "seed": seed})
        wrong = {
            "scores divided by sqrt(D) instead of sqrt(d) = sqrt(D / H)": lambda: _mha_variant(params, H, x, mask, scale_by_D=True),
            "the output projection W_O is missing": lambda: _mha_variant(params, H, x, mask, skip_w_o=True),
            "heads concatenated in the wrong order before W_O": lambda: _mha_variant(params, H, x, mask, reversed_heads=True),
        }
        given = {n: p.clone() for n, p in params.items()}
        expect_close(fn(x.clone(), given, H, mask), ref, what=f"output for {case}", wrong=wrong,
                     hint="split Q, K, V into H heads of width d = D / H, attend per head, then Σ_h head_h @ W_O^h")


@task("ch00.causal_mask", points=2)
def check_causal_mask(fn):
    """Boolean (N, M) mask, True where query i (at position i + M - N) may see key j."""
    for N, M in [(1, 1), (4, 4), (5, 5), (3, 7), (1, 6), (6, 9)]:
        ref = torch.tensor([[j <= i + (M - N) for j in range(M)] for i in range(N)])
        wrong = {
            "the diagonal is hidden (a query must see its own position)": lambda: torch.ones(N, M, dtype=torch.bool).tril(M - N - 1),
            "the queries are aligned to the START of the keys; they are the LAST N positions": lambda: torch.ones(N, M, dtype=torch.bool).tril(0),
            "True marks the hidden (future) keys; here True means 'may attend'": lambda: ~torch.ones(N, M, dtype=torch.bool).tril(M - N),
        }
        got = fn(N, M) if M != N else fn(N)
        expect_close(got, ref, what=f"causal_mask(N={N}{', M=' + str(M) if M != N else ''})", wrong=wrong)
