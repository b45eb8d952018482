"""Benchmark attnbook's flash_attention against torch's attention kernels, in one process.

    python -m attnbook.kernels.bench                 # full grid, writes kernels/results/
    python -m attnbook.kernels.bench --quick         # d=128 and 64, N in {4096, 16384}
    python -m attnbook.kernels.bench --out /tmp/res --n 4096 --d 128 --causal true

Peers: F.scaled_dot_product_attention with each backend pinned (cuDNN, flash = FlashAttention-2,
efficient = memory-efficient xFormers kernel), and FlexAttention compiled with torch.compile
(causal through a block mask). bf16, H·d = 2048, B·N = 16384. Each impl is timed forward and
forward+backward with triton.testing.do_bench (median; warm-up first; do_bench also clears the
L2 cache before every call, and one input tensor, 64 MB, is larger than the H200's 60 MB L2).

TFLOP/s counts the matmul work of attention (:func:`attnbook.mechanisms.fused_attention_kernel.
attention_flops` times B·H): 4·B·H·N²·d forward (QKᵀ and PV, 2 flops per multiply-add), half of
that when causal, and 3.5 times it for forward+backward (the backward's five N²·d matmuls are 2.5
times the forward's two). Before timing, each shape checks our output and gradients against the
flash backend (relative error, reported as `err`). Our kernel is autotuned (ATTNBOOK_AUTOTUNE=1,
``--autotune off`` runs the first tile config of each list, as the tests do); the configs the
autotuner chose are logged.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from attnbook.mechanisms.fused_attention_kernel import attention_flops

PEERS_SDPA = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
IMPLS = ["ours", "cudnn", "flash", "efficient", "flex"]
DEFAULT_IMPLS = [
    "ours",
    "ours_atomic",
    "ours_v2",
    "cudnn",
    "flash",
    "efficient",
    "flex",
]  # every kept variant
# Our kernel's variants, each a setting of flash_attention (see NOTES.md): "ours" is the default.
OURS = {
    "ours": {},
    "ours_det": {"deterministic": True},  # the 7-matmul backward, three launches, no atomics
    "ours_atomic": {"deterministic": False},  # the 5-matmul backward, dQ added with atomics
}


# Our forward with a switch of the launch layer flipped: "ours_ptr" loads through plain pointers
# instead of tensor descriptors; "ours_v2" runs v2 where v4 (warp-specialized, Hopper) would run.
SWITCHED = {"ours_ptr": ("USE_TMA", False), "ours_v2": ("USE_WARP_SPECIALIZED", False)}


def _sdpa(backend_name: str, causal: bool):
    """F.scaled_dot_product_attention with one backend pinned."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def sdpa(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return sdpa


def make_impls(causal: bool, N: int, names: list[str], flex_compiled):
    """name -> callable(q, k, v) returning the (B, H, N, d) output, for the impls asked for."""
    from attnbook.kernels import flash_attention, launch

    impls = {}
    for name, setting in OURS.items():
        if name in names:

            def ours(q, k, v, setting=setting):
                return flash_attention(q, k, v, causal=causal, **setting)

            impls[name] = ours
    for name, (switch, value) in SWITCHED.items():  # the default call with one launch switch flipped
        if name in names:

            def switched(q, k, v, switch=switch, value=value):
                saved = getattr(launch, switch)
                setattr(launch, switch, value)
                try:
                    return flash_attention(q, k, v, causal=causal)
                finally:
                    setattr(launch, switch, saved)

            impls[name] = switched
    for name, backend in PEERS_SDPA.items():
        if name in names:
            impls[name] = _sdpa(backend, causal)
    if "flex" in names and flex_compiled is not None:
        from torch.nn.attention.flex_attention import create_block_mask

        block_mask = None
        if causal:
            block_mask = create_block_mask(lambda b, h, i, j: i >= j, None, None, N, N, device="cuda")
        impls["flex"] = lambda q, k, v: flex_compiled(q, k, v, block_mask=block_mask)
    return impls


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bench_shape(d, N, causal, names, modes, flex_compiled, warmup, rep, log):
    """Time every impl on one shape; returns rows of dicts (impl, mode, ms, tflops, err)."""
    from triton.testing import do_bench

    B, H = max(1, 16384 // N), 2048 // d
    gen = torch.Generator(device="cuda").manual_seed(N + d + causal)
    q, k, v, do = (
        torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)
    )
    for t in (q, k, v):
        t.requires_grad_()
    impls = make_impls(causal, N, names, flex_compiled)
    errs = {}  # impl -> largest relative error of out, dq, dk, dv against the flash backend
    for name in [n for n in impls if n.startswith("ours")]:  # check before timing
        try:
            results = []
            for fn in (impls[name], make_impls(causal, N, ["flash"], None)["flash"]):
                out = fn(q, k, v)
                results.append([out] + list(torch.autograd.grad(out, (q, k, v), do)))
            errs[name] = max(rel_err(a, b) for a, b in zip(*results))
        except Exception as e:  # noqa: BLE001 - report, never crash the benchmark
            log(f"  check of {name} failed: {type(e).__name__}: {e}")
    rows = []
    for name, fn in impls.items():
        for mode in modes:
            if mode == "fwd":
                call = lambda fn=fn: fn(q, k, v)  # noqa: E731
            else:

                def call(fn=fn):
                    fn(q, k, v).backward(do)

            t0 = time.time()
            try:
                ms = do_bench(call, warmup=warmup, rep=rep, grad_to_none=[q, k, v], return_mode="median")
                # TFLOP/s = B·H · (flops of one head) / seconds
                tflops = B * H * attention_flops(N, d, causal=causal, mode=mode) / (ms * 1e-3) / 1e12
            except Exception as e:  # noqa: BLE001 - an unsupported peer is n/a, not a crash
                first_line = str(e).splitlines()[0][:120] if str(e) else ""
                log(f"  {name} {mode}: n/a ({type(e).__name__}: {first_line})")
                ms = tflops = float("nan")
            rows.append(
                dict(
                    d=d,
                    N=N,
                    B=B,
                    H=H,
                    causal=causal,
                    mode=mode,
                    impl=name,
                    ms=ms,
                    tflops=tflops,
                    err=errs.get(name, float("nan")),
                    seconds=time.time() - t0,
                )
            )
    return rows


