"""The ``attnbook`` command: ``attnbook grade NN [--solutions] [--root PATH]``."""
from __future__ import annotations

import argparse
import sys

from .grading import find_exercise_file, grade_module, load_module, print_report, tasks_of


def _grade(args: argparse.Namespace) -> int:
    try:
        path = find_exercise_file(args.chapter, solutions=args.solutions, root=args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not tasks_of(args.chapter):
        print(f"error: chapter {args.chapter} has no graded tasks", file=sys.stderr)
        return 2
    try:
        module = load_module(path)
    except Exception as err:  # noqa: BLE001 - a learner's syntax error must not print a traceback
        print(f"error: could not import {path}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    results = grade_module(module, args.chapter)
    print_report(results, title=f"grading {path}\n")
    return 0 if all(r.passed for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnbook", description="attnbook: grade your exercises")
    sub = parser.add_subparsers(dest="command", required=True)
    grade = sub.add_parser("grade", help="grade exercises/chNN_*.py (or solutions/ with --solutions)")
    grade.add_argument("chapter", help="chapter number, e.g. 00 or 2")
    grade.add_argument("--solutions", action="store_true", help="grade solutions/ instead of exercises/")
    grade.add_argument("--root", default=None, help="the repository folder (default: found from here)")
    args = parser.parse_args(argv)
    if not args.chapter.isdigit():
        parser.error(f"chapter must be a number such as 00, got {args.chapter!r}")
    return _grade(args)


if __name__ == "__main__":
    sys.exit(main())
