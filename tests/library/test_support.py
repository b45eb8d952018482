"""Tasks, the training loop, plots and explorers: the support every chapter leans on."""

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from attnbook.tasks import associative_recall
from attnbook.train import train
from attnbook.viz import plot_attention_heads, plot_curves
from attnbook.widgets import explorer


def test_associative_recall_is_seeded_and_consistent():
    a = associative_recall(64, 5, 9, 7, torch.Generator().manual_seed(3))
    b = associative_recall(64, 5, 9, 7, torch.Generator().manual_seed(3))
    assert torch.equal(a.keys, b.keys) and torch.equal(a.target, b.target)
    assert all(len(set(row.tolist())) == 5 for row in a.keys)  # distinct keys per sequence
    rows = torch.arange(64)
    assert torch.equal(a.keys[rows, a.position], a.query) and torch.equal(
        a.values[rows, a.position], a.target
    )
    with pytest.raises(ValueError, match="n_keys"):
        associative_recall(2, 10, 5, 3)


def _fit(seed):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    w = torch.tensor([[1.0, -2.0, 0.5]])

    def batch(step, g):
        x = torch.randn(32, 3, generator=g)
        return x, x @ w.T

    return train(
        model,
        batch,
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
        steps=200,
        lr=0.05,
        seed=seed,
        eval_fn=lambda m: {"w_err": (m.weight - w).abs().max().item()},
        eval_every=100,
        progress=False,
    )


def test_train_is_deterministic_and_learns():
    h1, h2 = _fit(0), _fit(0)
    assert h1.loss == h2.loss
    assert h1.eval_steps == [100, 200] and h1.last("w_err") < 0.05 and h1.loss[-1] < h1.loss[0] / 100


def test_plots_and_explorer():
    fig = plot_attention_heads(torch.rand(2, 3, 4, 5).softmax(-1), causal=True, key_labels=list("abcde"))
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="weights must be"):
        plot_attention_heads(torch.rand(4, 5))
    plt.close(plot_curves({"a": ([1, 2, 3], [3, 2, 1])}, logy=True))

    calls = []

    def render(n):
        calls.append(n)
        f, ax = plt.subplots()
        ax.plot(range(n))
        return f

    slider = widgets.IntSlider(value=3, min=1, max=5)
    ex = explorer(render, n=slider)
    first = ex.png
    slider.value = 5
    assert calls == [3, 5] and ex.png != first and ex.png.startswith(b"\x89PNG")
    bundle = ex._repr_mimebundle_()
    assert {"image/png", "application/vnd.jupyter.widget-view+json", "text/plain"} <= set(bundle)
    plt.close(ex.figure(n=2))
    with pytest.raises(ValueError, match="at least one control"):
        explorer(render)
