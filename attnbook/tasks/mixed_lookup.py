r"""Mixed lookups: every position asks either a positional or a content question.

A sequence of N symbols s_t ∈ [0, S). Every position also carries a question type τ_t and one
position f (the "flag", drawn in the first half) carries a flag bit. The token id packs the
three: id = s_t + S·flag_t + 2S·τ_t (vocabulary 4S). The answer at position t is

- τ_t = 0, a **positional** lookup: the symbol ``offset`` positions back, s_{t-offset}
  (no answer for t < offset);
- τ_t = 1, a **content** lookup: the flagged symbol s_f, wherever it is (no answer for t <= f).

A positional lookup needs the *relative position* of the key; a content lookup needs to find
the flag bit at *any* distance. Positions without an answer get the target ``IGNORE`` (-100),
which ``torch.nn.functional.cross_entropy`` skips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["IGNORE", "MixedLookupBatch", "mixed_lookup"]

IGNORE = -100


@dataclass
class MixedLookupBatch:
    tokens: Tensor  # (B, N) int64 in [0, 4S)
    targets: Tensor  # (B, N) int64 in [0, S), IGNORE where there is no question
    kind: Tensor  # (B, N) int64: 0 positional, 1 content, -1 no question
    flag: Tensor  # (B,) int64: the flagged position


def mixed_lookup(
    batch_size: int, N: int, n_symbols: int, offset: int = 3, generator: torch.Generator | None = None
) -> MixedLookupBatch:
    """Draw a batch of mixed positional/content lookups (see the module docstring)."""
    batch_size, N = require_int(batch_size, "batch_size"), require_int(N, "N")
    n_symbols, offset = require_int(n_symbols, "n_symbols"), require_int(offset, "offset")
    if min(batch_size, n_symbols) < 1 or N < 2:
        raise ValueError(
            f"need batch_size >= 1, n_symbols >= 1 and N >= 2, got {batch_size}, {n_symbols}, {N}"
        )
    if not 1 <= offset < N:
        raise ValueError(f"offset must lie in [1, N={N}), got {offset}")
    B, S = batch_size, n_symbols
    symbols = torch.randint(S, (B, N), generator=generator)  # (B, N)
    kind = torch.randint(2, (B, N), generator=generator)  # (B, N): 0 positional, 1 content
    flag = torch.randint(max(N // 2, 1), (B,), generator=generator)  # (B,)
    t = torch.arange(N)[None, :]  # (1, N)
    is_flag = (t == flag[:, None]).long()  # (B, N)
    tokens = symbols + S * is_flag + 2 * S * kind
    back = symbols.roll(offset, dims=1)  # back[:, t] = symbols[:, t - offset] (wraps for t < offset)
    flagged = symbols.gather(1, flag[:, None]).expand(B, N)  # (B, N)
    targets = torch.where(kind == 0, back, flagged)
    has_answer = torch.where(kind == 0, t >= offset, t > flag[:, None])
    targets = targets.masked_fill(~has_answer, IGNORE)
    kind = kind.masked_fill(~has_answer, -1)
    return MixedLookupBatch(tokens, targets, kind, flag)
