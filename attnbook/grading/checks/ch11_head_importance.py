"""Checks for chapter 11's exercises (head gates, attention-distance profiles).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.head_importance: gated attention one head at a time (and, with every gate
at 1, torch.nn.MultiheadAttention itself); distance profiles with an explicit loop over the
pairs of patches. The common mistakes live in ``ch11_head_importance_mistakes.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import CheckFailed, case, task
from ..expect import expect_close, expect_tuple, fresh_generator

# (B, N, D, H, dtype): N = 1, D not a power of two, an odd number of heads, both dtypes
MHA_CASES = (
    (2, 5, 12, 3, torch.float64),
    (1, 1, 6, 2, torch.float32),
    (3, 7, 15, 5, torch.float64),
    (2, 4, 20, 4, torch.float32),
)


def _gated_reference(x, w_qkv, w_o, H, mask):
    """Σ_h m_h softmax(Q_h K_h^T / sqrt(d)) V_h W_O^h, one head at a time, in float64."""
    x, w_qkv, w_o, mask = x.double(), w_qkv.double(), w_o.double(), mask.double()
    D = x.shape[-1]
    d = D // H
    w_q, w_k, w_v = w_qkv.chunk(3)
    out = torch.zeros_like(x)
    weights = []
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        q, k, v = x @ w_q[rows].T, x @ w_k[rows].T, x @ w_v[rows].T  # (B, N, d)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, N, N)
        weights.append(a)
        out = out + mask[h] * (a @ v) @ w_o[:, rows].T
    return out, torch.stack(weights, dim=1)


def _mha_inputs(g, B, N, D, H, dtype):
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64).to(dtype)
    w_qkv = (torch.randn(3 * D, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    w_o = (torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)).to(dtype)
    # gates: one head removed, one kept, the others real numbers (a gate scales its head)
    mask = (2 * torch.rand(H, generator=g, dtype=torch.float64) - 0.5).to(dtype)
    mask[0] = 0.0
    if H > 1:
        mask[1] = 1.0
    return x, w_qkv, w_o, mask


@task("ch11.masked_mha", points=2)
def check_masked_mha(fn):
    """Σ_h m_h A_h V_h W_O^h: the gate scales each head's output; the weights are unchanged."""
    g, _ = fresh_generator()
    for B, N, D, H, dtype in MHA_CASES:
        with case():  # every gate at 1: torch's own multi-head attention
            x, w_qkv, w_o, _ = _mha_inputs(g, B, N, D, H, dtype)
            ref = nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(dtype)
            with torch.no_grad():
                ref.in_proj_weight.copy_(w_qkv)
                ref.out_proj.weight.copy_(w_o)
                expected, expected_w = ref(x, x, x, need_weights=True, average_attn_weights=False)
            got = fn(x.clone(), w_qkv.clone(), w_o.clone(), H, torch.ones(H, dtype=dtype))
            out, weights = expect_tuple(got, ("out", "weights"))
            what = f"masked_mha with every gate 1, (B, N, D, H) = {(B, N, D, H)}, {dtype}"
            expect_close(
                out, expected, what=f"out, {what}", hint="with m = 1 this is plain multi-head attention"
            )
            expect_close(weights, expected_w, what=f"weights, {what}")
        with case():  # real gates, one of them 0
            x, w_qkv, w_o, mask = _mha_inputs(g, B, N, D, H, dtype)
            inputs = (x.clone(), w_qkv.clone(), w_o.clone(), H, mask.clone())
            out, weights = expect_tuple(fn(*inputs), ("out", "weights"))
            if not torch.equal(inputs[-1], mask) or not torch.equal(inputs[0], x):
                raise CheckFailed("masked_mha changed its input x or head_mask in place")
            ref_out, ref_w = _gated_reference(x, w_qkv, w_o, H, mask)
            what = f"masked_mha with head_mask {[round(float(m), 3) for m in mask]}, {dtype}"
            expect_close(
                out,
                ref_out.to(dtype),
                what=f"out, {what}",
                hint="out = Σ_h m_h (A_h V_h) W_O^h: multiply head h's output z_h (B, N, d) by m_h "
                "before W_O",
            )
            expect_close(weights, ref_w.to(dtype), what=f"weights, {what}")


# (B, H, G, has_cls, metric, normalize, dtype): G = 1 (one patch), CLS and not, both metrics and dtypes
PROFILE_CASES = (
    (2, 3, 3, True, "chebyshev", "mass", torch.float64),
    (1, 2, 4, True, "chebyshev", "mean", torch.float32),
    (2, 2, 3, False, "euclidean", "mass", torch.float64),
    (2, 3, 4, True, "euclidean", "mean", torch.float64),
    (1, 1, 1, True, "chebyshev", "mass", torch.float32),
    (3, 2, 5, False, "chebyshev", "mean", torch.float64),
)


def _delta(i, j, G, metric):
    dr, dc = abs(i // G - j // G), abs(i % G - j % G)
    return float(max(dr, dc)) if metric == "chebyshev" else math.hypot(dr, dc)


def profile_reference(attn, G, has_cls, metric, normalize):
    """Every pair (i, j) of patches by hand; float64 (H, n_bins)."""
    a = attn.double()
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    P = G * G
    deltas = [[round(_delta(i, j, G, metric), 9) for j in range(P)] for i in range(P)]
    bins = sorted({v for row in deltas for v in row})
    total = torch.zeros(a.shape[1], len(bins), dtype=torch.float64)
    count = torch.zeros(len(bins), dtype=torch.float64)
    for i in range(P):
        for j in range(P):
            k = bins.index(deltas[i][j])
            total[:, k] += a[:, :, i, j].sum(0)  # over the batch
            count[k] += 1
    B = a.shape[0]
    return total / (B * P) if normalize == "mass" else total / (B * count)


def _attention(g, B, H, N, dtype):
    return torch.softmax(2 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64), dim=-1).to(dtype)


@task("ch11.distance_profile", points=3)
def check_distance_profile(fn):
    """Ring mass S(δ) or pair mean P(δ) per head; CLS dropped and rows renormalised."""
    g, _ = fresh_generator()
    for B, H, G, has_cls, metric, normalize, dtype in PROFILE_CASES:
        with case():
            attn = _attention(g, B, H, G * G + has_cls, dtype)
            expected = profile_reference(attn, G, has_cls, metric, normalize).to(dtype)
            what = f"distance_profile(B={B}, H={H}, grid={G}, has_cls={has_cls}, {metric!r}, {normalize!r})"
            expect_close(
                fn(attn.clone(), G, has_cls, metric, normalize),
                expected,
                what=what,
                hint="group the pairs (i, j) of patches by δ(i, j); mass: Σ over a ring, averaged over "
                "examples and queries; mean: the ring's total over its number of pairs (and examples)",
            )
    with case():  # identity attention: all the mass at δ = 0
        G, N = 4, 17
        eye = torch.eye(N, dtype=torch.float64).expand(2, 3, N, N).clone()
        got = fn(eye, G, True, "chebyshev", "mass")
        expected = torch.zeros(3, G, dtype=torch.float64)
        expected[:, 0] = 1
        expect_close(got, expected, what="distance_profile of identity attention (all mass at δ = 0)")
    with case():  # a rectangular grid (or a wrong grid) is refused
        try:
            fn(_attention(g, 1, 2, 13, torch.float64), 3, True, "chebyshev", "mass")
        except ValueError:
            pass
        else:
            raise CheckFailed(
                "distance_profile accepted 13 tokens with grid=3 (3² + 1 = 10): raise a ValueError "
                "when N is not grid² (+ 1 with CLS)"
            )
