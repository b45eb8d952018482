"""Sphinx extension: every page keeps its own complete reference list.

Each chapter ends with a ``{bibliography}`` filtered to the keys it cites. When two chapters
cite the same paper, sphinxcontrib-bibtex sees one key in two bibliographies and refuses the
second ("duplicate citation"). Its documented remedy is a key prefix per bibliography, used
by every citation of that page. Authors keep writing plain keys ({cite}`vaswani2017attention`);
while a page is read, this extension prefixes its citation keys and its bibliography with the
page's own name, so a key may be cited by any number of chapters and each reference list stays
complete.
"""

from __future__ import annotations

import re

# {cite}`a,b` and its variants {cite:p}, {cite:t}, {cite:ps}, ...
CITE = re.compile(r"(\{cite(?::\w+)?\}`)([^`]+)(`)")
# the opening line of a bibliography directive: ```{bibliography} then a newline, which is a
# real newline in a Markdown page and the two characters backslash-n inside a notebook's JSON
BIBLIOGRAPHY = re.compile(r"(```\{bibliography\}[ \t]*)(\\n|\n)")


def page_prefix(docname: str) -> str:
    """'chapters/11-head-importance' -> 'chapters-11-head-importance-' (unique per page)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", docname).strip("-") + "-"


def prefix_citations(text: str, prefix: str) -> str:
    """Prefix every cited key and every bibliography of one page's source with ``prefix``."""

    def cite(match: re.Match) -> str:
        keys = ",".join(prefix + key.strip() for key in match.group(2).split(","))
        return match.group(1) + keys + match.group(3)

    text = CITE.sub(cite, text)
    return BIBLIOGRAPHY.sub(lambda m: f"{m.group(1)}{m.group(2)}:keyprefix: {prefix}{m.group(2)}", text)


def _on_source_read(app, docname: str, source: list[str]) -> None:
    source[0] = prefix_citations(source[0], page_prefix(docname))


def setup(app):
    app.connect("source-read", _on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
