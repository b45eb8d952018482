"""The common mistakes of chapter 19's exercises, declared for the checks of ``ch19_varied_windows``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import mistake
from .ch19_varied_windows import attention_reference, grid_reference


@mistake(
    "ch19.vsa_grid",
    "the scale multiplies the window as (1 + s)·r, not s·r: at s = 0 the window must keep its size",
)
def grid_multiplicative_scale(H, W, w, off, sc):
    return grid_reference(H, W, w, off, sc - 1)


@mistake("ch19.vsa_grid", "grid_sample reads (x, y) in the last axis: x (the column, along W) comes first")
def grid_y_first(H, W, w, off, sc):
    return grid_reference(H, W, w, off, sc).flip(-1)


@mistake(
    "ch19.vsa_grid", "use align_corners=True coordinates: pixel j sits at -1 + 2j/(W-1), not (2j+1)/W - 1"
)
def grid_align_corners_false(H, W, w, off, sc):
    grid = grid_reference(H, W, w, off, sc)
    # move from the align_corners=True convention to the False one: x_F = x_T (L-1)/L
    sizes = torch.tensor([W, H], dtype=grid.dtype)
    return grid * (sizes - 1) / sizes


@mistake("ch19.vsa_attention", "sample only the keys and values: the queries stay in their default window")
def attention_samples_queries(q, k, v, grid, w, rel_bias):
    qt = F.grid_sample(q, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return attention_reference(qt, k, v, grid, w, rel_bias)


@mistake(
    "ch19.vsa_attention", "grid_sample must use align_corners=True, the convention the grid is written in"
)
def attention_align_corners_false(q, k, v, grid, w, rel_bias):
    return attention_reference(q, k, v, grid, w, rel_bias, align_corners=False)


@mistake("ch19.copy_shift_pad", "copy-shift padding copies interior strips; zero padding is what it replaces")
def pad_zeros(x, R, P):
    p = (R - 1) * P // 2
    return F.pad(x, (p, p, p, p))


@mistake(
    "ch19.copy_shift_pad",
    "copy the strips x[(R+1)P/2 : RP] and x[-RP : -(R+1)P/2] as they are; do not reflect",
)
def pad_reflect(x, R, P):
    p = (R - 1) * P // 2
    return F.pad(x, (p, p, p, p), mode="reflect")


@mistake(
    "ch19.space_to_depth",
    "channel order is (rh, rw, c): the neighbourhood offset is the slow index, c the fast",
)
def space_to_depth_c_first(ctx, R):
    M, C, S, _ = ctx.shape
    x = ctx.reshape(M, C, S // R, R, S // R, R).permute(0, 1, 3, 5, 2, 4)  # (M, c, rh, rw, i, j)
    return x.reshape(M, C * R * R, S // R, S // R)
