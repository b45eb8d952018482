"""The site's citation prefixing: a paper cited by several chapters stays in each reference list."""

import importlib.util
import json
from pathlib import Path

BOOK = Path(__file__).resolve().parents[2] / "book"
spec = importlib.util.spec_from_file_location("chapter_citations", BOOK / "_ext" / "chapter_citations.py")
chapter_citations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chapter_citations)


def test_keys_and_bibliography_get_the_page_prefix_in_markdown_and_in_notebook_json():
    prefix = chapter_citations.page_prefix("chapters/11-head-importance")
    assert prefix == "chapters-11-head-importance-"
    md = (
        "As {cite}`a2020, b2021` and {cite:t}`c2022` show.\n\n"
        "```{bibliography}\n:filter: docname in docnames\n```"
    )
    out = chapter_citations.prefix_citations(md, prefix)
    assert "{cite}`chapters-11-head-importance-a2020,chapters-11-head-importance-b2021`" in out
    assert "{cite:t}`chapters-11-head-importance-c2022`" in out
    assert "```{bibliography}\n:keyprefix: chapters-11-head-importance-\n:filter: docname in docnames" in out
    # the same text stored in a notebook: newlines are the two characters \n inside JSON strings
    notebook = json.dumps({"cells": [{"source": md}]})
    decoded = json.loads(chapter_citations.prefix_citations(notebook, prefix))["cells"][0]["source"]
    assert decoded == out


def test_every_chapter_cites_with_plain_keys_and_ends_with_one_bibliography():
    for notebook in sorted((BOOK / "chapters").glob("*.ipynb")):
        text = notebook.read_text(encoding="utf-8")
        assert ":keyprefix:" not in text, notebook.name  # added at build time, never stored
        assert text.count("```{bibliography}") == 1, notebook.name
