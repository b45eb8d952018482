"""The state of one graded run: its seed, its cases and a record of every call to the learner.

The engine creates a :class:`RunContext` for each run of a check, in the thread that runs it.
Inside, :func:`fresh_generator` hands the check reproducible generators derived from the run's
seed, :func:`case` marks the sub-checks of a task (a failed case is counted and the check goes
on with the next one), and :class:`Recorded` wraps the learner's function so that every call's
inputs and output are kept: replaying the same seed with a declared mistake in place of the
learner's function reproduces the same inputs, and the outputs can be compared call by call.
"""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = [
    "RunContext",
    "Recorded",
    "Call",
    "Failure",
    "fresh_generator",
    "fresh_seed",
    "case",
    "current",
    "describe_value",
]

_local = threading.local()


def derive_seed(seed: int, *parts: object) -> int:
    """A seed in [0, 2**63) derived deterministically from ``seed`` and ``parts``."""
    return random.Random(":".join(map(str, (seed, *parts)))).getrandbits(63)


class ReachedCall(BaseException):
    """Raised by a replay's recorder once it has made the call to compare (ends the replay)."""


@dataclass
class Call:
    """One call of the learner's function: where it happened, its inputs, its output or error."""

    key: tuple[int, int]  # (segment of the check, index of the call in that segment)
    inputs: str  # e.g. "causal_mask(N=3, M=7)"
    output: object = None
    error: BaseException | None = None


@dataclass
class Failure:
    """The first failure of a run: the exception, the case it ended (if any) and the last call."""

    error: BaseException
    case: int | None  # 1-based number of the failed case; None outside any case
    call: Call | None  # the last call of the learner's function in the failed case (or segment)


@dataclass
class RunContext:
    """Everything the engine needs to know about one run of a check."""

    seed: int
    stop_at: tuple[int, int] | None = None  # a replay stops once it has made this call
    draws: int = 0  # generators and seeds handed to the check so far
    segment: int = 0  # bumped when a case starts or ends, so calls align between runs
    in_case: bool = False
    cases: int = 0
    cases_failed: int = 0
    calls: list[Call] = field(default_factory=list)
    first_failure: Failure | None = None
    learner_errors: list[BaseException] = field(default_factory=list)
    completed: bool = False  # the check ran to its end
    not_implemented: bool = False  # the function (or the check) raised NotImplementedError
    _index: int = 0

    # --- calls -------------------------------------------------------------------------------
    def next_key(self) -> tuple[int, int]:
        key = (self.segment, self._index)
        self._index += 1
        return key

    def last_call(self) -> Call | None:
        return self.calls[-1] if self.calls else None

    def call_at(self, key: tuple[int, int]) -> Call | None:
        return next((c for c in self.calls if c.key == key), None)

    def raised_by_learner(self, err: BaseException) -> bool:
        return any(err is e for e in self.learner_errors)

    # --- cases -------------------------------------------------------------------------------
    def _new_segment(self) -> None:
        self.segment += 1
        self._index = 0

    def begin_case(self) -> None:
        if self.in_case:
            raise RuntimeError("cases of a check do not nest")
        self.in_case = True
        self.cases += 1
        self._new_segment()

    def end_case(self, err: BaseException | None) -> None:
        self.in_case = False
        if err is not None:
            self.cases_failed += 1
            self.fail(err, case=self.cases)
        self._new_segment()

    def fail(self, err: BaseException, case: int | None = None) -> None:
        if self.first_failure is None:
            call = self.last_call()
            if call is not None and call.key[0] != self.segment:  # made before this case or segment
                call = None
            self.first_failure = Failure(err, case, call)


def current() -> RunContext | None:
    """The run the calling thread is grading, or None outside the engine."""
    return getattr(_local, "context", None)


def set_current(ctx: RunContext | None) -> None:
    _local.context = ctx


