"""Chapter 29: grade the target (solutions by default) and check that every declared mistake fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnbook.grading import load_module, mistakes_of, run_task
from attnbook.grading.checks import ch29_fused_attention_kernel as checks
from attnbook.grading.checks import ch29_fused_attention_kernel_mistakes as mistakes
from tests.exercises.grading import chapter_tests

ROOT = Path(__file__).resolve().parents[2]
test_task, test_mistake = chapter_tests("29")
needs_triton = pytest.mark.skipif(not checks.HAVE_TRITON, reason="needs triton")


@needs_triton
def test_the_mistaken_kernel_without_a_mistake_passes():
    """The kernel behind the Triton mistakes, with no mistake switched on, passes."""
    assert mistakes_of("ch29.triton_attention_forward")
    assert run_task(
        "ch29.triton_attention_forward",
        lambda q, k, v, block_m=16, block_n=16: mistakes._launch(q, k, v, block_m, block_n, 0),
    ).passed


def test_without_triton_the_task_reports_it(monkeypatch):
    """No Triton: the exercise file still imports, and the Triton task fails with a clear message."""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setattr(checks, "HAVE_TRITON", False)
    module = load_module(ROOT / "exercises" / "ch29_fused_attention_kernel.py")
    assert not module.HAVE_TRITON
    assert run_task("ch29.online_softmax_update", module.online_softmax_update).status == "not implemented"
    result = run_task("ch29.triton_attention_forward", module.triton_attention_forward)
    assert result.status == "failed" and "needs Triton" in result.message, result


@needs_triton
def test_check_in_a_fresh_process():
    """check() in a new interpreter where nothing imported triton before the solution file."""
    code = (
        "from attnbook.grading import check, load_module\n"
        "m = load_module('solutions/ch29_fused_attention_kernel.py')\n"
        "r = check('ch29.triton_attention_forward', m.triton_attention_forward)\n"
        "print(r)\n"
        "assert r.passed\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
