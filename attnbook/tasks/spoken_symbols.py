r"""Spoken symbols: a synthetic "speech" toy, spectrogram in, symbol sequence out.

An utterance says ``n`` symbols s_1 ... s_n from an alphabet of ``n_symbols``. Each symbol is
rendered as 3-6 frames of an ``n_freq``-bin spectrogram with a bump on two bins of its own,
(s, s + n_freq - n_symbols) with the default sizes, separated by 0-2 silent frames; every cell
gets Gaussian noise and the utterance is zero-padded to the longest one of the batch:

    frame  t:   . . ▇ ▇ ▇ . ▇ ▇ ▇ ▇ . . ▇ ▇ ▇ ▇ ▇ . [pad]
    symbol:         s_1     s_2         s_3

The transcript is ``[BOS] s_1 ... s_n [EOS] [PAD] ...``: the decoder reads ``tokens[:, :-1]`` and
predicts ``targets`` (= ``tokens[:, 1:]`` with PAD replaced by ``IGNORE`` = -100, which
``torch.nn.functional.cross_entropy`` skips). ``alignment[b, i, t]`` is True when target i is a
symbol spoken at frame t: the ground truth an explanation of target i should point at.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["IGNORE", "SpokenBatch", "spoken_symbols"]

IGNORE = -100


@dataclass
class SpokenBatch:
    """One batch of utterances.

    Attributes:
        x: (B, T, F) spectrograms, zero on padded frames.
        frame_valid: (B, T) bool, True on real (non-padded) frames.
        tokens: (B, I + 1) long, [BOS] s_1 ... s_n [EOS] [PAD]...; decoder input is tokens[:, :-1].
        targets: (B, I) long, tokens[:, 1:] with PAD as IGNORE.
        alignment: (B, I, T) bool, True where target i (a symbol) is spoken at frame t.
        n_symbols: the alphabet size; EOS = n_symbols, BOS = n_symbols + 1, PAD = n_symbols + 2.
    """

    x: Tensor
    frame_valid: Tensor
    tokens: Tensor
    targets: Tensor
    alignment: Tensor
    n_symbols: int

    @property
    def vocab(self) -> int:
        """Number of token ids: the symbols, EOS, BOS and PAD."""
        return self.n_symbols + 3


def spoken_symbols(
    batch: int,
    *,
    n_symbols: int = 10,
    n_freq: int = 16,
    min_symbols: int = 3,
    max_symbols: int = 5,
    noise: float = 0.3,
    generator: torch.Generator | None = None,
) -> SpokenBatch:
    """Draw ``batch`` utterances (see the module docstring); all randomness from ``generator``."""
    batch = require_int(batch, "batch", minimum=1)
    n_symbols = require_int(n_symbols, "n_symbols", minimum=2)
    n_freq = require_int(n_freq, "n_freq", minimum=n_symbols)
    lo = require_int(min_symbols, "min_symbols", minimum=1)
    hi = require_int(max_symbols, "max_symbols", minimum=lo)
    offset = n_freq - n_symbols  # second bin of symbol s is s + offset (the same bin when offset = 0)
    eos, bos, pad = n_symbols, n_symbols + 1, n_symbols + 2
    utterances = []  # (frames (T_b, F), symbols, [(start, stop) per symbol])
    for _ in range(batch):
        n = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        symbols = torch.randint(0, n_symbols, (n,), generator=generator).tolist()
        frames, spans, t = [], [], 0
        for s in symbols:
            gap = int(torch.randint(0, 3, (1,), generator=generator))
            length = int(torch.randint(3, 7, (1,), generator=generator))
            frames.append(torch.zeros(gap, n_freq))
            bump = torch.zeros(length, n_freq)
            bump[:, s] = 1.0
            bump[:, s + offset] = 1.0
            frames.append(bump)
            spans.append((t + gap, t + gap + length))
            t += gap + length
        frames.append(torch.zeros(int(torch.randint(0, 3, (1,), generator=generator)), n_freq))
        utterances.append((torch.cat(frames), symbols, spans))
    T = max(u[0].shape[0] for u in utterances)
    I = hi + 1  # the longest transcript plus EOS
    x = torch.zeros(batch, T, n_freq)
    frame_valid = torch.zeros(batch, T, dtype=torch.bool)
    tokens = torch.full((batch, I + 1), pad, dtype=torch.long)
    alignment = torch.zeros(batch, I, T, dtype=torch.bool)
    for b, (frames, symbols, spans) in enumerate(utterances):
        Tb = frames.shape[0]
        x[b, :Tb] = frames + noise * torch.randn(Tb, n_freq, generator=generator)
        frame_valid[b, :Tb] = True
        tokens[b, 0] = bos
        tokens[b, 1 : len(symbols) + 1] = torch.tensor(symbols)
        tokens[b, len(symbols) + 1] = eos
        for i, (start, stop) in enumerate(spans):
            alignment[b, i, start:stop] = True
    targets = tokens[:, 1:].clone()
    targets[targets == pad] = IGNORE
    return SpokenBatch(x, frame_valid, tokens, targets, alignment, n_symbols)
