"""The grading engine: run a check on the learner's function, explain a failure, never crash.

Each run of a check happens in a worker thread under the task's time limit, with a seed (random
unless given) from which every random input derives; code past its time limit is stopped by an
exception raised in its thread. When the answer is wrong, the engine replays the check under
the same seed with each mistake declared for the task, up to the call that failed; a mistake
whose answer at that call equals the learner's names the hint.
"""

from __future__ import annotations

import ctypes
import math
import random
import threading
import time
from collections.abc import Callable

import torch

from .context import Call, ReachedCall, Recorded, RunContext, derive_seed, describe_value, set_current
from .core import CheckFailed, Mistake, Task, _short_error, get_task, mistakes_of
from .environment import triton_interpreter
from .expect import tolerance
from .result import Result

__all__ = ["run_task", "check", "same_answer"]


class Stopped(BaseException):
    """Raised inside a thread whose time is up."""


def _stop_thread(thread: threading.Thread, patience: float = 5.0) -> bool:
    """Raise :class:`Stopped` in ``thread`` until it ends (or ``patience`` seconds pass)."""
    deadline = time.monotonic() + patience
    while thread.is_alive() and time.monotonic() < deadline:
        ident = ctypes.c_ulong(thread.ident)
        if ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(Stopped)) > 1:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, None)  # hit more than one thread: undo
        thread.join(0.05)
    return not thread.is_alive()


def _within(limit: float, work: Callable[[], object], name: str) -> tuple[str, object]:
    """Run ``work`` in a thread for at most ``limit`` seconds.

    Returns ("done", its value), ("stopped", None) when time ran out and the thread was stopped,
    or ("running", None) when it could not be stopped (it is stuck inside one long C call).
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = work()
        except BaseException as err:  # noqa: BLE001 - only a kill gets here: the work reports its errors
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True, name=name)
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        return ("stopped" if _stop_thread(worker) else "running"), None
    if "value" not in box:
        raise RuntimeError(f"the grader failed: {box.get('error')!r}")
    return "done", box["value"]


def _run(task: Task, fn: Callable, seed: int, stop_at: tuple[int, int] | None = None) -> RunContext:
    """Run ``task``'s check on ``fn`` once, in this thread; the record of the run."""
    ctx = RunContext(seed, stop_at=stop_at)
    set_current(ctx)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(derive_seed(seed, "start"))
            task.check(Recorded(fn, ctx))
        ctx.completed = True
    except ReachedCall:
        pass
    except NotImplementedError as err:
        ctx.not_implemented = True
        ctx.fail(err)
    except BaseException as err:  # noqa: BLE001 - everything becomes part of the record
        ctx.fail(err)
    finally:
        set_current(None)
    return ctx


