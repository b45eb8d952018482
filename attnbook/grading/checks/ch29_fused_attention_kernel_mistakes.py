"""The common mistakes of chapter 29's exercises, declared for the checks of ``ch29_fused_attention_kernel``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.

The Triton mistakes share one kernel with a compile-time switch per mistake, decorated on first
use (inside the grader's TRITON_INTERPRET window when there is no GPU).
"""

from __future__ import annotations

import math

import torch

from ..core import mistake
from .ch29_fused_attention_kernel import (
    AUTOGRAD_HINT,
    FULL_MATRIX_HINT,
    HAVE_TRITON,
    MEMORY_D,
    _keyblocked_reference,
    _tiled_variant,
)


def _update(m, l, acc, s, v, *, rescale_acc=True, rescale_l=True, own_max=False, normalise=False, shift=True):
    """The online-softmax update with switchable mistakes."""
    m_new = torch.maximum(m, s.amax(-1))
    alpha = torch.exp(m - m_new) if shift else torch.ones_like(m)
    p = torch.exp(s - (s.amax(-1) if own_max else m_new)[..., None]) if shift else torch.exp(s)
    l_new = (l * alpha if rescale_l else l) + p.sum(-1)
    acc_new = (acc * alpha[..., None] if rescale_acc else acc) + p @ v
    return m_new, l_new, acc_new / l_new[..., None] if normalise else acc_new


@mistake("ch29.online_softmax_update", "acc was not rescaled by e^(m - m') before adding the new block")
def update_forgets_to_rescale_acc(m, l, acc, s_block, v_block):
    return _update(m, l, acc, s_block, v_block, rescale_acc=False)


@mistake(
    "ch29.online_softmax_update",
    "l was not rescaled by e^(m - m') (the new max was used for the new block only)",
)
def update_new_max_for_l_only(m, l, acc, s_block, v_block):
    return _update(m, l, acc, s_block, v_block, rescale_l=False)


@mistake(
    "ch29.online_softmax_update",
    "the new block's exponentials use the block's own max, not the new running max m'",
)
def update_uses_block_max(m, l, acc, s_block, v_block):
    return _update(m, l, acc, s_block, v_block, own_max=True)


@mistake(
    "ch29.online_softmax_update",
    "acc was divided by l' (return the unnormalised accumulator; divide once, at the end)",
)
def update_returns_normalised_output(m, l, acc, s_block, v_block):
    return _update(m, l, acc, s_block, v_block, normalise=True)


@mistake(
    "ch29.online_softmax_update",
    "the exponentials are e^s, with no max subtracted, which overflow for large "
    "scores; use e^(s - m') and rescale l and acc by e^(m - m')",
)
def update_without_max_subtraction(m, l, acc, s_block, v_block):
    return _update(m, l, acc, s_block, v_block, shift=False)


@mistake("ch29.blocked_attention", FULL_MATRIX_HINT)
def blocked_builds_full_scores(q, k, v, block):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, M): the whole matrix
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


@mistake(
    "ch29.blocked_attention",
    "the running max started at 0 instead of -inf: rows whose scores are all far below 0 get "
    "l = 0, lse = -inf and out = 0/0",
)
def blocked_max_starts_at_zero(q, k, v, block):
    return _tiled_variant(q, k, v, block, m_start=0.0)


@mistake(
    "ch29.blocked_attention",
    "the last, partial key block was dropped (loop over range(0, M - block + 1, block) or M // block blocks)",
)
def blocked_drops_last_block(q, k, v, block):
    return _tiled_variant(q, k, v, block, drop_tail=True)


@mistake(
    "ch29.blocked_attention",
    "the ragged last key block was padded with score 0 instead of -inf (padded keys count in the softmax)",
)
def blocked_pads_with_zero_scores(q, k, v, block):
    return _tiled_variant(q, k, v, block, pad_with_zero_scores=True)


@mistake("ch29.blocked_attention", "acc was not rescaled by e^(m - m') between blocks")
def blocked_no_rescale(q, k, v, block):
    return _tiled_variant(q, k, v, block, rescale_acc=False)


