r"""Peak memory measured on the CPU: how many bytes of tensors a computation holds at once.

A GPU reports its peak allocation (``torch.cuda.max_memory_allocated``); a CPU does not. This
module measures the same quantity at torch's operator level: every tensor an operator produces
inside :func:`peak_memory` is counted from the moment it is produced until the last Python
reference to it (and to every view of it) is gone. Its storage counts once, however many views
share it. The inputs, created before the call, are not counted: the result is the *extra*
memory the computation needs, which is what tiling changes.

What it does not see: scratch memory inside one operator (a matmul's workspace) and the
allocator's rounding. Both are small and the same for the two algorithms compared in
chapter 29, so they do not change the scaling with N.

    out, peak = peak_memory(naive_attention, q, k, v)        # peak: bytes, an int
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["peak_memory", "naive_attention", "loglog_slope"]


class _LiveBytes(TorchDispatchMode):
    """Tallies the bytes of the storages that tensors produced inside are still holding."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage address -> live tensors produced here that use it
        self.live = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key not in self.refs:  # a new storage: it occupies memory from now on
                self.refs[key] = 0
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_memory(fn: Callable, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)`` and measure the most bytes of tensors it held at once.

    Returns:
        (what fn returned, peak bytes). Tensors that existed before the call (the inputs) are not
        counted; the returned tensors are, while they are being produced. Deterministic for a
        given computation and shapes.
    """
    meter = _LiveBytes()
    with meter:
        result = fn(*args, **kwargs)
    return result, meter.peak


def naive_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Standard attention with the scores and weights materialised, as three kernels compute it.

    q (B, H, N, d), k (B, H, M, d), v (B, H, M, d_v) -> out (B, H, N, d_v), lse (B, H, N).
    """
    # S = τ Q Kᵀ with τ = 1/sqrt(d): the whole (B, H, N, M) score matrix
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, N, M)
    # A = softmax_j(S): a second (B, H, N, M) tensor, alive together with S
    a = torch.softmax(s, dim=-1)
    # O = A V, LSE_i = log Σ_j e^{S_ij}
    return a @ v, torch.logsumexp(s, dim=-1)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: the exponent p of y ∝ x^p."""
    lx = torch.tensor([math.log(x) for x in xs], dtype=torch.float64)
    ly = torch.tensor([math.log(y) for y in ys], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
