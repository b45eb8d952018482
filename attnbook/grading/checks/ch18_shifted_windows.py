"""Chapter 18 checks: MSW-MSA's partition, its inverse, its window mask and the share probability.

Each @task grades one function of exercises/ch18_shifted_windows.py on fresh random inputs against an
independent reference, written here token by token with Python integers (the window of token (r, c)
under shift (s_h, s_w) is (⌊((r − s_h) mod H)/w_h⌋, ⌊((c − s_w) mod W)/w_w⌋), (w_h, w_w) = (H/2, W/2)).
The chapter's common mistakes (the @mistake declarations) live in ``ch18_shifted_windows_mistakes.py``.
"""

from __future__ import annotations

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, fresh_generator

# (B, H, W, C, shift, dtype): square and non-square maps, B > 1, shifts of both signs' tell-tales
PARTITION_CASES = (
    (1, 8, 8, 3, (1, 1), torch.float64),
    (3, 6, 10, 2, (1, 2), torch.float32),
    (2, 12, 4, 4, (3, 0), torch.float64),
    (2, 16, 8, 1, (6, 3), torch.float32),
)
# (H, W, shift): shifts that are not a multiple of half a window, so that the sign matters
MASK_CASES = ((8, 8, (1, 1)), (6, 10, (1, 2)), (12, 4, (3, 1)), (8, 12, (0, 0)), (16, 8, (6, 3)))
SHARE_CASES = ((8, 8), (16, 8), (6, 10), (12, 20))


def _window_of(r: int, c: int, H: int, W: int, shift: tuple[int, int]) -> tuple[int, int]:
    """(row, column) of the window that token (r, c) falls in."""
    wh, ww = H // 2, W // 2
    return ((r - shift[0]) % H) // wh, ((c - shift[1]) % W) // ww


def _partition_reference(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) -> (4B, H·W/4, C), filled one token at a time: row b·4 + 2a + a', token u·w_w + v
    is x[b, (a·w_h + u + s_h) mod H, (a'·w_w + v + s_w) mod W]."""
    B, H, W, C = x.shape
    wh, ww = H // 2, W // 2
    out = torch.empty(4 * B, wh * ww, C, dtype=x.dtype)
    for b in range(B):
        for a in range(2):
            for a2 in range(2):
                for u in range(wh):
                    for v in range(ww):
                        r, c = (a * wh + u + shift[0]) % H, (a2 * ww + v + shift[1]) % W
                        out[4 * b + 2 * a + a2, u * ww + v] = x[b, r, c]
    return out


def _mask_reference(H: int, W: int, shift: tuple[int, int]) -> torch.Tensor:
    labels = [_window_of(r, c, H, W, shift) for r in range(H) for c in range(W)]
    return torch.tensor([[a == b for b in labels] for a in labels])


def _unchanged(before: torch.Tensor, after: torch.Tensor, what: str, name: str) -> None:
    if not torch.equal(before, after):
        raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


@task("ch18.msw_partition", points=1)
def check_msw_partition(fn):
    """Roll by (−s_h, −s_w), cut into the 2×2 windows, batch-major (4B, H·W/4, C)."""
    g, _ = fresh_generator()
    for B, H, W, C, shift, dtype in PARTITION_CASES:
        x = torch.randn(B, H, W, C, generator=g, dtype=torch.float64).to(dtype)
        what = f"msw_partition({describe({'x': x, 'shift': shift, 'dtype': dtype})})"
        with case():
            before = x.clone()
            answer = fn(x, shift)
            _unchanged(before, x, what, "x")
            expect_close(answer, _partition_reference(x, shift), what=what, atol=0, rtol=0)


@task("ch18.msw_reverse", points=1)
def check_msw_reverse(fn):
    """Undo the partition: put the windows back on the grid and roll by (+s_h, +s_w)."""
    g, _ = fresh_generator()
    for B, H, W, C, shift, dtype in PARTITION_CASES:
        x = torch.randn(B, H, W, C, generator=g, dtype=torch.float64).to(dtype)
        win = _partition_reference(x, shift)
        what = f"msw_reverse({describe({'win': win, 'H': H, 'W': W, 'shift': shift, 'dtype': dtype})})"
        with case():
            before = win.clone()
            answer = fn(win, H, W, shift)
            _unchanged(before, win, what, "win")
            expect_close(answer, x, what=what, atol=0, rtol=0)


@task("ch18.msw_mask", points=1)
def check_msw_mask(fn):
    """Boolean (N, N): True where two tokens share a shifted window, wrap-around included."""
    for H, W, shift in MASK_CASES:
        what = f"msw_mask(H={H}, W={W}, shift={shift})"
        with case():
            expect_close(fn(H, W, shift), _mask_reference(H, W, shift), what=what)


@task("ch18.share_prob", points=1)
def check_share_prob(fn):
    """P(i and j share a window) over the four equally likely shifts (⌊w_h/4⌋·m, ⌊w_w/4⌋·m)."""
    for H, W in SHARE_CASES:
        what = f"share_prob(H={H}, W={W})"
        with case():
            shifts = [((H // 2) // 4 * m, (W // 2) // 4 * m) for m in range(4)]
            expected = sum(_mask_reference(H, W, s).double() for s in shifts) / 4
            expect_close(fn(H, W), expected, what=what)
