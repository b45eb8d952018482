"""The pytest face of the autograder: each chapter's test file calls these.

    from tests.exercises.grading import graded_task_test, rejects_test
    test_task = graded_task_test("00")
    test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)
"""
from __future__ import annotations

from pathlib import Path

import pytest

from attnbook.grading import find_exercise_file, load_module, run_task, tasks_of

ROOT = Path(__file__).resolve().parents[2]


def graded_task_test(chapter: str):
    """A parametrised test grading every task of ``chapter`` against --target's file."""

    @pytest.mark.parametrize("task_id", [t.id for t in tasks_of(chapter)])
    def test_task(task_id, request):
        target = request.config.getoption("--target")
        module = load_module(find_exercise_file(chapter, solutions=target == "solutions", root=ROOT))
        name = task_id.split(".", 1)[1]
        assert hasattr(module, name), f"{module.__file__} defines no function {name}"
        result = run_task(task_id, getattr(module, name))
        if result.status == "not implemented":
            pytest.skip(f"{task_id}: not implemented yet")
        assert result.passed, str(result)

    return test_task


def rejects_test(wrong_answers: dict[str, list]):
    """A parametrised test asserting that each known wrong answer fails its task's check."""
    cases = [(task_id, fn) for task_id, fns in wrong_answers.items() for fn in fns]

    @pytest.mark.parametrize("task_id,wrong_fn", cases, ids=[f"{t}-{f.__name__}" for t, f in cases])
    def test_rejects_wrong_answer(task_id, wrong_fn):
        result = run_task(task_id, wrong_fn)
        assert not result.passed, f"{wrong_fn.__name__} should fail {task_id}"
        assert result.status in ("failed", "error"), result

    return test_rejects_wrong_answer
