r"""Checks of *how* an answer is computed, where that is the lesson.

Comparing outputs cannot tell a hand-written softmax from a call to the library function it
replaces, a blocked algorithm from one that builds the whole score matrix, or a hand-written
backward from autograd. Inside these context managers the learner's function runs watched:

    with forbid(F.scaled_dot_product_attention, reason="write the softmax yourself"):
        out = fn(q, k, v)                       # a call to torch's SDPA fails the check

    with largest_intermediate() as seen:
        out = fn(q, k, v, block_m=16)
    if seen.max_shape_matches(lambda s: s[-2:] == (N, M)): ...

    with no_autograd():
        dq, dk, dv = fn(q, k, v, o, do, lse)    # autograd.grad / .backward() fail the check

They catch the function however the learner reached it (``F.scaled_dot_product_attention``,
``from torch.nn.functional import ...``, a Tensor method), because they watch torch's own
dispatch (``TorchFunctionMode``, ``TorchDispatchMode``) rather than a module attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode, resolve_name
from torch.utils._python_dispatch import TorchDispatchMode

from .core import CheckFailed

__all__ = ["forbid", "no_autograd", "largest_intermediate", "Intermediates"]


def _name(func: Callable) -> str:
    return resolve_name(func) or getattr(func, "__qualname__", None) or repr(func)


class _Forbid(TorchFunctionMode):
    def __init__(self, forbidden: dict[Callable, str]):
        super().__init__()
        self.forbidden = forbidden

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.forbidden:
            raise CheckFailed(self.forbidden[func])
        return func(*args, **(kwargs or {}))


@contextmanager
def forbid(*functions: Callable, reason: str) -> Iterator[None]:
    """Fail the check (CheckFailed) if the code inside calls any of ``functions``.

    Args:
        functions: torch functions or Tensor methods, e.g. ``F.scaled_dot_product_attention``,
            ``torch.softmax``, ``torch.Tensor.softmax``.
        reason: why it is not allowed; shown to the learner as the hint.
    """
    if not functions:
        raise ValueError("forbid() needs at least one function")
    messages = {
        f: f"your function calls {_name(f)}, which this exercise asks you to replace: {reason}"
        for f in functions
    }
    with _Forbid(messages):
        yield


@contextmanager
def no_autograd(reason: str = "compute the gradients by hand, from the saved tensors") -> Iterator[None]:
    """Fail the check if the code inside uses autograd (``.backward()``, ``torch.autograd.grad``).

    Grad mode is also off inside, so a graph could not be built by accident.
    """
    message = f"your function uses autograd ({{}}): {reason}"
    originals = (torch.autograd.grad, torch.autograd.backward)

    def refuse(name):
        def blocked(*args, **kwargs):
            raise CheckFailed(message.format(name))

        return blocked

    torch.autograd.grad, torch.autograd.backward = (
        refuse("torch.autograd.grad"),
        refuse("torch.autograd.backward"),
    )
    try:
        with (
            _Forbid(
                {
                    torch.Tensor.backward: message.format("Tensor.backward"),
                    torch.Tensor.requires_grad_: message.format("requires_grad_"),
                }
            ),
            torch.no_grad(),
        ):
            yield
    finally:
        torch.autograd.grad, torch.autograd.backward = originals


@dataclass
class Intermediates:
    """The shapes of every tensor the watched code produced (at torch's operator level)."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)

    def first(self, predicate: Callable[[tuple[int, ...]], bool]) -> tuple[str, tuple[int, ...]] | None:
        """The first (operator, shape) whose shape satisfies ``predicate``, or None."""
        for op, shape in zip(self.ops, self.shapes):
            if predicate(shape):
                return op, shape
        return None

    @property
    def largest(self) -> int:
        """The most elements any single produced tensor had."""
        return max((_numel(s) for s in self.shapes), default=0)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class _Watch(TorchDispatchMode):
    def __init__(self, record: Intermediates):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.record.shapes.append(tuple(t.shape))
                self.record.ops.append(str(func.overloadpacket.__name__))
        return out


@contextmanager
def largest_intermediate() -> Iterator[Intermediates]:
    """Record the shape of every tensor produced inside (views and in-place results included).

    A blocked attention must never produce a (..., N, M) tensor of all the scores: check with
    ``record.first(lambda s: s[-2:] == (N, M))``.
    """
    record = Intermediates()
    with _Watch(record):
        yield record
