"""Chapter 29's performance ladder: one row per version that ran on the H200, from the committed logs.

    python -m attnbook.kernels.ladder          # writes kernels/results/ladder.csv

Shape: d = 128, N = 4096, B = 4, H = 16, bf16, not causal (bench.py's grid). Sources: the PyTorch rungs
from ``results/pytorch_rungs.csv`` (``time_pytorch_rungs.py``), version 2 from ``results/bench_run4.csv``
(run 4), version 3 and the peers from ``results/bench.csv`` (run 6). Each row names the flag or commit
that reproduces it, the idea that bought it and the ceiling that idea was up against.
"""

from __future__ import annotations

import csv
import os

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE = dict(d="128", N="4096", causal="False")
RUNGS = [  # (rung, source file, impl in it (or one per mode), how to reproduce, idea, ceiling)
    (
        "unfused PyTorch",
        "pytorch_rungs.csv",
        "unfused",
        "attnbook.kernels.attention_reference",
        "three kernels: QKᵀ, softmax, AV",
        "HBM traffic: S and A (4·N·M elements per head) are written and read",
    ),
    (
        "blocked PyTorch",
        "pytorch_rungs.csv",
        "blocked",
        "blocked_attention(q, k, v, 128, 128)",
        "the online softmax: S never exists whole",
        "one launch per tile operation: each tile still goes through HBM",
    ),
    (
        "v2: fused Triton kernel",
        "bench_run4.csv",
        "ours",
        "commit 0582a2e (run 4); today flash_attention(..., deterministic=True)",
        "one program per query block: S and P stay on chip; tiles and load path autotuned",
        "serial matmul + exp2: about 500 TFLOP/s at d = 128",
    ),
    (
        "v3: 5-matmul backward",
        "bench.csv",
        {"fwd": "ours", "fwd+bwd": "ours_atomic"},  # the same forward as v2, run in the same call
        "flash_attention(..., deterministic=False)",
        "dQ added in float32 (bulk reduce-add): 5 block matmuls instead of 7",
        "registers for dK, dV and the fifth product; dQ reduce traffic in L2",
    ),
    (
        "cuDNN (peer)",
        "bench.csv",
        "cudnn",
        "SDPBackend.CUDNN_ATTENTION",
        "FlashAttention-3-style schedule",
        "—",
    ),
]


def read(name: str) -> list[dict]:
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build() -> list[dict]:
    """The ladder's rows: rung, mode, TFLOP/s ("" where that rung was not timed), and the rest."""
    rows = []
    for rung, source, impl, reproduce, idea, ceiling in RUNGS:
        found = read(source)
        for mode in ("fwd", "fwd+bwd"):
            name = impl[mode] if isinstance(impl, dict) else impl
            hits = [
                r["tflops"]
                for r in found
                if r["impl"] == name and r["mode"] == mode and all(r[k] == v for k, v in SHAPE.items())
            ]
            rows.append(
                dict(
                    rung=rung,
                    mode=mode,
                    tflops=hits[0] if hits else "",
                    source=source,
                    reproduce=reproduce,
                    idea=idea,
                    ceiling=ceiling,
                )
            )
    return rows


def main() -> None:
    rows = build()
    with open(os.path.join(HERE, "ladder.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        print(f"{r['rung']:26s} {r['mode']:8s} {r['tflops']:>7s}  ({r['source']})")


if __name__ == "__main__":
    main()
