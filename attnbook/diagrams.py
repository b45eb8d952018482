r"""Schematic figures drawn by code: boxes, arrows and tensors as grids of cells.

Every chapter has at least one schematic (data flow, shapes, tiles, masks). They are drawn
with these few primitives on a matplotlib canvas measured in "cells" (one unit = one cell of
a drawn tensor), so a figure is a short, readable script in the chapter:

    fig, ax = canvas(10, 4)
    x = tensor(ax, (0, 1), rows=4, cols=6, label="X  (N, D)")
    w = box(ax, (4, 1.5), 1.6, 1, "$W_Q$")
    arrow(ax, x.right, w.left)

:func:`mha_dataflow` and :func:`split_heads_figure` are chapter 00's figures, built this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

__all__ = ["Anchors", "canvas", "box", "arrow", "tensor", "HEAD_COLORS", "mha_dataflow", "split_heads_figure"]

HEAD_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


@dataclass(frozen=True)
class Anchors:
    """The bounding box of a drawn element and the midpoints of its sides, for arrows."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w, self.y + self.h / 2)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


def canvas(width: float, height: float, *, scale: float = 0.55, title: str = "") -> tuple[Figure, Axes]:
    """An empty figure of ``width`` × ``height`` cells (``scale`` inches per cell), axes hidden."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be > 0, got {width} × {height}")
    fig, ax = plt.subplots(figsize=(width * scale, height * scale))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return fig, ax


def box(
    ax: Axes,
    xy: tuple[float, float],
    w: float,
    h: float,
    text: str = "",
    *,
    color: str = "#eef2f7",
    edge: str = "#4a5568",
    fontsize: float = 9,
    note: str = "",
) -> Anchors:
    """A rounded box with its lower-left corner at ``xy``; ``note`` is small text under it."""
    ax.add_patch(
        FancyBboxPatch(xy, w, h, boxstyle="round,pad=0.02,rounding_size=0.15", fc=color, ec=edge, lw=1)
    )
    if text:
        ax.text(xy[0] + w / 2, xy[1] + h / 2, text, ha="center", va="center", fontsize=fontsize)
    if note:
        ax.text(
            xy[0] + w / 2, xy[1] - 0.15, note, ha="center", va="top", fontsize=fontsize - 2, color="#4a5568"
        )
    return Anchors(xy[0], xy[1], w, h)


def arrow(
    ax: Axes,
    start: tuple[float, float],
    end: tuple[float, float],
    text: str = "",
    *,
    color: str = "#4a5568",
    fontsize: float = 8,
    rad: float = 0.0,
) -> None:
    """An arrow from ``start`` to ``end``, optionally labelled at its middle (``rad`` bends it)."""
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle="-|>",
            mutation_scale=10,
            color=color,
            lw=1,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if text:
        mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
        ax.text(mx, my + 0.12, text, ha="center", va="bottom", fontsize=fontsize, color=color)


def tensor(
    ax: Axes,
    xy: tuple[float, float],
    rows: int,
    cols: int,
    *,
    cell: float = 0.35,
    colors: Sequence[Sequence[str]] | np.ndarray | None = None,
    fill: str = "#dbe4f0",
    label: str = "",
    fontsize: float = 8,
) -> Anchors:
    """A tensor drawn as a ``rows`` × ``cols`` grid of cells, row 0 on top.

    ``colors`` gives each cell's colour ((rows, cols) of colour strings, "" or None for
    ``fill``), e.g. to show which head owns a column or which keys a mask hides.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"a drawn tensor needs rows, cols >= 1, got {rows} × {cols}")
    x0, y0 = xy
    for r in range(rows):
        for c in range(cols):
            color = colors[r][c] if colors is not None else None
            ax.add_patch(
                Rectangle(
                    (x0 + c * cell, y0 + (rows - 1 - r) * cell),
                    cell,
                    cell,
                    fc=color or fill,
                    ec="white",
                    lw=0.8,
                )
            )
    if label:
        ax.text(x0 + cols * cell / 2, y0 - 0.12, label, ha="center", va="top", fontsize=fontsize)
    return Anchors(x0, y0, cols * cell, rows * cell)


