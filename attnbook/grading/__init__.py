"""The autograder: ``check()`` in a notebook, ``attnbook grade NN`` in a shell, pytest in CI.

    >>> from attnbook.grading import check
    >>> check("ch00.causal_mask", my_causal_mask)      # doctest: +SKIP
"""
from .core import REGISTRY, CheckFailed, Result, Task, check, run_task, task, tasks_of
from .runner import find_exercise_file, grade_module, load_module, print_report

__all__ = [
    "REGISTRY", "CheckFailed", "Result", "Task", "check", "run_task", "task", "tasks_of",
    "find_exercise_file", "grade_module", "load_module", "print_report",
]
