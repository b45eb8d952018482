"""Helpers that checks use to draw inputs and to compare a learner's answer with a reference.

Every helper raises :class:`~attnbook.grading.core.CheckFailed` with a message meant for a
learner: what was expected and what came back. Naming a known mistake is the engine's job
(see :func:`~attnbook.grading.core.mistake`); a check gives only a general ``hint``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .context import case, describe_value, fresh_generator, fresh_seed
from .core import CheckFailed

__all__ = [
    "case",
    "fresh_generator",
    "fresh_seed",
    "tolerance",
    "describe",
    "describe_value",
    "expect_tensor",
    "expect_close",
    "expect_tuple",
    "expect_number",
    "expect_accuracy",
    "one_thread",
]


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) fit for comparing results computed in ``dtype``."""
    return {torch.float64: (1e-9, 1e-7), torch.float32: (1e-5, 1e-4)}.get(dtype, (1e-2, 1e-2))


def describe(case: Mapping[str, object]) -> str:
    """A short text of the inputs of one test case, e.g. 'N=1, M=5, dtype=float32'."""
    parts = []
    for key, value in case.items():
        if isinstance(value, torch.dtype):
            value = str(value).replace("torch.", "")
        elif isinstance(value, Tensor):
            value = f"tensor{tuple(value.shape)}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def expect_tuple(returned: object, names: Sequence[str], what: str = "") -> tuple:
    """Check that ``returned`` is a tuple of ``len(names)`` items; return it."""
    if not isinstance(returned, tuple) or len(returned) != len(names):
        got = "None (is a `return` missing?)" if returned is None else describe_value(returned)
        where = f" for {what}" if what else ""
        raise CheckFailed(f"return a tuple ({', '.join(names)}); got {got}{where}")
    return returned


def expect_number(
    value: object,
    what: str,
    *,
    expected: str = "a float",
    low: float | None = None,
    high: float | None = None,
) -> float:
    """A learner's scalar answer as a float: a Python number or a one-element tensor, not a bool.

    Args:
        value: what the learner returned.
        what: names the answer in messages, e.g. "positional_accuracy('rope', 7)".
        expected: what to return, in words, e.g. "an accuracy in [0, 1] (a fraction, not percent)".
        low, high: inclusive bounds the value must lie within, when given.
    """
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckFailed(f"{what}: return {expected}, got {describe_value(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise CheckFailed(f"{what} = {value:.4g}: expected {expected}")
    return float(value)


def expect_accuracy(value: object, what: str) -> float:
    """A learner's measured accuracy as a float in [0, 1] (see :func:`expect_number`)."""
    return expect_number(
        value, what, expected="an accuracy in [0, 1] (a fraction, not percent)", low=0, high=1
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a check's reference training on one CPU thread, restoring the count afterwards.

    The experiment checks train models this small: they are as fast on one thread, and far
    faster on a busy machine, where several threads would wait on each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def expect_tensor(actual: object, *, shape: tuple[int, ...], dtype: torch.dtype | None, what: str) -> Tensor:
    """Check that ``actual`` is a finite tensor of the given shape (and dtype, unless None)."""
    if actual is None:
        raise CheckFailed(f"{what}: expected a torch.Tensor, got None (is a `return` missing?)")
    if not isinstance(actual, Tensor):
        raise CheckFailed(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(shape):
        raise CheckFailed(f"{what}: expected shape {tuple(shape)}, got {tuple(actual.shape)}")
    if dtype is not None and actual.dtype != dtype:
        raise CheckFailed(f"{what}: expected dtype {dtype}, got {actual.dtype}")
    if actual.is_floating_point() and not torch.isfinite(actual).all():
        bad = (~torch.isfinite(actual)).sum().item()
        raise CheckFailed(f"{what}: {bad} entries are NaN or infinite")
    return actual


def expect_close(
    actual: object,
    expected: Tensor,
    *,
    what: str,
    hint: str = "",
    check_dtype: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Check that ``actual`` equals ``expected`` up to a tolerance fit for its dtype.

    Args:
        actual: the learner's answer.
        expected: the reference answer.
        what: names the answer and the case in messages, e.g. "out for N=3, M=5".
        hint: a general hint, shown when the answer is wrong and matches no declared mistake.
    """
    actual = expect_tensor(
        actual, shape=tuple(expected.shape), dtype=expected.dtype if check_dtype else None, what=what
    )
    default_atol, default_rtol = tolerance(expected.dtype)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    actual = actual.detach().to(device=expected.device, dtype=expected.dtype)
    if expected.dtype == torch.bool or not expected.is_floating_point():
        if torch.equal(actual, expected):
            return
        mismatch = (actual != expected).sum().item()
        raise CheckFailed(
            f"{what}: {mismatch} of {expected.numel()} entries differ from the reference.", hint=hint
        )
    if torch.allclose(actual, expected, atol=atol, rtol=rtol):
        return
    err = (actual - expected).abs().max().item()
    raise CheckFailed(f"{what}: max abs error {err:.3g} (allowed {atol:g} + {rtol:g}·|expected|).", hint=hint)
