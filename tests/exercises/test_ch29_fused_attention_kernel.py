"""Chapter 29: grade the target (solutions by default) and check that known mistakes fail."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.exercises.grading import graded_task_test, rejects_test

ROOT = Path(__file__).resolve().parents[2]
test_task = graded_task_test("29")


# --- online_softmax_update ----------------------------------------------------------------
def _update(m, l, acc, s, v, *, rescale_acc=True, rescale_l=True, own_max=False, normalise=False):
    m_new = torch.maximum(m, s.amax(-1))
    alpha = torch.exp(m - m_new)
    p = torch.exp(s - (s.amax(-1) if own_max else m_new)[..., None])
    l_new = (l * alpha if rescale_l else l) + p.sum(-1)
    acc_new = (acc * alpha[..., None] if rescale_acc else acc) + p @ v
    return m_new, l_new, acc_new / l_new[..., None] if normalise else acc_new


def update_forgets_to_rescale_acc(m, l, acc, s, v):
    return _update(m, l, acc, s, v, rescale_acc=False)


def update_new_max_for_l_only(m, l, acc, s, v):
    # rescales acc but adds the new block to an l that still refers to the old max
    return _update(m, l, acc, s, v, rescale_l=False)


def update_uses_block_max(m, l, acc, s, v):
    return _update(m, l, acc, s, v, own_max=True)


def update_returns_normalised_output(m, l, acc, s, v):
    return _update(m, l, acc, s, v, normalise=True)


def update_without_max_subtraction(m, l, acc, s, v):
    m_new = torch.maximum(m, s.amax(-1))
    return m_new, l + torch.exp(s).sum(-1), acc + torch.exp(s) @ v  # overflows for large scores


# --- blocked_attention --------------------------------------------------------------------
def _blocked(q, k, v, block, *, stop=None, zero_pad=False, lse_kind="natural", divide=True, rescale_acc=True):
    scale = 1 / math.sqrt(q.shape[-1])
    M = k.shape[-2]
    if zero_pad and M % block:
        pad = block - M % block
        k = torch.cat([k, k.new_zeros(*k.shape[:-2], pad, k.shape[-1])], -2)
        v = torch.cat([v, v.new_zeros(*v.shape[:-2], pad, v.shape[-1])], -2)
    stop = k.shape[-2] if stop is None else stop(M, block)
    m = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype)
    l = torch.zeros(q.shape[:-1], dtype=q.dtype)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    for j in range(0, stop, block):
        s = q @ k[..., j:j + block, :].transpose(-2, -1) * scale
        m_new = torch.maximum(m, s.amax(-1))
        alpha, p = torch.exp(m - m_new), torch.exp(s - m_new[..., None])
        l = l * alpha + p.sum(-1)
        acc = (acc * alpha[..., None] if rescale_acc else acc) + p @ v[..., j:j + block, :]
        m = m_new
    lse = {"natural": m + torch.log(l), "base2": (m + torch.log(l)) / math.log(2), "max": m}[lse_kind]
    return (acc / l[..., None] if divide else acc), lse


def blocked_drops_last_block(q, k, v, block):
    return _blocked(q, k, v, block, stop=lambda M, b: (M // b) * b if M >= b else M)  # M // block full blocks only


def blocked_pads_with_zero_scores(q, k, v, block):
    return _blocked(q, k, v, block, zero_pad=True)


def blocked_lse_base2(q, k, v, block):
    return _blocked(q, k, v, block, lse_kind="base2")


def blocked_lse_is_max(q, k, v, block):
    return _blocked(q, k, v, block, lse_kind="max")


def blocked_forgets_division(q, k, v, block):
    return _blocked(q, k, v, block, divide=False)


def blocked_no_rescale(q, k, v, block):
    return _blocked(q, k, v, block, rescale_acc=False)


def blocked_returns_float32(q, k, v, block):
    out, lse = _blocked(q, k, v, block)
    return out.float(), lse.float()


# --- attention_backward -------------------------------------------------------------------
def _backward(q, k, v, o, do, lse, *, d_kind="o", scale_grads=True, use_lse=True):
    scale = 1 / math.sqrt(q.shape[-1])
    s = q @ k.transpose(-2, -1) * scale
    p = torch.exp(s - lse[..., None]) if use_lse else torch.exp(s)
    dv = p.transpose(-2, -1) @ do
    dp = do @ v.transpose(-2, -1)
    D = {"o": (do * o).sum(-1, keepdim=True), "dp": dp.sum(-1, keepdim=True), "none": 0.0}[d_kind]
    ds = p * (dp - D)
    c = scale if scale_grads else 1.0
    return ds @ k * c, ds.transpose(-2, -1) @ q * c, dv


def backward_d_from_dp(q, k, v, o, do, lse):
    return _backward(q, k, v, o, do, lse, d_kind="dp")


def backward_without_d(q, k, v, o, do, lse):
    return _backward(q, k, v, o, do, lse, d_kind="none")


def backward_without_scale(q, k, v, o, do, lse):
    return _backward(q, k, v, o, do, lse, scale_grads=False)


def backward_ignores_lse(q, k, v, o, do, lse):
    return _backward(q, k, v, o, do, lse, use_lse=False)


def backward_swaps_dq_dk(q, k, v, o, do, lse):
    dq, dk, dv = _backward(q, k, v, o, do, lse)
    return dk, dq, dv


WRONG_ANSWERS = {
    "ch29.online_softmax_update": [update_forgets_to_rescale_acc, update_new_max_for_l_only, update_uses_block_max,
                                   update_returns_normalised_output, update_without_max_subtraction],
    "ch29.blocked_attention": [blocked_drops_last_block, blocked_pads_with_zero_scores, blocked_lse_base2,
                               blocked_lse_is_max, blocked_forgets_division, blocked_no_rescale, blocked_returns_float32],
    "ch29.attention_backward": [backward_d_from_dp, backward_without_d, backward_without_scale, backward_ignores_lse,
                                backward_swaps_dq_dk],
}

# --- the Triton kernel: one kernel with a compile-time switch per mistake ------------------
try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

if triton is not None:
    @triton.jit
    def _mistaken_kernel(Q, K, V, O, L, N, M, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         D: tl.constexpr, MISTAKE: tl.constexpr):
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

    def _launcher(mistake):
        def launch(q, k, v, block_m=16, block_n=16):
            B, H, N, d = q.shape
            q, k, v = (t.contiguous() for t in (q, k, v))
            out = torch.empty_like(q)
            lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
            _mistaken_kernel[(triton.cdiv(N, block_m), B * H)](q, k, v, out, lse, N, k.shape[2], 1 / math.sqrt(d),
                                                               BLOCK_M=block_m, BLOCK_N=block_n, D=d, MISTAKE=mistake)
            return out, lse
        return launch

    kernel_unmasked_padding = _launcher(1)
    kernel_forgets_rescale = _launcher(2)
    kernel_forgets_division = _launcher(3)
    kernel_lse_base2 = _launcher(4)
    for _name in ("kernel_unmasked_padding", "kernel_forgets_rescale", "kernel_forgets_division", "kernel_lse_base2"):
        globals()[_name].__name__ = _name

    def kernel_returns_only_out(q, k, v, block_m=16, block_n=16):
        return _launcher(0)(q, k, v, block_m, block_n)[0]

    WRONG_ANSWERS["ch29.triton_attention_forward"] = [kernel_unmasked_padding, kernel_forgets_rescale,
                                                      kernel_forgets_division, kernel_lse_base2, kernel_returns_only_out]

test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


@pytest.mark.skipif(triton is None, reason="needs triton")
def test_correct_mistaken_kernel_passes():
    """The switchable kernel with no mistake passes: the failures above come from the mistakes."""
    from attnbook.grading import run_task

    assert run_task("ch29.triton_attention_forward", _launcher(0)).passed


def test_hints_name_the_mistakes():
    from attnbook.grading import run_task

    hint = run_task("ch29.attention_backward", backward_d_from_dp).message
    assert "rowsum(dP) instead of rowsum(dO ∘ O)" in hint, hint
    hint = run_task("ch29.blocked_attention", blocked_pads_with_zero_scores).message
    assert "padded with score 0" in hint, hint
    hint = run_task("ch29.online_softmax_update", update_forgets_to_rescale_acc).message
    assert "acc was not rescaled" in hint, hint


def test_without_triton_the_task_reports_it(monkeypatch):
    """No Triton: the exercise file still imports, and the Triton task fails with a clear message."""
    from attnbook.grading import load_module, run_task

    monkeypatch.setitem(sys.modules, "triton", None)            # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    module = load_module(ROOT / "exercises" / "ch29_fused_attention_kernel.py")
    assert not module.HAVE_TRITON
    assert run_task("ch29.online_softmax_update", module.online_softmax_update).status == "not implemented"
    result = run_task("ch29.triton_attention_forward", module.triton_attention_forward)
    assert result.status == "failed" and "needs Triton" in result.message, result


@pytest.mark.skipif(triton is None, reason="needs triton")
def test_check_in_a_fresh_process():
    """check() in a new interpreter where nothing imported triton before the solution file."""
    code = ("from attnbook.grading import check, load_module\n"
            "m = load_module('solutions/ch29_fused_attention_kernel.py')\n"
            "r = check('ch29.triton_attention_forward', m.triton_attention_forward)\n"
            "print(r)\n"
            "assert r.passed\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
