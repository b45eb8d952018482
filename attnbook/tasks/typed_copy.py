r"""Typed copies: every position carries a type that says which earlier symbol to copy.

A sequence of N symbols s_t ∈ [0, S) and, independently, a type τ_t ∈ {0, 1, 2, 3} per position.
The token id packs both: id = s_t + S·τ_t (vocabulary 4S). The answer at position t is

- τ_t = 0: the previous symbol, s_{t-1};
- τ_t = 1: the symbol two back, s_{t-2};
- τ_t = 2: the first symbol of the sequence, s_0;
- τ_t = 3: the symbol four back, s_{t-4}.

Each type needs its own attention pattern (three diagonals and a column), so a model that gives
every token all of its heads can dedicate heads to types, and a router that picks heads per token
can learn to send each type to its own heads. Positions without a source (t < lag, and t = 0 for
τ = 2) get the target ``IGNORE`` (-100), which ``torch.nn.functional.cross_entropy`` skips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["IGNORE", "TYPE_NAMES", "TypedCopyBatch", "typed_copy"]

IGNORE = -100
TYPE_NAMES = ("t-1", "t-2", "first", "t-4")
_LAGS = (1, 2, None, 4)  # None: copy s_0


@dataclass
class TypedCopyBatch:
    tokens: Tensor  # (B, N) int64 in [0, 4S): s_t + S·τ_t
    targets: Tensor  # (B, N) int64 in [0, S), IGNORE where the source does not exist
    types: Tensor  # (B, N) int64 in [0, 4): τ_t


def typed_copy(
    batch_size: int, N: int, n_symbols: int, generator: torch.Generator | None = None
) -> TypedCopyBatch:
    """Draw a batch of typed copies (see the module docstring); tokens, targets, types (B, N)."""
    batch_size, N = require_int(batch_size, "batch_size"), require_int(N, "N")
    n_symbols = require_int(n_symbols, "n_symbols")
    if batch_size < 1 or n_symbols < 1 or N < 5:
        raise ValueError(
            f"need batch_size >= 1, n_symbols >= 1 and N >= 5, got {batch_size}, {n_symbols}, {N}"
        )
    B, S = batch_size, n_symbols
    symbols = torch.randint(S, (B, N), generator=generator)  # (B, N)
    types = torch.randint(len(_LAGS), (B, N), generator=generator)  # (B, N)
    t = torch.arange(N)  # (N,)
    targets = torch.full((B, N), IGNORE, dtype=torch.long)
    for tau, lag in enumerate(_LAGS):
        # source position of type τ at t: t - lag, or 0 for "first"
        source = torch.zeros_like(t) if lag is None else (t - lag).clamp(min=0)  # (N,)
        exists = t >= 1 if lag is None else t >= lag  # (N,)
        hit = (types == tau) & exists  # (B, N)
        targets = torch.where(hit, symbols[:, source], targets)
    return TypedCopyBatch(symbols + S * types, targets, types)
