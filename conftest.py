"""Root pytest configuration shared by every test folder.

- With no CUDA GPU, run Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1),
  set here before anything imports triton.
- ``--target`` (or ATTNBOOK_TARGET) chooses what tests/exercises grades: ``solutions``
  (the default, as in CI: a function that still raises NotImplementedError FAILS) or
  ``exercises`` (your own work; stubs are skipped as "not implemented yet").
"""

import os

pytest_plugins = ["tests.chapter_times"]  # the time-per-chapter table at the end of a run

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_addoption(parser):
    parser.addoption(
        "--target",
        choices=("solutions", "exercises"),
        default=os.environ.get("ATTNBOOK_TARGET", "solutions"),
        help="what tests/exercises grades: solutions/ (default) or exercises/",
    )