def write_csv(rows, path: str) -> None:
    with open(path, "w", newline="") as f:
        fields = ["d", "N", "B", "H", "causal", "mode", "impl", "ms", "tflops", "err"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {**r, "ms": f"{r['ms']:.4f}", "tflops": f"{r['tflops']:.1f}", "err": f"{r['err']:.2e}"}
            )


def fmt(x: float, width: int = 6, digits: int = 1) -> str:
    return f"{'n/a':>{width}}" if x != x else f"{x:{width}.{digits}f}"


def table(rows, names) -> str:
    """One line per (d, N, causal, mode): TFLOP/s of each impl, best peer, ratios."""
    peers = [n for n in names if not n.startswith("ours")]
    head = (
        f"{'d':>4} {'N':>6} {'B':>3} {'H':>3} {'causal':>6} {'mode':>8} | "
        + " ".join(f"{n:>9}" for n in names)
        + f" | {'best peer':>15} {'ours/best':>9} {'ours/sdpa':>9} {'ours/flash':>10} {'err':>8}"
    )
    lines = [head, "-" * len(head)]
    keys = []
    for r in rows:
        key = (r["d"], r["N"], r["causal"], r["mode"])
        if key not in keys:
            keys.append(key)
    for key in keys:
        rs = {r["impl"]: r for r in rows if (r["d"], r["N"], r["causal"], r["mode"]) == key}
        any_r = next(iter(rs.values()))
        tf = {n: rs[n]["tflops"] if n in rs else float("nan") for n in names}
        valid = [(tf[n], n) for n in peers if tf[n] == tf[n]]
        best, best_name = max(valid) if valid else (float("nan"), "n/a")
        sdpa = [tf[n] for n in PEERS_SDPA if n in tf and tf[n] == tf[n]]
        best_sdpa = max(sdpa) if sdpa else float("nan")
        ours = tf.get("ours", float("nan"))
        err = rs["ours"]["err"] if "ours" in rs else float("nan")
        lines.append(
            f"{key[0]:>4} {key[1]:>6} {any_r['B']:>3} {any_r['H']:>3} {str(key[2]):>6} {key[3]:>8} | "
            + " ".join(f"{fmt(tf[n], 9)}" for n in names)
            + f" | {fmt(best, 6)} {best_name:>8} {fmt(ours / best, 9, 2)} {fmt(ours / best_sdpa, 9, 2)}"
            + f" {fmt(ours / tf.get('flash', float('nan')), 10, 2)} {err:8.1e}"
        )
    return "\n".join(lines)


