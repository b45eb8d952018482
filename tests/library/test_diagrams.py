"""Schematic figures: they draw what they say (one patch per tensor cell), and reject bad sizes."""

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Rectangle

from attnbook.diagrams import HEAD_COLORS, arrow, box, canvas, mha_dataflow, split_heads_figure, tensor


def test_tensor_draws_one_cell_per_entry_with_given_colours():
    fig, ax = canvas(6, 3)
    t = tensor(ax, (0.5, 0.5), 2, 3, cell=0.5, colors=[["red", "", "blue"], ["", "", ""]])
    cells = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(cells) == 6 and (t.w, t.h) == (1.5, 1.0)
    b = box(ax, (3, 1), 1, 1, "W")
    arrow(ax, t.right, b.left, "x")
    assert b.left == (3, 1.5) and t.right == (2.0, 1.0)
    plt.close(fig)


def test_split_heads_figure_colours_each_head_block():
    fig = split_heads_figure(D=6, H=3, N=2)
    colors = {tuple(p.get_facecolor()) for p in fig.axes[0].patches if isinstance(p, Rectangle)}
    assert len(colors) == 3  # one colour per head, source columns included
    plt.close(fig)
    plt.close(mha_dataflow(2))
    assert len(HEAD_COLORS) >= 8


@pytest.mark.parametrize(
    "call",
    [
        lambda: canvas(0, 2),
        lambda: split_heads_figure(D=6, H=4),
        lambda: tensor(canvas(2, 2)[1], (0, 0), 0, 3),
    ],
)
def test_bad_sizes_raise(call):
    with pytest.raises(ValueError):
        call()
