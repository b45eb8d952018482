"""The autograder's engine: a registry of graded tasks and a runner that never crashes.

A *task* is one function the learner writes, named ``"chNN.function_name"``. Its *check* is
a function that receives the learner's function, calls it on fresh random inputs, and
raises :class:`CheckFailed` with a hint when an answer is wrong. The same checks serve the
``attnbook grade`` command, ``pytest tests/exercises`` and :func:`check` in a notebook.
"""
from __future__ import annotations

import html
import importlib
import pkgutil
import threading
import traceback
from dataclasses import dataclass
from typing import Callable

__all__ = ["CheckFailed", "Task", "Result", "task", "tasks_of", "run_task", "check", "REGISTRY"]


class CheckFailed(AssertionError):
    """Raised by a check when the learner's answer is wrong; the message is the hint."""


@dataclass(frozen=True)
class Task:
    id: str  # "chNN.function_name"
    points: int
    check: Callable[[Callable], None]
    summary: str
    time_limit: float  # seconds for the whole check

    @property
    def chapter(self) -> str:
        return self.id.split(".")[0][2:]

    @property
    def function_name(self) -> str:
        return self.id.split(".", 1)[1]


REGISTRY: dict[str, Task] = {}


def task(task_id: str, points: int = 1, time_limit: float = 30.0):
    """Register the decorated check for ``task_id`` ("chNN.function_name")."""
    if not task_id.startswith("ch") or "." not in task_id:
        raise ValueError(f"task ids look like 'ch00.causal_mask', got {task_id!r}")

    def register(check_fn: Callable[[Callable], None]) -> Callable[[Callable], None]:
        summary = (check_fn.__doc__ or "").strip().splitlines()[0] if check_fn.__doc__ else ""
        REGISTRY[task_id] = Task(task_id, points, check_fn, summary, time_limit)
        return check_fn

    return register


def _load_checks() -> None:
    """Import every module of attnbook.grading.checks so that its tasks register."""
    from . import checks

    for info in pkgutil.iter_modules(checks.__path__):
        importlib.import_module(f"{checks.__name__}.{info.name}")


def tasks_of(chapter: str | int) -> list[Task]:
    """The graded tasks of one chapter, in the order the chapter's check module defines them."""
    _load_checks()
    nn = f"{int(chapter):02d}"
    return [t for t in REGISTRY.values() if t.chapter == nn]


@dataclass
class Result:
    task_id: str
    points: int
    status: str  # "passed", "failed", "not implemented", "error", "timeout"
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def earned(self) -> int:
        return self.points if self.passed else 0

    def __str__(self) -> str:
        mark = {"passed": "PASSED", "not implemented": "NOT IMPLEMENTED YET"}.get(self.status, "FAILED")
        text = f"{self.task_id}: {mark} ({self.earned}/{self.points} points)"
        return f"{text}\n  {self.message}" if self.message else text

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colour = {"passed": "#1b7f3b", "not implemented": "#8a6d00"}.get(self.status, "#b00020")
        label = {"passed": "passed", "not implemented": "not implemented yet"}.get(self.status, self.status)
        body = f"<br><span style='white-space:pre-wrap'>{html.escape(self.message)}</span>" if self.message else ""
        return (
            f"<div style='border-left:4px solid {colour};padding:4px 10px;margin:4px 0'>"
            f"<b>{html.escape(self.task_id)}</b>: <span style='color:{colour}'><b>{label}</b></span> "
            f"({self.earned}/{self.points} points){body}</div>"
        )


def _short_traceback(err: BaseException) -> str:
    """The last frame of the learner's traceback: where it raised and what."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def run_task(task_id: str, fn: Callable) -> Result:
    """Grade ``fn`` for ``task_id``. Never raises: every outcome becomes a :class:`Result`."""
    _load_checks()
    if task_id not in REGISTRY:
        known = ", ".join(sorted(REGISTRY)) or "none"
        return Result(task_id, 0, "error", f"unknown task {task_id!r}; known tasks: {known}")
    t = REGISTRY[task_id]
    if not callable(fn):
        return Result(task_id, t.points, "error", f"expected a function, got {type(fn).__name__}")
    outcome: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            t.check(fn)
            outcome["error"] = None
        except BaseException as err:  # noqa: BLE001 - the grader reports everything
            outcome["error"] = err

    worker = threading.Thread(target=target, daemon=True, name=f"grade-{task_id}")
    worker.start()
    worker.join(t.time_limit)
    if worker.is_alive():
        return Result(task_id, t.points, "timeout", f"did not finish within {t.time_limit:.0f} s (an endless loop?)")
    err = outcome.get("error")
    if err is None:
        return Result(task_id, t.points, "passed")
    if isinstance(err, NotImplementedError):
        return Result(task_id, t.points, "not implemented", "not implemented yet")
    if isinstance(err, CheckFailed):
        return Result(task_id, t.points, "failed", str(err))
    return Result(task_id, t.points, "error", f"your function raised {_short_traceback(err)}")


def check(task_id: str, fn: Callable) -> Result:
    """Grade a function you just wrote, e.g. ``check("ch00.causal_mask", causal_mask)``.

    In a notebook the result shows as a coloured box; elsewhere it prints as text.
    """
    return run_task(task_id, fn)