def fresh_seed() -> int:
    """A seed derived from the run's seed: distinct on every call, the same on a replay."""
    ctx = current()
    if ctx is None:  # a check called directly, outside the engine
        return random.randrange(2**63)
    ctx.draws += 1
    return derive_seed(ctx.seed, "draw", ctx.draws)


def fresh_generator() -> tuple[torch.Generator, int]:
    """A CPU generator for the check's random inputs, and the run's seed (to show in messages).

    Successive calls in one check give distinct generators; a replay with the same seed gives
    the same ones.
    """
    seed = fresh_seed()
    ctx = current()
    return torch.Generator().manual_seed(seed), (ctx.seed if ctx is not None else seed)


@contextmanager
def case():
    """One sub-check of a task. A failure inside is counted, and the check goes on.

        for N, M in CASES:
            with case():
                expect_close(fn(N, M), reference(N, M), what=f"mask({N}, {M})")

    The task passes when every case passes; otherwise it earns its points in proportion to
    the cases passed. ``NotImplementedError`` (a stub) and the engine's own signals end the run.
    """
    ctx = current()
    if ctx is None:  # outside the engine: a failure simply propagates
        yield
        return
    ctx.begin_case()
    try:
        yield
    except NotImplementedError:
        ctx.end_case(None)
        raise
    except Exception as err:  # noqa: BLE001 - a wrong answer or a crash fails this case only
        ctx.end_case(err)
    else:
        ctx.end_case(None)


def describe_value(value: object) -> str:
    """A short text for a value: 'float32 (2, 5)', '(float64 (3,), 0.5)', 'None'."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        if value.ndim == 0:
            return f"{dtype} scalar"
        device = "" if value.device.type == "cpu" else f" on {value.device}"
        return f"{dtype} {tuple(value.shape)}{device}"
    if isinstance(value, torch.Generator):
        return "a generator"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return f"dict({', '.join(map(str, value))})" if len(value) <= 6 else f"dict of {len(value)}"
    if isinstance(value, (tuple, list)) and len(value) <= 4:
        inner = ", ".join(describe_value(v) for v in value)
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    text = repr(value)
    return text if len(text) <= 40 else f"{type(value).__name__}(...)"


def _detached(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    return value


class Recorded:
    """The learner's function (or a mistake), recording each call for the engine."""

    def __init__(self, fn: Callable, ctx: RunContext):
        self.fn, self.ctx = fn, ctx
        self.__name__ = getattr(fn, "__name__", "fn")
        self.__doc__ = getattr(fn, "__doc__", None)
        try:
            self._signature = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None

    def describe(self, args: tuple, kwargs: dict) -> str:
        named = None
        if self._signature is not None:
            try:
                named = self._signature.bind(*args, **kwargs).arguments
            except TypeError:
                named = None
        if named is None:
            parts = [describe_value(a) for a in args] + [
                f"{k}={describe_value(v)}" for k, v in kwargs.items()
            ]
        else:
            parts = []
            for name, value in named.items():
                kind = self._signature.parameters[name].kind
                if kind == inspect.Parameter.VAR_POSITIONAL:
                    parts += [describe_value(v) for v in value]
                elif kind == inspect.Parameter.VAR_KEYWORD:
                    parts += [f"{k}={describe_value(v)}" for k, v in value.items()]
                else:
                    parts.append(f"{name}={describe_value(value)}")
        return f"{self.__name__}({', '.join(parts)})"

    def __call__(self, *args, **kwargs):
        ctx = self.ctx
        key = ctx.next_key()
        call = Call(key, self.describe(args, kwargs))
        ctx.calls.append(call)
        # code that draws from torch's global generator is reproducible too
        torch.random.default_generator.manual_seed(derive_seed(ctx.seed, "call", *key))
        try:
            output = self.fn(*args, **kwargs)
        except BaseException as err:
            call.error = err
            ctx.learner_errors.append(err)
            if key == ctx.stop_at:
                raise ReachedCall from None
            raise
        call.output = _detached(output)
        if key == ctx.stop_at:
            raise ReachedCall
        return output