@mistake("ch29.blocked_attention", "l was not rescaled by e^(m - m') between blocks")
def blocked_l_not_rescaled(q, k, v, block):
    return _tiled_variant(q, k, v, block, rescale_l=False)


@mistake("ch29.blocked_attention", "the output was not divided by l")
def blocked_forgets_division(q, k, v, block):
    return _tiled_variant(q, k, v, block, divide=False)


@mistake("ch29.blocked_attention", "lse in base 2 (log2 instead of the natural log)")
def blocked_lse_base2(q, k, v, block):
    return _tiled_variant(q, k, v, block, lse="base2")


@mistake("ch29.blocked_attention", "lse = m only: the + log(l) term is missing")
def blocked_lse_is_max(q, k, v, block):
    return _tiled_variant(q, k, v, block, lse="max only")


@mistake("ch29.blocked_attention", "lse = log(l) only: the running max m was not added back")
def blocked_lse_without_max(q, k, v, block):
    return _tiled_variant(q, k, v, block, lse="log l only")


def _backward_variant(
    q, k, v, o, do, lse, *, d_from_dp=False, no_d=False, no_scale=False, unnormalised=False
):
    """(dq, dk, dv) from the formulas, with switchable mistakes."""
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * scale
    p = torch.exp(s) if unnormalised else torch.exp(s - lse[..., None])
    dv = p.transpose(-2, -1) @ do
    dp = do @ v.transpose(-2, -1)
    D = dp.sum(-1, keepdim=True) if d_from_dp else (do * o).sum(-1, keepdim=True)
    ds = p * dp if no_d else p * (dp - D)
    c = 1.0 if no_scale else scale
    return ds @ k * c, ds.transpose(-2, -1) @ q * c, dv


