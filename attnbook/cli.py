"""The ``attnbook`` command: ``attnbook grade NN [--solutions] [--root PATH] [--seed S]``."""

from __future__ import annotations

import argparse
import random
import sys

from .grading import find_exercise_file, grade_file, load_error, print_report, tasks_of


def _grade(args: argparse.Namespace) -> int:
    try:
        path = find_exercise_file(args.chapter, solutions=args.solutions, root=args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if load_error(args.chapter) is None and not tasks_of(args.chapter):
        print(f"error: chapter {args.chapter} has no graded tasks", file=sys.stderr)
        return 2
    seed = random.randrange(2**31) if args.seed is None else args.seed
    results = grade_file(path, args.chapter, seed=seed)
    replay = f"attnbook grade {args.chapter}{' --solutions' if args.solutions else ''} --seed {seed}"
    print_report(results, title=f"grading {path}\n", solutions=args.solutions, replay=replay)
    return 0 if all(r.passed for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnbook", description="attnbook: grade your exercises")
    sub = parser.add_subparsers(dest="command", required=True)
    grade = sub.add_parser("grade", help="grade exercises/chNN_*.py (or solutions/ with --solutions)")
    grade.add_argument("chapter", help="chapter number, e.g. 00 or 2")
    grade.add_argument(
        "--solutions", action="store_true", help="grade solutions/ instead of exercises/ (a stub there fails)"
    )
    grade.add_argument("--root", default=None, help="the repository folder (default: found from here)")
    grade.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the seed of the random inputs (a failure prints the one to replay it)",
    )
    args = parser.parse_args(argv)
    if not args.chapter.isdigit():
        parser.error(f"chapter must be a number such as 00, got {args.chapter!r}")
    return _grade(args)


if __name__ == "__main__":
    sys.exit(main())
