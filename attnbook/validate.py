"""One validator for every public function: shapes, dtypes, devices, masks and scales.

Each check raises a clear ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape or value) that names the argument and what was expected, before torch gets a
chance to raise a cryptic broadcast error or, worse, return a silently wrong answer.

    >>> require_tensor(x, "x", ndim=3, floating=True)     # (B, N, D)
    >>> check_qkv(q, k, v)                                   # (..., N, d), (..., M, d), (..., M, d_v)
    >>> check_mask(mask, scores_shape, "mask")              # bool or float, broadcastable
    >>> check_scale(scale)                                   # a finite number > 0
    >>> require_int(N, "N", minimum=1)                       # 3.5 or True is a TypeError
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "require_tensor",
    "require_same_dtype_device",
    "require_int",
    "check_qkv",
    "check_mask",
    "check_scale",
    "describe_shape",
]


def describe_shape(t: Tensor) -> str:
    """'float32 (2, 3, 5)': the dtype and shape of a tensor, for error messages."""
    return f"{str(t.dtype).replace('torch.', '')} {tuple(t.shape)}"


def require_tensor(
    x: object,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    floating: bool = False,
    shape: str | None = None,
) -> Tensor:
    """Check that ``x`` is a tensor with the expected number of dimensions (and a float dtype).

    Args:
        x: the object to check.
        name: the argument's name, used in the message.
        ndim: the allowed number(s) of dimensions.
        min_ndim: the least number of dimensions.
        floating: require a floating dtype (float16, bfloat16, float32, float64).
        shape: how the expected shape reads in a message, e.g. "(B, N, D)".
    Returns:
        ``x`` itself, so a caller can write ``x = require_tensor(x, "x", ...)``.
    """
    expected = f" of shape {shape}" if shape else ""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{expected}, got {type(x).__name__}")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim) if ndim is not None else None
    if allowed is not None and x.ndim not in allowed:
        want = shape or " or ".join(f"{n}-D" for n in allowed)
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        want = shape or f"at least {min_ndim} dimensions"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {x.dtype}"
        )
    return x


def require_same_dtype_device(**tensors: Tensor | None) -> None:
    """All given tensors (None ones skipped) share one dtype and one device."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    if len(named) < 2:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            listing = ", ".join(f"{n} {str(u.dtype).replace('torch.', '')}" for n, u in named)
            raise TypeError(
                f"{first_name} and {name} must share one dtype, got {listing}; convert with .to(dtype)"
            )
        if t.device != first.device:
            listing = ", ".join(f"{n} on {u.device}" for n, u in named)
            raise ValueError(f"{first_name} and {name} must be on one device, got {listing}")


def require_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` is an integer (a Python int or a 0-d integer tensor, not a bool or float).

    Returns it as a Python int. ``causal_mask(3.5)`` is a TypeError, not a 4×4 mask.
    """
    if (
        isinstance(value, Tensor)
        and value.ndim == 0
        and not value.is_floating_point()
        and value.dtype != torch.bool
    ):
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q (..., N, d), k (..., M, d), v (..., M, d_v): floating, one dtype, one device.

    The leading dimensions (batch, heads) must be equal: broadcasting them would hide a
    forgotten head axis.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, name, min_ndim=2, floating=True, shape="(..., tokens, width)")
    require_same_dtype_device(q=q, k=k, v=v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            "q and k must share their last (head-width) dimension d: "
            f"q is {tuple(q.shape)}, k is {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of tokens M: k is {tuple(k.shape)}, v is {tuple(v.shape)}"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            "q, k and v must share their leading (batch, head) dimensions: "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def check_mask(mask: object, scores_shape: Sequence[int], name: str = "mask") -> Tensor:
    """A mask is boolean (True = may attend) or floating (added to the scores).

    An integer 0/1 mask is refused with a TypeError: added to the scores it would be a
    silently wrong answer (a causal long mask would let every query see the future), and
    treating 1 as "attend" is only a guess. Its shape must broadcast to the scores' shape.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (bool or float), got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} has dtype {mask.dtype}; a mask must be boolean (True = may attend) or floating "
            f"(added to the scores). An integer 0/1 mask is ambiguous: convert it with {name}.bool()"
        )
    scores_shape = torch.Size(scores_shape)
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(
            f"{name} of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} (..., N queries, M keys)"
        )
    return mask


def check_scale(scale: object, name: str = "scale", *, allow_zero: bool = False) -> float:
    """A score scale is a finite real number > 0 (a negative one would invert the attention).

    ``allow_zero`` also accepts 0 (a regularisation strength, say).
    """
    if isinstance(scale, Tensor) and scale.numel() == 1:
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0 or (scale == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {scale}")
    return scale
