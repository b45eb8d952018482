r"""Chapter 18 · Shifted windows: window attention on a token grid, Swin's shifted windows and
HiDiffusion's MSW-MSA (modified shifted-window attention).

Tokens sit on an H×W grid, flattened row-major: token i = r·W + c. Multi-head attention
(chapter 00) lets every query see every key. Window attention changes one thing, the set of
keys: split the grid into windows of (w_h, w_w) tokens and let a query see only the keys of
its own window. With a shift (s_h, s_w) the windows move; token (r, c) lies in window

    win_s(r, c) = (⌊((r − s_h) mod H) / w_h⌋, ⌊((c − s_w) mod W) / w_w⌋)

so the last window on each axis wraps around and joins tokens of opposite borders. Two
computations give the same output (a test checks it):

- **explicit**: roll the grid by (−s_h, −s_w), cut it into windows, run unchanged attention on
  each window as a batch entry, put the windows back and roll by (+s_h, +s_w);
- **masked**: global attention with the boolean mask M_s[i, j] = 1[win_s(i) = win_s(j)], a
  ``mask_mod`` for :class:`attnbook.attention.MultiHeadAttention` (:class:`GridWindowMask`).

Swin (Liu et al., 2021) hides the wrapped pairs: its extra mask keeps two tokens together only
when they come from the same region before the roll. That is the window index without the
modulus, ⌊(r − s_h) / w_h⌋ (``wrap=False`` here). HiDiffusion (Zhang et al., 2023) applies no
such mask (``wrap=True``, the default) and uses MSW-MSA:

- windows of half the map, (w_h, w_w) = (H/2, W/2): always a 2×2 grid of 4 windows;
- at every call a fresh m uniform in {0, 1, 2, 3} and the shift (⌊w_h/4⌋·m, ⌊w_w/4⌋·m).

Reading implemented: the official code's (``hidiffusion/hidiffusion.py``): both axes share m,
the wrapped tokens are not masked, and H, W must be even (the code resizes odd maps instead;
this module refuses them). The projections and the scale are those of the unchanged layer.

The attention core costs 4·N²·C multiply-adds-times-two for N tokens of width C (QKᵀ and AV);
g×g windows of N/g² tokens cost 4·N²·C/g² (:func:`window_attention_flops`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnbook.attention import MultiHeadAttention
from attnbook.masks import block_mask
from attnbook.validate import require_int, require_tensor

__all__ = [
    "msw_window",
    "msw_shift",
    "window_index",
    "grid_window_mask",
    "window_partition",
    "window_reverse",
    "msw_partition",
    "msw_reverse",
    "window_attention",
    "share_probability",
    "window_attention_flops",
    "GridWindowMask",
    "RandomShiftMask",
    "msw_attention",
]


def _pair(value: object, name: str, minimum: int | None = None) -> tuple[int, int]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of ints (rows, columns), got {value!r}")
    return require_int(value[0], f"{name}[0]", minimum=minimum), require_int(
        value[1], f"{name}[1]", minimum=minimum
    )


def _check_grid(grid: object, window: object, shift: object, wrap: bool) -> tuple[tuple[int, int], ...]:
    H, W = _pair(grid, "grid", minimum=1)
    wh, ww = _pair(window, "window", minimum=1)
    sh, sw = _pair(shift, "shift")
    if H % wh or W % ww:
        raise ValueError(f"window {(wh, ww)} must divide the grid {(H, W)} on both axes")
    if not wrap and not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"without wrap-around the shift must lie in [0, window), got {(sh, sw)}")
    return (H, W), (wh, ww), (sh, sw)


def msw_window(H: int, W: int) -> tuple[int, int]:
    """MSW-MSA's window (H/2, W/2) for an H×W map: a 2×2 grid of windows. H and W must be even."""
    H, W = require_int(H, "H", minimum=2), require_int(W, "W", minimum=2)
    if H % 2 or W % 2:
        raise ValueError(f"MSW-MSA needs an even grid, got H={H}, W={W}")
    return H // 2, W // 2


