"""The mechanical part of the chapter contract, for every chapter the manifest has begun.

For each chapter of attnbook/chapters.py that is a draft or written: every file the manifest
derives exists; the notebook starts with the Colab badge and the hidden install cell, has the
contract's parts (asserted claims, nbval-checked cells, an explorer, a grading demo, the
bibliography) and is stored executed without errors; its checks, exercises, solutions, tasks
and citations agree with the manifest; a written chapter carries no scaffold placeholder.
A chapter scaffolded by tools/new_chapter.py passes it too (tested in a copy of the repository).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbook.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[2]
MARKER = "SCAFFOLD"  # what tools/new_chapter.py leaves where the author still has to write
TASK_ID = re.compile(r"""@task\(\s*["'](ch\d\d\.\w+)["']""")
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def _exported_tasks(root: Path) -> set[str]:
    tree = ast.parse((root / "attnbook" / "tasks" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def notebook_problems(ch, nb: dict) -> list[str]:
    """What the stored notebook lacks of the contract's mechanical part."""
    problems = []
    cells = nb["cells"]
    sources = ["".join(c["source"]) for c in cells]
    tags = [c["metadata"].get("tags", []) for c in cells]
    if not (
        "colab-badge" in tags[0]
        and "colab.research.google.com/github/" in sources[0]
        and f"book/chapters/{ch.label}.ipynb" in sources[0]
    ):
        problems.append("cell 0 is not the Colab badge of this notebook (tag colab-badge)")
    if not ({"install", "hide-input"} <= set(tags[1]) and "import attnbook" in sources[1]):
        problems.append("cell 1 is not the hidden install cell (tags install, hide-input)")
    heading = next(
        (
            s.splitlines()[0]
            for c, s in zip(cells, sources)
            if c["cell_type"] == "markdown" and s.startswith("# ")
        ),
        "",
    )
    if heading != f"# {ch.number} · {ch.title}":
        problems.append(f"the heading {heading!r} is not '# {ch.number} · {ch.title}' (the manifest's title)")
    code = [s for c, s in zip(cells, sources) if c["cell_type"] == "code"]
    if sum("NBVAL_CHECK_OUTPUT" in s for s in code) < 2:
        problems.append("mark at least two deterministic cells for nbval (# NBVAL_CHECK_OUTPUT)")
    if sum(len(re.findall(r"^\s*assert ", s, re.M)) for s in code) < 2:
        problems.append("a chapter asserts its claims: fewer than two assert statements")
    if not any("explorer(" in s for s in code):
        problems.append("no interactive explorer")
    if not any(f'check("ch{ch.number}.' in s for s in code):
        problems.append(f'no grading demo with check("ch{ch.number}.…")')
    if not any("{bibliography}" in s for s in sources[-2:]):
        problems.append("the notebook does not end with the {bibliography}")
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and c["source"]:
            if c.get("execution_count") is None:
                problems.append(f"cell {i} stored without outputs: run tools/run_notebook.py on it")
                break
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                problems.append(f"cell {i} stored with an error")
    cited = {key.strip() for s in sources for m in CITE.finditer(s) for key in m.group(1).split(",")}
    if cited != set(ch.bib_keys):
        problems.append(f"the notebook cites {sorted(cited)}; the manifest's bib_keys: {sorted(ch.bib_keys)}")
    for name in ch.tasks:
        if not any(name in s for s in code):
            problems.append(f"the manifest says it uses attnbook.tasks.{name}; the notebook does not")
    return problems


def chapter_problems(ch, root: Path = ROOT) -> list[str]:
    """Every way chapter ``ch`` breaks the contract in the repository at ``root`` (none: [])."""
    problems = [f"no {path}" for path in ch.files if not (root / path).is_file()]
    if not ch.has_mechanism and (root / ch.mechanism_path).exists():
        problems.append(f"has_mechanism=False, yet {ch.mechanism_path} exists")
    if (root / ch.notebook_path).is_file():
        problems += notebook_problems(ch, json.loads((root / ch.notebook_path).read_text()))
    if (root / ch.check_path).is_file():
        declared = TASK_ID.findall((root / ch.check_path).read_text())
        if declared != list(ch.checks):
            problems.append(f"{ch.check_path} declares {declared}; the manifest's checks: {list(ch.checks)}")
    for path in (ch.exercise_path, ch.solution_path):
        if (root / path).is_file():
            missing = {t.split(".", 1)[1] for t in ch.checks} - _functions(root / path)
            if missing:
                problems.append(f"{path} lacks {sorted(missing)}")
    test_file = root / ch.exercise_test_path
    if test_file.is_file() and f'("{ch.number}")' not in test_file.read_text():
        problems.append(f"{ch.exercise_test_path} does not test chapter {ch.number}")
    bib = (root / "book" / "references.bib").read_text()
    problems += [
        f"bib key {key} is not in book/references.bib"
        for key in ch.bib_keys
        if not re.search(rf"^@\w+\{{{re.escape(key)},", bib, re.M)
    ]
    exported = _exported_tasks(root)
    problems += [f"attnbook.tasks exports no {name}" for name in ch.tasks if name not in exported]
    if ch.status == "written":
        texts = {p: (root / p).read_text() for p in ch.files if (root / p).is_file()}
        texts["its manifest entry"] = f"{ch.title} {ch.mechanism} {ch.paper}"
        problems += [f"{where} still has {MARKER} placeholders" for where, t in texts.items() if MARKER in t]
    return problems


BEGUN = [c for c in CHAPTERS if c.status != "planned"]


@pytest.mark.parametrize("chapter", BEGUN, ids=[c.label for c in BEGUN])
def test_chapter_contract(chapter):
    problems = chapter_problems(chapter)
    assert not problems, f"chapter {chapter.label}:\n- " + "\n- ".join(problems)


# --- the scaffold ------------------------------------------------------------------------------
def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The parts of the repository a chapter scaffold touches or needs, copied."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "attnbook", tmp_path / "attnbook", ignore=ignore)
    for path in (
        "README.md",
        "pyproject.toml",
        "conftest.py",
        "book/_toc.yml",
        "book/_config.yml",
        "book/references.bib",
        "tests/__init__.py",
        "tests/chapter_times.py",
        "tests/exercises/__init__.py",
        "tests/exercises/grading.py",
    ):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    return tmp_path


def _start(args: list[str], root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(root)}  # import attnbook and tests from the copy
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def _next_planned(root: Path):
    """The chapter the scaffold may begin next: the lowest-numbered one still planned."""
    chapters = _load_tool("sync_chapters").load_manifest(root).CHAPTERS
    return min((c for c in chapters if c.status == "planned"), key=lambda c: c.number)


def test_a_scaffolded_chapter_passes_the_contract(repo_copy):
    tool = str(ROOT / "tools" / "new_chapter.py")
    planned = _next_planned(repo_copy)
    made = _start([tool, planned.number, planned.slug, "--root", str(repo_copy)], repo_copy)
    code, output = _finish(made)
    assert code == 0, output
    sync = _load_tool("sync_chapters")
    ch = sync.load_manifest(repo_copy).by_number(planned.number)
    assert ch.status == "draft" and ch.slug == planned.slug
    assert all((repo_copy / p).is_file() for p in ch.files) and len(ch.files) == 7
    assert chapter_problems(ch, repo_copy) == []
    assert sync.sync(repo_copy, write=False) == [], "README or _toc.yml not re-synced"
    assert f"| {ch.number} | {ch.slug} |" in (repo_copy / "README.md").read_text()
    assert ch.toc_file not in (repo_copy / "book" / "_toc.yml").read_text(), "a draft is not on the website"
    # the learner's stub grades as "not implemented yet"; the draft's tests run: its declared
    # mistake is rejected with its hint, the solution and library tests are skipped
    grading = _start(["-m", "attnbook.cli", "grade", ch.number], repo_copy)
    quiet = ["-p", "no:cacheprovider", "-p", "no:nbval", "-p", "no:hypothesispytest", "-p", "no:anyio"]
    tests = [ch.exercise_test_path, ch.library_test_path]
    testing = _start(["-m", "pytest", "-q", "-rs", *quiet, *tests], repo_copy)
    code, output = _finish(grading)
    assert code == 1 and "not implemented yet" in output, output
    code, output = _finish(testing)
    assert code == 0 and "1 passed, 2 skipped" in output, output


def test_the_scaffold_refuses_to_overwrite_and_checks_its_arguments(repo_copy, capsys):
    new_chapter = _load_tool("new_chapter")
    ch = _next_planned(repo_copy)
    nn, slug = ch.number, ch.slug
    mine = repo_copy / ch.exercise_path
    mine.parent.mkdir(parents=True)
    mine.write_text("# my own work\n")
    manifest_before = (repo_copy / "attnbook" / "chapters.py").read_text()
    assert new_chapter.main([nn, slug, "--no-run", "--root", str(repo_copy)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert mine.read_text() == "# my own work\n"
    assert not (repo_copy / ch.notebook_path).exists() and not (repo_copy / ch.check_path).exists()
    assert (repo_copy / "attnbook" / "chapters.py").read_text() == manifest_before
    for args, says in (
        ([str(int(nn)).zfill(3), slug], "two digits"),
        ([nn, slug.replace("-", "_").title()], "slug"),
        ([nn, "fft-mixing"], f"is '{slug}'"),
        (["00", "multi-head-attention"], "already"),
        (["40", "far-away"], "next number, 31"),
    ):
        assert new_chapter.main([*args, "--no-run", "--root", str(repo_copy)]) == 2
        assert says in capsys.readouterr().err
