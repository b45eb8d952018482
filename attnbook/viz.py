"""Plots the chapters share: per-head attention grids, heatmaps and training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .masks import causal_mask

__all__ = ["plot_attention_heads", "plot_heatmap", "plot_curves"]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)


def plot_heatmap(
    matrix,
    ax,
    *,
    title: str = "",
    cmap: str = "viridis",
    vmin=None,
    vmax=None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    colorbar: bool = False,
    annotate: bool = False,
):
    """Draw one (rows, cols) matrix on ``ax``; optional tick labels and value annotations."""
    data = _numpy(matrix)
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    for labels, set_ticks, set_labels, n in (
        (xlabels, ax.set_xticks, ax.set_xticklabels, data.shape[1]),
        (ylabels, ax.set_yticks, ax.set_yticklabels, data.shape[0]),
    ):
        if labels is not None:
            set_ticks(range(n))
            set_labels(labels, fontsize=7)
        else:
            set_ticks([])
    if xlabels is not None:
        plt.setp(ax.get_xticklabels(), rotation=90)
    if annotate:
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w")
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def plot_attention_heads(
    weights,
    *,
    query_labels: Sequence[str] | None = None,
    key_labels: Sequence[str] | None = None,
    causal: bool = False,
    titles: Sequence[str] | None = None,
    suptitle: str = "",
    cols: int | None = None,
    size: float = 2.4,
) -> Figure:
    """A grid with one attention map per head.

    Args:
        weights: (H, N, M), or (B, H, N, M) of which the first example is drawn.
        query_labels / key_labels: token labels for the rows / columns.
        causal: grey out the hidden upper triangle (queries at the end when N ≠ M).
        titles: one title per head (default "head h").
    """
    w = _numpy(weights)
    if w.ndim == 4:
        w = w[0]
    if w.ndim != 3:
        raise ValueError(f"weights must be (H, N, M) or (B, H, N, M), got shape {tuple(np.shape(weights))}")
    H, N, M = w.shape
    cols = cols or min(H, 4)
    rows = (H + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    if causal:
        hidden = ~causal_mask(N, M).numpy()  # (N, M): True where a key is hidden
        w = np.where(hidden[None], np.nan, w)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        title = titles[h] if titles is not None else f"head {h}"
        plot_heatmap(
            w[h],
            ax,
            title=title,
            cmap=cmap,
            vmin=0,
            vmax=1,
            xlabels=key_labels,
            ylabels=query_labels if h % cols == 0 else None,
        )
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str = "",
    logy: bool = False,
    logx: bool = False,
    ax=None,
    smooth: int = 1,
) -> Figure:
    """Line plot of named curves {label: (x, y)}; ``smooth`` > 1 averages over a window."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.2))
    else:
        fig = ax.figure
    for label, (x, y) in curves.items():
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if smooth > 1 and len(y) >= smooth:
            kernel = np.ones(smooth) / smooth
            y = np.convolve(y, kernel, mode="valid")
            x = x[smooth - 1 :]
        ax.plot(x, y, label=label, marker="o" if len(x) < 20 else None, ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
