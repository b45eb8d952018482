r"""Bags of instances with a salient shortcut pattern (chapter 08, multiple-instance learning).

A bag is N instance features x_i ∈ R^d with one label. Background instances are N(0, I).
Three patterns A, B, C are unit directions u_A, u_B, u_C (drawn once by :func:`shortcut_patterns`);
an instance of pattern P is amp_P · u_P + noise · N(0, I).

- **train** (``split="train"``): n_pairs positive and n_pairs negative bags. Every positive bag
  holds a few SALIENT A instances (1–2, amplitude 4) and several WEAKER instances of B (even
  positives) or C (odd positives) (5–8, amplitude 2.5). Either pattern alone separates the
  training bags: A is the shortcut a pooling model can latch onto.
- **test** (``split="test"``): positives hold ONE pattern only (A, B or C in turn, 3–6 instances);
  the B/C-only positives ask whether the model learnt the secondary evidence too.

Negatives hold background only. Bag sizes N ~ U[n_min, n_max]; everything is drawn from the
generator in a fixed order, so a seed fixes the data.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..validate import require_int, require_tensor

__all__ = ["MILBags", "KIND_NAMES", "shortcut_patterns", "shortcut_bags"]

KIND_NAMES = ("A", "B", "C")  # instance kind k in {0, 1, 2}; -1 is background


class MILBags(NamedTuple):
    """A list of bags; ``bags[b]`` is (N_b, d) float32, the other fields are per bag or per instance."""

    bags: list[Tensor]  # B tensors (N_b, d)
    labels: Tensor  # (B,) long: 1 positive, 0 negative
    kinds: list[Tensor]  # B tensors (N_b,) long: 0/1/2 = A/B/C instance, -1 background
    shown: Tensor  # (B,) long: test positives, the one pattern shown (0/1/2); -1 negative; -2 train positive


def shortcut_patterns(d: int = 16, generator: torch.Generator | None = None) -> Tensor:
    """The unit directions u_A, u_B, u_C as rows of a (3, d) float32 tensor."""
    d = require_int(d, "d", minimum=2)
    return torch.nn.functional.normalize(torch.randn(3, d, generator=generator), dim=1)


def shortcut_bags(
    n_pairs: int,
    split: str,
    patterns: Tensor,
    generator: torch.Generator | None = None,
    *,
    n_range: tuple[int, int] = (40, 80),
    n_a: tuple[int, int] = (1, 2),
    n_bc: tuple[int, int] = (5, 8),
    n_test: tuple[int, int] = (3, 6),
    amp: tuple[float, float, float] = (4.0, 2.5, 2.5),
    noise: float = 0.5,
) -> MILBags:
    """n_pairs positive and n_pairs negative bags, alternating positive, negative (see the module).

    Args:
        n_pairs: number of positive (and of negative) bags.
        split: "train" (A plus B or C in every positive) or "test" (one pattern per positive).
        patterns: (3, d) directions from :func:`shortcut_patterns`.
        generator: the random source.
        n_range: inclusive range of the bag size N.
        n_a, n_bc: inclusive ranges of the A and B/C counts in a training positive.
        n_test: inclusive range of the pattern count in a test positive.
        amp: amplitudes of A, B, C; noise: std of the Gaussian added to a pattern instance.

    Returns:
        :class:`MILBags` with 2·n_pairs bags.
    """
    n_pairs = require_int(n_pairs, "n_pairs", minimum=1)
    if split not in ("train", "test"):
        raise ValueError(f'split must be "train" or "test", got {split!r}')
    require_tensor(patterns, "patterns", ndim=2, floating=True, shape="(3, d)")
    if patterns.shape[0] != 3:
        raise ValueError(f"patterns must have 3 rows (A, B, C), got {tuple(patterns.shape)}")
    lo, hi = n_range
    if not 1 <= lo <= hi or hi < max(n_a[1] + n_bc[1], n_test[1]):
        raise ValueError(f"n_range {n_range} must hold the largest pattern counts")
    d = patterns.shape[1]

    def count(r: tuple[int, int]) -> int:
        return int(torch.randint(r[0], r[1] + 1, (1,), generator=generator))

    def bag(parts: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        N = count(n_range)
        x = torch.randn(N, d, generator=generator)
        kind = torch.full((N,), -1, dtype=torch.long)
        slots, j = torch.randperm(N, generator=generator), 0
        for k, c in parts:
            idx = slots[j : j + c]
            j += c
            # x_i = amp_k u_k + noise · ε_i
            x[idx] = amp[k] * patterns[k] + noise * torch.randn(c, d, generator=generator)
            kind[idx] = k
        return x, kind

    bags, kinds, labels, shown = [], [], [], []
    for i in range(n_pairs):
        if split == "train":
            torch.rand(1, generator=generator)  # kept for a stable draw order
            parts = [(0, count(n_a)), (1 + i % 2, count(n_bc))]
            show = -2
        else:
            show = i % 3
            parts = [(show, count(n_test))]
        for label, p in ((1, parts), (0, [])):
            x, kind = bag(p)
            bags.append(x)
            kinds.append(kind)
            labels.append(label)
            shown.append(show if label else -1)
    return MILBags(bags, torch.tensor(labels), kinds, torch.tensor(shown))
