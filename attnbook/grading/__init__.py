"""The autograder: ``check()`` in a notebook, ``attnbook grade NN`` in a shell, pytest in CI.

    >>> from attnbook.grading import check
    >>> check("ch00.causal_mask", my_causal_mask)      # doctest: +SKIP

Each chapter's ``checks/chNN_<slug>.py`` declares its tasks (``@task``) and their common
mistakes (``@mistake``); it is imported only when that chapter is graded.
"""

from .core import (
    MISTAKES,
    REGISTRY,
    CheckFailed,
    Mistake,
    Task,
    case,
    get_task,
    load_error,
    mistake,
    mistakes_of,
    task,
    tasks_of,
)
from .engine import check, run_task
from .environment import triton_interpreter
from .result import Result
from .runner import find_exercise_file, grade_file, grade_module, load_module, print_report

__all__ = [
    "MISTAKES",
    "REGISTRY",
    "CheckFailed",
    "Mistake",
    "Result",
    "Task",
    "case",
    "check",
    "get_task",
    "load_error",
    "mistake",
    "mistakes_of",
    "run_task",
    "task",
    "tasks_of",
    "triton_interpreter",
    "find_exercise_file",
    "grade_file",
    "grade_module",
    "load_module",
    "print_report",
]
