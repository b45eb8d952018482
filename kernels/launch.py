r"""The launch layer that every Triton kernel of attnbook shares.

A kernel module (``fused_attention.py``: chapter 29) holds its math: the ``@triton.jit``
functions, their grids and a plain PyTorch specification. Everything around a launch lives here,
once, so that the next kernel (chapter 30's fused neighborhood attention) reuses it:

- **Interpreter detection.** :data:`INTERPRET` is True when Triton runs kernels on the CPU
  (``TRITON_INTERPRET=1``, which must be set before triton is first imported).
- **Tile tables.** (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel kind, head width and GPU
  generation (:data:`HOPPER`, :data:`AMPERE`, :data:`TURING`), and the interpreter's blocks.
  A new kernel adds its own kinds (prefixed by its name, e.g. ``"na_fwd"``).
- **Autotuning** on or off (:func:`autotune_enabled`: ``ATTNBOOK_AUTOTUNE``, read at every launch;
  the tests switch it off, the benchmark on) and the cache of autotuners (:func:`run`,
  :func:`tuned_configs`).
- **Load path.** Tensor descriptors (Hopper's bulk copy engine) or plain pointers:
  :func:`use_tma` decides on the host (``ATTNBOOK_TMA=0`` or :data:`USE_TMA` forces pointers),
  :func:`load_rows` loads a tile either way inside a kernel.
- **Dtype policy** (:func:`compute_dtype`, :func:`preferred_dtype`): float16 or bfloat16 on a
  GPU, float16 only before sm_80 (Colab's T4); float32 or float16 in the interpreter.
- **Input validation** (:func:`check_attention_inputs`, :func:`require_runnable`) through
  :mod:`attnbook.validate` and :mod:`attnbook.masks`: a TypeError for a wrong kind or dtype, a
  ValueError for a wrong shape or value, a RuntimeError when nothing can run the kernel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator

import torch
import triton
import triton.language as tl

from attnbook.masks import check_query_key_sizes
from attnbook.validate import check_qkv, check_scale, require_tensor

__all__ = [
    "INTERPRET",
    "USE_TMA",
    "USE_WARP_SPECIALIZED",
    "LOG2E",
    "INTERPRETER_BLOCKS",
    "HOPPER",
    "AMPERE",
    "TURING",
    "autotune_enabled",
    "config_list",
    "run",
    "tuned_configs",
    "use_tma",
    "load_rows",
    "compute_dtype",
    "preferred_dtype",
    "check_attention_inputs",
    "require_runnable",
]

# Triton chooses between compiling and interpreting when @triton.jit runs, i.e. when a kernel
# module is imported: read the switch once, here.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# ATTNBOOK_TMA=0 forces plain pointer loads; read by use_tma at every call, so a benchmark or a
# test may also flip this attribute.
USE_TMA = os.environ.get("ATTNBOOK_TMA", "1") != "0"
# ATTNBOOK_WS=0 keeps chapter 29's forward on v2 where v4 (the warp-specialized Gluon forward,
# fused_attention_hopper.py) would run; read at every call, so a benchmark may flip the attribute.
USE_WARP_SPECIALIZED = os.environ.get("ATTNBOOK_WS", "1") != "0"
LOG2E = 1.4426950408889634  # log2(e): kernels compute e^x as 2^(x·log2 e)


def autotune_enabled() -> bool:
    """Time every config of a list (ATTNBOOK_AUTOTUNE=1, the default) or run its first one (=0).

    Read at every launch. Never in the interpreter, which has no timer and ignores warps and
    stages. The GPU tests run without it (tests/kernels/conftest.py); the benchmark with it.
    """
    return not INTERPRET and os.environ.get("ATTNBOOK_AUTOTUNE", "1") != "0"


# ---------------------------------------------------------------------------------------------
# Tile tables
# ---------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M counts queries, BLOCK_N keys, in every kernel.
# The first entry of each list is the one used without autotuning (ATTNBOOK_AUTOTUNE=0).
# Kinds of chapter 29's kernel: "fwd" (forward), "dkdv" and "dq" (the two kernels of the
# deterministic backward), "bwd" (the 5-matmul backward that adds dQ with atomics).
# The interpreter ignores warps and stages; its blocks stay >= 16 (a GPU's tl.dot minimum) and
# mirror the GPU's shapes (forward and dQ: more queries than keys; dK/dV: the reverse).
INTERPRETER_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16), "bwd": (16, 32)}

HOPPER = {  # sm_90: 228 KB shared memory per SM; wgmma wants 4·k warps. Chosen to stay under
    # 255 registers without spills (ptxas report of a local sm_90 compile; see NOTES.md).
    ("fwd", 128): [
        (128, 64, 8, 3),
        (128, 128, 8, 3),
        (128, 64, 8, 4),
        (128, 64, 8, 5),
        (128, 128, 8, 2),
        (64, 64, 4, 3),
    ],
    ("fwd", 64): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 64, 4, 3)],
    ("fwd", 32): [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 4, 3)],
    ("dkdv", 128): [
        (32, 128, 8, 3),
        (64, 64, 8, 3),
        (32, 128, 8, 4),
        (32, 64, 4, 3),
        (32, 64, 4, 4),
        (16, 128, 8, 3),
        (64, 128, 8, 2),
    ],
    ("dkdv", 64): [(64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 4), (32, 64, 4, 3), (32, 128, 4, 5)],
    ("dkdv", 32): [(32, 128, 4, 4), (64, 64, 4, 3)],
    ("dq", 128): [
        (128, 64, 8, 3),
        (128, 64, 8, 4),
        (128, 32, 8, 3),
        (64, 32, 4, 4),
        (64, 64, 4, 3),
        (64, 64, 4, 4),
    ],
    ("dq", 64): [(128, 64, 8, 3), (128, 32, 4, 5), (64, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 4)],
    ("dq", 32): [(128, 32, 4, 4), (64, 64, 4, 3)],
    # the 5-matmul backward, deterministic=False (dK, dV per key block, dQ added in float32);
    # the tiles that compile without spills first (ptxas report, Triton 3.7, sm_90)
    ("bwd", 128): [(32, 128, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 128, 8, 3)],
    ("bwd", 64): [(64, 128, 8, 3), (64, 64, 4, 3), (32, 128, 8, 3), (64, 64, 8, 3)],
    ("bwd", 32): [(64, 128, 4, 3), (32, 64, 4, 3)],
}
AMPERE = {  # sm_80..89: 100-164 KB shared memory, mma.sync (not timed here: an untuned guess)
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2), (128, 32, 4, 3)],
    "dkdv": [(32, 64, 4, 3), (64, 64, 4, 2), (32, 128, 8, 2)],
    "dq": [(64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2)],
    "bwd": [(32, 64, 4, 3), (64, 64, 4, 2)],
}
TURING = {  # sm_75 (Colab's T4): 64 KB shared memory, fp16 only; Triton's dot runs without
    # tensor cores there, so small tiles and 8 warps keep registers (mostly) from spilling.
    # Never run on a T4: chosen from sm_75 compile reports only (see NOTES.md).
    "fwd": [(32, 32, 8, 2), (32, 16, 4, 2)],
    "dkdv": [(16, 32, 8, 1), (16, 16, 4, 1)],
    "dq": [(32, 32, 8, 1), (16, 32, 8, 1)],
    "bwd": [(16, 32, 8, 1), (16, 16, 4, 1)],
}


def config_list(kind: str, head_dim: int, capability: tuple[int, int]) -> list[tuple]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) list of a kernel kind on a GPU generation."""
    if capability >= (9, 0):
        return HOPPER[(kind, max(head_dim, 32))]
    table = AMPERE if capability >= (8, 0) else TURING
    return table[kind]


