"""Checks for chapter 29's exercises (fused attention: online softmax, tiles, backward, Triton).

References are independent of the learner's code and of attnbook.mechanisms.fused_attention_kernel:
closed forms over all the scores at once, torch.logsumexp, F.scaled_dot_product_attention and
torch.autograd.

The Triton task runs the learner's kernel in Triton's CPU interpreter when there is no GPU.
Triton chooses the interpreter when a kernel is *decorated*, so the grader loads the learner's
file and runs the task with TRITON_INTERPRET=1 set (and restored after); the mistaken kernel
(in the companion module) is decorated on first use, inside that window. Importing either
module changes nothing.

The chapter's common mistakes (the @mistake declarations) live in the companion module
``ch29_fused_attention_kernel_mistakes.py``, which the grader loads with this one (it imports every
``checks/ch29_*.py`` of the chapter).
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn.functional as F

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, expect_tuple, fresh_generator
from ..process import largest_intermediate, no_autograd

HAVE_TRITON = importlib.util.find_spec("triton") is not None
LN2 = math.log(2.0)


def _state_after(s, v):
    """Closed form of the online-softmax state after the scores s (..., N, P) and values v."""
    m = s.amax(dim=-1)  # (..., N)
    m_ref = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m_ref[..., None])
    return m, p.sum(dim=-1), p @ v


def _tiled_variant(
    q,
    k,
    v,
    block_n,
    *,
    rescale_acc=True,
    rescale_l=True,
    pad_with_zero_scores=False,
    drop_tail=False,
    divide=True,
    lse="natural",
    m_start=float("-inf"),
):
    """(out, lse) of attention over key blocks of ``block_n``, with switchable mistakes."""
    scale = 1 / math.sqrt(q.shape[-1])
    M = k.shape[-2]
    if pad_with_zero_scores and M % block_n:  # the padded keys score 0 and carry value 0
        pad = block_n - M % block_n
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], dim=-2)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], dim=-2)
        M = M + pad
    stop = (M // block_n) * block_n if drop_tail else M
    m = torch.full(q.shape[:-1], m_start, dtype=q.dtype)
    l = torch.zeros(q.shape[:-1], dtype=q.dtype)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for j in range(0, stop, block_n):
        s = q @ k[..., j : j + block_n, :].transpose(-2, -1) * scale
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[..., None])
        l = (l * alpha if rescale_l else l) + p.sum(-1)
        acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ v[..., j : j + block_n, :]
        m = m_new
    out = acc / l[..., None] if divide else acc
    lse_value = {
        "natural": m + torch.log(l),
        "base2": (m + torch.log(l)) / LN2,
        "max only": m,
        "log l only": torch.log(l),
    }[lse]
    return out, lse_value


def _random_qkv(gen, B, H, N, M, d, dv, dtype, device="cpu"):
    q = torch.randn(B, H, N, d, generator=gen, dtype=dtype)
    k = torch.randn(B, H, M, d, generator=gen, dtype=dtype)
    v = torch.randn(B, H, M, dv, generator=gen, dtype=dtype)
    return q.to(device), k.to(device), v.to(device)


def _reference(q, k, v):
    """(out, lse) of softmax attention, computed in float64 and cast back."""
    q64, k64, v64 = q.double().cpu(), k.double().cpu(), v.double().cpu()
    scores = q64 @ k64.transpose(-2, -1) / math.sqrt(q.shape[-1])
    out = F.scaled_dot_product_attention(q64, k64, v64)
    return out.to(q.dtype), torch.logsumexp(scores, dim=-1).to(q.dtype)


# ---------------------------------------------------------------------------------------------
@task("ch29.online_softmax_update", points=2)
def check_online_softmax_update(fn):
    """Fold a block of scores and values into the running (max, sum, accumulator) state."""
    gen, _ = fresh_generator()
    # (leading dims, N, scores seen before, new block Bn, d_v, dtype, offset added to the new scores,
    # offset added to the scores seen before). The last three are extreme: every score near -1800
    # (e^s underflows to 0 even in float64) or near +1800 (e^s overflows).
    cases = [
        ((), 3, 0, 4, 2, torch.float64, 0.0, 0.0),
        ((2,), 5, 6, 3, 4, torch.float64, 3.0, 0.0),
        ((2, 3), 4, 5, 7, 3, torch.float32, -3.0, 0.0),
        ((1, 2), 1, 4, 1, 5, torch.float64, 0.0, 0.0),
        ((2,), 6, 8, 5, 3, torch.float32, 100.0, 0.0),
        ((3,), 4, 3, 6, 2, torch.float64, 0.0, 0.0),
        ((2,), 4, 0, 5, 3, torch.float64, -1800.0, 0.0),
        ((2,), 4, 6, 5, 3, torch.float64, -1801.0, -1800.0),
        ((2,), 4, 6, 5, 3, torch.float64, 1800.0, 1799.0),
    ]
    for lead, N, seen, Bn, dv, dtype, offset, old_offset in cases:
        with case():
            s_old = torch.randn(*lead, N, seen, generator=gen, dtype=dtype) * 2 + old_offset
            v_old = torch.randn(*lead, seen, dv, generator=gen, dtype=dtype)
            s_new = torch.randn(*lead, N, Bn, generator=gen, dtype=dtype) * 2 + offset
            v_new = torch.randn(*lead, Bn, dv, generator=gen, dtype=dtype)
            if Bn > 1 and seen > 0:  # hide a few keys of the new block (never a whole row)
                s_new[..., 1:, 0] = float("-inf")
            if seen:
                m, l, acc = _state_after(s_old, v_old)
            else:  # the start state
                m = torch.full((*lead, N), float("-inf"), dtype=dtype)
                l, acc = torch.zeros(*lead, N, dtype=dtype), torch.zeros(*lead, N, dv, dtype=dtype)
            ref_m, ref_l, ref_acc = _state_after(torch.cat([s_old, s_new], -1), torch.cat([v_old, v_new], -2))
            what = (
                f"for {'the start state' if not seen else 'a state after one block'}, score offset {offset:g}"
                f" (scores seen before: offset {old_offset:g})"
            )
            got = expect_tuple(
                fn(m.clone(), l.clone(), acc.clone(), s_new.clone(), v_new.clone()), ("m", "l", "acc")
            )
            expect_close(got[0], ref_m, what=f"m' {what}", hint="m' = max(m, max over the block of s)")
            expect_close(got[1], ref_l, what=f"l' {what}", hint="l' = l·e^(m - m') + Σ_j e^(s_j - m')")
            expect_close(
                got[2], ref_acc, what=f"acc' {what}", hint="acc' = acc·e^(m - m') + Σ_j e^(s_j - m') v_j"
            )


# ---------------------------------------------------------------------------------------------
# (B, H, N, M, d, d_v, block, dtype): ragged last blocks, block 1, block > M, N = 1, N ≠ M.
BLOCKED_CASES = [
    (1, 1, 5, 5, 4, 4, 2, torch.float64),
    (2, 3, 7, 13, 8, 6, 4, torch.float64),
    (1, 2, 1, 9, 6, 6, 3, torch.float32),
    (1, 1, 16, 16, 8, 8, 16, torch.float64),
    (2, 1, 6, 10, 5, 5, 32, torch.float32),
    (1, 2, 9, 9, 4, 3, 1, torch.float64),
    (1, 1, 11, 50, 8, 8, 16, torch.float32),
]


FULL_MATRIX_HINT = (
    "build one (N, block) block of scores at a time and fold it in with the online softmax; "
    "the whole (N, M) score matrix must never exist"
)
# The "how" case: N and M larger than the block, and distinct from d, d_v and each other, so that
# only a full score (or weight) matrix has the shape (..., N, M) or (..., M, N).
HOW_CASE = (1, 2, 24, 37, 8, 6, 8, torch.float64)
# Extreme rows, float64: (B, H, N, M, d, block, score offset of the marked rows, rows marked).
EXTREME_CASES = [
    (1, 2, 6, 11, 8, 4, -1800.0, "every other row"),
    (2, 1, 5, 9, 8, 4, -1800.0, "every row"),
    (1, 1, 7, 10, 8, 3, 1800.0, "every other row"),
]


def _extreme_qkv(gen, B, H, N, M, d, offset, rows):
    """q, k, v whose marked rows have every score near ``offset`` (scores s = q·k / sqrt(d))."""
    q, k, v = _random_qkv(gen, B, H, N, M, d, d, torch.float64)
    q, k = q * 0.5, k * 0.5
    marked = torch.arange(N) % 2 == 0 if rows == "every other row" else torch.ones(N, dtype=torch.bool)
    q[..., 0] = torch.where(marked, 60.0, 0.0)  # s_ij ≈ 60 · k_j0 / sqrt(d) on the marked rows
    k[..., 0] = offset * math.sqrt(d) / 60.0 + 0.1 * k[..., 0]
    return q, k, v


@task("ch29.blocked_attention", points=3)
def check_blocked_attention(fn):
    """Softmax attention over key blocks with the online softmax, returning (out, lse).

    Checks how, too: on a case with N and M larger than the block, no tensor of shape (N, M) may
    be produced; rows whose scores are all near -1800 or +1800 must come out finite and exact.
    """
    gen, _ = fresh_generator()

    def compare(out, lse, ref_out, ref_lse, what):
        expect_close(
            out,
            ref_out,
            what=f"out for {what}",
            hint="out = acc / l after the last key block; every key, including a ragged last block, "
            "counts once",
        )
        expect_close(
            lse,
            ref_lse,
            what=f"lse for {what}",
            hint="lse = m + log(l), the natural log of Σ_j exp(s_j)",
        )

    def call_watched(q, k, v, block):
        """fn(q, k, v, block), failing if it produced a tensor shaped like the whole score matrix."""
        N, M, d, dv = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
        with largest_intermediate() as seen:
            returned = fn(q.clone(), k.clone(), v.clone(), block)
        # only a full (N, M) score or weight matrix can have this shape when block < M and
        # neither N nor M equals d or d_v
        if block < M and not {N, M} & {d, dv}:
            full = seen.first(lambda shape: len(shape) >= 2 and shape[-2:] in ((N, M), (M, N)))
            if full is not None:
                raise CheckFailed(
                    f"with N={N}, M={M} and block={block}, your function produced a tensor of shape "
                    f"{full[1]} ({full[0]}): {FULL_MATRIX_HINT}"
                )
        return expect_tuple(returned, ("out", "lse"))

    for B, H, N, M, d, dv, block, dtype in [HOW_CASE, *BLOCKED_CASES]:
        with case():
            q, k, v = _random_qkv(gen, B, H, N, M, d, dv, dtype)
            out, lse = call_watched(q, k, v, block)
            compare(out, lse, *_reference(q, k, v), f"block={block}")
    for B, H, N, M, d, block, offset, rows in EXTREME_CASES:
        with case():
            q, k, v = _extreme_qkv(gen, B, H, N, M, d, offset, rows)
            out, lse = call_watched(q, k, v, block)
            compare(out, lse, *_reference(q, k, v), f"block={block}, {rows} with scores near {offset:g}")


# ---------------------------------------------------------------------------------------------
def _grads(q, k, v, do):
    """dq, dk, dv of softmax attention by autograd, in float64 (independent reference)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    w = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    (w @ v64).backward(do.double())
    return tuple(t.grad.to(q.dtype) for t in (q64, k64, v64))


