"""Chapter 18 solutions: MSW-MSA, HiDiffusion's shifted windows."""

import torch
from torch import Tensor


def msw_partition(x: Tensor, shift: tuple[int, int]) -> Tensor:
    B, H, W, C = x.shape
    wh, ww = H // 2, W // 2
    # roll by (−s_h, −s_w): the shifted windows become the plain 2×2 blocks
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    # (B, 2, w_h, 2, w_w, C) -> (B, 2, 2, w_h, w_w, C) -> (4B, w_h·w_w, C), batch-major
    x = x.reshape(B, 2, wh, 2, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(4 * B, wh * ww, C)


def msw_reverse(win: Tensor, H: int, W: int, shift: tuple[int, int]) -> Tensor:
    wh, ww = H // 2, W // 2
    C = win.shape[-1]
    # (4B, w_h·w_w, C) -> (B, 2, 2, w_h, w_w, C) -> (B, 2, w_h, 2, w_w, C) -> (B, H, W, C)
    x = win.reshape(-1, 2, 2, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)
    # undo the roll: (+s_h, +s_w)
    return torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))


def msw_mask(H: int, W: int, shift: tuple[int, int]) -> Tensor:
    wh, ww = H // 2, W // 2
    # win_s(r, c) = (⌊((r − s_h) mod H)/w_h⌋, ⌊((c − s_w) mod W)/w_w⌋), a label in {0, 1, 2, 3}
    rows = ((torch.arange(H) - shift[0]) % H) // wh
    cols = ((torch.arange(W) - shift[1]) % W) // ww
    label = (2 * rows[:, None] + cols[None, :]).reshape(H * W)
    # M_s[i, j] = 1[win_s(i) = win_s(j)]
    return label[:, None] == label[None, :]


def share_prob(H: int, W: int) -> Tensor:
    step = ((H // 2) // 4, (W // 2) // 4)
    # P_ij = (1/4) Σ_m M_{s(m)}[i, j], s(m) = (⌊w_h/4⌋ m, ⌊w_w/4⌋ m)
    masks = [msw_mask(H, W, (step[0] * m, step[1] * m)).double() for m in range(4)]
    return torch.stack(masks).mean(dim=0)