# ---------------------------------------------------------------------------------------------
# Launching
# ---------------------------------------------------------------------------------------------
_TUNED: dict = {}  # (kernel, configs) -> triton Autotuner (shares the kernel's compile cache)


def run(
    kernel,
    kind: str,
    grid: Callable[[dict], tuple],
    args: tuple,
    meta: dict,
    device: torch.device,
    variants: tuple[dict, ...] = ({},),
    key: tuple[str, ...] = ("N_Q", "N_KV", "HEAD_DIM", "CAUSAL"),
    reset_to_zero: tuple[str, ...] = (),
):
    """Run ``kernel[grid](*args, **meta)`` with the tile config for this GPU, or the interpreter's.

    Args:
        kernel: a ``@triton.jit`` function whose constexprs include BLOCK_M and BLOCK_N.
        kind: its row in the tile tables ("fwd", "dkdv", "dq", ...).
        grid: ``grid(meta) -> (programs, ...)``, read with the chosen BLOCK_M / BLOCK_N.
        args, meta: positional arguments and the other constexprs (``meta["HEAD_DIM"]`` picks
            the Hopper list).
        device: the GPU the tensors are on.
        variants: constexpr settings the autotuner may choose between besides the tiles (the
            forward's load path); without autotuning, or in the interpreter, the first one.
        key: the arguments whose values make the autotuner time the configs again.
        reset_to_zero: arguments the kernel adds into (atomics): zeroed before each timed run
            of the autotuner and before the run that counts, so tuning leaves no trace in them.
    """
    if INTERPRET:
        block_m, block_n = INTERPRETER_BLOCKS[kind]
        return kernel[grid](*args, **meta, **variants[0], BLOCK_M=block_m, BLOCK_N=block_n)
    configs = config_list(kind, meta["HEAD_DIM"], torch.cuda.get_device_capability(device))
    if not autotune_enabled():
        configs, variants = configs[:1], variants[:1]
    configs = tuple((c, tuple(v.items())) for v in variants for c in configs)
    if (kernel, configs) not in _TUNED:
        _TUNED[(kernel, configs)] = triton.autotune(
            configs=[
                triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, **dict(v)}, num_warps=w, num_stages=s)
                for (bm, bn, w, s), v in configs
            ],
            key=list(key),
            reset_to_zero=list(reset_to_zero) or None,
        )(kernel)
    try:
        return _TUNED[(kernel, configs)][grid](*args, **meta)
    except Exception as err:  # a compiler failure deep inside Triton: say what it means here
        if not type(err).__module__.startswith("triton"):
            raise
        name = torch.cuda.get_device_name(device)
        raise RuntimeError(
            f"Triton could not compile or run the {kernel.fn.__name__} kernel ({kind}) on {name} "
            f"(head dim {meta['HEAD_DIM']}): {type(err).__name__}: {err}. Try float16, a smaller "
            "head dim, or run on the CPU with TRITON_INTERPRET=1 set before importing triton."
        ) from err


