"""Helpers that checks use to compare a learner's answer with a reference and explain misses.

Every helper raises :class:`~attnbook.grading.core.CheckFailed` with a message meant for a
learner: what was expected, what came back, and, when the answer matches a known mistake,
which one.
"""
from __future__ import annotations

import random
from typing import Callable, Mapping

import torch
from torch import Tensor

from .core import CheckFailed

__all__ = ["fresh_generator", "expect_tensor", "expect_close", "tolerance", "describe"]


def fresh_generator() -> tuple[torch.Generator, int]:
    """A generator with a fresh random seed (returned too, so a failure can name it)."""
    seed = random.randrange(2**31)
    return torch.Generator().manual_seed(seed), seed


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


def expect_tensor(actual: object, *, shape: tuple[int, ...], dtype: torch.dtype | None, what: str) -> Tensor:
    """Check that ``actual`` is a finite tensor of the given shape (and dtype, unless None)."""
    if not isinstance(actual, Tensor):
        raise CheckFailed(f"{what}: expected a torch.Tensor, got {type(actual).__name__}")
    if tuple(actual.shape) != tuple(shape):
        raise CheckFailed(f"{what}: expected shape {tuple(shape)}, got {tuple(actual.shape)}")
    if dtype is not None and actual.dtype != dtype:
        raise CheckFailed(f"{what}: expected dtype {dtype}, got {actual.dtype} (keep the input's dtype)")
    if actual.is_floating_point() and not torch.isfinite(actual).all():
        bad = (~torch.isfinite(actual)).sum().item()
        raise CheckFailed(f"{what}: {bad} entries are NaN or infinite")
    return actual


def expect_close(
    actual: object,
    expected: Tensor,
    *,
    what: str,
    wrong: Mapping[str, Callable[[], Tensor]] | None = None,
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
        wrong: known mistakes, {"what the mistake is": function computing its answer}; when
            the answer is wrong and matches one of them, the message names the mistake.
        hint: a general hint appended when the answer is wrong and matches no known mistake.
    """
    actual = expect_tensor(actual, shape=tuple(expected.shape), dtype=expected.dtype if check_dtype else None, what=what)
    default_atol, default_rtol = tolerance(expected.dtype)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    if expected.dtype == torch.bool or not expected.is_floating_point():
        if torch.equal(actual.to(expected.dtype), expected):
            return
        mismatch = (actual.to(expected.dtype) != expected).sum().item()
        message = f"{what}: {mismatch} of {expected.numel()} entries differ from the reference"
    else:
        actual_cmp = actual.to(expected.dtype)
        if torch.allclose(actual_cmp, expected, atol=atol, rtol=rtol):
            return
        err = (actual_cmp - expected).abs().max().item()
        message = f"{what}: max abs error {err:.3g} (allowed {atol:g} + {rtol:g}·|expected|)"
    for mistake, compute in (wrong or {}).items():
        try:
            candidate = compute()
        except Exception:  # noqa: BLE001 - a mistake that cannot be computed here does not apply
            continue
        if candidate.shape == expected.shape and candidate.dtype == expected.dtype:
            same = (
                torch.equal(actual.to(candidate.dtype), candidate)
                if not candidate.is_floating_point()
                else torch.allclose(actual.to(candidate.dtype), candidate, atol=atol, rtol=rtol, equal_nan=True)
            )
            if same:
                raise CheckFailed(f"{message}.\n  Your answer matches a common mistake: {mistake}.")
    raise CheckFailed(f"{message}." + (f"\n  Hint: {hint}" if hint else ""))
