r"""Two-key recall: a sequence of key→value pairs, then a query that names TWO keys.

The answer is the ordered pair of their values, coded as one class
``target = values[a] * n_values + values[b]`` (n_values² classes). Each pair is one token
(key and value embedded and added), and the last token carries both query keys, the first
and the second in separate slots. One query needs two lookups: a single attention head
averages the two values it finds and loses which is which, while two heads can each fetch one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["TwoKeyBatch", "two_key_recall"]


@dataclass
class TwoKeyBatch:
    keys: Tensor  # (B, n_pairs) int64 in [0, n_keys), distinct within a sequence
    values: Tensor  # (B, n_pairs) int64 in [0, n_values)
    query: Tensor  # (B, 2) int64: the first and the second key asked for (two different keys)
    position: Tensor  # (B, 2) int64: indices of the two pairs that hold the answer
    target: Tensor  # (B,) int64 in [0, n_values²): values[a] * n_values + values[b]


def two_key_recall(
    batch_size: int, n_pairs: int, n_keys: int, n_values: int, generator: torch.Generator | None = None
) -> TwoKeyBatch:
    """Draw a batch of two-key recall problems.

    Keys within one sequence are distinct, values are i.i.d. uniform, and the two queried
    pairs are two different pairs of the sequence, chosen uniformly.
    """
    batch_size, n_pairs = require_int(batch_size, "batch_size"), require_int(n_pairs, "n_pairs")
    n_keys, n_values = require_int(n_keys, "n_keys"), require_int(n_values, "n_values")
    if n_pairs > n_keys:
        raise ValueError(f"n_pairs={n_pairs} distinct keys need n_keys >= n_pairs, got n_keys={n_keys}")
    if batch_size < 1 or n_pairs < 2 or n_values < 1:
        raise ValueError(
            f"need batch_size >= 1, n_pairs >= 2 and n_values >= 1, got {batch_size}, {n_pairs}, {n_values}"
        )
    keys = torch.rand(batch_size, n_keys, generator=generator).argsort(dim=-1)[:, :n_pairs]  # (B, n)
    values = torch.randint(n_values, (batch_size, n_pairs), generator=generator)  # (B, n)
    position = torch.rand(batch_size, n_pairs, generator=generator).argsort(dim=-1)[:, :2]  # (B, 2)
    query = keys.gather(1, position)  # (B, 2)
    found = values.gather(1, position)  # (B, 2)
    return TwoKeyBatch(keys, values, query, position, found[:, 0] * n_values + found[:, 1])
