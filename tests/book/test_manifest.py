"""The chapter manifest (attnbook/chapters.py) is consistent, and what is generated from it is current."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from attnbook.chapters import CHAPTERS, FRONT_PAGES, PARTS, by_number

ROOT = Path(__file__).resolve().parents[2]
SYLLABUS = ROOT.parent / "shared" / "syllabus" / "TOC.md"  # the syllabus, when checked out beside


def _sync_tool():
    spec = importlib.util.spec_from_file_location("_tools_sync_chapters", ROOT / "tools" / "sync_chapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numbers_are_consecutive_and_slugs_unique():
    assert [c.number for c in CHAPTERS] == [f"{i:02d}" for i in range(len(CHAPTERS))]
    slugs = [c.slug for c in CHAPTERS]
    assert len(set(slugs)) == len(slugs), "two chapters share a slug"
    assert len({c.name for c in CHAPTERS}) == len(CHAPTERS), "two slugs give the same module name"


def test_parts_start_at_chapters_in_order():
    firsts = [p.first for p in PARTS]
    assert firsts[0] == "00" and firsts == sorted(firsts) and len(set(firsts)) == len(firsts)
    assert all(by_number(first) for first in firsts)


def test_names_derive_from_number_and_slug():
    ch = by_number("03")
    assert ch.slug == "gaussian-adaptive"
    assert ch.files == (
        "book/chapters/03-gaussian-adaptive.ipynb",
        "attnbook/mechanisms/gaussian_adaptive.py",
        "attnbook/grading/checks/ch03_gaussian_adaptive.py",
        "exercises/ch03_gaussian_adaptive.py",
        "solutions/ch03_gaussian_adaptive.py",
        "tests/exercises/test_ch03_gaussian_adaptive.py",
        "tests/library/test_gaussian_adaptive.py",
    )
    assert ch.mechanism_module == "attnbook.mechanisms.gaussian_adaptive"
    assert ch.check_module == "attnbook.grading.checks.ch03_gaussian_adaptive"
    assert ch.part.label == "Part II: Reshaping the score"
    core = by_number("00")
    assert not core.has_mechanism and core.mechanism_path not in core.files
    assert core.library_test_path not in core.files


def test_by_number_accepts_the_usual_spellings_and_names_the_range():
    assert by_number("05") is by_number("5") is by_number(5)
    with pytest.raises(KeyError, match="00..30"):
        by_number(99)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"number": "5"}, "two digits"),
        ({"slug": "Mixture_of_Heads"}, "slug"),
        ({"status": "done"}, "status"),
        ({"checks": ("ch06.rope",)}, "task id"),
        ({"tasks": ["x"]}, "tuple"),
    ],
)
def test_a_malformed_entry_is_refused(change, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dataclasses.replace(by_number("05"), **change)


def test_written_chapters_have_all_their_files():
    missing = [
        f"{c.label}: {p}"
        for c in CHAPTERS
        if c.status == "written"
        for p in c.files
        if not (ROOT / p).is_file()
    ]
    assert not missing, "written chapters without their files:\n" + "\n".join(missing)


def test_every_bib_key_is_in_the_bibliography():
    bib = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), re.M))
    unknown = [f"{c.label}: {key}" for c in CHAPTERS for key in c.bib_keys if key not in bib]
    assert not unknown, "bib keys missing from book/references.bib: " + ", ".join(unknown)


def test_front_pages_exist():
    for page in FRONT_PAGES:
        assert any((ROOT / "book" / f"{page}{ext}").is_file() for ext in (".md", ".ipynb")), page


def test_readme_and_toc_match_the_manifest():
    drifted = _sync_tool().sync(ROOT, write=False)
    assert not drifted, (
        f"{', '.join(str(p.relative_to(ROOT)) for p in drifted)} drifted from "
        "attnbook/chapters.py: run python tools/sync_chapters.py"
    )


def test_the_toc_lists_exactly_the_written_chapters_by_part():
    toc = (ROOT / "book" / "_toc.yml").read_text()
    listed = re.findall(r"file:\s*chapters/(\d\d)-([\w-]+)", toc)
    assert listed == [(c.number, c.slug) for c in CHAPTERS if c.status == "written"]
    captions = re.findall(r'caption:\s*"([^"]+)"', toc)
    assert captions == list(dict.fromkeys(c.part.label for c in CHAPTERS if c.status == "written"))


def test_sync_detects_and_repairs_drift(tmp_path):
    for path in ("README.md", "book/_toc.yml", "attnbook/chapters.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tmp_path / path)
    sync = _sync_tool().sync
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| 03 | gaussian-adaptive |", "| 03 | gaussian |"))
    (tmp_path / "book" / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    assert sorted(p.name for p in sync(tmp_path, write=False)) == ["README.md", "_toc.yml"]
    sync(tmp_path)
    assert sync(tmp_path, write=False) == []
    assert "| 03 | gaussian-adaptive |" in readme.read_text()
    assert readme.read_text().count("## ") == (ROOT / "README.md").read_text().count("## ")


@pytest.mark.skipif(not SYLLABUS.is_file(), reason="the syllabus is not checked out beside the repository")
def test_the_manifest_follows_the_syllabus():
    text = SYLLABUS.read_text()
    rows = re.findall(r"^\|\s*(\d\d)\s*\|\s*([\w-]+)\s*\|", text, re.M)
    assert rows == [(c.number, c.slug) for c in CHAPTERS]
    found = []
    for numeral, caption in re.findall(r"^\|\s*\*\*Part (\w+)\*\*\s*\|\s*\|\s*\*\*(.+?)\*\*", text, re.M):
        after = text[text.index(f"**Part {numeral}**") :]
        found.append((numeral, caption, re.search(r"^\|\s*(\d\d)\s*\|", after, re.M).group(1)))
    assert found == [(p.numeral, p.caption, p.first) for p in PARTS]


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_number("00").status = "draft"
