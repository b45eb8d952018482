"""Chapter 04's miniature: rotary models trained on mixed lookups, and their accuracy.

The mechanism (rotations, rotary attention, the rotary model) is in
:mod:`attnbook.mechanisms.complex_rotations`; this module holds the experiment's recipe: one seeded
training run per rotation scheme on :func:`attnbook.tasks.mixed_lookup` batches, and the accuracy
per question kind (positional or content).
"""

from __future__ import annotations

import torch
from torch import nn

from .complex_rotations import rotary_transformer

__all__ = ["train_lookup", "lookup_accuracy"]


def train_lookup(
    mode: str,
    seed: int,
    *,
    N: int = 32,
    n_sym: int = 16,
    D: int = 32,
    H: int = 4,
    layers: int = 1,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    angle_scale: float = 20.0,
    eval_fn=None,
    eval_every: int = 50,
):
    r"""Train :func:`rotary_transformer` (rotation ``mode``) on mixed lookups; the chapter's recipe.

    ``seed`` fixes the initial weights and the training batches. Returns (model, history), the
    history from :func:`attnbook.train.train` (metrics only if ``eval_fn`` is given).
    """
    import torch.nn.functional as F

    from ..tasks.mixed_lookup import IGNORE, mixed_lookup
    from ..train import train

    def loss_fn(model, batch):
        logits = model(batch.tokens)  # (B, N, n_sym)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    torch.manual_seed(seed)
    model = rotary_transformer(4 * n_sym, n_sym, D=D, H=H, layers=layers, mode=mode, angle_scale=angle_scale)
    history = train(
        model,
        lambda step, g: mixed_lookup(batch_size, N, n_sym, generator=g),
        loss_fn,
        steps=steps,
        lr=lr,
        seed=seed,
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=False,
    )
    return model, history


def lookup_accuracy(model: nn.Module, batch) -> dict[str, float]:
    """Accuracy of ``model`` on a mixed-lookup batch, per question kind (positional, content)."""
    with torch.no_grad():
        pred = model(batch.tokens).argmax(-1)  # (B, N)
    correct = pred == batch.targets
    return {
        name: correct[batch.kind == kind].float().mean().item()
        for kind, name in ((0, "positional"), (1, "content"))
    }
