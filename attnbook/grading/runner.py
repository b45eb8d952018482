"""Grade a whole exercise (or solution) file: find it, load it, run its tasks, print a table."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .core import Result, run_task, tasks_of

__all__ = ["find_exercise_file", "load_module", "grade_module", "print_report"]


def find_exercise_file(chapter: str | int, *, solutions: bool = False, root: str | Path | None = None) -> Path:
    """Path of ``exercises/chNN_*.py`` (or ``solutions/chNN_*.py``) under ``root``.

    Without ``root``, look in the current folder and its parents for the repository.
    """
    nn = f"{int(chapter):02d}"
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
    """Import a Python file by path, under a private name (so exercises and solutions coexist)."""
    path = Path(path)
    name = f"_attnbook_graded_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def grade_module(module: ModuleType, chapter: str | int) -> list[Result]:
    """Run every task of ``chapter`` against the functions of the same name in ``module``."""
    results = []
    for t in tasks_of(chapter):
        fn = getattr(module, t.function_name, None)
        if fn is None:
            results.append(Result(t.id, t.points, "error", f"{module.__file__} defines no function {t.function_name}"))
        else:
            results.append(run_task(t.id, fn))
    return results


def print_report(results: list[Result], title: str = "") -> None:
    """A per-task table: task, points, result, hint."""
    if title:
        print(title)
    rows = [("task", "points", "result")] + [
        (r.task_id, f"{r.earned}/{r.points}", "passed" if r.passed else ("not implemented yet" if r.status == "not implemented" else r.status))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print(line)
    print(line)
    earned, total = sum(r.earned for r in results), sum(r.points for r in results)
    print(f"score: {earned}/{total} points, {sum(r.passed for r in results)}/{len(results)} tasks passed")
    hints = [r for r in results if not r.passed and r.status != "not implemented" and r.message]
    if hints:
        print("\nhints:")
        for r in hints:
            print(f"- {r.task_id}: " + r.message.replace("\n", "\n  "))
