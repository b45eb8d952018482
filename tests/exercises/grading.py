"""The pytest face of the autograder: each chapter's exercise tests are generated from its checks.

    from tests.exercises.grading import chapter_tests

    test_task, test_mistake = chapter_tests("00")

- ``test_task[chNN.name]`` grades the function of the target file: ``solutions/`` (the
  default, as in CI: a stub there FAILS) or ``exercises/`` with ``--target=exercises`` or
  ATTNBOOK_TARGET=exercises (a stub is skipped as "not implemented yet").
- ``test_mistake[chNN.name-mistake]`` runs each mistake the check module declares: it must fail
  its task, and the message must name its own hint and no other mistake's.

A chapter whose manifest status is not "written" (a draft) does not fail CI on its stubs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attnbook.grading import find_exercise_file, grade_file, load_error, mistakes_of, run_task, tasks_of

ROOT = Path(__file__).resolve().parents[2]


def draft_reason(chapter: str) -> str:
    """ "chapter NN is a draft" when the manifest says the chapter is not written yet, else ""."""
    try:
        from attnbook.chapters import CHAPTERS
    except ImportError:  # no manifest: every chapter with checks counts as written
        return ""
    entries = CHAPTERS.values() if isinstance(CHAPTERS, dict) else CHAPTERS
    status = next(
        (getattr(c, "status", "written") for c in entries if getattr(c, "number", None) == chapter), "written"
    )
    return "" if status == "written" else f"chapter {chapter} is a draft"


def chapter_tests(chapter: str):
    """(test_task, test_mistake) for ``chapter``, parametrised over its tasks and declared mistakes."""
    nn = f"{int(chapter):02d}"
    error = load_error(nn)
    draft = draft_reason(nn)
    task_ids = [t.id for t in tasks_of(nn)] or [f"ch{nn}"]  # one failing test when the checks cannot load

    @pytest.mark.parametrize("task_id", task_ids)
    def test_task(task_id, request):
        if error:
            pytest.fail(error, pytrace=False)
        solutions = request.config.getoption("--target") == "solutions"
        if solutions and draft:
            pytest.skip(draft)
        path = find_exercise_file(nn, solutions=solutions, root=ROOT)
        [result] = grade_file(path, nn, only=[task_id])
        if result.status == "not implemented":
            if solutions:
                pytest.fail(
                    f"{task_id}: the solution in {path.name} is still a stub (it raises NotImplementedError)",
                    pytrace=False,
                )
            pytest.skip(f"{task_id}: not implemented yet")
        assert result.passed, str(result)

    mistakes = mistakes_of(nn)

    @pytest.mark.parametrize("mistake", mistakes, ids=[f"{m.task_id}-{m.name}" for m in mistakes])
    def test_mistake(mistake):
        result = run_task(mistake.task_id, mistake.fn)
        if result.status == "not implemented" and draft:
            pytest.skip(draft)
        assert not result.passed, f"{mistake.name} passes {mistake.task_id}: the check does not reject it"
        assert mistake.hint in result.message, f"{mistake.name} does not get its own hint:\n{result}"
        for other in mistakes_of(mistake.task_id):
            if other is not mistake and other.hint not in mistake.hint:
                assert other.hint not in result.message, f"{mistake.name} gets {other.name}'s hint:\n{result}"

    return test_task, test_mistake