def msw_shift(H: int, W: int, m: int) -> tuple[int, int]:
    """MSW-MSA's m-th shift, m in {0, 1, 2, 3}: (⌊w_h/4⌋·m, ⌊w_w/4⌋·m) with (w_h, w_w) = (H/2, W/2)."""
    wh, ww = msw_window(H, W)
    m = require_int(m, "m", minimum=0)
    if m > 3:
        raise ValueError(f"m must lie in {{0, 1, 2, 3}}, got {m}")
    # (s_h, s_w) = (⌊w_h/4⌋ m, ⌊w_w/4⌋ m)
    return (wh // 4) * m, (ww // 4) * m


def window_index(grid, window, shift=(0, 0), *, wrap: bool = True, device=None) -> Tensor:
    r"""The window of every token of the grid, (H·W,) int64, tokens row-major.

    wrap=True: win_s(r, c) = (⌊((r − s_h) mod H)/w_h⌋, ⌊((c − s_w) mod W)/w_w⌋);
    wrap=False (Swin): the same without the modulus, so wrapped tokens get windows of their own.
    Two tokens share a window exactly when their labels are equal.
    """
    (H, W), (wh, ww), (sh, sw) = _check_grid(grid, window, shift, wrap)
    r = torch.arange(H, device=device)
    c = torch.arange(W, device=device)
    if wrap:
        # ⌊((r − s_h) mod H) / w_h⌋, in [0, H/w_h)
        row, col = torch.remainder(r - sh, H) // wh, torch.remainder(c - sw, W) // ww
    else:
        # ⌊(r − s_h) / w_h⌋ + 1, in [0, H/w_h]
        row, col = (
            torch.div(r - sh, wh, rounding_mode="floor") + 1,
            torch.div(c - sw, ww, rounding_mode="floor") + 1,
        )
    return (row[:, None] * (W // ww + 1) + col[None, :]).reshape(H * W)  # (H·W,)


def _axis_mask(L: int, w: int, s: int, wrap: bool, device) -> Tensor:
    """(L, L) boolean: positions a, b of one axis share a window (1-D block mask, moved by s)."""
    if wrap:
        # M[a, b] = 1[⌊((a − s) mod L)/w⌋ = ⌊((b − s) mod L)/w⌋]: the block mask rolled by s
        return torch.roll(block_mask(L, block=w, device=device), shifts=(s, s), dims=(0, 1))
    # M[a, b] = 1[⌊(a − s)/w⌋ = ⌊(b − s)/w⌋]: the block mask read at positions a + w − s
    return block_mask(L + w, block=w, device=device)[w - s : w - s + L, w - s : w - s + L]


def grid_window_mask(grid, window, shift=(0, 0), *, wrap: bool = True, device=None) -> Tensor:
    r"""Boolean (N, N) mask, N = H·W: True where tokens i and j share a (shifted) window.

    M_s[(r, c), (r', c')] = rows share a window AND columns share a window.
    Args:
        grid: (H, W); window: (w_h, w_w) dividing it; shift: (s_h, s_w) ints.
        wrap: True for HiDiffusion (wrapped tokens attend to each other), False for Swin.
    """
    (H, W), (wh, ww), (sh, sw) = _check_grid(grid, window, shift, wrap)
    rows = _axis_mask(H, wh, sh, wrap, device)  # (H, H)
    cols = _axis_mask(W, ww, sw, wrap, device)  # (W, W)
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(H * W, H * W)  # (N, N)


def window_partition(x: Tensor, window, shift=(0, 0)) -> Tensor:
    r"""Roll (B, H, W, C) by (−s_h, −s_w) and cut it into windows: (B·n_win, w_h·w_w, C).

    Batch-major: row b·n_win + k holds window k (row-major over the window grid) of sample b.
    """
    require_tensor(x, "x", ndim=4, shape="(B, H, W, C)")
    B, H, W, C = x.shape
    _, (wh, ww), (sh, sw) = _check_grid((H, W), window, shift, True)
    x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    x = x.reshape(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)  # (B, nh, nw, wh, ww, C)
    return x.reshape(B * (H // wh) * (W // ww), wh * ww, C)


def window_reverse(win: Tensor, H: int, W: int, window, shift=(0, 0)) -> Tensor:
    """Inverse of :func:`window_partition`: (B·n_win, w_h·w_w, C) -> (B, H, W, C), rolled back by +s."""
    require_tensor(win, "win", ndim=3, shape="(B·n_win, w_h·w_w, C)")
    _, (wh, ww), (sh, sw) = _check_grid((H, W), window, shift, True)
    nh, nw = H // wh, W // ww
    if win.shape[0] % (nh * nw) or win.shape[1] != wh * ww:
        raise ValueError(f"win must have shape (B·{nh * nw}, {wh * ww}, C), got {tuple(win.shape)}")
    C = win.shape[-1]
    x = win.reshape(-1, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)
    return torch.roll(x, shifts=(sh, sw), dims=(1, 2))  # (B, H, W, C)


def msw_partition(x: Tensor, shift) -> Tensor:
    """MSW-MSA's partition: (B, H, W, C) -> (4B, H·W/4, C) with windows (H/2, W/2)."""
    require_tensor(x, "x", ndim=4, shape="(B, H, W, C)")
    return window_partition(x, msw_window(x.shape[1], x.shape[2]), shift)


def msw_reverse(win: Tensor, H: int, W: int, shift) -> Tensor:
    """Inverse of :func:`msw_partition`: (4B, H·W/4, C) -> (B, H, W, C)."""
    return window_reverse(win, H, W, msw_window(H, W), shift)


def window_attention(x: Tensor, attn: Callable[[Tensor], Tensor], grid, window, shift=(0, 0)) -> Tensor:
    r"""The explicit computation: roll, partition, attend within each window, merge, roll back.

    Args:
        x: (B, N, C) tokens, N = H·W row-major.
        attn: unchanged self-attention, (B', n, C) -> (B', n, C).
    Returns:
        (B, N, C).
    """
    require_tensor(x, "x", ndim=3, floating=True, shape="(B, N, C)")
    (H, W), _, _ = _check_grid(grid, window, shift, True)
    B, N, C = x.shape
    if N != H * W:
        raise ValueError(f"x must hold N = H·W = {H * W} tokens, got N={N}")
    win = window_partition(x.reshape(B, H, W, C), window, shift)  # (B·n_win, w_h·w_w, C)
    return window_reverse(attn(win), H, W, window, shift).reshape(B, N, C)


def share_probability(H: int, W: int, *, device=None) -> Tensor:
    """P(tokens i and j share an MSW-MSA window), averaged over m in {0..3}: (N, N) float64."""
    window = msw_window(H, W)
    masks = [grid_window_mask((H, W), window, msw_shift(H, W, m), device=device) for m in range(4)]
    # P_ij = (1/4) Σ_m M_{s(m)}[i, j]
    return torch.stack(masks).to(torch.float64).mean(dim=0)


def window_attention_flops(H: int, W: int, C: int, grid: int) -> int:
    """FLOPs of the attention core (QKᵀ and AV) over grid×grid windows: g²·4·(N/g²)²·C = 4N²C/g²."""
    H, W, C = require_int(H, "H", minimum=1), require_int(W, "W", minimum=1), require_int(C, "C", minimum=1)
    g = require_int(grid, "grid", minimum=1)
    if H % g or W % g:
        raise ValueError(f"a {g}×{g} window grid must divide the map {(H, W)}")
    n = (H // g) * (W // g)
    # g² windows × (2 n² C for QKᵀ + 2 n² C for AV)
    return g * g * 4 * n * n * C


class GridWindowMask(nn.Module):
    """A ``mask_mod`` for MultiHeadAttention: (shifted) windows on an H×W grid of tokens."""

    def __init__(self, grid, window, shift=(0, 0), *, wrap: bool = True):
        super().__init__()
        self.grid, self.window, self.shift = _check_grid(grid, window, shift, wrap)
        self.wrap = wrap

    def forward(self, N: int, M: int, device=None) -> Tensor:
        H, W = self.grid
        if N != H * W or M != H * W:
            raise ValueError(f"window masks need self-attention over the grid: N = M = {H * W}, got {N}, {M}")
        return grid_window_mask(self.grid, self.window, self.shift, wrap=self.wrap, device=device)


class RandomShiftMask(nn.Module):
    """MSW-MSA's ``mask_mod``: windows (H/2, W/2) and a fresh shift m ~ U{0..3} at every call.

    Pass a ``torch.Generator`` to make the draws reproducible; ``last_shift`` records the last one.
    """

    def __init__(self, grid, generator: torch.Generator | None = None):
        super().__init__()
        H, W = _pair(grid, "grid", minimum=1)
        self.grid, self.window = (H, W), msw_window(H, W)
        self.generator = generator
        self.last_shift: tuple[int, int] | None = None

    def draw(self) -> tuple[int, int]:
        """Draw m uniform in {0, 1, 2, 3} and return the shift (⌊w_h/4⌋ m, ⌊w_w/4⌋ m)."""
        m = int(torch.randint(4, (1,), generator=self.generator).item())
        self.last_shift = msw_shift(*self.grid, m)
        return self.last_shift

    def forward(self, N: int, M: int, device=None) -> Tensor:
        return GridWindowMask(self.grid, self.window, self.draw())(N, M, device)


def msw_attention(D: int, heads: int, grid, generator: torch.Generator | None = None) -> MultiHeadAttention:
    """Multi-head self-attention on an H×W grid with MSW-MSA windows (a RandomShiftMask mask_mod)."""
    return MultiHeadAttention(D, heads, mask_mod=RandomShiftMask(grid, generator))
