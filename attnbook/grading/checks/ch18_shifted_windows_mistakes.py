"""The common mistakes of chapter 18's exercises, declared for the checks of ``ch18_shifted_windows``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import torch

from ..core import mistake


def _partition(x, shift, *, sign=-1, window_major=False, permute=True):
    B, H, W, C = x.shape
    wh, ww = H // 2, W // 2
    x = torch.roll(x, shifts=(sign * shift[0], sign * shift[1]), dims=(1, 2))
    if not permute:
        return x.reshape(4 * B, wh * ww, C)
    x = x.reshape(B, 2, wh, 2, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, 4, wh * ww, C)
    return (x.transpose(0, 1) if window_major else x).reshape(4 * B, wh * ww, C)


def _reverse(win, H, W, shift, *, sign=1, window_major=False):
    wh, ww = H // 2, W // 2
    C = win.shape[-1]
    win = win.reshape(4, -1, wh * ww, C).transpose(0, 1) if window_major else win
    x = win.reshape(-1, 2, 2, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)
    return torch.roll(x, shifts=(sign * shift[0], sign * shift[1]), dims=(1, 2))


def _mask(H, W, shift, *, sign=-1, wrap=True):
    wh, ww = H // 2, W // 2
    r = torch.arange(H)[:, None] + sign * shift[0]
    c = torch.arange(W)[None, :] + sign * shift[1]
    if wrap:
        r, c = r % H, c % W
    label = (torch.div(r, wh, rounding_mode="floor") * 10 + torch.div(c, ww, rounding_mode="floor")).reshape(
        -1
    )
    return label[:, None] == label[None, :]


@mistake("ch18.msw_partition", "roll by (−s_h, −s_w) before cutting, so that window 0 starts at row s_h")
def partition_rolled_forward(x, shift):
    return _partition(x, shift, sign=1)


@mistake("ch18.msw_partition", "batch-major order: row b·4 + k holds window k of sample b (not k·B + b)")
def partition_window_major(x, shift):
    return _partition(x, shift, window_major=True)


@mistake(
    "ch18.msw_partition",
    "a window is a (H/2)×(W/2) block: permute (B, 2, H/2, 2, W/2, C) to (B, 2, 2, H/2, W/2, C), then flatten",
)
def partition_without_permute(x, shift):
    return _partition(x, shift, permute=False)


@mistake("ch18.msw_reverse", "roll back by (+s_h, +s_w): the opposite of the partition's (−s_h, −s_w)")
def reverse_same_sign(win, H, W, shift):
    return _reverse(win, H, W, shift, sign=-1)


@mistake(
    "ch18.msw_reverse", "read rows batch-major, as the partition wrote them: row b·4 + k is window k of b"
)
def reverse_window_major(win, H, W, shift):
    return _reverse(win, H, W, shift, window_major=True)


@mistake(
    "ch18.msw_mask",
    "MSW-MSA does not mask the wrapped tokens (Swin does): take the window index modulo the map size",
)
def mask_swin_wraparound(H, W, shift):
    return _mask(H, W, shift, wrap=False)


@mistake("ch18.msw_mask", "the shifted window of (r, c) uses (r − s_h) mod H: the grid rolls by −s")
def mask_shift_sign(H, W, shift):
    return _mask(H, W, shift, sign=1)


@mistake("ch18.share_prob", "average over all four shifts m = 0, 1, 2, 3, not only the unshifted windows")
def share_prob_one_shift(H, W):
    return _mask(H, W, (0, 0)).double()


@mistake("ch18.share_prob", "the shift step is ⌊w/4⌋ per m with w = H/2 (or W/2), not one token")
def share_prob_unit_step(H, W):
    return sum(_mask(H, W, (m, m)).double() for m in range(4)) / 4


@mistake("ch18.share_prob", "MSW-MSA keeps the wrapped tokens together (no Swin mask): use the modulus")
def share_prob_swin(H, W):
    steps = ((H // 2) // 4, (W // 2) // 4)
    return sum(_mask(H, W, (steps[0] * m, steps[1] * m), wrap=False).double() for m in range(4)) / 4
