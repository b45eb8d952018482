"""Sphinx extension: pages of the built site load no image from the internet.

The notebooks' Colab badge points at the badge image on Colab's site, so that it shows on
GitHub and in Colab. In the built site that image is replaced by the copy in
``_static/colab-badge.svg``, so that the site also shows it offline.
"""

from __future__ import annotations

import os
from pathlib import Path

REMOTE_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def _use_local_badge(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if REMOTE_BADGE in text:
            local = os.path.relpath(out / "_static" / "colab-badge.svg", page.parent)
            page.write_text(text.replace(REMOTE_BADGE, local), encoding="utf-8")


def setup(app):
    app.connect("build-finished", _use_local_badge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
