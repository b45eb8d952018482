"""Grade a whole exercise (or solution) file: find it, load it, run its tasks, print a table."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .core import _short_error, chapter_of, load_error, tasks_of
from .engine import run_task
from .environment import triton_interpreter
from .result import Result

__all__ = ["find_exercise_file", "load_module", "grade_module", "grade_file", "print_report"]


def find_exercise_file(
    chapter: str | int, *, solutions: bool = False, root: str | Path | None = None
) -> Path:
    """Path of ``exercises/chNN_*.py`` (or ``solutions/chNN_*.py``) under ``root``.

    Without ``root``, look in the current folder and its parents for the repository.
    """
    nn = chapter_of(chapter)
    folder = "solutions" if solutions else "exercises"
    starts = [Path(root)] if root is not None else [Path.cwd(), *Path.cwd().parents]
    for base in starts:
        matches = sorted((base / folder).glob(f"ch{nn}_*.py"))
        if matches:
            return matches[0]
    where = root if root is not None else f"{Path.cwd()} or its parents"
    raise FileNotFoundError(
        f"no {folder}/ch{nn}_*.py found in {where}; run the command from the attnbook repository "
        "(git clone it first) or pass --root"
    )


def load_module(path: str | Path) -> ModuleType:
    """Import a Python file by path, under a private name (so exercises and solutions coexist).

    A file with Triton kernels decorates them when it is loaded: load it inside
    :func:`~attnbook.grading.environment.triton_interpreter` (as :func:`grade_file` does).
    """
    path = Path(path)
    name = f"_attnbook_graded_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def grade_module(
    module: ModuleType, chapter: str | int, *, seed: int | None = None, only: Iterable[str] | None = None
) -> list[Result]:
    """Run the tasks of ``chapter`` (or those in ``only``) against the functions of ``module``."""
    nn = chapter_of(chapter)
    error = load_error(nn)
    if error is not None:
        return [Result(f"ch{nn}", 0, "error", error)]
    wanted = None if only is None else set(only)
    results = []
    for t in tasks_of(nn):
        if wanted is not None and t.id not in wanted:
            continue
        fn = getattr(module, t.function_name, None)
        if fn is None:
            results.append(
                Result(t.id, t.points, "error", f"{module.__file__} defines no function {t.function_name}")
            )
        else:
            results.append(run_task(t.id, fn, seed=seed))
    return results


def grade_file(
    path: str | Path, chapter: str | int, *, seed: int | None = None, only: Iterable[str] | None = None
) -> list[Result]:
    """Load ``path`` and grade it; never raises. Without a GPU, Triton's interpreter is on throughout."""
    nn = chapter_of(chapter)
    error = load_error(nn)
    if error is not None:
        return [Result(f"ch{nn}", 0, "error", error)]
    with triton_interpreter():
        try:
            module = load_module(path)
        except Exception as err:  # noqa: BLE001 - a learner's syntax error must not print a traceback
            points = sum(t.points for t in tasks_of(nn) if only is None or t.id in set(only))
            return [Result(f"ch{nn}", points, "error", f"could not import {path}: {_short_error(err)}")]
        return grade_module(module, nn, seed=seed, only=only)


def _result_text(result: Result, solutions: bool) -> str:
    if result.status == "not implemented" and solutions:
        return "FAILED: still a stub"
    if result.partial:
        return f"{result.label} (partly)"
    return result.label


def print_report(
    results: list[Result], title: str = "", *, solutions: bool = False, replay: str = ""
) -> None:
    """A per-task table (task, points, cases, result), the score, then each failure's message.

    Args:
        solutions: the file graded is a solution: a stub there is a failure, not work to do.
        replay: a command that replays the run, printed under a failure of random inputs.
    """
    if title:
        print(title)
    rows = [("task", "points", "cases", "result")] + [
        (r.task_id, f"{r.earned:g}/{r.points}", r.cases, _result_text(r, solutions)) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print(line)
    print(line)
    earned, total = sum(r.earned for r in results), sum(r.points for r in results)
    print(f"score: {earned:g}/{total} points, {sum(r.passed for r in results)}/{len(results)} tasks passed")
    explained = [r for r in results if not r.passed and r.status != "not implemented"]
    if explained:
        print("\nhints:")
        for r in explained:
            print(f"- {r.task_id}: " + r.message.replace("\n", "\n  "))
    if replay and any("seed=" in r.message for r in explained):
        print(f"\nreplay these inputs: {replay}")
