"""attnbook: a runnable textbook on multi-head attention."""

import os

# Idle OpenMP threads sleep instead of spinning. The book's models are tiny, and spinning
# threads make torch 10-60x slower on a 2-core machine that runs anything else at the
# same time. Effective only when attnbook is imported before torch (as every chapter does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
