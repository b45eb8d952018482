"""Chapter 08's miniature: one arm of ABMIL / STKIM / MBA / ACMIL trained on shortcut bags.

The mechanism is in :mod:`attnbook.mechanisms.multi_branch_pooling`; this module holds the
experiment's recipe, shared by the chapter's notebook and its experiment check: a seeded model,
AdamW, one bag per step in a seeded order, the training loss of :func:`acmil_loss`.
"""

from __future__ import annotations

import torch

from .multi_branch_pooling import ACMIL, acmil_loss

__all__ = ["train_on_bags"]


def train_on_bags(
    train, seed: int, *, H: int, n_top: int, p: float, epochs: int = 15, lr: float = 5e-3
) -> ACMIL:
    """Train ``ACMIL(16, 32, 16, H=H, n_top=n_top, p=p)`` on ``train`` bags; return it in eval mode.

    Args:
        train: a :class:`attnbook.tasks.MILBags` of training bags (instances of width 16).
        seed: seeds the initial weights (``torch.manual_seed``) and, as ``seed + 100``, the bag
            order and the masks drawn in training.
        H, n_top, p: the arm: branches, top instances STKIM draws from, share it hides (p = 0 or
            n_top = 0: no masking; H = 1: ABMIL).
    """
    torch.manual_seed(seed)
    model = ACMIL(16, 32, 16, H=H, n_top=n_top, p=p)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed + 100)
    for _ in range(epochs):
        model.train()
        for i in torch.randperm(len(train.bags), generator=gen).tolist():
            out = model(train.bags[i], gen)
            loss = acmil_loss(out.branch_logits, out.slide_logits, out.attention, int(train.labels[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
