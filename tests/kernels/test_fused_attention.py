"""Tests of attnbook.kernels.flash_attention against torch's scaled_dot_product_attention.

Without a CUDA GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1, set below
before triton is imported): tiny shapes, float32, compared with float64 SDPA to ~1e-4.
With a GPU: float16/bfloat16 up to N = 8192, compared with float32 SDPA (math backend), without
autotuning (conftest.py). The causal reference mask is attnbook.masks.causal_mask: the kernels
restate its rule in Triton and are tested against it here.
"""

import os
import subprocess
import sys
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

pytest.importorskip("triton")
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import attnbook.kernels  # noqa: E402
import attnbook.kernels.fused_attention as fa  # noqa: E402
from attnbook.attention import scaled_dot_product_attention  # noqa: E402
from attnbook.kernels import attention_reference, flash_attention, launch  # noqa: E402
from attnbook.masks import causal_mask  # noqa: E402

INTERPRET = launch.INTERPRET
interpreter_only = pytest.mark.skipif(
    not INTERPRET, reason="Triton CPU interpreter tests (TRITON_INTERPRET=1)"
)
gpu_only = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = "cpu" if INTERPRET else "cuda"


def sdpa_reference(q, k, v, causal, scale=None, dtype=torch.float64):
    """out and (dq, dk, dv) of SDPA (math backend) in `dtype`, causal aligned to the end like ours."""
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    N, M = q.shape[-2], k.shape[-2]
    # query i sees keys j <= i + M - N (SDPA's is_causal aligns to the start instead)
    mask = causal_mask(N, M, device=q.device) if causal else None
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out, q, k, v


def run_both(B, H, N, M, d, causal, dtype, scale=None, ref_dtype=torch.float64, seed=0):
    """(ours, reference) lists [out, dq, dk, dv] on fresh random normal inputs and dO."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(B, H, N, d, device=DEVICE, generator=gen).to(dtype).requires_grad_()
    k = torch.randn(B, H, M, d, device=DEVICE, generator=gen).to(dtype).requires_grad_()
    v = torch.randn(B, H, M, d, device=DEVICE, generator=gen).to(dtype).requires_grad_()
    do = torch.randn(B, H, N, d, device=DEVICE, generator=gen).to(dtype)
    out = flash_attention(q, k, v, causal=causal, scale=scale)
    out.backward(do)
    ref, rq, rk, rv = sdpa_reference(q, k, v, causal, scale, ref_dtype)
    ref.backward(do.to(ref_dtype))
    return [out, q.grad, k.grad, v.grad], [ref, rq.grad, rk.grad, rv.grad]


def assert_close_f32(ours, refs):
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, refs):
        assert a.shape == b.shape and torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b.double(), atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def rel_err(a, b):
    """‖a − b‖ / ‖b‖; where b is exactly zero (e.g. dq, dk when M = 1), ‖a − b‖ / sqrt(numel)."""
    ref = b.double().norm().item() or b.numel() ** 0.5
    return (a.double() - b.double()).norm().item() / ref


# ------------------------------------------------------------------------------- interpreter
@interpreter_only
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [16, 32, 64])
@pytest.mark.parametrize("N", [1, 17, 64, 100])
def test_interpreter_matches_sdpa(N, d, causal):
    ours, refs = run_both(1, 2, N, N, d, causal, torch.float32, seed=N * d + causal)
    assert_close_f32(ours, refs)


@interpreter_only
@pytest.mark.parametrize("N,M,causal", [(17, 40, False), (17, 40, True), (33, 100, True), (100, 33, False)])
def test_interpreter_cross_attention(N, M, causal):
    """N != M: with causal, queries are the last N of M positions (as when decoding)."""
    ours, refs = run_both(1, 2, N, M, 32, causal, torch.float32, seed=N + M)
    assert_close_f32(ours, refs)


@interpreter_only
def test_interpreter_tensor_descriptor_path(monkeypatch):
    """The forward's tensor-descriptor loads (used on Hopper) compute the same function."""
    monkeypatch.setattr(launch, "use_tma", lambda *tensors: True)
    ours, refs = run_both(1, 2, 100, 100, 32, True, torch.float32, seed=3)
    assert_close_f32(ours, refs)


@interpreter_only
@pytest.mark.parametrize(
    "blocks",
    [
        {"fwd": (16, 32), "dkdv": (32, 16), "dq": (16, 32)},
        {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)},
    ],
)
def test_interpreter_other_block_shapes(monkeypatch, blocks):
    """The loop bounds (diagonal, ragged tails) hold for any BLOCK_M / BLOCK_N ratio."""
    monkeypatch.setattr(launch, "INTERPRETER_BLOCKS", blocks)
    for causal in (False, True):
        ours, refs = run_both(1, 1, 50, 50, 16, causal, torch.float32, seed=7)
        assert_close_f32(ours, refs)


