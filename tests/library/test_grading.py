"""The autograder itself: it grades, explains, replays, stops hanging code, and never crashes."""

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import attnbook.grading.checks
from attnbook.cli import main as cli
from attnbook.grading import (
    CheckFailed,
    case,
    check,
    core,
    grade_file,
    load_error,
    mistakes_of,
    run_task,
    tasks_of,
)
from attnbook.grading.engine import same_answer
from tests.exercises import grading as exercise_tests

ROOT = Path(__file__).resolve().parents[2]


def causal(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M, dtype=torch.bool).tril(M - N)


def sdpa(q, k, v, mask=None, dim=-1):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    w = torch.softmax(s, dim=dim)
    return w @ v, w


def test_correct_function_passes_and_renders():
    result = check("ch00.causal_mask", causal)
    assert result.passed and result.earned == result.points == 2
    assert str(result) == "ch00.causal_mask: PASSED (2/2 points)"
    assert "passed" in result._repr_html_()


def test_a_learners_own_wrong_answer_gets_the_declared_hint():
    """The hint comes from comparing answers: the learner's code is not the declared mistake's."""
    result = check(
        "ch00.scaled_dot_product_attention", lambda q, k, v, mask=None: sdpa(q, k, v, mask, dim=-2)
    )
    assert result.status == "failed"
    assert "Your answer matches a common mistake: softmax over the query axis" in result.message
    last_line = result.message.splitlines()[-1].strip()  # what the notebooks print
    assert last_line.startswith("Your answer matches")


def test_generic_mistakes_are_reported_not_raised():
    """Raises, NaN, wrong shape or dtype, None, a stub, not a function, an unknown task: each a Result."""
    raised = run_task("ch00.split_heads", lambda x, H: 1 / 0)
    assert raised.status == "error" and "your function raised ZeroDivisionError" in raised.message
    assert "test_grading.py:" in raised.message  # where it raised
    nan = run_task(
        "ch00.merge_heads", lambda x: torch.full((x.shape[0], x.shape[2], x.shape[1] * x.shape[3]), math.nan)
    )
    assert nan.status == "failed" and "NaN" in nan.message
    assert "expected shape" in run_task("ch00.merge_heads", lambda x: x).message
    dtype = run_task("ch00.merge_heads", lambda x: x.transpose(1, 2).flatten(2).double())
    assert "expected dtype torch.float32, got torch.float64" in dtype.message
    none = run_task("ch00.scaled_dot_product_attention", lambda q, k, v, mask=None: None)
    assert none.status == "failed" and "got None (is a `return` missing?)" in none.message
    stub = run_task("ch00.merge_heads", lambda x: (_ for _ in ()).throw(NotImplementedError()))
    assert stub.status == "not implemented" and "NOT IMPLEMENTED YET" in str(stub)
    assert run_task("ch00.merge_heads", "not a function").status == "error"
    assert run_task("ch99.nothing", lambda: None).status == "error"
    assert run_task("no task", lambda: None).status == "error"


def test_a_check_that_cannot_use_the_answer_names_what_came_back():
    def bad_mask(N, M=None):
        return [[True]]  # not a tensor: expect_close reports it

    assert "expected a torch.Tensor, got list" in run_task("ch00.causal_mask", bad_mask).message

    def returns_none(q, k, v, o, do, lse):
        return None

    result = run_task("ch29.attention_backward", returns_none)
    assert result.status == "failed" and "return a tuple (dq, dk, dv); got None" in result.message


def test_an_answer_a_check_cannot_use_is_an_error_naming_it(fake_checks):
    fake_checks(
        "ch96_plain",
        'from ..core import task\n\n\n@task("ch96.f")\ndef check_f(fn):\n'
        "    if len(fn()) != 2:\n        raise AssertionError\n",
    )
    result = run_task("ch96.f", lambda: None)
    assert result.status == "error" and "could not be checked (TypeError" in result.message
    assert "your function returned None: is a `return` missing?" in result.message
    assert run_task("ch96.f", lambda: (1, 2)).passed


def test_hanging_code_is_stopped():
    threads = threading.active_count()

    def hangs(N, M=None):
        while True:
            pass

    start = time.monotonic()
    result = run_task("ch00.causal_mask", hangs, time_limit=0.5)
    assert result.status == "timeout" and "did not finish within 0.5 s" in result.message
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 2
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads
    assert not any(t.name.startswith("grade-") for t in threading.enumerate())