def same_answer(a: object, b: object) -> bool:
    """Whether two answers agree: tensors up to a tolerance fit for their dtype, tuples item by item."""
    if isinstance(a, Call) and isinstance(b, Call):
        if a.error is not None or b.error is not None:  # the same exception, message included
            return type(a.error) is type(b.error) and str(a.error) == str(b.error)
        return same_answer(a.output, b.output)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if not (a.is_floating_point() or a.is_complex()):
            return torch.equal(a, b)
        atol, rtol = tolerance(a.dtype)
        # two ways of computing one answer may differ by more than a check allows; float16's
        # tolerance is already as loose as telling mistakes apart permits
        if a.dtype in (torch.float32, torch.float64):
            atol, rtol = 10 * atol, 10 * rtol
        return torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same_answer(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable answers differ
        return False


def _agreement(task: Task, ctx: RunContext, candidate: Mistake) -> int:
    """On how many of the learner's calls a full replay of ``candidate`` gives the same answer."""
    replay = _run(task, candidate.fn, ctx.seed)
    return sum(1 for call in ctx.calls if (other := replay.call_at(call.key)) and same_answer(call, other))


def _matching_mistake(task: Task, ctx: RunContext) -> Mistake | None:
    """The declared mistake whose answer at the failing call equals the learner's.

    Each mistake is replayed up to that call only. When several agree there, the one that
    agrees with the learner on the most calls of a full replay wins (the first declared on a tie).
    """
    failing = ctx.first_failure.call if ctx.first_failure else None
    if failing is None:
        return None
    candidates = []
    for candidate in mistakes_of(task.id):
        other = _run(task, candidate.fn, ctx.seed, stop_at=failing.key).call_at(failing.key)
        if other is not None and same_answer(failing, other):
            candidates.append(candidate)
    if len(candidates) > 1:
        return max(candidates, key=lambda c: _agreement(task, ctx, c))  # max keeps the first of equals
    return candidates[0] if candidates else None


def _what_went_wrong(ctx: RunContext) -> tuple[str, str]:
    """(status, first line of the message) for a failed run."""
    failure = ctx.first_failure
    err = failure.error
    # a CheckFailed inside the learner's call is the grader's own verdict (a process watch such as
    # forbid() or no_autograd()), not an error of the learner's code
    if ctx.raised_by_learner(err) and not isinstance(err, CheckFailed):
        return "error", f"your function raised {_short_error(err)}"
    if isinstance(err, AssertionError):  # CheckFailed, or a plain assert of the check
        return "failed", str(err).strip() or "the answer is wrong"
    text = f"the answer could not be checked ({type(err).__name__}: {err})"
    call = failure.call
    if call is not None and call.error is None and call.output is None:
        text += "; your function returned None: is a `return` missing?"
    elif call is not None and call.error is None:
        text += f"; your function returned {describe_value(call.output)}"
    return "error", text


def _where(ctx: RunContext) -> str:
    """Which case failed, on what input, and the seed that replays it."""
    failure = ctx.first_failure
    parts = []
    if failure.case is not None:
        parts.append(f"case {failure.case} of {ctx.cases}" if ctx.completed else f"case {failure.case}")
    if failure.call is not None:
        parts.append(failure.call.inputs)
    text = ": ".join(parts)
    if ctx.draws:  # the inputs were random: the seed reproduces them
        text += f"{'; ' if text else ''}replay it with seed={ctx.seed}"
    return text


def run_task(
    task_id: str, fn: Callable, *, seed: int | None = None, time_limit: float | None = None
) -> Result:
    """Grade ``fn`` for ``task_id``. Never raises: every outcome becomes a :class:`Result`.

    Args:
        seed: the seed of the run's random inputs (random when None); a failed Result shows it.
        time_limit: seconds allowed (default: the task's own limit).
    """
    task, why = get_task(task_id)
    if task is None:
        return Result(str(task_id), 0, "error", why)
    if not callable(fn):
        return Result(task.id, task.points, "error", f"expected a function, got {type(fn).__name__}")
    seed = random.randrange(2**31) if seed is None else int(seed)
    limit = task.time_limit if time_limit is None else time_limit
    try:
        with triton_interpreter():
            return _grade(task, fn, seed, limit)
    except Exception as err:  # noqa: BLE001 - a bug of the grader still gives a Result
        return Result(task.id, task.points, "error", f"the grader failed: {_short_error(err)}", seed=seed)


def _grade(task: Task, fn: Callable, seed: int, limit: float) -> Result:
    outcome, ctx = _within(limit, lambda: _run(task, fn, seed), f"grade-{task.id}")
    if outcome != "done":
        after = "it was stopped" if outcome == "stopped" else "it could not be stopped and still runs"
        message = f"did not finish within {limit:g} s (an endless loop?); {after}"
        return Result(task.id, task.points, "timeout", message, seed=seed)
    if ctx.not_implemented:
        return Result(task.id, task.points, "not implemented", "not implemented yet", seed=seed)
    if ctx.first_failure is None:
        return Result(
            task.id, task.points, "passed", cases_passed=ctx.cases, cases_total=ctx.cases, seed=seed
        )
    status, text = _what_went_wrong(ctx)
    _, match = _within(limit, lambda: _matching_mistake(task, ctx), f"explain-{task.id}")
    lines = [text, _where(ctx)]
    if match is not None:
        lines.append(f"Your answer matches a common mistake: {match.hint}.")
    elif getattr(ctx.first_failure.error, "hint", ""):
        lines.append(f"Hint: {ctx.first_failure.error.hint}")
    message = "\n  ".join(line for line in lines if line)
    cases = (ctx.cases - ctx.cases_failed, ctx.cases) if ctx.completed else (0, 0)
    return Result(task.id, task.points, status, message, *cases, seed=seed)


def check(task_id: str, fn: Callable, *, seed: int | None = None) -> Result:
    """Grade a function you just wrote, e.g. ``check("ch00.causal_mask", causal_mask)``.

    In a notebook the result shows as a coloured box; elsewhere it prints as text. A failed
    result names its seed: ``check(task_id, fn, seed=S)`` replays exactly that run.
    """
    return run_task(task_id, fn, seed=seed)
