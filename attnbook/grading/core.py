"""The autograder's declarations: graded tasks, the common mistakes, and the chapters' check modules.

A *task* is one function the learner writes, named ``"chNN.function_name"``. Its *check*
receives the learner's function, calls it on fresh random inputs and raises
:class:`CheckFailed` when an answer is wrong. A *mistake* is a common wrong answer, declared
once, next to the check, as a function with the learner's signature and the hint it earns::

    from ..core import CheckFailed, mistake, task

    @task("ch00.causal_mask", points=2)
    def check_causal_mask(fn): ...

    @mistake("ch00.causal_mask", "the diagonal is hidden (a query must see its own position)")
    def causal_off_by_one(N, M=None): ...

When a learner's answer fails, the engine replays the check with each declared mistake under
the same seed; a mistake whose answer equals the learner's names the hint. The exercise tests
are generated from the same declarations (every mistake must fail and get its own hint).

Check modules ``checks/chNN_*.py`` are imported lazily, one chapter at a time, in name order:
``chNN_<slug>.py`` and, where a chapter's mistakes are many, its companion
``chNN_<slug>_mistakes.py``. A module that fails to import makes that chapter's grading fail
with the error, and no other chapter's.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .context import case

__all__ = [
    "CheckFailed",
    "Task",
    "Mistake",
    "task",
    "mistake",
    "case",
    "tasks_of",
    "mistakes_of",
    "get_task",
    "load_error",
    "chapter_of",
    "REGISTRY",
    "MISTAKES",
]

_TASK_ID = re.compile(r"ch(\d\d)\.[A-Za-z_]\w*")


class CheckFailed(AssertionError):
    """Raised by a check when the learner's answer is wrong; the message says what and where.

    ``hint`` is shown when the answer matches none of the declared mistakes.
    """

    def __init__(self, message: str = "", *, hint: str = ""):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Task:
    id: str  # "chNN.function_name"
    points: int
    check: Callable[[Callable], None]
    summary: str
    time_limit: float  # seconds for one run of the check

    @property
    def chapter(self) -> str:
        return self.id[2:4]

    @property
    def function_name(self) -> str:
        return self.id.split(".", 1)[1]


@dataclass(frozen=True)
class Mistake:
    task_id: str
    hint: str
    fn: Callable  # has the learner's signature and makes the mistake

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", "mistake")


REGISTRY: dict[str, Task] = {}
MISTAKES: dict[str, dict[str, Mistake]] = {}  # task id -> {function name: mistake}, in declaration order
_LOADED: dict[str, str | None] = {}  # chapter -> None when its checks loaded, else the error
_loading: list[str] = []  # the chapter whose check modules are being imported


def chapter_of(chapter: str | int) -> str:
    """The two-digit chapter number: 0, "0", "00" -> "00"."""
    return f"{int(chapter):02d}"


def _validate(task_id: str) -> None:
    match = _TASK_ID.fullmatch(task_id)
    if match is None:
        raise ValueError(f"task ids look like 'ch00.causal_mask', got {task_id!r}")
    if _loading and match.group(1) != _loading[-1]:
        raise ValueError(f"{task_id!r} is declared in a check module of chapter {_loading[-1]}")


def task(task_id: str, points: int = 1, time_limit: float = 30.0):
    """Register the decorated check for ``task_id`` ("chNN.function_name")."""
    _validate(task_id)

    def register(check_fn: Callable[[Callable], None]) -> Callable[[Callable], None]:
        summary = (check_fn.__doc__ or "").strip().splitlines()[0] if check_fn.__doc__ else ""
        REGISTRY[task_id] = Task(task_id, points, check_fn, summary, time_limit)
        return check_fn

    return register


def mistake(task_id: str, hint: str):
    """Declare the decorated function (with the learner's signature) as a common wrong answer.

    ``hint`` is what a learner whose answer matches it is told; it must name the mistake and
    the fix. The function is returned unchanged.
    """
    _validate(task_id)
    if not hint.strip():
        raise ValueError(f"a mistake of {task_id} needs a hint")

    def register(fn: Callable) -> Callable:
        MISTAKES.setdefault(task_id, {})[getattr(fn, "__qualname__", repr(fn))] = Mistake(task_id, hint, fn)
        return fn

    return register


def _short_error(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _forget(nn: str) -> None:
    for task_id in [t for t in REGISTRY if t[2:4] == nn]:
        del REGISTRY[task_id]
    for task_id in [t for t in MISTAKES if t[2:4] == nn]:
        del MISTAKES[task_id]


def _check_modules(nn: str) -> list[str]:
    from . import checks

    names = sorted(
        info.name for info in pkgutil.iter_modules(checks.__path__) if info.name.startswith(f"ch{nn}_")
    )
    return [f"{checks.__name__}.{name}" for name in names]


def load_error(chapter: str | int) -> str | None:
    """Import chapter's check modules (once); None when they loaded, else what went wrong."""
    nn = chapter_of(chapter)
    if nn in _LOADED:
        return _LOADED[nn]
    error = None
    _loading.append(nn)
    try:
        for module in _check_modules(nn):
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - a broken check module fails its chapter only
                sys.modules.pop(module, None)
                error = f"the checks of chapter {nn} could not be loaded: {module} raised {_short_error(err)}"
                break
    finally:
        _loading.pop()
    if error is None:
        unknown = sorted(t for t in MISTAKES if t[2:4] == nn and t not in REGISTRY)
        if unknown:
            error = f"the checks of chapter {nn} declare mistakes for unknown tasks: {', '.join(unknown)}"
    if error is not None:
        _forget(nn)
    _LOADED[nn] = error
    return error


def tasks_of(chapter: str | int) -> list[Task]:
    """The graded tasks of one chapter, in the order its check module defines them.

    Only that chapter's check modules are imported. Empty when they could not be loaded
    (:func:`load_error` says why).
    """
    nn = chapter_of(chapter)
    load_error(nn)
    return [t for t in REGISTRY.values() if t.chapter == nn]


def mistakes_of(chapter_or_task: str | int) -> list[Mistake]:
    """The declared mistakes of a chapter ("00") or of one task ("ch00.causal_mask")."""
    key = str(chapter_or_task)
    if "." in key:
        load_error(key[2:4])
        return list(MISTAKES.get(key, {}).values())
    nn = chapter_of(key)
    load_error(nn)
    return [m for t in tasks_of(nn) for m in MISTAKES.get(t.id, {}).values()]


def get_task(task_id: str) -> tuple[Task | None, str]:
    """(the task, "") or (None, why there is none)."""
    match = _TASK_ID.fullmatch(task_id) if isinstance(task_id, str) else None
    if match is None:
        return None, f"task ids look like 'ch00.causal_mask', got {task_id!r}"
    error = load_error(match.group(1))
    if error is not None:
        return None, error
    if task_id not in REGISTRY:
        known = ", ".join(t.id for t in tasks_of(match.group(1))) or "none"
        return None, f"unknown task {task_id!r}; chapter {match.group(1)}'s tasks: {known}"
    return REGISTRY[task_id], ""