@interpreter_only
def test_interpreter_scale_and_noncontiguous():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 33, 2, 3, 32, generator=gen)  # (B, N, 3, H, d) as a fused projection gives
    q, k, v = (x[:, :, :, i].transpose(1, 2).requires_grad_() for i in range(3))  # (B, H, N, d) views
    out = flash_attention(q, k, v, causal=True, scale=0.3)
    ref, *_ = sdpa_reference(q, k, v, True, 0.3)
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out, attention_reference(q, k, v, causal=True, scale=0.3), atol=1e-5)


@interpreter_only
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-4)])
def test_interpreter_other_dtypes(dtype, tol):
    """float16 runs as is; bfloat16 and float64 run in float32 and come back in their dtype."""
    ours, refs = run_both(1, 2, 40, 40, 32, True, dtype, seed=5)
    for a, b in zip(ours, refs):
        assert a.dtype == dtype
        assert rel_err(a, b) < tol


# ------------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_attnbook_errors():
    """attnbook.validate's types: TypeError for a wrong kind or dtype, ValueError for shapes and values."""

    def t(*shape, dtype=torch.float16 if not INTERPRET else torch.float32):
        return torch.randn(*shape, device=DEVICE).to(dtype)

    cases = [
        (ValueError, (t(2, 4, 16), t(2, 4, 16), t(2, 4, 16)), {}, "q must have shape (B, H, N, d)"),
        (ValueError, (t(1, 2, 4, 16), t(1, 2, 4), t(1, 2, 4)), {}, "k must have shape (B, H, M, d)"),
        (ValueError, (t(1, 2, 4, 24), t(1, 2, 4, 24), t(1, 2, 4, 24)), {}, "head dim d"),
        (
            ValueError,
            (t(1, 2, 4, 16), t(1, 3, 4, 16), t(1, 3, 4, 16)),
            {},
            "leading (batch, head) dimensions",
        ),
        (ValueError, (t(1, 2, 4, 16), t(1, 2, 4, 32), t(1, 2, 4, 32)), {}, "q and k must share their last"),
        (ValueError, (t(1, 2, 4, 16), t(1, 2, 4, 16), t(1, 2, 5, 16)), {}, "same number of tokens M"),
        (ValueError, (t(1, 2, 4, 16), t(1, 2, 4, 16), t(1, 2, 4, 32)), {}, "v must have the shape of k"),
        (ValueError, (t(1, 2, 0, 16), t(1, 2, 4, 16), t(1, 2, 4, 16)), {}, "N, M >= 1"),
        (ValueError, (t(1, 2, 8, 16), t(1, 2, 4, 16), t(1, 2, 4, 16)), {"causal": True}, "M >= N"),
        (ValueError, (t(1, 2, 4, 16), t(1, 2, 4, 16), t(1, 2, 4, 16)), {"scale": -1.0}, "scale must be"),
        (
            TypeError,
            (t(1, 2, 4, 16), t(1, 2, 4, 16), t(1, 2, 4, 16)),
            {"scale": "0.5"},
            "scale must be a number",
        ),
        (
            TypeError,
            (t(1, 2, 4, 16).tolist(), t(1, 2, 4, 16), t(1, 2, 4, 16)),
            {},
            "q must be a torch.Tensor",
        ),
        (TypeError, (t(1, 2, 4, 16, dtype=torch.int32),) * 3, {}, "floating dtype"),
        (
            TypeError,
            (t(1, 2, 4, 16), t(1, 2, 4, 16, dtype=torch.float64), t(1, 2, 4, 16)),
            {},
            "share one dtype",
        ),
    ]
    if not INTERPRET:
        cases.append((TypeError, (t(1, 2, 4, 16, dtype=torch.float32),) * 3, {}, "float16 or torch.bfloat16"))
    for error, args, kwargs, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            flash_attention(*args, **kwargs)


