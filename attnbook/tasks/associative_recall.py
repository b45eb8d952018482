"""Associative recall: a sequence of key→value pairs, then a query key; answer its value.

Each pair is ONE token carrying both its key and its value (the model embeds both and adds
them), and the last token carries only the query key. One attention layer can then solve
the task exactly: the query matches the pair token with the same key and copies its value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["RecallBatch", "associative_recall"]


@dataclass
class RecallBatch:
    keys: Tensor  # (B, n_pairs) int64 in [0, n_keys), distinct within a sequence
    values: Tensor  # (B, n_pairs) int64 in [0, n_values)
    query: Tensor  # (B,) int64: one of the sequence's keys
    target: Tensor  # (B,) int64: the value paired with the query key
    position: Tensor  # (B,) int64: index of the pair holding the answer


def associative_recall(
    batch_size: int, n_pairs: int, n_keys: int, n_values: int, generator: torch.Generator | None = None
) -> RecallBatch:
    """Draw a batch of associative-recall problems.

    Keys within one sequence are distinct (sampled without replacement), values are i.i.d.
    uniform, and the query is one of the sequence's keys chosen uniformly.
    """
    batch_size, n_pairs = require_int(batch_size, "batch_size"), require_int(n_pairs, "n_pairs")
    n_keys, n_values = require_int(n_keys, "n_keys"), require_int(n_values, "n_values")
    if n_pairs > n_keys:
        raise ValueError(f"n_pairs={n_pairs} distinct keys need n_keys >= n_pairs, got n_keys={n_keys}")
    if min(batch_size, n_pairs, n_values) < 1:
        raise ValueError("batch_size, n_pairs and n_values must be >= 1")
    keys = torch.rand(batch_size, n_keys, generator=generator).argsort(dim=-1)[:, :n_pairs]  # (B, n)
    values = torch.randint(n_values, (batch_size, n_pairs), generator=generator)  # (B, n)
    position = torch.randint(n_pairs, (batch_size,), generator=generator)  # (B,)
    rows = torch.arange(batch_size)
    return RecallBatch(keys, values, keys[rows, position], values[rows, position], position)
