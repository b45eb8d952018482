"""Tests of v4, chapter 29's warp-specialized forward for Hopper (fused_attention_hopper.py).

v4 runs only on an sm_90 GPU with a Triton that has Gluon; everywhere else flash_attention runs
v2, and these tests check that it says so (``available`` is False) without failing. On an H200:
every schedule knob (ping-pong on and off, 2 to 4 ring stages, early or deferred release of V,
two or three consumer warpgroups)
against a float64 reference, out and L, for ragged N, N != M, causal and not, fp16 and bf16;
flash_attention's dispatch (large enough calls); v4 against v2; and repeatability.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

pytest.importorskip("triton")
import attnbook.kernels.fused_attention as fa  # noqa: E402
import attnbook.kernels.fused_attention_hopper as hopper  # noqa: E402
from attnbook.kernels import launch  # noqa: E402
from attnbook.kernels.probe_v4 import reference  # noqa: E402 - (out, L) in float64

hopper_only = pytest.mark.skipif(
    launch.INTERPRET
    or not torch.cuda.is_available()
    or torch.cuda.get_device_capability() != (9, 0)
    or not hopper.GLUON,
    reason="needs an sm_90 GPU and Triton's Gluon",
)


def inputs(B, H, N, M, d, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(B, H, n, d, device="cuda", generator=gen).to(dtype) for n in (N, M, M)]


def test_not_available_without_an_sm90_gpu():
    """On a CPU (or in the interpreter) v4 declines and flash_attention keeps v2."""
    q = torch.zeros(1, 1, 4, 128)
    assert not hopper.available(q, q, q)


@hopper_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(
    "knobs",
    [
        dict(),
        dict(pingpong=False),
        dict(stages=2),
        dict(stages=2, v_early=True),
        dict(v_early=False),
        dict(consumers=2),
        dict(consumers=3, v_early=False),
    ],
    ids=[
        "default",
        "no-pingpong",
        "2-stages",
        "2-stages-early-v",
        "late-v",
        "2-consumers",
        "3-consumers-late-v",
    ],
)
def test_v4_matches_reference(knobs, d, dtype):
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3  # max |out - ref| for N(0, 1) inputs
    for B, H, N, M, causal in [
        (1, 2, 1, 1, False),
        (2, 3, 17, 17, True),
        (1, 2, 1000, 1000, True),
        (2, 2, 77, 300, False),
        (1, 2, 300, 1500, True),
        (2, 2, 300, 77, False),
        (1, 4, 4096, 4096, True),
    ]:
        q, k, v = inputs(B, H, N, M, d, dtype, seed=N + M)
        out, lse = hopper.forward(q, k, v, causal, d**-0.5, **knobs)
        ref, lse_ref = reference(q, k, v, causal, d**-0.5)
        err, lse_err = (out.double() - ref).abs().max().item(), (lse.double() - lse_ref).abs().max().item()
        assert err < tol and lse_err < 1e-4, f"N={N} M={M} causal={causal}: out {err:.1e}, L {lse_err:.1e}"


def test_v4_is_worth_its_host_cost_only_on_large_calls():
    """Visible scores B·H·N·M, halved when causal: 2^28 or more at d = 128 (NOTES.md run 8); d = 64
    keeps v2 (run 9 measured v4 faster there from 2^31 on; not yet through the GPU tests)."""
    assert hopper.worth_it(16, 16, 1024, 1024, 128, causal=False)  # B·H = 256, N = M = 1024: 2^28
    assert not hopper.worth_it(16, 16, 1024, 1024, 128, causal=True)
    assert hopper.worth_it(8, 16, 2048, 2048, 128, causal=True)
    assert not hopper.worth_it(1, 16, 1024, 1024, 128, causal=False)
    assert not hopper.worth_it(4, 32, 8192, 8192, 64, causal=False)


@hopper_only
def test_flash_attention_runs_v4_on_large_calls_at_d128(monkeypatch):
    calls = []
    original = hopper.forward
    monkeypatch.setattr(
        hopper, "forward", lambda *a, **kw: calls.append(a[0].shape[-1]) or original(*a, **kw)
    )
    for d in (64, 128):
        fa.flash_attention(*inputs(4, 16, 2048, 2048, d, torch.bfloat16))  # 2^28 scores
    assert calls == [128]  # d = 64 keeps v2
    fa.flash_attention(*inputs(1, 2, 256, 256, 128, torch.bfloat16))  # too small to pay off
    monkeypatch.setattr(launch, "USE_WARP_SPECIALIZED", False)
    fa.flash_attention(*inputs(4, 16, 2048, 2048, 128, torch.bfloat16))
    assert calls == [128]


@hopper_only
@pytest.mark.parametrize("causal", [False, True])
def test_v4_agrees_with_v2_and_the_backward_uses_its_L(monkeypatch, causal):
    """v4's out and L feed v2's backward: gradients through either forward agree."""
    monkeypatch.setattr(hopper, "MIN_SCORES", {64: 0, 128: 0})  # v4 at any size
    q, k, v = (t.requires_grad_() for t in inputs(2, 4, 1000, 1000, 128, torch.bfloat16, seed=7))
    do = torch.randn_like(q)
    results = []
    for ws in (True, False):
        monkeypatch.setattr(launch, "USE_WARP_SPECIALIZED", ws)
        out = fa.flash_attention(q, k, v, causal=causal)
        results.append([out] + list(torch.autograd.grad(out, (q, k, v), do)))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        rel = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert rel < 1e-2, f"{name}: v4 vs v2 relative difference {rel:.1e}"


@hopper_only
def test_v4_is_bitwise_repeatable():
    q, k, v = inputs(1, 8, 4096, 4096, 128, torch.bfloat16)
    first = hopper.forward(q, k, v, True, 0.1)
    second = hopper.forward(q, k, v, True, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.skipif(not hopper.GLUON, reason="needs Triton's Gluon")
def test_forward_hands_the_kernel_its_descriptors_and_tiles(monkeypatch):
    """Without a GPU: the host side of v4, up to the launch (grid, descriptor blocks, constexprs)."""
    launched = {}

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.update(grid=grid, args=args, kwargs=kwargs)

    monkeypatch.setattr(hopper, "_attn_fwd_ws", Recorder())
    q, k = torch.zeros(2, 3, 300, 128, dtype=torch.bfloat16), torch.zeros(2, 3, 77, 128, dtype=torch.bfloat16)
    hopper.forward(q, k, k, True, 0.1)
    assert launched["grid"] == (3, 6)  # cdiv(300, 128) programs of 2 × 64 rows, B·H = 6
    descs = launched["args"][:4]  # q, k, v, o: (B·H, rows, d) in blocks of (1, rows of a block, d)
    assert [tuple(t.shape) for t in descs] == [(6, 300, 128), (6, 77, 128), (6, 77, 128), (6, 300, 128)]
    assert [t.block_shape for t in descs] == [[1, 64, 128], [1, 128, 128], [1, 128, 128], [1, 64, 128]]
    assert launched["args"][5:] == (pytest.approx(0.1 * launch.LOG2E), 300, 77)
    assert launched["kwargs"] == dict(
        HEAD_DIM=128,
        BLOCK_N=128,
        STAGES=3,
        CAUSAL=True,
        PINGPONG=True,
        V_EARLY=False,
        CONSUMERS=2,
        num_warps=4,
        maxnreg=168,
    )
    q, k = torch.zeros(2, 3, 300, 64, dtype=torch.bfloat16), torch.zeros(2, 3, 77, 64, dtype=torch.bfloat16)
    hopper.forward(q, k, k, False, 0.1, consumers=3, stages=4)
    assert launched["grid"] == (2, 6) and launched["kwargs"]["maxnreg"] == 128  # 3 × 64 rows per program
