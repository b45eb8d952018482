"""The autograder itself: it grades, explains, and never crashes."""
import math
import subprocess
import sys
from pathlib import Path

import torch

from attnbook.grading import check, run_task, tasks_of

ROOT = Path(__file__).resolve().parents[2]


def test_correct_function_passes_and_renders():
    result = check("ch00.causal_mask", lambda N, M=None: torch.ones(N, N if M is None else M, dtype=torch.bool).tril((M or N) - N))
    assert result.passed and result.earned == result.points
    assert "passed" in result._repr_html_()


def test_wrong_answer_gets_a_named_hint():
    def transposed_softmax(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=-2)
        return w @ v, w

    result = check("ch00.scaled_dot_product_attention", transposed_softmax)
    assert result.status == "failed" and "query axis" in result.message


def test_crash_nan_wrong_shape_and_stub_are_reported_not_raised():
    assert run_task("ch00.split_heads", lambda x, H: 1 / 0).status == "error"
    assert "NaN" in run_task("ch00.merge_heads", lambda x: torch.full((x.shape[0], x.shape[2], x.shape[1] * x.shape[3]), float("nan"))).message
    assert "shape" in run_task("ch00.merge_heads", lambda x: x).message
    assert run_task("ch00.merge_heads", lambda x: (_ for _ in ()).throw(NotImplementedError())).status == "not implemented"
    assert run_task("ch00.merge_heads", "not a function").status == "error"
    assert run_task("ch99.nothing", lambda: None).status == "error"


def test_cli_grades_solutions_and_stubs():
    assert tasks_of("00")
    ok = subprocess.run([sys.executable, "-m", "attnbook.cli", "grade", "00", "--solutions"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stubs = subprocess.run([sys.executable, "-m", "attnbook.cli", "grade", "00"], cwd=ROOT, capture_output=True, text=True)
    assert stubs.returncode == 1 and "not implemented yet" in stubs.stdout and "Traceback" not in stubs.stdout + stubs.stderr
    missing = subprocess.run([sys.executable, "-m", "attnbook.cli", "grade", "77"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "error" in missing.stderr
