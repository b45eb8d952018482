"""Library tests for chapter 19: attnbook/mechanisms/varied_windows.py.

SCAFFOLD: test the functional form against an independent reference and its limit cases, the
module against the functional form, bad input (a clear ValueError or TypeError naming the
argument), float32 and float64, and that the tensors it creates follow the inputs' device.
"""

import pytest

from attnbook.chapters import by_number
from attnbook.mechanisms import varied_windows as mechanism

CHAPTER = by_number("19")


def test_the_public_names_are_documented():
    if not mechanism.__all__ and CHAPTER.status == "draft":
        pytest.skip("chapter 19 is a draft: its mechanism exports nothing yet")
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"
