"""Build the website offline and open it in headless Chromium: math, figures and widgets render.

The build uses the outputs stored in the notebooks (nothing is executed). Chromium is
looked up on PATH; without it the browser checks are skipped, unless
ATTNBOOK_REQUIRE_BROWSER=1 (as in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"


def _chapter_pages() -> list[str]:
    toc = (BOOK / "_toc.yml").read_text()
    return re.findall(r"file:\s*(chapters/[\w-]+)", toc)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb), "build", str(BOOK), "--path-output", str(out), "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, (
        "site build failed (warnings are errors):\n" + result.stdout[-4000:] + result.stderr[-4000:]
    )
    return out / "_build" / "html"


def test_every_chapter_in_the_toc_is_built_with_a_colab_link(site):
    pages = _chapter_pages()
    assert pages, "book/_toc.yml lists no chapter"
    for page in pages:
        html = (site / f"{page}.html").read_text()
        assert "colab.research.google.com/github/" in html, f"{page}: no Colab link"
        external = re.findall(r"<script[^>]+src=\"(https?://[^\"]+)", html)
        assert not external, f"{page}: loads scripts from the internet: {external}"
        images = re.findall(r"<img[^>]+src=\"(https?://[^\"]+)", html)
        assert not images, f"{page}: loads images from the internet: {images}"
        badge = re.search(r"<img[^>]+src=\"([^\"]*colab-badge\.svg)\"", html)
        assert badge and ((site / page).parent / badge.group(1)).is_file(), f"{page}: no local badge"
        # the set-up cell's code is behind a toggle (tag hide-input), not shown open
        setup_cell = html.index("Set-up: installs attnbook")
        assert "hide-input" in html[max(0, setup_cell - 3000) : setup_cell], (
            f"{page}: the set-up cell is not hidden"
        )


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def served(site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _rendered_dom(url: str) -> str:
    browser = _browser()
    if browser is None:
        if os.environ.get("ATTNBOOK_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (ATTNBOOK_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("page", _chapter_pages())
def test_chapter_page_renders_math_figures_and_widget_state(served, page):
    dom = _rendered_dom(f"{served}/{page}.html")
    body = dom.split("<body", 1)[-1]
    text = re.sub(r"<script.*?</script>", "", body, flags=re.S)
    text = re.sub(r"<(pre|code)\b.*?</\1>", "", text, flags=re.S)  # code may contain backslashes legitimately
    assert dom.count("<mjx-container") >= 5, f"{page}: math was not typeset by MathJax"
    visible = re.sub(r"<[^>]+>", " ", text)
    assert "$$" not in visible and "\\(" not in visible and "\\[" not in visible, (
        f"{page}: raw LaTeX left in the page"
    )
    assert len(re.findall(r"<img[^>]+src=\"[^\"]*_images/[^\"]+\.png", dom)) >= 1, f"{page}: no figure"
    # saved widget state rendered by the locally served widget manager: the explorer's
    # controls and its image inside the widget area
    assert "widget-slider" in dom or "widget-dropdown" in dom or "widget-checkbox" in dom, (
        f"{page}: widget controls not rendered"
    )
    assert re.search(r"<img[^>]+src=\"blob:|<img[^>]+src=\"data:image/png", dom), (
        f"{page}: widget image not rendered"
    )
