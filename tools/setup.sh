#!/usr/bin/env bash
# Set everything up on a fresh Linux machine with Python 3.10+ and build the website.
#   bash tools/setup.sh
# Creates .venv, installs torch 2.13.0 first (the package itself accepts any torch >= 2.4, so
# Colab keeps its own), then attnbook with its kernel and development extras, then builds the
# book from the outputs stored in the notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" "triton==3.7.1"
.venv/bin/python -m pip install -q -e ".[kernels,dev]"
.venv/bin/jupyter-book build book -W -n --keep-going -q
echo
echo "attnbook is installed in .venv (activate it with: source .venv/bin/activate)."
echo "The book is at: $(pwd)/book/_build/html/index.html"
