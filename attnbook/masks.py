r"""Every mask convention of the book, in one place.

A mask says which key each query may see. Two forms, as in torch:

- **boolean**: True where query i MAY attend to key j;
- **floating**: added to the scores (0 = visible, -inf = hidden, anything else = a bias).

An integer 0/1 mask is refused (see :func:`attnbook.validate.check_mask`).

**Positions.** N queries and M keys. When N ≠ M the queries are the LAST N of the M
positions, as when decoding with a cache of M - N earlier tokens: query i sits at position

    p_i = i + (M - N)                                                  (:func:`query_positions`)

and every positional mask below (causal, window, dilated, block) compares p_i with the key
position j. With N == M, p_i = i. Kernels that cannot call this module (Triton) restate
the rule in one commented line and are tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .validate import check_mask, require_int

__all__ = [
    "check_query_key_sizes",
    "query_positions",
    "causal_mask",
    "padding_mask",
    "window_mask",
    "dilated_mask",
    "block_mask",
    "combine_masks",
    "apply_mask",
]


def check_query_key_sizes(N: object, M: object = None) -> tuple[int, int]:
    r"""(N, M) as ints, checked against the convention: N, M >= 1 and M >= N (M defaults to N).

    Allocates nothing, so a kernel launch can check its sizes on every call.
    """
    N = require_int(N, "N", minimum=1)
    M = N if M is None else require_int(M, "M", minimum=1)
    if M < N:
        raise ValueError(
            f"the queries are the last N of the M key positions, so M >= N is needed; got N={N}, M={M}"
        )
    return N, M


def query_positions(N: int, M: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    r"""Positions of the N queries among the M keys: p_i = i + (M - N), shape (N,) int64."""
    N, M = check_query_key_sizes(N, M)
    return torch.arange(N, device=device) + (M - N)  # (N,)


def _offsets(N: int, M: int | None, device) -> Tensor:
    """p_i - j for every (query, key) pair, (N, M): positive when the key lies in the past."""
    N, M = check_query_key_sizes(N, M)
    return query_positions(N, M, device=device)[:, None] - torch.arange(M, device=device)[None, :]  # (N, M)


def causal_mask(N: int, M: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    r"""Boolean (N, M) mask, True where query i may see key j: j <= p_i = i + (M - N).

    With N == M this is the lower triangle, diagonal included.
    """
    return _offsets(N, M, device) >= 0  # (N, M)


def padding_mask(lengths: Tensor | list[int], M: int) -> Tensor:
    r"""Boolean key-padding mask (B, M): True for the first ``lengths[b]`` keys of sequence b.

    Turn it into an attention mask with ``mask[:, None, :]`` for (B, N, M) scores or
    ``mask[:, None, None, :]`` for (B, H, N, M) scores.
    """
    M = require_int(M, "M", minimum=1)
    lengths = torch.as_tensor(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be integers, got {lengths.dtype}")
    if (lengths < 0).any() or (lengths > M).any():
        raise ValueError(f"every entry of lengths must lie in [0, M={M}], got {lengths.tolist()}")
    return torch.arange(M, device=lengths.device)[None, :] < lengths[:, None]  # (B, M)


def window_mask(
    N: int, M: int | None = None, *, left: int, right: int = 0, device: torch.device | str | None = None
) -> Tensor:
    r"""Sliding window (N, M): query i sees keys j with p_i - left <= j <= p_i + right.

    ``right=0`` is a causal window of ``left + 1`` keys (the query's own position included).
    """
    left = require_int(left, "left", minimum=0)
    right = require_int(right, "right", minimum=0)
    offset = _offsets(N, M, device)  # (N, M): p_i - j
    return (offset <= left) & (offset >= -right)


def dilated_mask(
    N: int,
    M: int | None = None,
    *,
    left: int,
    right: int = 0,
    dilation: int = 1,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Dilated window (N, M): keys j = p_i + t·dilation with -left <= t <= right.

    ``dilation=1`` is :func:`window_mask`.
    """
    dilation = require_int(dilation, "dilation", minimum=1)
    left = require_int(left, "left", minimum=0)
    right = require_int(right, "right", minimum=0)
    offset = _offsets(N, M, device)  # (N, M): p_i - j
    return (offset % dilation == 0) & (offset <= left * dilation) & (offset >= -right * dilation)


def block_mask(
    N: int,
    M: int | None = None,
    *,
    block: int,
    causal: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Block-diagonal (N, M): query i sees key j when ⌊p_i / block⌋ = ⌊j / block⌋.

    With ``causal`` also j <= p_i.
    """
    block = require_int(block, "block", minimum=1)
    N, M = check_query_key_sizes(N, M)
    same = (query_positions(N, M, device=device)[:, None] // block) == (
        torch.arange(M, device=device)[None, :] // block
    )
    return same & causal_mask(N, M, device=device) if causal else same


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    r"""Combine masks into one: boolean masks AND together, floating masks add.

    A mix of both becomes floating (hidden = -inf). ``None`` entries are skipped; with no
    mask left the result is None.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    try:
        shape = torch.broadcast_shapes(*(m.shape for m in present))
    except RuntimeError:
        raise ValueError(
            f"masks of shapes {[tuple(m.shape) for m in present]} do not broadcast together"
        ) from None
    for i, m in enumerate(present):
        check_mask(m, shape, f"mask {i}")
    if all(m.dtype == torch.bool for m in present):
        out = present[0]
        for m in present[1:]:
            out = out & m
        return out
    dtype = next(m.dtype for m in present if m.is_floating_point())
    out = None
    for m in present:
        add = (
            torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf"))
            if m.dtype == torch.bool
            else m.to(dtype)
        )
        out = add if out is None else out + add
    return out


def apply_mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    r"""S + mask: -inf where a boolean mask is False, the mask added where it is floating.

    Args:
        scores: (..., N, M).
        mask: None, or boolean/floating broadcastable to (..., N, M).
    """
    if mask is None:
        return scores
    check_mask(mask, scores.shape)
    if mask.device != scores.device:
        raise ValueError(f"mask is on {mask.device} but the scores are on {scores.device}")
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask.to(scores.dtype)
