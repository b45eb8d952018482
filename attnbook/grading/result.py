"""The outcome of grading one task: text for a shell, a coloured box for a notebook."""

from __future__ import annotations

import html
from dataclasses import dataclass

__all__ = ["Result"]

_MARK = {"passed": "PASSED", "not implemented": "NOT IMPLEMENTED YET"}
_LABEL = {"passed": "passed", "not implemented": "not implemented yet", "timeout": "timed out"}
_COLOUR = {"passed": "#1b7f3b", "not implemented": "#8a6d00", "partial": "#b35c00"}


@dataclass
class Result:
    """One task's grade.

    Attributes:
        status: "passed", "failed", "error" (the function raised, or its answer could not be
            used), "timeout", or "not implemented" (the function is still a stub).
        message: what went wrong, the failed case and, when the answer matches a common
            mistake, its hint.
        cases_passed, cases_total: the sub-checks passed, when the task has several and the
            check ran to its end (0, 0 otherwise).
        seed: the seed of the run; ``check(task_id, fn, seed=seed)`` replays it.
    """

    task_id: str
    points: int
    status: str
    message: str = ""
    cases_passed: int = 0
    cases_total: int = 0
    seed: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def partial(self) -> bool:
        """Failed, but some of its cases passed."""
        return not self.passed and self.cases_total > 1 and self.cases_passed > 0

    @property
    def earned(self) -> float:
        """Points earned: all when passed, in proportion to the cases passed when partial."""
        if self.passed:
            return self.points
        if self.partial:
            return round(self.points * self.cases_passed / self.cases_total, 1)
        return 0

    @property
    def cases(self) -> str:
        """ "3/5" when the task ran several cases, else ""."""
        return f"{self.cases_passed}/{self.cases_total}" if self.cases_total > 1 else ""

    @property
    def label(self) -> str:
        return _LABEL.get(self.status, self.status)

    def _score(self) -> str:
        extra = f", {self.cases} cases" if self.partial else ""
        return f"{self.earned:g}/{self.points} points{extra}"

    def __str__(self) -> str:
        text = f"{self.task_id}: {_MARK.get(self.status, 'FAILED')} ({self._score()})"
        return f"{text}\n  {self.message}" if self.message else text

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        colour = _COLOUR.get("partial" if self.partial else self.status, "#b00020")
        body = ""
        if self.message:
            body = f"<br><span style='white-space:pre-wrap'>{html.escape(self.message)}</span>"
        if self.seed is not None and not self.passed and self.status != "not implemented":
            body += (
                f"<br><small>replay this run: <code>check({html.escape(repr(self.task_id))}, fn, "
                f"seed={self.seed})</code></small>"
            )
        return (
            f"<div style='border-left:4px solid {colour};padding:4px 10px;margin:4px 0'>"
            f"<b>{html.escape(self.task_id)}</b>: <span style='color:{colour}'><b>{self.label}</b></span> "
            f"({html.escape(self._score())}){body}</div>"
        )