def tuned_configs() -> Iterator[tuple[str, tuple, object]]:
    """(kernel name, tuning key, chosen triton.Config) for every shape the autotuner has timed."""
    for (kernel, _), tuner in _TUNED.items():
        for key, config in tuner.cache.items():
            yield kernel.fn.__name__, key, config


def _tma_allocator(size: int, alignment: int, stream):
    # scratch global memory where kernels write the tensor descriptors they create
    return torch.empty(size, device="cuda", dtype=torch.int8)


def use_tma(*tensors: torch.Tensor) -> bool:
    """Whether a kernel may load these tensors through tensor descriptors (and sets that up)."""
    if INTERPRET or not USE_TMA or not hasattr(tl, "make_tensor_descriptor"):
        return False
    if torch.cuda.get_device_capability(tensors[0].device) < (9, 0):
        return False
    # the copy engine needs 16-byte-aligned bases (rows are d·2 >= 32 bytes, always aligned)
    if not all(t.data_ptr() % 16 == 0 for t in tensors):
        return False
    triton.set_allocator(_tma_allocator)
    return True


@triton.jit
def load_rows(
    src,
    row0,
    n_rows,
    HEAD_DIM: tl.constexpr,
    BLOCK: tl.constexpr,
    MASKED: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """Rows [row0, row0 + BLOCK) of one head's (n_rows, HEAD_DIM) matrix; rows >= n_rows read 0.

    `src` is a tensor descriptor (USE_TMA; the copy engine zero-fills out-of-range rows) or the
    head's base pointer (rows are HEAD_DIM apart; MASKED adds the bounds check).
    """
    if USE_TMA:
        return src.load([row0, 0])
    else:
        rows = row0 + tl.arange(0, BLOCK)
        ptrs = src + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        if MASKED:
            return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            return tl.load(ptrs)


# ---------------------------------------------------------------------------------------------
# Dtypes and inputs
# ---------------------------------------------------------------------------------------------
def preferred_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype to run kernels in here: float32 in the interpreter, bfloat16 from sm_80,
    float16 before (Colab's T4, sm_75, has no bfloat16)."""
    if INTERPRET:
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the kernels run in for inputs of ``dtype``, or a TypeError that says why not.

    In the interpreter, bfloat16 and float64 inputs run in float32 (numpy, its engine, has no
    bfloat16 matmul and tl.dot no float64 one) and come back in their own dtype.
    """
    if INTERPRET:
        if dtype in (torch.float32, torch.float16):
            return dtype
        if dtype in (torch.bfloat16, torch.float64):
            return torch.float32
        raise TypeError(
            f"q, k, v dtype must be float32, float16, bfloat16 or float64 in the interpreter, got {dtype}"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"q, k, v dtype must be torch.float16 or torch.bfloat16 on a GPU, got {dtype} "
            "(float32 runs on the CPU in Triton's interpreter: TRITON_INTERPRET=1)"
        )
    capability = torch.cuda.get_device_capability(device)
    if dtype == torch.bfloat16 and capability < (8, 0):
        raise TypeError(
            f"bfloat16 needs a GPU of compute capability >= 8.0; "
            f"{torch.cuda.get_device_name(device)} is sm_{capability[0]}{capability[1]}: "
            "use torch.float16"
        )
    return dtype


def check_attention_inputs(q, k, v, *, causal: bool, scale, head_dims: tuple[int, ...]) -> float:
    """Validate (B, H, N, d) queries and (B, H, M, d) keys and values; returns the scale.

    TypeError: not a tensor, not floating, mixed dtypes, a non-number scale. ValueError: shapes,
    an empty dimension, d not in ``head_dims``, devices, scale <= 0, and causal with M < N (the
    queries are the last N of M positions: :func:`attnbook.masks.check_query_key_sizes`).
    """
    for name, t, shape in (("q", q, "(B, H, N, d)"), ("k", k, "(B, H, M, d)"), ("v", v, "(B, H, M, d)")):
        require_tensor(t, name, ndim=4, floating=True, shape=shape)
    check_qkv(q, k, v)
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k, (B, H, M, d) = {tuple(k.shape)}, got {tuple(v.shape)}")
    B, H, N, d = q.shape
    M = k.shape[2]
    if min(B, H, N, M) < 1:
        raise ValueError(f"q and k must have B, H, N, M >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if d not in head_dims:
        raise ValueError(f"head dim d (the last dimension of q, k, v) must be one of {head_dims}, got {d}")
    if causal:
        check_query_key_sizes(N, M)  # the queries are the last N of the M positions
    return 1.0 / math.sqrt(d) if scale is None else check_scale(scale)


def require_runnable(q: torch.Tensor, name: str) -> None:
    """A RuntimeError unless ``q``'s kernel can run: on a CUDA GPU, or in the interpreter."""
    if INTERPRET:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{name} needs a CUDA GPU, or Triton's CPU interpreter: set "
            "TRITON_INTERPRET=1 in the environment before importing triton "
            "(and attnbook.kernels)"
        )
    if q.device.type != "cuda":
        raise RuntimeError(
            f"q, k, v are on {q.device}: move them to the GPU, or set "
            "TRITON_INTERPRET=1 before importing triton to run on the CPU"
        )
