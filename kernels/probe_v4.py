"""v4's schedule knobs on a Hopper GPU (NOTES.md, run 7): correctness of each, then their speed.

    python -m attnbook.kernels.probe_v4 check [d]   # every knob against float64: out and L
    python -m attnbook.kernels.probe_v4 time [d]    # TFLOP/s of each knob beside v2 and cuDNN

Knobs of :func:`attnbook.kernels.fused_attention_hopper.forward`: ``stages`` (slots of the K/V ring),
``v_early`` (release a V slot right after its matmul, or one iteration later), ``pingpong`` and
``consumers`` (2 or 3 consumer warpgroups of 64 query rows each).
bf16 timings at bench.py's shapes (B·N = 16384, H·d = 2048), do_bench medians (warmup 25, rep 100).
"""

from __future__ import annotations

import os
import sys

import torch

KNOBS = {
    128: [dict(stages=s, v_early=e) for s in (2, 3) for e in (False, True)],
    64: [dict(stages=s, v_early=e, consumers=c) for c in (2, 3) for s in (3, 4) for e in (False, True)],
}
CHECK_SHAPES = [  # B, H, N, M, d, causal: ragged, N != M both ways, one key, long
    (2, 3, 128, 128, 128, True),
    (1, 2, 1000, 1000, 128, True),
    (2, 2, 77, 300, 128, False),
    (1, 2, 1000, 1500, 64, True),
    (2, 2, 300, 77, 64, False),
    (1, 2, 1, 1, 64, False),
    (1, 4, 4096, 4096, 128, True),
    (3, 2, 333, 333, 64, True),
]


def reference(q, k, v, causal, scale):
    """(out, L) in float64; query i sees keys j <= i + M - N when causal."""
    N, M = q.shape[2], k.shape[2]
    s = (q.double() @ k.double().transpose(-1, -2)) * scale  # (B, H, N, M)
    if causal:
        i = torch.arange(N, device=q.device)[:, None] + (M - N)
        s = s.masked_fill(torch.arange(M, device=q.device)[None, :] > i, float("-inf"))
    return torch.softmax(s, -1) @ v.double(), torch.logsumexp(s, -1)


def label(knobs: dict) -> str:
    """s3d: 3 stages, V released one iteration late (e: early); c3: three consumer warpgroups."""
    name = f"s{knobs['stages']}{'e' if knobs['v_early'] else 'd'}"
    return name + ("c3" if knobs.get("consumers") == 3 else "")


def check(head_dims=(128, 64)) -> int:
    from attnbook.kernels import fused_attention_hopper as hopper

    failures = 0
    for dtype in (torch.bfloat16, torch.float16):
        for B, H, N, M, d, causal in CHECK_SHAPES:
            if d not in head_dims:
                continue
            q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=dtype) for n in (N, M, M))
            ref, lse_ref = reference(q, k, v, causal, d**-0.5)
            for knobs in KNOBS[d]:
                for pingpong in (True, False):
                    out, lse = hopper.forward(q, k, v, causal, d**-0.5, pingpong=pingpong, **knobs)
                    err = (out.double() - ref).abs().max().item()
                    lse_err = (lse.double() - lse_ref).abs().max().item()
                    ok = err < 2e-2 and lse_err < 1e-3
                    failures += not ok
                    print(
                        f"{str(dtype)[6:]:8} B{B} H{H} N{N} M{M} d{d} causal={causal:d} "
                        f"pingpong={pingpong:d} {knobs}: out {err:.1e} L {lse_err:.1e} {('FAIL', 'OK')[ok]}",
                        flush=True,
                    )
    print("failures:", failures)
    return int(failures > 0)


def time_knobs(head_dims=(128, 64)) -> int:
    from triton.testing import do_bench

    from attnbook.kernels import fused_attention_hopper as hopper
    from attnbook.kernels.bench import make_impls

    os.environ["ATTNBOOK_AUTOTUNE"] = "1"
    for d in head_dims:
        for N in (1024, 4096, 16384):
            for causal in (False, True):
                B, H = max(1, 16384 // N), 2048 // d
                q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                flops = 4 * B * H * N * N * d / (2 if causal else 1)
                calls = {}
                for kn in KNOBS[d]:
                    calls[label(kn)] = lambda kn=kn: hopper.forward(q, k, v, causal, d**-0.5, **kn)
                calls["nopp"] = lambda: hopper.forward(q, k, v, causal, d**-0.5, pingpong=False)
                peers = make_impls(causal, N, ["ours_v2", "cudnn"], None)  # flash_attention with v2; cuDNN
                calls["v2"] = lambda f=peers["ours_v2"]: f(q, k, v)
                calls["cudnn"] = lambda f=peers["cudnn"]: f(q, k, v)
                tflops = {name: flops / do_bench(fn, warmup=25, rep=100) / 1e9 for name, fn in calls.items()}
                line = " ".join(f"{n}={t:5.0f}" for n, t in tflops.items())
                print(f"d={d} N={N:5d} causal={causal:d}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "check"
    dims = tuple(int(a) for a in sys.argv[2:]) or (128, 64)
    sys.exit(check(dims) if part == "check" else time_knobs(dims))
