"""One small, seeded training loop with a progress bar, shared by every chapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = ["History", "train", "seed_everything"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator and return a fresh generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class History:
    """What a run recorded: the training loss at every step, metrics at evaluation steps."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def last(self, metric: str) -> float:
        """The most recent value of ``metric`` ("loss" for the training loss)."""
        values = self.loss if metric == "loss" else self.metrics[metric]
        return values[-1]


def train(
    model: nn.Module,
    batch_fn: Callable[[int, torch.Generator], object],
    loss_fn: Callable[[nn.Module, object], Tensor],
    *,
    steps: int,
    lr: float = 1e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    eval_every: int = 50,
    grad_clip: float | None = 1.0,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Train ``model`` with AdamW for ``steps`` steps; deterministic for a given ``seed``.

    Args:
        batch_fn: ``batch_fn(step, generator)`` returns the batch for that step; draw all
            randomness from ``generator`` so a run repeats exactly.
        loss_fn: ``loss_fn(model, batch)`` returns a scalar loss.
        eval_fn: ``eval_fn(model)`` returns {metric name: value}; called every
            ``eval_every`` steps and after the last step, under ``torch.no_grad()``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    generator = seed_everything(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = History()

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            for name, value in eval_fn(model).items():
                history.metrics.setdefault(name, []).append(float(value))
        history.eval_steps.append(step)
        model.train()

    model.train()
    # leave=True: the finished bar stays at 100 % (a notebook stores its final state)
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=True)
    for step in bar:
        loss = loss_fn(model, batch_fn(step, generator))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        history.steps.append(step)
        history.loss.append(loss.item())
        if eval_fn is not None and (step % eval_every == 0 or step == steps):
            evaluate(step)
            bar.set_postfix({k: f"{v[-1]:.3g}" for k, v in history.metrics.items()})
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3g}")
    model.eval()
    return history