def test_a_failure_shows_its_seed_and_shapes_and_the_seed_replays_it():
    def noisy_split(x, H):  # wrong, and random through torch's global generator
        B, N, D = x.shape
        return x.reshape(B, N, H, D // H).transpose(1, 2) + 1e-3 * torch.randn(B, H, N, D // H, dtype=x.dtype)

    first = check("ch00.split_heads", noisy_split)
    assert f"seed={first.seed}" in first.message and "x=float64 (2, 5, 12), H=4" in first.message
    again = check("ch00.split_heads", noisy_split, seed=first.seed)
    assert again.message == first.message
    other = check("ch00.split_heads", noisy_split, seed=first.seed + 1)
    assert other.message != first.message  # the random inputs (and the error) differ
    assert f"seed={first.seed}" in first._repr_html_()


def test_partial_credit_counts_the_cases():
    result = check(
        "ch00.causal_mask", lambda N, M=None: torch.ones(N, N if M is None else M, dtype=torch.bool).tril(0)
    )
    assert (result.cases_passed, result.cases_total) == (3, 6) and result.partial and result.earned == 1
    assert str(result).startswith("ch00.causal_mask: FAILED (1/2 points, 3/6 cases)")
    assert "3/6 cases" in result._repr_html_()
    assert "case 4 of 6: <lambda>(N=3, M=7)" in result.message
    failed = check("ch00.causal_mask", lambda N, M=None: ~causal(N, M))
    assert str(failed).startswith("ch00.causal_mask: FAILED (0/2 points)\n") and failed.earned == 0


def test_cases_outside_the_engine_let_failures_through():
    with pytest.raises(CheckFailed):
        with case():
            raise CheckFailed("no engine: nothing to count")


def test_same_answer_compares_structures():
    x = torch.tensor([1.0, 2.0])
    assert same_answer((x, 1.5, [x]), (x + 1e-7, 1.5, [x]))
    assert not same_answer((x, 1.5), (x, 1.6))
    assert not same_answer(x, x.double()) and not same_answer(x, x[:1]) and not same_answer(x, None)
    assert same_answer(torch.tensor([math.nan]), torch.tensor([math.nan]))


# --- lazy loading, isolation ----------------------------------------------------------------
def test_each_chapter_loads_only_its_own_checks():
    code = (
        "import sys\n"
        "from attnbook.grading import tasks_of\n"
        "assert tasks_of('00')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('attnbook.grading.checks.'))\n"
        "print(loaded)\n"
        "main = 'attnbook.grading.checks.ch00_multi_head_attention'\n"
        "assert loaded == [main, main + '_mistakes'], loaded  # the check module and its companion\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def fake_checks(tmp_path, monkeypatch):
    """add(name, source): a check module checks/<name>.py that only this test sees."""
    folder = tmp_path / "checks"
    folder.mkdir()
    monkeypatch.setattr(attnbook.grading.checks, "__path__", [*attnbook.grading.checks.__path__, str(folder)])
    monkeypatch.setattr(core, "_LOADED", dict(core._LOADED))
    monkeypatch.setattr(core, "MISTAKES", dict(core.MISTAKES))
    return lambda name, source: (folder / f"{name}.py").write_text(source)


@pytest.fixture
def broken_chapter(tmp_path, fake_checks):
    """A chapter 98 whose check module raises on import, with a solution file under tmp_path."""
    fake_checks(
        "ch98_broken",
        'from ..core import task\n\n\n@task("ch98.f")\ndef check_f(fn):\n'
        '    fn()\n\n\nraise RuntimeError("deliberately broken")\n',
    )
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "ch98_broken.py").write_text("def f():\n    return 1\n")
    return tmp_path


def test_a_broken_check_module_fails_its_own_chapter_only(broken_chapter, capsys):
    error = load_error("98")
    assert error and "RuntimeError: deliberately broken" in error
    assert tasks_of("98") == [] and "ch98.f" not in core.REGISTRY  # nothing half-registered
    result = check("ch98.f", lambda: 1)
    assert result.status == "error" and "deliberately broken" in result.message
    [row] = grade_file(broken_chapter / "solutions" / "ch98_broken.py", "98")
    assert row.status == "error" and "deliberately broken" in row.message
    assert check("ch00.causal_mask", causal).passed  # the other chapters still grade
    assert cli(["grade", "98", "--solutions", "--root", str(broken_chapter)]) == 1
    out = capsys.readouterr()
    assert "deliberately broken" in out.out and "Traceback" not in out.out + out.err
    test_task, _ = exercise_tests.chapter_tests("98")
    with pytest.raises(pytest.fail.Exception, match="deliberately broken"):
        test_task("ch98", None)


def test_a_mistake_for_an_unknown_task_is_a_load_error(fake_checks):
    fake_checks(
        "ch97_typo",
        'from ..core import mistake, task\n\n\n@task("ch97.f")\ndef check_f(fn):\n    fn()\n\n\n'
        '@mistake("ch97.g", "a hint")\ndef g():\n    return 0\n',
    )
    assert "unknown tasks: ch97.g" in load_error("97") and tasks_of("97") == [] and not mistakes_of("97")


# --- stubs in solutions fail; stubs in exercises are work to do ------------------------------
@pytest.fixture
def stub_solutions(tmp_path):
    """A repository copy whose solutions/ch00 file is the stub file."""
    for folder in ("exercises", "solutions"):
        (tmp_path / folder).mkdir()
        shutil.copy(ROOT / "exercises" / "ch00_multi_head_attention.py", tmp_path / folder)
    return tmp_path


class _Request:
    def __init__(self, target):
        self.config = type("Config", (), {"getoption": staticmethod(lambda name: target)})()


def test_a_stub_in_solutions_fails(stub_solutions, monkeypatch, capsys):
    assert cli(["grade", "00", "--solutions", "--root", str(stub_solutions)]) == 1
    out = capsys.readouterr().out
    assert "FAILED: still a stub" in out and "not implemented yet" not in out
    monkeypatch.setattr(exercise_tests, "ROOT", stub_solutions)
    test_task, _ = exercise_tests.chapter_tests("00")
    with pytest.raises(pytest.fail.Exception, match="still a stub"):
        test_task("ch00.causal_mask", _Request("solutions"))
    with pytest.raises(pytest.skip.Exception, match="not implemented yet"):
        test_task("ch00.causal_mask", _Request("exercises"))


def test_a_draft_chapter_does_not_fail_on_its_stubs(stub_solutions, monkeypatch):
    chapters = pytest.importorskip("attnbook.chapters")
    draft = [
        type("Entry", (), {"number": c.number, "status": "draft" if c.number == "00" else c.status})()
        for c in chapters.CHAPTERS
    ]
    monkeypatch.setattr(chapters, "CHAPTERS", draft)
    monkeypatch.setattr(exercise_tests, "ROOT", stub_solutions)
    test_task, _ = exercise_tests.chapter_tests("00")
    with pytest.raises(pytest.skip.Exception, match="chapter 00 is a draft"):
        test_task("ch00.causal_mask", _Request("solutions"))


# --- the command line ------------------------------------------------------------------------
def test_cli_grades_solutions_and_stubs():
    ok = subprocess.run(
        [sys.executable, "-m", "attnbook.cli", "grade", "00", "--solutions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    stubs = subprocess.run(
        [sys.executable, "-m", "attnbook.cli", "grade", "00"], cwd=ROOT, capture_output=True, text=True
    )
    assert stubs.returncode == 1 and "not implemented yet" in stubs.stdout
    assert "Traceback" not in stubs.stdout + stubs.stderr
    assert cli(["grade", "77", "--root", str(ROOT)]) == 2


def test_cli_seed_replays_a_run(stub_solutions, capsys):
    solution = (ROOT / "solutions" / "ch00_multi_head_attention.py").read_text()
    wrong = solution.replace("def split_heads(", "def _split_heads(") + (
        "\n\ndef split_heads(x, H):\n    B, N, D = x.shape\n    return x.reshape(B, H, N, D // H)\n"
    )
    (stub_solutions / "solutions" / "ch00_multi_head_attention.py").write_text(wrong)
    args = ["grade", "00", "--solutions", "--root", str(stub_solutions), "--seed", "1234"]
    assert cli(args) == 1
    first = capsys.readouterr().out
    assert "seed=1234" in first and "--seed 1234" in first and "1.5/1" not in first
    assert "0.5/1" in first and "2/4" in first  # partial credit in the table
    assert cli(args) == 1
    assert capsys.readouterr().out == first


def test_grading_leaves_the_environment_unchanged(monkeypatch):
    """Importing every check module and grading (Triton's window included) changes no variable."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    before = dict(os.environ)
    chapters = sorted(
        {p.name[2:4] for p in Path(attnbook.grading.checks.__path__[0]).glob("ch[0-9][0-9]_*.py")}
    )
    for nn in chapters:
        assert load_error(nn) is None and tasks_of(nn)
    for module in sorted(m for m in sys.modules if m.startswith("attnbook.grading.checks.")):
        __import__(module)
    assert dict(os.environ) == before
    only = ["ch29.online_softmax_update"] + (
        ["ch29.triton_attention_forward"] if not torch.cuda.is_available() else []
    )
    results = grade_file(ROOT / "solutions" / "ch29_fused_attention_kernel.py", "29", only=only)
    assert all(r.passed for r in results), results
    assert dict(os.environ) == before


def test_expect_number_accepts_numbers_and_one_element_tensors_only():
    from attnbook.grading.core import CheckFailed
    from attnbook.grading.expect import expect_accuracy, expect_number, one_thread

    assert expect_number(torch.tensor([0.25]), "x") == 0.25 and expect_number(3, "x") == 3.0
    for bad in (True, "0.5", torch.ones(2), None):
        with pytest.raises(CheckFailed, match="x: return a float"):
            expect_number(bad, "x")
    with pytest.raises(CheckFailed, match="fraction, not percent"):
        expect_accuracy(57.0, "acc")
    assert expect_accuracy(1, "acc") == 1.0
    threads = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