AUTOGRAD_HINT = (
    "compute dq, dk, dv from the formulas (A = exp(S - lse), Δ = rowsum(dO ∘ O), dS = A ∘ (dA - Δ)); "
    "autograd is what this exercise replaces"
)


@task("ch29.attention_backward", points=3)
def check_attention_backward(fn):
    """dq, dk, dv of softmax attention from q, k, v, o, do and the log-sum-exp."""
    gen, _ = fresh_generator()
    for B, H, N, M, d, dv_width, dtype in [
        (1, 1, 4, 4, 4, 4, torch.float64),
        (2, 3, 6, 9, 8, 5, torch.float64),
        (1, 2, 1, 7, 6, 6, torch.float32),
        (2, 1, 10, 3, 5, 7, torch.float64),
        (1, 1, 13, 13, 16, 16, torch.float32),
    ]:
        with case():
            q, k, v = _random_qkv(gen, B, H, N, M, d, dv_width, dtype)
            do = torch.randn(B, H, N, dv_width, generator=gen, dtype=dtype)
            o, lse = _reference(q, k, v)
            with no_autograd(reason=AUTOGRAD_HINT):  # how: from the formulas, not by autograd
                returned = fn(q.clone(), k.clone(), v.clone(), o.clone(), do.clone(), lse.clone())
            got = expect_tuple(returned, ("dq", "dk", "dv"))
            ref = _grads(q, k, v, do)
            hints = {
                "dv": "dV = Aᵀ dO with A = exp(S - lse)",
                "dq": "dQ = τ dS K with dS = A ∘ (dA - Δ), dA = dO Vᵀ, Δ = rowsum(dO ∘ O), τ = 1/sqrt(d)",
                "dk": "dK = τ dSᵀ Q",
            }
            for index, name in ((2, "dv"), (0, "dq"), (1, "dk")):
                expect_close(got[index], ref[index], what=name, hint=hints[name])


