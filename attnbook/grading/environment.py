"""The one change of the process environment that grading makes, and only for its duration."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

__all__ = ["triton_interpreter"]


@contextmanager
def triton_interpreter():
    """``TRITON_INTERPRET=1`` while the block runs, when there is no CUDA GPU; restored after.

    Triton chooses its CPU interpreter when a kernel is decorated with ``@triton.jit``, so a
    learner's file with kernels must be loaded inside this block, and its tasks run in it.
    """
    if torch.cuda.is_available():
        yield
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before
