r"""Permutation-invariant regression on a query and a set of keys (chapter 01).

One example: a query x_0 and N keys x_1 ... x_N, all drawn independently and uniformly on the
unit sphere of R^d. Every target is an average over the keys of one pair function,

    y = (1/N) Σ_i F(x_0, x_i),

so it does not change when the keys are permuted. With c_i = sqrt(d) <x_0, x_i> (about
N(0, 1) for large d) and b_i = sqrt(d) <e_1, x_i> (the same law, but the query plays no part):

    "linear"        F = c_i
    "cubic"         F = c_i³
    "aligned_relu"  F = ReLU(c_i)      how much of the key set points towards the query
    "key_relu"      F = ReLU(b_i)      the same nonlinearity of a fixed direction, query ignored

The targets are not centred: "linear" and "cubic" have mean 0, the two ReLU targets have mean
E ReLU(sqrt(d) t) = sqrt(d) E|t| / 2 (:func:`relu_mean`), where t = <u, x> for independent
uniform unit vectors has E|t| = Γ(d/2) / (sqrt(π) Γ((d+1)/2)). The attention layer has no
output bias, so a target's mean is part of what it must fit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = ["TARGETS", "SetRegression", "sphere", "relu_mean", "target_function", "permutation_invariant_task"]

TARGETS = ("linear", "cubic", "aligned_relu", "key_relu")


class SetRegression(NamedTuple):
    """A batch; unpack as ``x0, X, y = batch``."""

    x0: Tensor  # (B, d) queries
    X: Tensor  # (B, N, d) keys
    y: Tensor  # (B,) targets


def sphere(
    *shape: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Points uniform on the unit sphere of R^{shape[-1]}: normalised Gaussian vectors, shape ``shape``."""
    shape = tuple(require_int(n, "shape", minimum=1) for n in shape)
    z = torch.randn(*shape, generator=generator, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


def relu_mean(d: int) -> float:
    r"""E ReLU(sqrt(d) <u, x>) for independent uniform unit vectors u, x in R^d."""
    d = require_int(d, "d", minimum=1)
    abs_t = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)  # E|<u, x>|
    return math.sqrt(d) * abs_t / 2


def target_function(name: str, x0: Tensor, X: Tensor) -> Tensor:
    r"""The target y = (1/N) Σ_i F(x_0, x_i) of ``name`` (see :data:`TARGETS`).

    x0 (B, d), X (B, N, d) on the unit sphere; returns (B,).
    """
    require_tensor(x0, "x0", floating=True, shape="(B, d)")
    require_tensor(X, "X", floating=True, shape="(B, N, d)")
    require_same_dtype_device(x0=x0, X=X)
    if x0.ndim != 2 or X.ndim != 3 or X.shape[0] != x0.shape[0] or X.shape[2] != x0.shape[1]:
        raise ValueError(f"x0 must be (B, d) and X (B, N, d), got {tuple(x0.shape)} and {tuple(X.shape)}")
    d = x0.shape[-1]
    c = math.sqrt(d) * torch.einsum("bd,bnd->bn", x0, X)  # (B, N) query-key alignments
    if name == "linear":
        return c.mean(dim=1)
    if name == "cubic":
        return c.pow(3).mean(dim=1)
    if name == "aligned_relu":
        return torch.relu(c).mean(dim=1)
    if name == "key_relu":
        b = math.sqrt(d) * X[..., 0]  # (B, N): <e_1, x_i>, the query plays no part
        return torch.relu(b).mean(dim=1)
    raise ValueError(f"target must be one of {TARGETS}, got {name!r}")


def permutation_invariant_task(
    batch_size: int,
    target: str = "linear",
    *,
    N: int = 8,
    d: int = 8,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> SetRegression:
    """Draw ``batch_size`` examples (x_0, X, y) of one of :data:`TARGETS`.

    Returns :class:`SetRegression` with x0 (B, d), X (B, N, d), y (B,).
    """
    batch_size, N, d = require_int(batch_size, "batch_size"), require_int(N, "N"), require_int(d, "d")
    if batch_size < 1 or N < 1 or d < 2:
        raise ValueError(f"need batch_size >= 1, N >= 1, d >= 2; got {batch_size}, {N}, {d}")
    x0 = sphere(batch_size, d, generator=generator, dtype=dtype)  # (B, d)
    X = sphere(batch_size, N, d, generator=generator, dtype=dtype)  # (B, N, d)
    return SetRegression(x0, X, target_function(target, x0, X))
