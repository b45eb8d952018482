#!/usr/bin/env python
"""Generate the README's contents table and book/_toc.yml from the chapter manifest.

    python tools/sync_chapters.py            # rewrite README.md's "Contents" and book/_toc.yml
    python tools/sync_chapters.py --check    # exit 1 and name the files that drifted

The manifest is attnbook/chapters.py. The table of contents lists the introduction, the
manifest's FRONT_PAGES, then every *written* chapter under its part; the README lists every
chapter with its status.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
MARK = {"written": "✅", "draft": "🚧", "planned": "⏳"}
TOC_HEADER = (
    "# Generated from attnbook/chapters.py by `python tools/sync_chapters.py`: "
    "edit the manifest, not this file."
)


def load_manifest(root: Path = ROOT) -> ModuleType:
    """Import ``root/attnbook/chapters.py`` on its own (the manifest of that checkout)."""
    path = Path(root).resolve() / "attnbook" / "chapters.py"
    name = "_attnbook_manifest_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_contents(chapters) -> str:
    """The README's "## Contents" section, up to (not including) the next section."""
    # the legend names "draft" only while a chapter is a draft
    statuses = [s for s in MARK if s != "draft" or any(c.status == "draft" for c in chapters)]
    legend = " · ".join(f"{MARK[s]} {s}" for s in statuses)
    lines = [
        "## Contents",
        "",
        f"{legend}.",
        "Every file of a chapter is named from its number and slug (`_` for `-`):",
        "`book/chapters/NN-slug.ipynb`, `attnbook/mechanisms/<slug>.py`,",
        "`attnbook/grading/checks/chNN_<slug>.py`, `exercises/chNN_<slug>.py`, `solutions/chNN_<slug>.py`,",
        "`tests/exercises/test_chNN_<slug>.py` and `tests/library/test_<slug>.py`. The manifest",
        "`attnbook/chapters.py` lists them; this table is generated from it",
        "(see [Add a chapter](#add-a-chapter)).",
        "",
        "| # | chapter | mechanism | paper | |",
        "|---|---|---|---|---|",
    ]
    for c in chapters:
        row = (c.number, c.slug, _cell(c.mechanism), _cell(c.paper), MARK[c.status])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n"


def render_toc(chapters, parts, front_pages=()) -> str:
    """book/_toc.yml: the introduction, the front pages, then the written chapters by part."""
    lines = [TOC_HEADER, "format: jb-book", "root: intro", "parts:"]
    groups: list[tuple[str, list[str]]] = []
    for part in parts:
        files = [c.toc_file for c in chapters if c.status == "written" and c.part == part]
        if files:
            groups.append((part.label, files))
    if front_pages:
        if not groups:
            groups.append((parts[0].label, []))
        groups[0] = (groups[0][0], [*front_pages, *groups[0][1]])
    for caption, files in groups:
        lines += [f'  - caption: "{caption}"', "    chapters:"]
        lines += [f"      - file: {f}" for f in files]
    return "\n".join(lines) + "\n"


def replace_contents(readme: str, contents: str) -> str:
    """``readme`` with its "## Contents" section replaced by ``contents``."""
    start = readme.find("\n## Contents\n")
    if start < 0:
        raise ValueError('README.md has no "## Contents" section')
    start += 1
    end = readme.find("\n## ", start)
    end = len(readme) if end < 0 else end + 1
    return readme[:start] + contents + readme[end:]


def expected_files(root: Path = ROOT) -> dict[Path, str]:
    """{path: the text it should have} for README.md and book/_toc.yml under ``root``."""
    root = Path(root)
    manifest = load_manifest(root)
    readme = root / "README.md"
    toc = root / "book" / "_toc.yml"
    return {
        readme: replace_contents(readme.read_text(), render_contents(manifest.CHAPTERS)),
        toc: render_toc(manifest.CHAPTERS, manifest.PARTS, manifest.FRONT_PAGES),
    }


def sync(root: Path = ROOT, *, write: bool = True) -> list[Path]:
    """The files that differ from the manifest; rewritten unless ``write`` is False."""
    drifted = []
    for path, text in expected_files(root).items():
        if not path.exists() or path.read_text() != text:
            drifted.append(path)
            if write:
                path.write_text(text)
    return drifted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only report drift (exit 1 if any)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    drifted = sync(args.root, write=not args.check)
    for path in drifted:
        verb = "differs from the manifest" if args.check else "rewritten from the manifest"
        print(f"{path.relative_to(args.root)}: {verb}")
    if args.check and drifted:
        print("run: python tools/sync_chapters.py", file=sys.stderr)
        return 1
    if not drifted:
        print("README.md and book/_toc.yml match attnbook/chapters.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
