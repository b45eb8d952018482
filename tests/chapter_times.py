"""A pytest plugin that prints what each chapter costs the test run, and projects it to 31 chapters.

A chapter's cost is its notebook (nbval, every cell) plus its own tests (its exercise tests and
its library test), as DESIGN.md budgets it: at most 60 s + 20 s on 2 CPU cores. The rest of
the suite (core library, grader, site, kernels) is the platform. The projection assumes every
chapter still to be written costs what the written ones cost on average.

Loaded from the root conftest.py; the table is printed at the end of every run that executed
chapter tests (``-p no:tests.chapter_times`` turns it off).
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import cache

TOTAL_CHAPTERS = 31
NOTEBOOK = re.compile(r"book/chapters/(\d\d)-[\w-]+\.ipynb")
EXERCISE_TEST = re.compile(r"tests/exercises/test_ch(\d\d)_\w+\.py")
LIBRARY_TEST = re.compile(r"tests/library/test_(\w+)\.py")

_notebook: dict[str, float] = defaultdict(float)
_tests: dict[str, float] = defaultdict(float)
_other: dict[str, float] = defaultdict(float)


@cache
def _library_test_owners() -> dict[str, str]:
    """Library test module name (e.g. 'gaussian_adaptive') -> chapter number, from the manifest."""
    try:
        from attnbook.chapters import CHAPTERS
    except ImportError:  # no manifest: library tests count as platform
        return {}
    return {c.slug.replace("-", "_"): c.number for c in CHAPTERS}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if m := NOTEBOOK.search(path):
        _notebook[m.group(1)] += report.duration
        return
    if m := EXERCISE_TEST.search(path):
        _tests[m.group(1)] += report.duration
        return
    m = LIBRARY_TEST.search(path)
    owner = _library_test_owners().get(m.group(1)) if m else None
    if owner is not None:
        _tests[owner] += report.duration
    else:
        _other[path.split("/")[1] if path.startswith("tests/") and "/" in path[6:] else path] += (
            report.duration
        )


def pytest_terminal_summary(terminalreporter):
    chapters = sorted(set(_notebook) | set(_tests))
    if not chapters:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time per chapter (notebook + its own tests; budget 60 s + 20 s)")
    write(f"{'chapter':>7}  {'notebook':>9}  {'tests':>7}  {'total':>7}")
    costs = []
    for nn in chapters:
        nb, tests = _notebook.get(nn, 0.0), _tests.get(nn, 0.0)
        flag = "  over budget" if nb > 60 or tests > 20 else ""
        write(f"{nn:>7}  {nb:8.1f}s  {tests:6.1f}s  {nb + tests:6.1f}s{flag}")
        costs.append(nb + tests)
    platform = sum(_other.values())
    mean = sum(costs) / len(costs)
    projected = platform + mean * TOTAL_CHAPTERS
    write(
        f"platform (library, grader, kernels, site): {platform:.0f} s; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in sorted(_other.items(), key=lambda kv: -kv[1])[:4])
    )
    write(
        f"{len(chapters)} chapters: {sum(costs):.0f} s, mean {mean:.1f} s; "
        f"projected at {TOTAL_CHAPTERS} chapters: {projected / 60:.1f} min of tests (plus set-up)"
    )