def test_causal_with_more_queries_than_keys_raises_like_causal_mask():
    q, k = torch.randn(1, 1, 8, 16, device=DEVICE), torch.randn(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(ValueError) as expected:
        causal_mask(8, 4)
    for fn in (flash_attention, attention_reference):
        with pytest.raises(ValueError) as got:
            fn(q, k, k, causal=True)
        assert str(got.value) == str(expected.value)


def test_reference_is_the_books_attention():
    """attention_reference is attnbook.attention's softmax attention (causal aligned to the end)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(2, 3, 5, 8, generator=gen),
        torch.randn(2, 3, 9, 8, generator=gen),
        torch.randn(2, 3, 9, 8),
    )
    for causal, scale in ((False, None), (True, 0.7)):
        ref = attention_reference(q, k, v, causal=causal, scale=scale)
        assert torch.equal(ref, scaled_dot_product_attention(q, k, v, causal=causal, scale=scale)[0])
        sdpa, *_ = sdpa_reference(q, k, v, causal, scale)
        torch.testing.assert_close(ref.double(), sdpa, atol=1e-6, rtol=1e-6)


def test_function_and_modules_by_plain_import():
    """attnbook.kernels.flash_attention is the function; each module has a name of its own."""
    import attnbook.kernels.fused_attention_backward as backward

    assert attnbook.kernels.flash_attention is fa.flash_attention and callable(
        attnbook.kernels.flash_attention
    )
    for module in (fa, backward, launch):
        assert isinstance(module, types.ModuleType)
    assert fa._backward is backward._backward and fa.INTERPRET is launch.INTERPRET


def test_preferred_dtype_is_one_the_kernels_run_in():
    """bfloat16 from sm_80, float16 before (Colab's T4), float32 in the interpreter."""
    dtype = launch.preferred_dtype(DEVICE)
    assert launch.compute_dtype(dtype, torch.device(DEVICE)) == dtype
    if INTERPRET:
        assert dtype == torch.float32
    else:
        assert dtype == (torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16)


def test_autotune_switch(monkeypatch):
    """Off in the interpreter and with ATTNBOOK_AUTOTUNE=0 (the tests' default), on with =1."""
    monkeypatch.setattr(launch, "INTERPRET", False)
    for value, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("ATTNBOOK_AUTOTUNE", value)
        assert launch.autotune_enabled() is expected
    monkeypatch.delenv("ATTNBOOK_AUTOTUNE")
    assert launch.autotune_enabled()
    monkeypatch.setattr(launch, "INTERPRET", True)
    monkeypatch.setenv("ATTNBOOK_AUTOTUNE", "1")
    assert not launch.autotune_enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_no_gpu_and_no_interpreter_raises_runtime_error():
    code = (
        "import torch\nfrom attnbook.kernels import flash_attention\nq = torch.randn(1, 1, 4, 16)\n"
        "try:\n    flash_attention(q, q, q)\nexcept RuntimeError as e:\n    print('RuntimeError:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "RuntimeError:" in result.stdout and "TRITON_INTERPRET=1" in result.stdout, (
        result.stdout + result.stderr
    )


# ------------------------------------------------------------------------------- GPU
GPU_TOL = {torch.float16: (2e-3, 5e-3), torch.bfloat16: (1e-2, 2e-2)}  # relative: (out, grads)


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_gpu_small_shapes(d, causal, dtype):
    for N, M in [(1, 1), (17, 17), (64, 64), (100, 100), (17, 300), (129, 131)]:
        ours, refs = run_both(1, 2, N, M, d, causal, dtype, ref_dtype=torch.float64, seed=N + d)
        for name, a, b, tol in zip(
            ("out", "dq", "dk", "dv"), ours, refs, (GPU_TOL[dtype][0],) + (GPU_TOL[dtype][1],) * 3
        ):
            assert rel_err(a, b) < tol, f"N={N} M={M} {name}: relative error {rel_err(a, b):.2e} >= {tol}"


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("B,H,N", [(2, 3, 1000), (1, 2, 2049), (1, 2, 8192)])
def test_gpu_long_sequences(B, H, N, d, causal, dtype):
    ours, refs = run_both(B, H, N, N, d, causal, dtype, ref_dtype=torch.float32, seed=N + d)
    for name, a, b, tol in zip(
        ("out", "dq", "dk", "dv"), ours, refs, (GPU_TOL[dtype][0],) + (GPU_TOL[dtype][1],) * 3
    ):
        assert rel_err(a, b) < tol, f"{name}: relative error {rel_err(a, b):.2e} >= {tol}"


@gpu_only
def test_gpu_tests_run_one_config_per_launch():
    """Without autotuning (the tests' default), every launch compiles and runs one tile config."""
    assert os.environ.get("ATTNBOOK_AUTOTUNE") == "0" and not launch.autotune_enabled()
    run_both(1, 2, 300, 300, 64, True, torch.bfloat16, ref_dtype=torch.float32)
    assert launch._TUNED and all(len(tuner.configs) == 1 for tuner in launch._TUNED.values())


@gpu_only
@pytest.mark.parametrize("use_tma", [False, True])
def test_gpu_pointer_and_descriptor_forward(monkeypatch, use_tma):
    """Both of v2's forward load paths (plain pointers; Hopper tensor descriptors) give the same result."""
    monkeypatch.setattr(launch, "USE_TMA", use_tma)
    monkeypatch.setattr(launch, "USE_WARP_SPECIALIZED", False)  # v2, not v4, at d = 128 on Hopper
    for N, causal in [(777, False), (777, True), (4096, True)]:
        ours, refs = run_both(2, 2, N, N, 128, causal, torch.bfloat16, ref_dtype=torch.float32, seed=N)
        assert rel_err(ours[0], refs[0]) < GPU_TOL[torch.bfloat16][0]
