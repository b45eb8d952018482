"""Time the PyTorch rungs of chapter 29's ladder on a GPU: unfused and blocked attention.

    python -m attnbook.kernels.time_pytorch_rungs [OUT_DIR]   # writes OUT_DIR/pytorch_rungs.csv

bf16, d = 128, N = 4096, B = 4, H = 16 (B·N = 16384, H·d = 2048, as in bench.py), forward only.
"""

import csv
import os
import sys

import torch
from triton.testing import do_bench

from attnbook.kernels import attention_reference
from attnbook.mechanisms.fused_attention_kernel import attention_flops, blocked_attention


def main() -> None:
    B, H, N, d = 4, 16, 4096, 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    rows = []
    for key, name, fn in [
        ("unfused", "unfused PyTorch (S and A in HBM)", lambda: attention_reference(q, k, v)),
        (
            "blocked",
            "blocked PyTorch (online softmax, 128x128 tiles)",
            lambda: blocked_attention(q, k, v, 128, 128),
        ),
    ]:
        ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
        tflops = B * H * attention_flops(N, d, causal=False, mode="fwd") / (ms * 1e-3) / 1e12
        print(f"{name}: d={d} N={N} fwd {ms:.3f} ms {tflops:.1f} TFLOP/s")
        rows.append(
            dict(
                d=d, N=N, B=B, H=H, causal=False, mode="fwd", impl=key, ms=f"{ms:.4f}", tflops=f"{tflops:.1f}"
            )
        )

    out = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    with open(os.path.join(out, "pytorch_rungs.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