def _head_colored(rows: int, D: int, H: int) -> list[list[str]]:
    """(rows, D) colours: column c belongs to head c // (D / H)."""
    d = D // H
    return [[HEAD_COLORS[(c // d) % len(HEAD_COLORS)] for c in range(D)] for _ in range(rows)]


def mha_dataflow(H: int = 3) -> Figure:
    r"""Chapter 00's data flow: X → Q, K, V → H heads of scores and weights → Σ_h A_h V_h W_O^h.

    Each head's columns are drawn in that head's colour, so the split into heads, the per-head
    attention and the sum over heads can be followed by colour.
    """
    N, D = 4, 2 * H
    fig, ax = canvas(20, 7.2, title=f"multi-head attention, H = {H}: each colour is one head")
    x = tensor(ax, (0.3, 2.8), N, D, label="X  (N, D)")
    outs = []
    for i, name in enumerate(("Q", "K", "V")):
        y = 5.2 - 2.2 * i
        w = box(ax, (3.4, y + 0.2), 1.2, 0.9, f"$W_{name}$")
        arrow(ax, x.right, w.left)
        t = tensor(ax, (5.3, y), N, D, colors=_head_colored(N, D, H), label=f"{name} = X $W_{name}$  (N, D)")
        arrow(ax, w.right, t.left)
        outs.append(t)
    heads = []
    for h in range(H):
        y = 5.2 - 2.2 * h
        b = box(
            ax,
            (9.3, y + 0.05),
            4.1,
            1.2,
            f"head {h}:  $A_{h} = \\mathrm{{softmax}}(Q_{h} K_{h}^T/\\sqrt{{d}})$",
            color=HEAD_COLORS[h % len(HEAD_COLORS)] + "33",
            fontsize=8,
        )
        for t in outs:
            arrow(ax, t.right, b.left, color=HEAD_COLORS[h % len(HEAD_COLORS)])
        heads.append(b)
    total = box(ax, (14.4, 2.5), 2.6, 1.8, "$\\sum_h A_h V_h W_O^h$\n$+\\, b_O$", fontsize=9)
    for h, b in enumerate(heads):
        arrow(ax, b.right, total.left, color=HEAD_COLORS[h % len(HEAD_COLORS)])
    y = tensor(ax, (17.8, 2.8), N, D, fill="#c9d6e8", label="MHA(X)  (N, D)")
    arrow(ax, total.right, y.left)
    fig.tight_layout()
    return fig


def split_heads_figure(D: int = 8, H: int = 4, N: int = 3) -> Figure:
    r"""``split_heads``: (N, D) → (H, N, d). Head h takes columns h·d … (h+1)·d − 1."""
    if D % H:
        raise ValueError(f"D={D} must be divisible by H={H}")
    d = D // H
    cell = 0.4
    fig, ax = canvas(
        4 + D * cell + H * (d * cell + 0.6),
        N * cell + 2.2,
        title=f"split_heads: (N, D) = ({N}, {D}) → (H, N, d) = ({H}, {N}, {d})",
    )
    src = tensor(
        ax, (0.3, 1.0), N, D, cell=cell, colors=_head_colored(N, D, H), label="(N, D): columns by head"
    )
    x = src.right[0] + 2.2
    arrow(ax, src.right, (x - 0.2, src.right[1]), "view (N, H, d)\ntranspose")
    for h in range(H):
        t = tensor(ax, (x, 1.0), N, d, cell=cell, fill=HEAD_COLORS[h % len(HEAD_COLORS)], label=f"head {h}")
        x = t.right[0] + 0.6
    fig.tight_layout()
    return fig
