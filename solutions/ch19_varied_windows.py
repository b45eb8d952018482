"""Chapter 19 solutions: varied windows (VSA's target windows, VWA's context windows)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def vsa_grid(H: int, W: int, w: int, off: Tensor, sc: Tensor) -> Tensor:
    opts = {"dtype": off.dtype, "device": off.device}
    nh, nw = H // w, W // w
    # centres c_a and the centred default window r_u, per axis, in normalised units
    cx = -1 + 2 * (torch.arange(nw, **opts) * w + (w - 1) / 2) / (W - 1)
    cy = -1 + 2 * (torch.arange(nh, **opts) * w + (w - 1) / 2) / (H - 1)
    rx = 2 * (torch.arange(w, **opts) - (w - 1) / 2) / (W - 1)
    ry = 2 * (torch.arange(w, **opts) - (w - 1) / 2) / (H - 1)
    # every pixel's window value: repeat each window's entry w times along both axes
    s = sc.repeat_interleave(w, dim=2).repeat_interleave(w, dim=3)  # (BH, 2, H, W)
    o = off.repeat_interleave(w, dim=2).repeat_interleave(w, dim=3)
    c_x, c_y = cx.repeat_interleave(w), cy.repeat_interleave(w)  # (W,), (H,)
    r_x, r_y = rx.repeat(nw), ry.repeat(nh)
    # p = c + (1 + s) r + o / n
    x = c_x + (1 + s[:, 0]) * r_x + o[:, 0] / nw
    y = c_y[:, None] + (1 + s[:, 1]) * r_y[:, None] + o[:, 1] / nh
    return torch.stack([x, y], dim=-1)


def _windows(t: Tensor, w: int) -> Tensor:
    B, d, H, W = t.shape
    t = t.reshape(B, d, H // w, w, W // w, w).permute(0, 2, 4, 3, 5, 1)
    return t.reshape(B, -1, w * w, d)


def vsa_attention(q: Tensor, k: Tensor, v: Tensor, grid: Tensor, w: int, rel_bias: Tensor) -> Tensor:
    BH, d, H, W = q.shape
    kt = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    vt = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    qw, kw, vw = _windows(q, w), _windows(kt, w), _windows(vt, w)  # (BH, nW, w², d)
    scores = qw @ kw.transpose(-2, -1) / d**0.5 + rel_bias
    out = torch.softmax(scores, dim=-1) @ vw  # (BH, nW, w², d)
    out = out.reshape(BH, H // w, W // w, w, w, d).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(BH, d, H, W)


def copy_shift_pad(x: Tensor, R: int, P: int) -> Tensor:
    a, b = (R + 1) * P // 2, R * P
    x = torch.cat([x[..., a:b], x, x[..., -b:-a]], dim=-1)
    return torch.cat([x[..., a:b, :], x, x[..., -b:-a, :]], dim=-2)


def space_to_depth(ctx: Tensor, R: int) -> Tensor:
    M, C, S, S2 = ctx.shape
    x = ctx.reshape(M, C, S // R, R, S2 // R, R).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(M, R * R * C, S // R, S2 // R)