@mistake("ch29.attention_backward", AUTOGRAD_HINT)
def backward_uses_autograd(q, k, v, o, do, lse):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = torch.softmax(leaves[0] @ leaves[1].transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ leaves[2]
    return torch.autograd.grad(out, leaves, do)


@mistake("ch29.attention_backward", "Δ computed as rowsum(dA) instead of rowsum(dO ∘ O)")
def backward_d_from_dp(q, k, v, o, do, lse):
    return _backward_variant(q, k, v, o, do, lse, d_from_dp=True)


@mistake("ch29.attention_backward", "dS = A ∘ dA: the - Δ term of the softmax Jacobian is missing")
def backward_without_d(q, k, v, o, do, lse):
    return _backward_variant(q, k, v, o, do, lse, no_d=True)


@mistake("ch29.attention_backward", "dQ and dK lack the factor τ = 1/sqrt(d) (S = τ QKᵀ)")
def backward_without_scale(q, k, v, o, do, lse):
    return _backward_variant(q, k, v, o, do, lse, no_scale=True)


@mistake("ch29.attention_backward", "A recomputed as exp(S) without subtracting lse (unnormalised)")
def backward_ignores_lse(q, k, v, o, do, lse):
    return _backward_variant(q, k, v, o, do, lse, unnormalised=True)


@mistake("ch29.attention_backward", "dq and dk were swapped: return (dq, dk, dv) in that order")
def backward_swaps_dq_dk(q, k, v, o, do, lse):
    dq, dk, dv = _backward_variant(q, k, v, o, do, lse)
    return dk, dq, dv


tl = None  # triton.language, bound when the mistaken kernel is first decorated (annotations stay strings)


def _mistaken_kernel_source(
    Q,
    K,
    V,
    O,
    L,
    N,
    M,
    scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D: tl.constexpr,
    MISTAKE: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + bh * N * D + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, M, BLOCK_N):
        cols = start_n + offs_n
        kv = bh * M * D + cols[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv, mask=cols[:, None] < M, other=0.0)
        v = tl.load(V + kv, mask=cols[:, None] < M, other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        if MISTAKE != 1:  # 1: padded keys keep score 0
            s = tl.where(cols[None, :] < M, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if MISTAKE == 2:  # 2: acc not rescaled
            acc = acc + tl.dot(p, v)
        else:
            acc = acc * alpha[:, None] + tl.dot(p, v)
        m_i = m_new
    if MISTAKE == 3:  # 3: no final division by l
        out = acc
    else:
        out = acc / l_i[:, None]
    lse = m_i + tl.log(l_i)
    if MISTAKE == 4:  # 4: lse in base 2
        lse = lse * 1.4426950408889634
    tl.store(O + bh * N * D + offs_m[:, None] * D + offs_d[None, :], out, mask=offs_m[:, None] < N)
    tl.store(L + bh * N + offs_m, lse, mask=offs_m < N)


_KERNEL: dict[str, object] = {}


def _mistaken_kernel():
    """The kernel above with a compile-time switch per mistake, decorated on first use."""
    if "kernel" not in _KERNEL:
        global tl
        import triton
        import triton.language

        tl = triton.language
        _KERNEL["kernel"] = triton.jit(_mistaken_kernel_source)
    return _KERNEL["kernel"]


def _launch(q, k, v, block_m, block_n, mistake_number):
    import triton

    B, H, N, d = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    _mistaken_kernel()[(triton.cdiv(N, block_m), B * H)](
        q,
        k,
        v,
        out,
        lse,
        N,
        k.shape[2],
        1 / math.sqrt(d),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        D=d,
        MISTAKE=mistake_number,
    )
    return out, lse


if HAVE_TRITON:  # without Triton the task fails before any kernel runs: nothing to tell apart

    @mistake(
        "ch29.triton_attention_forward",
        "the ragged last key block was padded with score 0 instead of -inf "
        "(padded keys count in the softmax)",
    )
    def kernel_unmasked_padding(q, k, v, block_m=16, block_n=16):
        return _launch(q, k, v, block_m, block_n, 1)

    @mistake("ch29.triton_attention_forward", "acc was not rescaled by e^(m - m') between blocks")
    def kernel_forgets_rescale(q, k, v, block_m=16, block_n=16):
        return _launch(q, k, v, block_m, block_n, 2)

    @mistake("ch29.triton_attention_forward", "the output was not divided by l")
    def kernel_forgets_division(q, k, v, block_m=16, block_n=16):
        return _launch(q, k, v, block_m, block_n, 3)

    @mistake("ch29.triton_attention_forward", "lse in base 2 (log2 instead of the natural log)")
    def kernel_lse_base2(q, k, v, block_m=16, block_n=16):
        return _launch(q, k, v, block_m, block_n, 4)

    @mistake(
        "ch29.triton_attention_forward",
        "only out was returned; return the tuple (out, lse): the backward pass needs the log-sum-exp",
    )
    def kernel_returns_only_out(q, k, v, block_m=16, block_n=16):
        return _launch(q, k, v, block_m, block_n, 0)[0]


def _measure(N, block, blocked_block=None, unit=1):
    from ...mechanisms.fused_attention_memory import naive_attention, peak_memory

    q, k, v = (torch.randn(1, 1, N, MEMORY_D) for _ in range(3))
    _, naive = peak_memory(naive_attention, q, k, v)
    _, blocked = peak_memory(_keyblocked_reference, q, k, v, blocked_block or block)
    return naive // unit, blocked // unit


@mistake(
    "ch29.measured_peak_memory",
    "the blocked run used one block of all N keys (block = N): pass the given block size, so that a "
    "tile of scores is (N, block)",
)
def memory_with_one_block(N, block):
    return _measure(N, block, blocked_block=N)


@mistake(
    "ch29.measured_peak_memory",
    "element counts were returned, not bytes: peak_memory gives bytes (4 per float32 element)",
)
def memory_in_elements(N, block):
    return _measure(N, block, unit=4)


@mistake("ch29.measured_peak_memory", "return (naive_bytes, blocked_bytes) in that order")
def memory_swapped(N, block):
    return _measure(N, block)[::-1]