# ---------------------------------------------------------------------------------------------
# (B, H, N, M, d, block_m, block_n): ragged blocks, N = 1, N ≠ M, blocks >= 16 (tl.dot's minimum).
TRITON_CASES = [
    (1, 2, 37, 37, 16, 16, 16),
    (1, 1, 20, 45, 32, 16, 32),
    (2, 1, 1, 16, 16, 16, 16),
    (1, 1, 64, 64, 32, 32, 16),
    (1, 1, 50, 17, 16, 32, 16),
]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off")


@task("ch29.triton_attention_forward", points=4, time_limit=120.0)
def check_triton_attention_forward(fn):
    """Your Triton kernel (one query block per program, non-causal) returns (out, lse)."""
    if not HAVE_TRITON:
        raise CheckFailed(
            "this task needs Triton, which is not installed here: pip install 'attnbook[kernels]' "
            "(or pip install triton); the other tasks of chapter 29 need only torch"
        )
    on_gpu = torch.cuda.is_available() and not _interpreting()
    device = "cuda" if on_gpu else "cpu"
    # On a GPU, tl.dot on float32 may use TF32 (10-bit mantissa): compare loosely there.
    atol, rtol = (1e-2, 1e-2) if on_gpu else (2e-5, 1e-4)
    gen, _ = fresh_generator()
    for B, H, N, M, d, block_m, block_n in TRITON_CASES:
        with case():
            q, k, v = _random_qkv(gen, B, H, N, M, d, d, torch.float32, device)
            what = describe({"block_m": block_m, "block_n": block_n, "float32 on": device})
            try:
                returned = fn(q.clone(), k.clone(), v.clone(), block_m=block_m, block_n=block_n)
            except RuntimeError as err:
                if "active drivers" in str(err):
                    raise CheckFailed(
                        "Triton compiled your kernel for a GPU and there is none. Set "
                        "os.environ['TRITON_INTERPRET'] = '1' before any @triton.jit runs (restart the "
                        "notebook and set it in the first cell), so the kernel runs in the CPU "
                        "interpreter"
                    ) from None
                raise
            out, lse = (
                t.detach().cpu() if isinstance(t, torch.Tensor) else t
                for t in expect_tuple(returned, ("out", "lse"))
            )
            ref_out, ref_lse = _reference(q.cpu(), k.cpu(), v.cpu())
            if isinstance(out, torch.Tensor) and out.shape == ref_out.shape and out.abs().max() == 0:
                raise CheckFailed(f"out is all zeros for {what}: does the kernel tl.store the output rows?")
            expect_close(
                out,
                ref_out,
                what=f"out for {what}",
                atol=atol,
                rtol=rtol,
                hint="mask the keys beyond M with -inf (not 0), rescale acc and l by exp(m_i - m_new), "
                "divide by l once at the end",
            )
            expect_close(
                lse,
                ref_lse,
                what=f"lse for {what}",
                atol=atol,
                rtol=rtol,
                hint="store m_i + log(l_i) for the rows < N",
            )


