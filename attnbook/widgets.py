"""Interactive explorers: live ipywidgets in Jupyter/Colab, a static figure everywhere else.

Every chapter builds its explorer with :func:`explorer`: a function that draws a
matplotlib figure from the current control values, and the controls. The result

- is a live widget in Jupyter and Colab: moving a control redraws the figure;
- carries a PNG of its default state, so a page without a live kernel (the website,
  GitHub) still shows what the widget shows when it opens;
- has a ``.figure(**values)`` method, so the chapter can save or assert on any state.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["Explorer", "explorer"]


def _png(fig: Figure, dpi: int = 90) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


class Explorer:
    """A live explorer: controls above an image redrawn by ``render(**values)``."""

    def __init__(
        self, render: Callable[..., Figure], controls: Mapping[str, widgets.ValueWidget], title: str = ""
    ):
        self.render = render
        self.controls = dict(controls)
        self.image = widgets.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda change: self.redraw(), names="value")
        header = [widgets.HTML(f"<b>{title}</b>")] if title else []
        self.box = widgets.VBox(
            header
            + [
                widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
                self.image,
            ]
        )
        self.redraw()

    @property
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def figure(self, **overrides) -> Figure:
        """The figure for the current values, with ``overrides`` applied (not displayed)."""
        return self.render(**{**self.values, **overrides})

    @property
    def png(self) -> bytes:
        """The PNG bytes of the figure shown now."""
        return bytes(self.image.value)

    def redraw(self) -> None:
        self.image.value = _png(self.figure())

    def _repr_mimebundle_(self, include=None, exclude=None):
        # The widget view for live front ends, the PNG and a text line for static ones.
        bundle = self.box._repr_mimebundle_(include=include, exclude=exclude) or {}
        bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        bundle["text/plain"] = "Interactive explorer: run this cell in Jupyter or Colab to move the controls."
        return bundle


def explorer(render: Callable[..., Figure], title: str = "", **controls: widgets.ValueWidget) -> Explorer:
    """Build an :class:`Explorer` from a render function and named controls.

    Example::

        explorer(lambda heads, causal: plot(...), heads=widgets.IntSlider(4, 1, 8),
                 causal=widgets.Checkbox(False, description="causal"))
    """
    if not controls:
        raise ValueError("explorer needs at least one control, e.g. heads=widgets.IntSlider(...)")
    return Explorer(render, controls, title)
