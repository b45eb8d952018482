#!/usr/bin/env python
"""Scaffold every file of a chapter, add it to the manifest as a draft, and re-sync the book.

    python tools/new_chapter.py 05 relative-convolutional [--title "..."]

creates, named from the number and slug (``_`` for ``-``):

    book/chapters/05-relative-convolutional.ipynb           the notebook: header cells, the
                                                            contract's sections, executed
    attnbook/mechanisms/relative_convolutional.py           the mechanism (a marked skeleton)
    attnbook/grading/checks/ch05_relative_convolutional.py  one example @task and @mistake
    exercises/ch05_relative_convolutional.py                the learner's stub
    solutions/ch05_relative_convolutional.py                the solution (a stub while a draft)
    tests/exercises/test_ch05_relative_convolutional.py     the exercise tests
    tests/library/test_relative_convolutional.py            the mechanism's tests

sets the chapter's manifest entry (attnbook/chapters.py) to status "draft", and rewrites the
README's contents table and book/_toc.yml from the manifest. A planned chapter keeps its
entry's slug, title and paper; a number after the last chapter adds a new entry. Existing files
are never overwritten. Every place still to write is marked SCAFFOLD.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chapter_templates  # noqa: E402
import sync_chapters  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^    Chapter\(\n.*?^    \),\n", re.MULTILINE | re.DOTALL)
HEADER_SOURCE = ROOT / "book" / "chapters" / "00-multi-head-attention.ipynb"


class ScaffoldError(Exception):
    """A reason not to scaffold, said to the user without a traceback."""


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field(name: str, value) -> list[str]:
    """``name=value,`` at the entries' indent, laid out as ruff format lays it out."""
    if isinstance(value, bool):
        return [f"        {name}={value},"]
    if isinstance(value, str):
        return [f"        {name}={_quote(value)},"]
    items = [_quote(v) for v in value]
    one_line = f"        {name}=({', '.join(items)}{',' if len(items) == 1 else ''}),"
    if len(one_line) <= 110:
        return [one_line]
    return [f"        {name}=(", *(f"            {item}," for item in items), "        ),"]


def entry_source(ch) -> str:
    """The manifest entry of ``ch`` in the layout of attnbook/chapters.py."""
    lines = ["    Chapter("]
    for name in ("number", "slug", "title", "mechanism", "paper"):
        lines += _field(name, getattr(ch, name))
    if ch.status != "planned":
        lines += _field("status", ch.status)
    if not ch.has_mechanism:
        lines += _field("has_mechanism", False)
    for name in ("tasks", "checks", "bib_keys"):
        if getattr(ch, name):
            lines += _field(name, getattr(ch, name))
    return "\n".join(lines + ["    ),"]) + "\n"


def update_manifest(text: str, ch) -> str:
    """attnbook/chapters.py's text with ``ch``'s entry replaced, or appended after the last one."""
    entries = list(ENTRY.finditer(text))
    if not entries:
        raise ScaffoldError("attnbook/chapters.py has no 'Chapter(' entries in the expected layout")
    for m in entries:
        if re.match(rf'^    Chapter\(\n\s+number="{ch.number}",', m.group(0)):
            return text[: m.start()] + entry_source(ch) + text[m.end() :]
    end = entries[-1].end()
    return text[:end] + entry_source(ch) + text[end:]


def plan_chapter(manifest, number: str, slug: str, args) -> object:
    """The new manifest entry (status draft), after checking the request against the manifest."""
    if not re.fullmatch(r"\d\d", number):
        raise ScaffoldError(f"NN must be two digits such as 05, got {number!r}")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", slug):
        raise ScaffoldError(
            f"slug must be lowercase words joined by '-' (e.g. mixture-of-heads), got {slug!r}"
        )
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.task):
        raise ScaffoldError(f"--task must be a Python function name, got {args.task!r}")
    chapters = {c.number: c for c in manifest.CHAPTERS}
    changes = {"status": "draft", "checks": (f"ch{number}.{args.task}",)}
    if args.no_mechanism:
        changes["has_mechanism"] = False
    for field in ("title", "mechanism", "paper"):
        if getattr(args, field):
            changes[field] = getattr(args, field)
    for field, limit in (("title", 70), ("mechanism", 85), ("paper", 85)):
        if len(changes.get(field, "")) > limit:
            raise ScaffoldError(f"--{field}: keep it within {limit} characters, got {len(changes[field])}")
    if number in chapters:
        old = chapters[number]
        if old.slug != slug:
            raise ScaffoldError(
                f"chapter {number} is {old.slug!r} in attnbook/chapters.py; "
                f"use that slug, or change the manifest first"
            )
        if old.status != "planned":
            raise ScaffoldError(f"chapter {number}-{slug} is already {old.status}: nothing to scaffold")
        return dataclasses.replace(old, **changes)
    last = max(chapters) if chapters else "-1"
    if int(number) != int(last) + 1:
        raise ScaffoldError(
            f"chapter {number} is not in the manifest; a new chapter takes the next "
            f"number, {int(last) + 1:02d}"
        )
    if any(c.slug == slug for c in chapters.values()):
        raise ScaffoldError(f"slug {slug!r} is already taken in attnbook/chapters.py")
    words = slug.replace("-", " ")
    new = manifest.Chapter(
        number,
        slug,
        words[0].upper() + words[1:],
        mechanism=f"{chapter_templates.MARKER}: the mechanism in one line",
        paper=f"{chapter_templates.MARKER}: the paper",
    )
    return dataclasses.replace(new, **changes)