# ---------------------------------------------------------------------------------------------
# The experiment: peak memory, measured. (N, block): N larger than the block, d = 32, float32.
MEMORY_CASES = [(512, 64), (1024, 32), (768, 128)]
MEMORY_D = 32


def _keyblocked_reference(q, k, v, block):
    """Key-blocked attention written independently of the learner's and the library's code."""
    return _tiled_variant(q, k, v, block)


@task("ch29.measured_peak_memory", points=2, time_limit=60.0)
def check_measured_peak_memory(fn):
    """Your (naive_bytes, blocked_bytes): peak memory measured with peak_memory, in bytes.

    The grader measures both itself: naive attention with the library's naive_attention, blocked
    with an independent key-blocked loop. The naive peak is deterministic (the same function on
    the same shapes): within 10 %. A blocked loop may allocate a few more or fewer temporaries
    than the grader's: within a factor 2.5 of the grader's, and below half the naive peak.
    """
    from ...mechanisms.fused_attention_memory import naive_attention, peak_memory

    gen, _ = fresh_generator()
    for N, block in MEMORY_CASES:
        with case():
            q, k, v = _random_qkv(gen, 1, 1, N, N, MEMORY_D, MEMORY_D, torch.float32)
            _, naive = peak_memory(naive_attention, q, k, v)
            _, blocked = peak_memory(_keyblocked_reference, q, k, v, block)
            got = expect_tuple(fn(N, block), ("naive_bytes", "blocked_bytes"), what=f"N={N}, block={block}")
            for name, value in zip(("naive_bytes", "blocked_bytes"), got):
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = value.item()
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise CheckFailed(
                        f"{name} for N={N}, block={block}: expected a positive number, got {value!r}"
                    )
            got_naive, got_blocked = (float(x) for x in got)
            where = f"N={N}, block={block}: the grader measured naive {naive} and blocked {blocked} bytes"
            if not 0.9 * naive <= got_naive <= 1.1 * naive:
                raise CheckFailed(
                    f"naive_bytes = {got_naive:.0f} for {where}",
                    hint="measure naive_attention(q, k, v) with peak_memory, q, k, v float32 (1, 1, N, 32)",
                )
            if not (blocked / 2.5 <= got_blocked <= 2.5 * blocked and got_blocked < naive / 2):
                raise CheckFailed(
                    f"blocked_bytes = {got_blocked:.0f} for {where}",
                    hint="measure your blocked_attention(q, k, v, block) with peak_memory; it must hold "
                    "an (N, block) tile of scores at a time, never (N, N)",
                )
