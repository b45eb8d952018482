"""Tests of flash_attention's 5-matmul backward (deterministic=False) beside the default one.

Both backwards must compute the same gradients: deterministic=True (three launches, 7 block
matmuls, no atomics) and deterministic=False (one launch per key block that adds dQ in float32,
5 block matmuls). In Triton's CPU interpreter: float32 and float16, tiny shapes, causal and not,
N != M, ragged N (atomics through pointers; the interpreter has no descriptor reduce-add). On a
GPU: fp16 and bf16 up to N = 4096, and both ways of adding dQ (pointer atomics; the copy engine's
reduce-add through a tensor descriptor on Hopper).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

pytest.importorskip("triton")
import attnbook.kernels.fused_attention as fa  # noqa: E402
from attnbook.kernels import launch  # noqa: E402

from .test_fused_attention import GPU_TOL, assert_close_f32, rel_err, run_both  # noqa: E402

INTERPRET = launch.INTERPRET
interpreter_only = pytest.mark.skipif(
    not INTERPRET, reason="Triton CPU interpreter tests (TRITON_INTERPRET=1)"
)
gpu_only = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run_variant(monkeypatch, deterministic, *args, **kwargs):
    """run_both with one of the two backwards."""
    original = fa.flash_attention

    def patched(q, k, v, causal=False, scale=None):
        return original(q, k, v, causal=causal, scale=scale, deterministic=deterministic)

    monkeypatch.setattr("tests.kernels.test_fused_attention.flash_attention", patched)
    return run_both(*args, **kwargs)


# ------------------------------------------------------------------------------- interpreter
@interpreter_only
@pytest.mark.parametrize("d", [16, 64])
@pytest.mark.parametrize(
    "N,M,causal", [(1, 1, False), (17, 17, False), (50, 50, True), (33, 100, True), (100, 33, False)]
)
def test_interpreter_atomic_backward_matches_sdpa(monkeypatch, N, M, causal, d):
    """float32: N != M, ragged N (not a multiple of the blocks), a single query and key."""
    ours, refs = run_variant(monkeypatch, False, 1, 2, N, M, d, causal, torch.float32, seed=N + d)
    assert_close_f32(ours, refs)


@interpreter_only
@pytest.mark.parametrize("causal", [False, True])
def test_interpreter_atomic_backward_float16(monkeypatch, causal):
    """The 5-matmul backward in float16 (dQ still accumulates in float32)."""
    ours, refs = run_variant(monkeypatch, False, 1, 2, 40, 40, 32, causal, torch.float16, seed=5)
    for a, b in zip(ours, refs):
        assert a.dtype == torch.float16 and rel_err(a, b) < 2e-3


@interpreter_only
def test_interpreter_backwards_agree(monkeypatch):
    """Both backwards compute the same gradients, to float32 rounding, on one input."""
    results = [
        run_variant(monkeypatch, det, 1, 1, 70, 70, 16, True, torch.float32, seed=9)[0]
        for det in (True, False)
    ]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_deterministic_is_the_default():
    """The 7-matmul backward stays the default (the 5-matmul one is not faster everywhere)."""
    import inspect

    assert inspect.signature(fa.flash_attention).parameters["deterministic"].default is True


# ------------------------------------------------------------------------------- GPU
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_atomic_backward(monkeypatch, d, causal, dtype):
    for B, H, N, M in [
        (1, 2, 1, 1),
        (1, 2, 100, 100),
        (1, 2, 17, 300),
        (2, 3, 1000, 1000),
        (1, 2, 4096, 4096),
    ]:
        ours, refs = run_variant(
            monkeypatch, False, B, H, N, M, d, causal, dtype, ref_dtype=torch.float32, seed=N
        )
        for name, a, b, tol in zip(
            ("out", "dq", "dk", "dv"), ours, refs, (GPU_TOL[dtype][0],) + (GPU_TOL[dtype][1],) * 3
        ):
            assert rel_err(a, b) < tol, f"N={N} M={M} {name}: relative error {rel_err(a, b):.2e} >= {tol}"


@gpu_only
@pytest.mark.parametrize("use_tma", [False, True])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_gpu_atomic_backward_both_ways(monkeypatch, d, use_tma):
    """dQ added with atomics (pointers) and with the copy engine's reduce-add (descriptors)."""
    monkeypatch.setattr(launch, "USE_TMA", use_tma)
    for N, M, causal in [(129, 131, False), (777, 777, True), (64, 200, True)]:
        ours, refs = run_variant(
            monkeypatch, False, 2, 2, N, M, d, causal, torch.bfloat16, ref_dtype=torch.float32, seed=N
        )
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, refs):
            assert rel_err(a, b) < GPU_TOL[torch.bfloat16][1], f"N={N} M={M} {name}: {rel_err(a, b):.2e}"


@gpu_only
def test_gpu_default_backward_is_bitwise_repeatable():
    """deterministic=True gives the same bits on every run; both backwards agree to bf16 rounding."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(2, 4, 1500, 64, device="cuda", generator=gen).bfloat16() for _ in range(4))
    grads = {}
    for det, runs in ((True, 2), (False, 1)):
        for run in range(runs):
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            fa.flash_attention(*leaves, causal=True, deterministic=det).backward(do)
            grads[(det, run)] = [t.grad for t in leaves]
    assert all(torch.equal(a, b) for a, b in zip(grads[(True, 0)], grads[(True, 1)]))
    for a, b in zip(grads[(True, 0)], grads[(False, 0)]):
        assert rel_err(a, b) < 1e-2


@gpu_only
def test_gpu_atomic_backward_under_autotuning(monkeypatch):
    """With autotuning on, the first call times every config on the same dQ buffer: the launch
    layer zeroes it before each timed run and before the run that counts (reset_to_zero)."""
    monkeypatch.setenv("ATTNBOOK_AUTOTUNE", "1")
    monkeypatch.setattr(launch, "_TUNED", {})  # other tests check the untuned launches' cache
    ours, refs = run_variant(
        monkeypatch, False, 1, 3, 333, 333, 64, True, torch.bfloat16, ref_dtype=torch.float32
    )
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, refs):
        assert rel_err(a, b) < GPU_TOL[torch.bfloat16][1], f"{name}: {rel_err(a, b):.2e}"
