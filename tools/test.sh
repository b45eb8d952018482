#!/usr/bin/env bash
# Run the whole test suite: lint and format (ruff), library, autograder (solutions), kernels (Triton's CPU interpreter
# when there is no GPU), every chapter notebook through nbval, and the website in a browser.
#   bash tools/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .            # lint (configured in pyproject.toml)
.venv/bin/ruff format --check .   # formatting
# --durations: the slowest tests; the table at the end gives each chapter's cost (notebook + its tests)
exec .venv/bin/python -m pytest --nbval-lax -q --durations=15 tests book/chapters "$@"
