r"""A stream mixing local and long-range structure: a second-order Markov chain with a periodic repeat.

Symbols s_t ∈ [0, S). Most symbols follow a fixed random **second-order Markov chain** (the
"language", drawn once from ``chain_seed``): s_{t+1} depends on (s_{t-1}, s_t), and with
probability ``p_top`` it is that context's favourite successor. Every ``period``-th position,
from a random phase φ ∈ [0, period) per sequence, the symbol instead **repeats the one**
``period`` **positions earlier**: s_t = s_{t-period} for t ≡ φ (mod period), t >= period.

The token at position t packs the symbol and one bit saying that the NEXT symbol is a repeat:
id_t = s_t + S·[t + 1 is a repeat position] (vocabulary 2S), so a model without absolute
positions can still tell where the repeats are. The target at t is the next symbol s_{t+1}
(targets run over positions 0 … N-1 of a stream of N + 1 symbols).

``kind`` marks what a target needs: 1 a repeat (copy the symbol period - 1 back from t),
0 a Markov step (the last two symbols).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["MarkovPeriodBatch", "markov_chain", "markov_period"]


@dataclass
class MarkovPeriodBatch:
    tokens: Tensor  # (B, N) int64 in [0, 2S)
    targets: Tensor  # (B, N) int64 in [0, S): the next symbol
    kind: Tensor  # (B, N) int64: 1 the target repeats the symbol period positions back, 0 a Markov step


def markov_chain(n_symbols: int, p_top: float = 0.6, chain_seed: int = 0) -> Tensor:
    """A second-order chain (S, S, S): row [a, b] is the law of s_{t+1} given (s_{t-1}, s_t) = (a, b).

    Each context puts ``p_top`` on one favourite successor (drawn at random) and the rest uniformly.
    """
    S = require_int(n_symbols, "n_symbols", minimum=2)
    if not 0.0 < p_top <= 1.0:
        raise ValueError(f"p_top must lie in (0, 1], got {p_top}")
    g = torch.Generator().manual_seed(chain_seed)
    favourite = torch.randint(S, (S, S), generator=g)  # (S, S)
    table = torch.full((S, S, S), (1.0 - p_top) / S)
    table.scatter_add_(-1, favourite[..., None], torch.full((S, S, 1), p_top))
    return table


def markov_period(
    batch_size: int,
    N: int,
    n_symbols: int = 8,
    period: int = 12,
    generator: torch.Generator | None = None,
    *,
    p_top: float = 0.6,
    chain_seed: int = 0,
) -> MarkovPeriodBatch:
    """Draw ``batch_size`` streams of N tokens (see the module docstring)."""
    B, N = require_int(batch_size, "batch_size", minimum=1), require_int(N, "N", minimum=2)
    S, period = require_int(n_symbols, "n_symbols", minimum=2), require_int(period, "period", minimum=2)
    table = markov_chain(S, p_top, chain_seed)  # (S, S, S)
    L = N + 1  # symbols 0 … N: tokens are 0 … N-1, targets 1 … N
    phase = torch.randint(period, (B,), generator=generator)  # (B,)
    t = torch.arange(L)
    repeat = ((t[None, :] - phase[:, None]) % period == 0) & (t[None, :] >= period)  # (B, L)
    s = torch.empty(B, L, dtype=torch.long)
    s[:, :2] = torch.randint(S, (B, 2), generator=generator)
    uniform = torch.rand(B, L, generator=generator)  # one draw per step, used by the chain
    cdf = table.cumsum(-1)  # (S, S, S)
    for i in range(2, L):
        # s_i ~ table[s_{i-2}, s_{i-1}] by inverse CDF; a repeat position copies s_{i-period}
        step = (uniform[:, i, None] > cdf[s[:, i - 2], s[:, i - 1]]).sum(-1).clamp(max=S - 1)
        s[:, i] = torch.where(repeat[:, i], s[:, i - period], step) if i >= period else step
    tokens = s[:, :N] + S * repeat[:, 1:].long()  # bit: the next symbol is a repeat
    return MarkovPeriodBatch(tokens, s[:, 1:], repeat[:, 1:].long())
