#!/usr/bin/env python
"""Regenerate chapter notebooks' stored outputs, the one documented way.

    python tools/run_notebook.py book/chapters/00-multi-head-attention.ipynb [more.ipynb ...]

For each notebook it (1) rewrites the standard header cells (Colab badge, install cell)
from the repository address in book/_config.yml, (2) executes it top to bottom in its own
folder with widget state saved, (3) strips volatile metadata, and (4) prints the run time.
It fails if a cell raises or the run takes longer than --budget seconds (default 60).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def repository_url() -> str:
    text = (ROOT / "book" / "_config.yml").read_text()
    match = re.search(r"^\s*url:\s*(https://github\.com/\S+)", text, re.MULTILINE)
    if not match:
        raise SystemExit("book/_config.yml has no repository url")
    return match.group(1).rstrip("/")


def badge_source(url: str, path: Path) -> str:
    slug = url.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{slug}/blob/main/book/chapters/{path.name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})"


def install_source(url: str) -> str:
    return (
        "# Set-up: installs attnbook in Colab; does nothing where attnbook already imports.\n"
        "try:\n"
        "    import attnbook\n"
        "except ImportError:  # Colab: clone the repository (exercises included) and install it,\n"
        "    # keeping Colab's own torch and triton\n"
        f"    !git clone -q --depth 1 {url} /content/attnbook\n"
        "    !pip install -q -e /content/attnbook\n"
        "    import site; site.main()  # make the fresh install importable without a restart\n"
        "    %cd /content/attnbook/book/chapters"
    )


def refresh_header(nb, path: Path, url: str) -> None:
    """Fill the cells tagged 'colab-badge' and 'install' from the templates above."""
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "colab-badge" in tags:
            cell.source = badge_source(url, path)
        elif "install" in tags:
            cell.source = install_source(url)
            # the website hides the set-up cell's code behind a toggle
            cell.metadata["tags"] = sorted(set(tags) | {"hide-input"})


def strip_volatile(nb) -> None:
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            for output in cell.get("outputs", []):
                output.get("metadata", {}).pop("execution", None)
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    # progress bars: keep no carriage-return frames
                    output["text"] = re.sub(r"[^\n]*\r", "", output["text"])
    if not nb.metadata.get("widgets"):
        nb.metadata.pop("widgets", None)


def run(path: Path, budget: float) -> float:
    nb = nbformat.read(path, as_version=4)
    refresh_header(nb, path, repository_url())
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    strip_volatile(nb)
    nb.metadata.setdefault(
        "kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"}
    )
    nbformat.write(nb, path)
    verdict = "ok" if elapsed <= budget else f"OVER the {budget:.0f} s budget"
    print(f"{path}: executed in {elapsed:.1f} s ({verdict})")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds a chapter may take")
    args = parser.parse_args()
    over = [p for p in args.notebooks if run(p.resolve(), args.budget) > args.budget]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
