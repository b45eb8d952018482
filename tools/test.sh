#!/usr/bin/env bash
# Run the whole test suite: library, autograder (solutions), kernels (Triton's CPU interpreter
# when there is no GPU), every chapter notebook through nbval, and the website in a browser.
#   bash tools/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest --nbval-lax -q tests book/chapters "$@"
