"""Chapter 29's performance ladder: one row per version that ran on the H200, from the committed logs.

    python -m attnbook.kernels.ladder          # writes kernels/results/ladder.csv

Shape: d = 128, N = 4096, B = 4, H = 16, bf16, not causal (bench.py's grid: B·N = 16384, H·d = 2048).
Every kernel rung is a committed version, with its numbers read from the benchmark file of its run:

- v2 as first committed (commit fac7af6, GPU run 3): ``results/bench_table_before_split.txt``, that
  run's log (its lines ``d=128 N=4096 causal=False: ours fwd  468.0 (0s), ...``; B = 16384 / N);
- v2 after the split into a launch layer and modules (commit 0582a2e, run 4): ``results/bench_run4.csv``;
- v3, the 5-matmul backward (commit e8bffd8, run 6): ``results/bench_run6.csv``;
- v4, the warp-specialized Gluon forward on Hopper, and the cuDNN peer (run 8): ``results/bench.csv``.

The PyTorch rungs come from ``results/pytorch_rungs.csv`` (``time_pytorch_rungs.py``, run 8). A rung
whose file lacks its row is written with an empty ``tflops`` ("not timed"). v1, the version of GPU
run 2, is not a rung: no commit holds it (the first commit is v2), so nothing reproduces it; its numbers
stay in NOTES.md. Each row names the file and line its number was read from, the commit and command that
reproduce it, the idea that bought it and the ceiling that idea was up against.
"""

from __future__ import annotations

import csv
import os
import re

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPE = dict(d="128", N="4096", B="4", causal="False")
TOKENS = 16384  # B·N in every run of bench.py, so B = 4 at N = 4096
BENCH = "python3 -m attnbook.kernels.bench --d 128 64 --warmup 25 --rep 200"  # runs 3, 4 (NOTES.md)
RUN6 = "bash kernels/gpu_run.sh OUT --d 128 64 --warmup 25 --rep 200"  # runs 6 and 8 (NOTES.md)
SERIAL = "serial matmul + exp2 in each warp: about 500 TFLOP/s forward at d = 128"
RUNGS = [  # rung, run, source file, impl in it (or one per mode), how to reproduce, idea, ceiling
    dict(
        rung="unfused PyTorch",
        run="run 8",
        source="pytorch_rungs.csv",
        impl="unfused",
        reproduce="python3 -m attnbook.kernels.time_pytorch_rungs (attention_reference)",
        idea="three kernels: QKᵀ, softmax, AV",
        ceiling="HBM traffic: S and A (4·N·M elements per head) are written and read",
    ),
    dict(
        rung="blocked PyTorch",
        run="run 8",
        source="pytorch_rungs.csv",
        impl="blocked",
        reproduce="python3 -m attnbook.kernels.time_pytorch_rungs (blocked_attention, 128x128)",
        idea="the online softmax: S never exists whole",
        ceiling="one launch per tile operation: each tile still goes through HBM",
    ),
    dict(
        rung="v2: fused kernel",
        run="run 3",
        source="bench_table_before_split.txt",
        impl="ours",
        reproduce=f"git checkout fac7af6; {BENCH}",
        idea="one program per query block: S and P stay on chip; tiles and load path autotuned",
        ceiling=SERIAL + "; backward: 7 block matmuls where 5 are counted",
    ),
    dict(
        rung="v2, modules split",
        run="run 4",
        source="bench_run4.csv",
        impl="ours",
        reproduce=f"git checkout 0582a2e; {BENCH}",
        idea="none for speed: the same @triton.jit text behind a shared launch layer",
        ceiling="v2's: no kernel changed, so the step from run 3 is run-to-run noise",
    ),
    dict(
        rung="v3: 5-matmul backward",
        run="run 6",
        source="bench_run6.csv",
        impl={"fwd": "ours", "fwd+bwd": "ours_atomic"},  # the same forward as v2, run in the same call
        reproduce=f"git checkout e8bffd8; {RUN6} (ours_atomic: flash_attention(..., deterministic=False))",
        idea="dQ added in float32 (bulk reduce-add): 5 block matmuls instead of 7",
        ceiling="registers for dK, dV and the fifth product; dQ reduce traffic in L2; forward as v2",
    ),
    dict(
        rung="v4: warp-specialized",
        run="run 8",
        source="bench.csv",
        impl={"fwd": "ours", "fwd+bwd": "ours_atomic"},  # v4's forward; v3's 5-matmul backward
        reproduce=f"git checkout f970126; {RUN6}",
        idea="a loader warp and two consumer warpgroups taking turns at the tensor cores (Gluon); "
        "a 3-stage K/V ring",
        ceiling="backward as v3; short calls: 50–100 µs more host time per call than v2",
    ),
    dict(
        rung="cuDNN (peer)",
        run="run 8",
        source="bench.csv",
        impl="cudnn",
        reproduce=f"git checkout f970126; {RUN6} (SDPBackend.CUDNN_ATTENTION)",
        idea="FlashAttention-3-style schedule: one tile's exp2 under another's matmuls",
        ceiling="—",
    ),
]
# One entry of a run's log: "ours fwd  468.0 (0s)" or "ours_atomic fwd+bwd    nan (3s)".
LOG_ENTRY = re.compile(r"(\w+) (fwd\+bwd|fwd) +([0-9.]+|nan) \(")
LOG_SHAPE = re.compile(r"^d=(\d+) N=(\d+) causal=(True|False): ")


def read(name: str) -> list[dict]:
    """The rows of a committed results file (bench.py's CSV or its printed log), each with its line number."""
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, newline="") as f:
        if name.endswith(".csv"):
            reader = csv.DictReader(f)
            for row in reader:  # line_num: the file's line of the row just read (no quoted newlines)
                rows.append(dict(row, line=f"{name}:{reader.line_num}"))
            return rows
        for number, text in enumerate(f, start=1):
            shape = LOG_SHAPE.match(text)
            if not shape:
                continue
            d, n, causal = shape.groups()
            for impl, mode, tflops in LOG_ENTRY.findall(text):
                rows.append(
                    dict(
                        d=d,
                        N=n,
                        B=str(TOKENS // int(n)),
                        causal=causal,
                        mode=mode,
                        impl=impl,
                        tflops=tflops,
                        line=f"{name}:{number}",
                    )
                )
    return rows


def build() -> list[dict]:
    """The ladder's rows: rung, run, mode, TFLOP/s ("" where that rung was not timed), and the rest."""
    rows = []
    for rung in RUNGS:
        found = read(rung["source"])
        for mode in ("fwd", "fwd+bwd"):
            impl = rung["impl"][mode] if isinstance(rung["impl"], dict) else rung["impl"]
            hits = [
                r
                for r in found
                if r["impl"] == impl and r["mode"] == mode and all(r[k] == v for k, v in SHAPE.items())
            ]
            if hits:
                source = hits[0]["line"]
            elif found:
                source = rung["source"] + " (no row at this shape and mode)"
            else:
                source = rung["source"] + " (not made yet)"
            rows.append(
                dict(
                    rung=rung["rung"],
                    run=rung["run"],
                    mode=mode,
                    tflops=hits[0]["tflops"] if hits else "",
                    source=source,
                    reproduce=rung["reproduce"],
                    idea=rung["idea"],
                    ceiling=rung["ceiling"],
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
        print(
            f"{r['rung']:24s} {r['run']:15s} {r['mode']:8s} {r['tflops'] or 'not timed':>9s}  ({r['source']})"
        )


if __name__ == "__main__":
    main()
