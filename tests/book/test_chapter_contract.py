"""The mechanical part of the chapter contract, for every chapter in the table of contents."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = re.findall(r"file:\s*chapters/(\d\d)-([\w-]+)", (ROOT / "book" / "_toc.yml").read_text())


@pytest.mark.parametrize("nn,slug", CHAPTERS, ids=[f"{n}-{s}" for n, s in CHAPTERS])
def test_chapter_files_and_structure(nn, slug):
    mod = slug.replace("-", "_")
    for path in (f"exercises/ch{nn}_{mod}.py", f"solutions/ch{nn}_{mod}.py", f"tests/exercises/test_ch{nn}_{mod}.py",
                 f"attnbook/grading/checks/ch{nn}_{mod}.py"):
        assert (ROOT / path).is_file(), f"chapter {nn} has no {path}"
    nb = json.loads((ROOT / "book" / "chapters" / f"{nn}-{slug}.ipynb").read_text())
    cells = nb["cells"]
    sources = ["".join(c["source"]) for c in cells]
    assert "colab-badge" in cells[0]["metadata"].get("tags", []) and "colab.research.google.com" in sources[0]
    assert "install" in cells[1]["metadata"].get("tags", []) and "import attnbook" in sources[1]
    code = [s for c, s in zip(cells, sources) if c["cell_type"] == "code"]
    assert sum("NBVAL_CHECK_OUTPUT" in s for s in code) >= 2, "mark at least two deterministic cells for nbval"
    assert sum(len(re.findall(r"^\s*assert ", s, re.M)) for s in code) >= 2, "a chapter asserts its claims"
    assert any("explorer(" in s for s in code), "no interactive explorer"
    assert any(f'check("ch{nn}.' in s for s in code), "no grading demo with check()"
    assert "{bibliography}" in sources[-1] or any("{bibliography}" in s for s in sources[-2:])
    # stored outputs: every code cell that ran has an execution count, and no cell holds an error
    for c in cells:
        if c["cell_type"] == "code" and c["source"]:
            assert c.get("execution_count") is not None, "notebook stored without outputs: run tools/run_notebook.py"
            assert not any(o.get("output_type") == "error" for o in c.get("outputs", []))
