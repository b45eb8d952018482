"""Checks for chapter 29's exercises (fused attention: online softmax, tiles, backward, Triton).

References are independent of the learner's code and of attnbook.mechanisms.fused_attention:
closed forms over all the scores at once, torch.logsumexp, F.scaled_dot_product_attention and
torch.autograd. Known mistakes are recomputed here, from scratch, so that a hint can name them.

The Triton task runs the learner's kernel in Triton's CPU interpreter when there is no GPU.
The interpreter is chosen when a kernel is *decorated*, so TRITON_INTERPRET=1 must be set
before any @triton.jit runs: this module sets it on import (the grader imports the checks
before the exercise file), and so do the exercise file and the chapter's first cell.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ..core import CheckFailed, task  # noqa: E402 - after the environment is set
from ..expect import describe, expect_close, fresh_generator  # noqa: E402

LN2 = math.log(2.0)


def _state_after(s, v):
    """Closed form of the online-softmax state after the scores s (..., N, P) and values v."""
    m = s.amax(dim=-1)                                               # (..., N)
    m_ref = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m_ref[..., None])
    return m, p.sum(dim=-1), p @ v


def _tiled_variant(q, k, v, block_n, *, rescale_acc=True, rescale_l=True, pad_with_zero_scores=False,
                   drop_tail=False, divide=True, lse="natural"):
    """Attention over key blocks of ``block_n`` with switchable mistakes (for hints only)."""
    scale = 1 / math.sqrt(q.shape[-1])
    M = k.shape[-2]
    if pad_with_zero_scores and M % block_n:  # the padded keys score 0 and carry value 0
        pad = block_n - M % block_n
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], dim=-2)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], dim=-2)
        M = M + pad
    stop = (M // block_n) * block_n if drop_tail else M
    if stop == 0:
        raise ValueError("no key block left")
    m = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype)
    l = torch.zeros(q.shape[:-1], dtype=q.dtype)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for j in range(0, stop, block_n):
        s = q @ k[..., j:j + block_n, :].transpose(-2, -1) * scale
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new[..., None])
        l = (l * alpha if rescale_l else l) + p.sum(-1)
        acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ v[..., j:j + block_n, :]
        m = m_new
    out = acc / l[..., None] if divide else acc
    lse_value = {"natural": m + torch.log(l), "base2": (m + torch.log(l)) / LN2, "max only": m, "log l only": torch.log(l)}[lse]
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


def _pair(returned, names, case):
    if not isinstance(returned, tuple) or len(returned) != len(names):
        raise CheckFailed(f"return a tuple ({', '.join(names)}); got {type(returned).__name__} for {case}")
    return returned


# ---------------------------------------------------------------------------------------------
@task("ch29.online_softmax_update", points=2)
def check_online_softmax_update(fn):
    """Fold a block of scores and values into the running (max, sum, accumulator) state."""
    gen, seed = fresh_generator()
    # (leading dims, N, scores seen before, new block Bn, d_v, dtype, offset added to the new scores)
    cases = [((), 3, 0, 4, 2, torch.float64, 0.0), ((2,), 5, 6, 3, 4, torch.float64, 3.0),
             ((2, 3), 4, 5, 7, 3, torch.float32, -3.0), ((1, 2), 1, 4, 1, 5, torch.float64, 0.0),
             ((2,), 6, 8, 5, 3, torch.float32, 100.0), ((3,), 4, 3, 6, 2, torch.float64, 0.0)]
    for lead, N, seen, Bn, dv, dtype, offset in cases:
        s_old = torch.randn(*lead, N, seen, generator=gen, dtype=dtype) * 2
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
        case = describe({"m": m, "s_block": s_new, "v_block": v_new, "blocks seen": "0" if not seen else "1",
                         "dtype": dtype, "seed": seed})
        got = _pair(fn(m.clone(), l.clone(), acc.clone(), s_new.clone(), v_new.clone()), ("m", "l", "acc"), case)
        m_new = torch.maximum(m, s_new.amax(-1))
        alpha, p = torch.exp(m - m_new), torch.exp(s_new - m_new[..., None])
        wrong_acc = {
            "acc was not rescaled by e^(m - m') before adding the new block": lambda: acc + p @ v_new,
            "acc was divided by l' (return the unnormalised accumulator; divide once, at the end)":
                lambda: (acc * alpha[..., None] + p @ v_new) / (l * alpha + p.sum(-1))[..., None],
            "the new block's exponentials use the block's own max, not the new running max m'":
                lambda: acc * alpha[..., None] + torch.exp(s_new - s_new.amax(-1, keepdim=True)) @ v_new,
        }
        wrong_l = {
            "l was not rescaled by e^(m - m') (the new max was used for the new block only)": lambda: l + p.sum(-1),
            "the new block's exponentials use the block's own max, not the new running max m'":
                lambda: l * alpha + torch.exp(s_new - s_new.amax(-1, keepdim=True)).sum(-1),
        }
        expect_close(got[0], ref_m, what=f"m' for {case}", hint="m' = max(m, max over the block of s)")
        expect_close(got[1], ref_l, what=f"l' for {case}", wrong=wrong_l, hint="l' = l·e^(m - m') + Σ_j e^(s_j - m')")
        expect_close(got[2], ref_acc, what=f"acc' for {case}", wrong=wrong_acc,
                     hint="acc' = acc·e^(m - m') + Σ_j e^(s_j - m') v_j")


# ---------------------------------------------------------------------------------------------
# (B, H, N, M, d, d_v, block, dtype): ragged last blocks, block 1, block > M, N = 1, N ≠ M.
BLOCKED_CASES = [
    (1, 1, 5, 5, 4, 4, 2, torch.float64), (2, 3, 7, 13, 8, 6, 4, torch.float64),
    (1, 2, 1, 9, 6, 6, 3, torch.float32), (1, 1, 16, 16, 8, 8, 16, torch.float64),
    (2, 1, 6, 10, 5, 5, 32, torch.float32), (1, 2, 9, 9, 4, 3, 1, torch.float64),
    (1, 1, 11, 50, 8, 8, 16, torch.float32),
]


def _blocked_wrong(q, k, v, block):
    return {
        "the last, partial key block was dropped (loop over range(0, M - block + 1, block) or M // block blocks)":
            lambda: _tiled_variant(q, k, v, block, drop_tail=True),
        "the ragged last key block was padded with score 0 instead of -inf (padded keys count in the softmax)":
            lambda: _tiled_variant(q, k, v, block, pad_with_zero_scores=True),
        "acc was not rescaled by e^(m - m') between blocks": lambda: _tiled_variant(q, k, v, block, rescale_acc=False),
        "l was not rescaled by e^(m - m') between blocks": lambda: _tiled_variant(q, k, v, block, rescale_l=False),
        "the output was not divided by l": lambda: _tiled_variant(q, k, v, block, divide=False),
    }


def _lse_wrong(q, k, v, block):
    return {
        "lse in base 2 (log2 instead of the natural log)": lambda: _tiled_variant(q, k, v, block, lse="base2"),
        "lse = m only: the + log(l) term is missing": lambda: _tiled_variant(q, k, v, block, lse="max only"),
        "lse = log(l) only: the running max m was not added back": lambda: _tiled_variant(q, k, v, block, lse="log l only"),
    }


def _wrong_part(wrong, index):
    return {name: (lambda f=f: f()[index]) for name, f in wrong.items()}


@task("ch29.blocked_attention", points=3)
def check_blocked_attention(fn):
    """Softmax attention over key blocks with the online softmax, returning (out, lse)."""
    gen, seed = fresh_generator()
    for B, H, N, M, d, dv, block, dtype in BLOCKED_CASES:
        q, k, v = _random_qkv(gen, B, H, N, M, d, dv, dtype)
        case = describe({"q": q, "k": k, "v": v, "block": block, "dtype": dtype, "seed": seed})
        out, lse = _pair(fn(q.clone(), k.clone(), v.clone(), block), ("out", "lse"), case)
        ref_out, ref_lse = _reference(q, k, v)
        wrong = _blocked_wrong(q, k, v, block)
        expect_close(out, ref_out, what=f"out for {case}", wrong=_wrong_part(wrong, 0),
                     hint="out = acc / l after the last key block; every key, including a ragged last block, counts once")
        expect_close(lse, ref_lse, what=f"lse for {case}", wrong=_wrong_part({**wrong, **_lse_wrong(q, k, v, block)}, 1),
                     hint="lse = m + log(l), the natural log of Σ_j exp(s_j)")


# ---------------------------------------------------------------------------------------------
def _grads(q, k, v, do):
    """dq, dk, dv of softmax attention by autograd, in float64 (independent reference)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    w = torch.softmax(q64 @ k64.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    (w @ v64).backward(do.double())
    return tuple(t.grad.to(q.dtype) for t in (q64, k64, v64))


def _backward_variant(q, k, v, o, do, lse, *, d_from_dp=False, no_d=False, no_scale=False, unnormalised=False):
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * scale
    p = torch.exp(s) if unnormalised else torch.exp(s - lse[..., None])
    dv = p.transpose(-2, -1) @ do
    dp = do @ v.transpose(-2, -1)
    D = dp.sum(-1, keepdim=True) if d_from_dp else (do * o).sum(-1, keepdim=True)
    ds = p * dp if no_d else p * (dp - D)
    c = 1.0 if no_scale else scale
    return ds @ k * c, ds.transpose(-2, -1) @ q * c, dv


@task("ch29.attention_backward", points=3)
def check_attention_backward(fn):
    """dq, dk, dv of softmax attention from q, k, v, o, do and the log-sum-exp."""
    gen, seed = fresh_generator()
    for B, H, N, M, d, dv_width, dtype in [(1, 1, 4, 4, 4, 4, torch.float64), (2, 3, 6, 9, 8, 5, torch.float64),
                                          (1, 2, 1, 7, 6, 6, torch.float32), (2, 1, 10, 3, 5, 7, torch.float64),
                                          (1, 1, 13, 13, 16, 16, torch.float32)]:
        q, k, v = _random_qkv(gen, B, H, N, M, d, dv_width, dtype)
        do = torch.randn(B, H, N, dv_width, generator=gen, dtype=dtype)
        o, lse = _reference(q, k, v)
        case = describe({"q": q, "k": k, "v": v, "dtype": dtype, "seed": seed})
        got = _pair(fn(q.clone(), k.clone(), v.clone(), o.clone(), do.clone(), lse.clone()), ("dq", "dk", "dv"), case)
        ref = _grads(q, k, v, do)
        args = (q, k, v, o, do, lse)
        variants = {
            "D computed as rowsum(dP) instead of rowsum(dO ∘ O)": dict(d_from_dp=True),
            "dS = P ∘ dP: the - D term of the softmax Jacobian is missing": dict(no_d=True),
            "dQ and dK lack the factor 1/sqrt(d) (S = QKᵀ/sqrt(d))": dict(no_scale=True),
            "P recomputed as exp(S) without subtracting lse (unnormalised)": dict(unnormalised=True),
        }
        for index, name in ((2, "dv"), (0, "dq"), (1, "dk")):
            wrong = {m: (lambda kw=kw, i=index: _backward_variant(*args, **kw)[i]) for m, kw in variants.items()}
            expect_close(got[index], ref[index], what=f"{name} for {case}", wrong=wrong,
                         hint={"dv": "dV = Pᵀ dO with P = exp(S - lse)",
                               "dq": "dQ = dS K / sqrt(d) with dS = P ∘ (dP - D), dP = dO Vᵀ, D = rowsum(dO ∘ O)",
                               "dk": "dK = dSᵀ Q / sqrt(d)"}[name])


# ---------------------------------------------------------------------------------------------
# (B, H, N, M, d, block_m, block_n): ragged blocks, N = 1, N ≠ M, blocks >= 16 (tl.dot's minimum).
TRITON_CASES = [(1, 2, 37, 37, 16, 16, 16), (1, 1, 20, 45, 32, 16, 32), (2, 1, 1, 16, 16, 16, 16),
                (1, 1, 64, 64, 32, 32, 16), (1, 1, 50, 17, 16, 32, 16)]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() not in ("", "0", "false", "off")


@task("ch29.triton_attention_forward", points=4, time_limit=120.0)
def check_triton_attention_forward(fn):
    """Your Triton kernel (one query block per program, non-causal) returns (out, lse)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise CheckFailed("this task needs Triton, which is not installed here: pip install 'attnbook[kernels]' "
                          "(or pip install triton); the other tasks of chapter 29 need only torch") from None
    on_gpu = torch.cuda.is_available() and not _interpreting()
    device = "cuda" if on_gpu else "cpu"
    # On a GPU, tl.dot on float32 may use TF32 (10-bit mantissa): compare loosely there.
    atol, rtol = (1e-2, 1e-2) if on_gpu else (2e-5, 1e-4)
    gen, seed = fresh_generator()
    for B, H, N, M, d, block_m, block_n in TRITON_CASES:
        q, k, v = _random_qkv(gen, B, H, N, M, d, d, torch.float32, device)
        case = describe({"q": q, "k": k, "block_m": block_m, "block_n": block_n, "float32 on": device, "seed": seed})
        try:
            returned = fn(q.clone(), k.clone(), v.clone(), block_m=block_m, block_n=block_n)
        except RuntimeError as err:
            if "active drivers" in str(err):
                raise CheckFailed("Triton compiled your kernel for a GPU and there is none. Set "
                                  "os.environ['TRITON_INTERPRET'] = '1' before any @triton.jit runs (restart the "
                                  "notebook and set it in the first cell), so the kernel runs in the CPU interpreter") from None
            raise
        out, lse = _pair(returned, ("out", "lse"), case)
        out, lse = (t.detach().cpu() if isinstance(t, torch.Tensor) else t for t in (out, lse))
        qc, kc, vc = q.cpu(), k.cpu(), v.cpu()
        ref_out, ref_lse = _reference(qc, kc, vc)
        if isinstance(out, torch.Tensor) and out.shape == ref_out.shape and out.abs().max() == 0:
            raise CheckFailed(f"out is all zeros for {case}: does the kernel tl.store the output rows?")
        wrong = _blocked_wrong(qc, kc, vc, block_n)
        expect_close(out, ref_out, what=f"out for {case}", wrong=_wrong_part(wrong, 0), atol=atol, rtol=rtol,
                     hint="mask the keys beyond M with -inf (not 0), rescale acc and l by exp(m_i - m_new), divide by l once at the end")
        expect_close(lse, ref_lse, what=f"lse for {case}", wrong=_wrong_part({**wrong, **_lse_wrong(qc, kc, vc, block_n)}, 1),
                     atol=atol, rtol=rtol, hint="store m_i + log(l_i) for the rows < N")