def notebook_text(ch, task: str) -> str:
    """The notebook: chapter 00's two header cells (path changed), then the section skeleton."""
    import nbformat
    import run_notebook

    reference = json.loads(HEADER_SOURCE.read_text())
    url = run_notebook.repository_url()
    header = reference["cells"][:2]
    if "colab-badge" not in header[0]["metadata"].get("tags", []) or "install" not in header[1][
        "metadata"
    ].get("tags", []):
        raise ScaffoldError(f"{HEADER_SOURCE.name} no longer starts with the badge and install cells")
    metadata = {key: reference["metadata"][key] for key in ("kernelspec", "language_info")}
    nb = nbformat.v4.new_notebook(metadata=metadata)
    cells = [
        nbformat.v4.new_markdown_cell(
            run_notebook.badge_source(url, Path(ch.notebook_path)),
            metadata=copy.deepcopy(header[0]["metadata"]),
        ),
        nbformat.v4.new_code_cell(
            run_notebook.install_source(url), metadata=copy.deepcopy(header[1]["metadata"])
        ),
    ]
    for kind, source, tags in chapter_templates.notebook_cells(ch, task):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cells.append(make(source, metadata={"tags": tags} if tags else {}))
    nb.cells = cells
    return nbformat.writes(nb) + "\n"


def scaffold(root: Path, number: str, slug: str, args) -> list[str]:
    """Write the chapter's files under ``root``; return their paths relative to it."""
    manifest = sync_chapters.load_manifest(root)
    ch = plan_chapter(manifest, number, slug, args)
    files = {ch.notebook_path: notebook_text(ch, args.task), **chapter_templates.python_files(ch, args.task)}
    existing = sorted(p for p in files if (root / p).exists())
    if existing:
        raise ScaffoldError("refusing to overwrite existing files:\n  " + "\n  ".join(existing))
    manifest_path = root / "attnbook" / "chapters.py"
    new_manifest = update_manifest(manifest_path.read_text(), ch)
    for path in ch.files:  # in the manifest's order
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(files[path])
    manifest_path.write_text(new_manifest)
    sync_chapters.sync(root)
    return list(ch.files)


def execute(root: Path, notebook: str) -> None:
    """Run the notebook with tools/run_notebook.py, importing attnbook from ``root``."""
    import run_notebook

    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [before])])  # the kernel's
    try:
        run_notebook.run(root / notebook, budget=60.0)
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("number", metavar="NN", help="the chapter number, two digits")
    parser.add_argument("slug", help="the chapter's slug, e.g. mixture-of-heads")
    parser.add_argument("--title", help="the chapter's heading (default: the manifest's)")
    parser.add_argument("--mechanism", help="the mechanism in one line (default: the manifest's)")
    parser.add_argument("--paper", help="the paper, short, as the README cites it (default: the manifest's)")
    parser.add_argument("--task", default="attention_weights", help="the example exercise's function name")
    parser.add_argument(
        "--no-mechanism",
        action="store_true",
        help="the chapter's code lives in the core: no mechanism module, no library test",
    )
    parser.add_argument("--no-run", action="store_true", help="do not execute the new notebook")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    try:
        created = scaffold(root, args.number, args.slug, args)
    except ScaffoldError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"chapter {args.number}-{args.slug} scaffolded (status: draft):")
    for path in created:
        print(f"  created {path}")
    print("  updated attnbook/chapters.py, README.md (contents) and book/_toc.yml")
    if not args.no_run:
        try:
            execute(root, created[0])
        except Exception as err:  # noqa: BLE001 - say what failed, keep the files
            message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))[-2000:]  # without the terminal colours
            print(f"error: {created[0]} did not run: {type(err).__name__}: {message}", file=sys.stderr)
            print("fix it, then run: python tools/run_notebook.py " + created[0], file=sys.stderr)
            return 1
    print(
        f"next: write the places marked {chapter_templates.MARKER}; `attnbook grade {args.number}` "
        'grades the stubs; to publish the chapter, set its status to "written" in '
        "attnbook/chapters.py and run python tools/sync_chapters.py"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
