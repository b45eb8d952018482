r"""Drifting layers: find the mid-level layers of a stack whose offset and gain drift per sample.

A sample mimics the hidden states of an n-layer encoder, one C-vector per layer, as in the
layer-attention use of Gaussian adaptive attention (chapter 03). The layers come in blocks of
n / n_blocks; in every block

- one **informative** layer sits at level +1.5 and carries the class pattern ±ε·u
  (sign = the label), at one of the fixed ``informative_slots`` of the block;
- one or two **loud** layers sit at level +3 and carry a random distractor pattern ±1.5·u or
  ±1.5·v (random sign, random choice of pattern);
- the other layers are **background** at level 0;

and every element gets N(0, noise²) noise. Then the whole sample drifts:
x = a + b·x₀ with an offset a ~ U(-offset, offset) and a gain b ~ logU(1/gain, gain), the
same for every element of the sample. The label is readable only from the informative
layers: pooling everything mixes in the loud layers' larger random patterns, and picking the
most extreme layers picks the loud ones. Finding the middle level needs a score that is
*not* monotone in the value — and, under drift, a notion of level relative to the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["DriftBatch", "drifting_layers", "patterns"]

BACKGROUND, INFORMATIVE, LOUD = 0, 1, 2


@dataclass
class DriftBatch:
    x: Tensor  # (B, n, C) float32: the drifted sample
    label: Tensor  # (B,) int64 in {0, 1}: the sign of the informative pattern along u
    role: Tensor  # (B, n) int64: 0 background, 1 informative, 2 loud
    offset: Tensor  # (B,) the drift offset a
    gain: Tensor  # (B,) the drift gain b


def patterns(C: int) -> tuple[Tensor, Tensor]:
    """Two fixed ±1 patterns (C,): balanced (each sums to 0) and orthogonal. Needs C % 4 == 0."""
    C = require_int(C, "C")
    if C < 4 or C % 4:
        raise ValueError(f"the number of features C must be a positive multiple of 4, got {C}")
    q = C // 4
    u = torch.tensor([1.0] * (2 * q) + [-1.0] * (2 * q))
    v = torch.tensor(([1.0] * q + [-1.0] * q) * 2)
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(0))  # fixed, the same in every call
    return u[perm], v[perm]


def drifting_layers(
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    n_layers: int = 32,
    n_features: int = 16,
    n_blocks: int = 4,
    offset: float = 3.0,
    gain: float = 1.43,
    noise: float = 0.5,
    signal: float = 0.3,
    informative_slots: tuple[int, ...] = (1, 6),
) -> DriftBatch:
    """Draw a batch of the drifting-layers task (see the module docstring).

    ``offset=0, gain=1`` switches the drift off. ``signal`` is ε, the size of the class
    pattern on the informative layers.
    """
    batch_size, n_layers = require_int(batch_size, "batch_size"), require_int(n_layers, "n_layers")
    n_features, n_blocks = require_int(n_features, "n_features"), require_int(n_blocks, "n_blocks")
    informative_slots = tuple(require_int(s, "informative_slots[i]") for s in informative_slots)
    if batch_size < 1 or n_blocks < 1 or n_layers % n_blocks:
        raise ValueError(f"need batch_size >= 1 and n_layers={n_layers} divisible by n_blocks={n_blocks}")
    size = n_layers // n_blocks
    if size < 3 or not informative_slots or not all(0 <= s < size for s in informative_slots):
        raise ValueError(f"blocks of {size} layers need >= 3 layers and informative_slots within [0, {size})")
    if gain < 1 or offset < 0:
        raise ValueError(f"need gain >= 1 and offset >= 0, got gain={gain}, offset={offset}")
    B, C = batch_size, n_features
    u, v = patterns(C)
    label = torch.randint(2, (B,), generator=generator)
    sign = (2 * label - 1).float()[:, None]  # (B, 1)
    x0 = noise * torch.randn(B, n_layers, C, generator=generator)  # (B, n, C)
    role = torch.zeros(B, n_layers, dtype=torch.long)
    rows = torch.arange(B)
    slots = torch.tensor(informative_slots)
    for block in range(n_blocks):
        start = block * size
        informative = start + slots[torch.randint(len(slots), (B,), generator=generator)]  # (B,)
        # the loud layers: the first one or two of a random order of the block's other slots
        order = torch.rand(B, size, generator=generator)
        order[rows, informative - start] = 2.0  # never loud
        others = start + order.argsort(dim=-1)
        n_loud = torch.randint(1, 3, (B,), generator=generator)
        x0[rows, informative] += 1.5 + signal * sign * u
        role[rows, informative] = INFORMATIVE
        for k in range(2):
            loud = others[:, k]
            on = n_loud > k
            flip = (2 * torch.randint(2, (B, 1), generator=generator) - 1).float()
            pattern = torch.where(torch.rand(B, 1, generator=generator) < 0.5, u, v)  # (B, C)
            x0[rows[on], loud[on]] += (3.0 + 1.5 * flip * pattern)[on]
            role[rows[on], loud[on]] = LOUD
    a = (2 * torch.rand(B, generator=generator) - 1) * offset
    b = torch.exp((2 * torch.rand(B, generator=generator) - 1) * torch.log(torch.tensor(gain)))
    return DriftBatch(a[:, None, None] + b[:, None, None] * x0, label, role, a, b)
