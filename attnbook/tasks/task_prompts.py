r"""Few-shot prompts of digit-mapping tasks, for in-context learning and task injection (ch. 10).

A task is a map y = f(x) of the digits 0 … 9. Four tasks in two families:

    add-1, add-3        y = x + k mod 10
    perm-A, perm-B      two fixed random permutations (drawn once from ``table_seed``)

A prompt with S demonstrations is ``x₁ y₁ x₂ y₂ … x_S y_S x_q`` (2S + 1 tokens), the answer is
y_q = f(x_q). Inputs and outputs have their own token ids: x is the token x ∈ [0, 10), y is the
token 10 + y ∈ [10, 20), so each token says whether it is an input or an output (the role the
arrow "x → y" plays in a text prompt). The query x_q alone never says which task is asked: only
the demonstrations do, so zero-shot accuracy stays near the prior over tasks.

``answers[:, i]`` is f(x_i) for every input of the prompt (the S demonstrations and the query),
the targets of next-token training at the positions 0, 2, …, 2S of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["TASK_NAMES", "TASK_FAMILIES", "TaskPrompts", "task_table", "task_prompts"]

TASK_NAMES = ("add-1", "add-3", "perm-A", "perm-B")
TASK_FAMILIES = ("add", "add", "perm", "perm")
VOCAB, N_DIGITS = 20, 10


@dataclass
class TaskPrompts:
    tokens: Tensor  # (B, 2S + 1) int64: x₁ (10 + y₁) … x_q
    answers: Tensor  # (B, S + 1) int64 in [0, 10): f(x_i) for the S demonstrations and the query
    task: Tensor  # (B,) int64: index into TASK_NAMES


def task_table(table_seed: int = 100) -> Tensor:
    """(4, 10) int64: row i is task i's map f(x) for x = 0 … 9."""
    g = torch.Generator().manual_seed(table_seed)
    perms = [torch.randperm(N_DIGITS, generator=g) for _ in range(2)]
    digits = torch.arange(N_DIGITS)
    return torch.stack([(digits + 1) % N_DIGITS, (digits + 3) % N_DIGITS, *perms])


def task_prompts(
    task: int | Tensor,
    batch_size: int,
    shots: int,
    generator: torch.Generator | None = None,
    *,
    table_seed: int = 100,
) -> TaskPrompts:
    """B prompts with ``shots`` demonstrations each, of one task (an int) or one task per row ((B,) ids).

    Inputs x are uniform digits drawn independently (a query may repeat a demonstration's input).
    """
    B = require_int(batch_size, "batch_size", minimum=1)
    S = require_int(shots, "shots", minimum=0)
    if isinstance(task, int):
        if not 0 <= task < len(TASK_NAMES):
            raise ValueError(f"task must be in 0 … {len(TASK_NAMES) - 1}, got {task}")
        task = torch.full((B,), task)
    if not isinstance(task, Tensor) or task.shape != (B,) or task.is_floating_point():
        raise TypeError(f"task must be an int or an integer tensor of shape ({B},)")
    x = torch.randint(0, N_DIGITS, (B, S + 1), generator=generator)  # (B, S + 1)
    y = task_table(table_seed)[task[:, None], x]  # (B, S + 1): y = f_task(x)
    # x₁ (10 + y₁) x₂ (10 + y₂) … x_q: interleave, drop the query's answer
    tokens = torch.stack([x, y + N_DIGITS], dim=-1).reshape(B, -1)[:, :-1]  # (B, 2S + 1)
    return TaskPrompts(tokens, y, task.clone())