def plot(rows, names, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = sorted({r["d"] for r in rows})
    modes = [m for m in ("fwd", "fwd+bwd") if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(len(ds), len(modes), figsize=(6 * len(modes), 4 * len(ds)), squeeze=False)
    colors = dict(
        zip(IMPLS + ["ours_ptr", "ours_atomic", "ours_v2"], ["C3", "C0", "C1", "C2", "C4", "C5", "C7", "C8"])
    )
    for i, d in enumerate(ds):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for name in names:
                for causal, style in ((False, "-"), (True, "--")):
                    pts = sorted(
                        (r["N"], r["tflops"])
                        for r in rows
                        if (r["d"], r["mode"], r["impl"], r["causal"]) == (d, mode, name, causal)
                        and r["tflops"] == r["tflops"]
                    )
                    if pts:
                        ax.plot(
                            *zip(*pts),
                            style,
                            marker="o",
                            color=colors.get(name, "k"),
                            lw=2.5 if name == "ours" else 1.2,
                            label=f"{name}{' causal' if causal else ''}",
                        )
            ax.set_xscale("log", base=2)
            ax.set_title(f"d={d}, {mode}, bf16, H·d=2048, B·N=16384")
            ax.set_xlabel("sequence length N")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(f"attnbook flash_attention vs torch attention kernels on {torch.cuda.get_device_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def matmul_tflops() -> float:
    """bf16 8192³ matmul on random data: the dense ceiling to read the table against."""
    from triton.testing import do_bench

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3) / 1e12


def driver_version() -> str:
    """The NVIDIA driver's version, as nvidia-smi reports it ("?" where it cannot)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def main(argv=None) -> int:
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default=here,
        help="folder for bench.csv, bench_table.txt and bench.png (default kernels/results/)",
    )
    p.add_argument("--quick", action="store_true", help="a subset: d in {64, 128}, N in {4096, 16384}")
    p.add_argument("--d", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    p.add_argument("--causal", choices=["both", "true", "false"], default="both")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--impls", nargs="+", default=DEFAULT_IMPLS, choices=IMPLS + list(SWITCHED) + list(OURS))
    p.add_argument(
        "--compare-loads", action="store_true", help="also time our forward with pointer loads (ours_ptr)"
    )
    p.add_argument(
        "--flex-n",
        type=int,
        nargs="*",
        default=None,
        help="time FlexAttention only at these N (compiles per shape)",
    )
    p.add_argument(
        "--autotune",
        choices=["on", "off"],
        default="on",
        help="time every tile config per shape (on) or run the first of each list (off)",
    )
    p.add_argument("--warmup", type=float, default=50, help="do_bench warm-up, ms")
    p.add_argument("--rep", type=float, default=300, help="do_bench measuring time, ms")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("the benchmark needs a CUDA GPU (timings never come from the interpreter)")
        return 1
    if args.quick:
        args.n = [4096, 16384] if args.n == p.get_default("n") else args.n
        args.warmup, args.rep = min(args.warmup, 25), min(args.rep, 150)
    # read by attnbook.kernels.launch at every launch
    os.environ["ATTNBOOK_AUTOTUNE"] = "1" if args.autotune == "on" else "0"
    names = list(dict.fromkeys(args.impls + (["ours_ptr"] if args.compare_loads else [])))
    causals = {"both": [False, True], "true": [True], "false": [False]}[args.causal]
    os.makedirs(args.out, exist_ok=True)
    log_lines = []

    def log(msg=""):
        print(msg, flush=True)
        log_lines.append(msg)

    import triton

    from attnbook.kernels import launch

    log(
        f"torch {torch.__version__}, triton {triton.__version__}, cuDNN {torch.backends.cudnn.version()}, "
        f"{torch.cuda.get_device_name()}, driver {driver_version()}, autotune {args.autotune}"
    )
    log(f"bf16 8192^3 matmul: {matmul_tflops():.1f} TFLOP/s")
    flex_compiled = None
    if "flex" in names:
        try:
            from torch import _dynamo
            from torch.nn.attention.flex_attention import flex_attention

            for knob in (
                "recompile_limit",
                "cache_size_limit",
                "accumulated_recompile_limit",
                "accumulated_cache_size_limit",
            ):
                if hasattr(_dynamo.config, knob):
                    setattr(_dynamo.config, knob, 512)
            flex_compiled = torch.compile(flex_attention, dynamic=False)
        except Exception as e:  # noqa: BLE001
            log(f"FlexAttention unavailable: {type(e).__name__}: {e}")
    rows = []
    t_start = time.time()
    for d in args.d:
        for N in args.n:
            for causal in causals:
                shape_names = [n for n in names if n != "flex" or args.flex_n is None or N in args.flex_n]
                t0 = time.time()
                new = bench_shape(
                    d, N, causal, shape_names, args.modes, flex_compiled, args.warmup, args.rep, log
                )
                rows += new
                summary = ", ".join(
                    f"{r['impl']} {r['mode']} {fmt(r['tflops'])} ({r['seconds']:.0f}s)" for r in new
                )
                log(f"d={d} N={N} causal={causal}: {summary} [{time.time() - t0:.0f}s]")
                # after every shape: a cut-off run keeps its rows
                write_csv(rows, os.path.join(args.out, "bench.csv"))
    log(f"total {time.time() - t_start:.0f}s")
    # the tile configs the autotuner chose, per kernel and tuning key
    for kernel, key, config in launch.tuned_configs():
        log(f"config {kernel} {key}: {config}")
    log()
    log(table(rows, names))
    with open(os.path.join(args.out, "bench_table.txt"), "w") as f:
        f.write("\n".join(log_lines) + "\n")
    if not args.no_plot:
        plot(rows, names, os.path.join(args.out, "bench.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
