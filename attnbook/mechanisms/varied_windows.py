"""Chapter 19 · Varied windows: learned window size and location (VSA 2022; VWA 2024).

Window attention (Swin's W-MSA) lets every query of a w×w window attend to the w² keys of the same
window. Two papers decouple the window the keys come from from the window the queries live in.

VSA (Zhang et al., 2022) keeps the queries in the default window and lets every head of every window
*regress* its own target window: an offset o and a scale s per axis, predicted from the average-pooled
features by a small branch whose last 1×1 convolution starts at zero. The w² key/value samples of the
target window are read from K and V by bilinear interpolation (``grid_sample``), so the attention cost
stays that of window attention. In normalised coordinates (x first, align_corners=True),

    p_{h,a,uv} = c_a + (1 + s_{h,a}) ⊙ r_uv + o_{h,a} / n_w,

with c_a the window's centre, r_uv the centred default grid (spacing 2/(W-1) per pixel) and n_w the
number of windows along each axis. The reading implemented here divides the offsets by the number of
windows per axis; o = s = 0 samples exactly the default window, so VSA starts as window attention.
The relative-position bias stays indexed by the default window's positions.

VWA (Yan et al., 2024) keeps P×P query windows but gives them an R·P × R·P context window centred on
each. Its re-scaling makes that cost the same as local window attention: a dense R×R convolution
(C -> C/R²) before the windows are cut, copy-shift padding (the border is extended with copies of
interior strips instead of zeros), and a space-to-depth step that folds every R×R neighbourhood into
channels, leaving P² context tokens of width C for the P² queries. This module holds the window
geometry of VWA (padding, context windows, space-to-depth, FLOP counts).

VSA is a different computation from a sequence MultiHeadAttention: the keys and values are resampled
on a 2-D map at positions regressed from the map itself, per image and per head, before the windows
are cut. It therefore stands alone, and calls :func:`attnbook.attention.scaled_dot_product_attention`
for the attention inside every window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbook.attention import scaled_dot_product_attention
from attnbook.validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "vsa_grid",
    "window_partition",
    "window_merge",
    "vsa_attention",
    "relative_position_index",
    "WindowRegression",
    "VariedSizeWindowAttention",
    "copy_shift_pad",
    "context_windows",
    "space_to_depth",
    "vwa_flops",
]


def _divisible(H: int, W: int, w: int) -> None:
    if H % w or W % w:
        raise ValueError(f"H and W must be multiples of the window size w={w}, got H={H}, W={W}")


def vsa_grid(H: int, W: int, w: int, off: Tensor, sc: Tensor) -> Tensor:
    """The sampling grid of the target windows, in grid_sample's normalised (x, y) coordinates.

    Args:
        H, W: the feature map's size, multiples of w (each at least 2).
        w: the window size.
        off: (BH, 2, H//w, W//w) offsets (x then y) of every head's window, one per batch·head.
        sc: (BH, 2, H//w, W//w) scales (x then y); 0 keeps the default size.
    Returns:
        (BH, H, W, 2) grid for ``grid_sample(..., align_corners=True)``: entry (i, j) is the sample
        that takes the place of pixel (i, j) inside its window; same dtype and device as ``off``.
    """
    H, W, w = (require_int(n, name, minimum=1) for n, name in ((H, "H"), (W, "W"), (w, "w")))
    _divisible(H, W, w)
    if H < 2 or W < 2:
        raise ValueError(f"H and W must be at least 2 for align_corners=True, got H={H}, W={W}")
    nh, nw = H // w, W // w
    for t, name in ((off, "off"), (sc, "sc")):
        require_tensor(t, name, ndim=4, floating=True, shape="(BH, 2, H//w, W//w)")
        if t.shape[1:] != (2, nh, nw):
            raise ValueError(f"{name} must have shape (BH, 2, {nh}, {nw}), got {tuple(t.shape)}")
    require_same_dtype_device(off=off, sc=sc)
    if off.shape != sc.shape:
        raise ValueError(f"off and sc must have the same shape, got {tuple(off.shape)}, {tuple(sc.shape)}")
    kw = {"dtype": off.dtype, "device": off.device}
    u = torch.arange(w, **kw)
    # per axis (length L, n windows): window a's centre c_a = -1 + 2 (a w + (w-1)/2) / (L-1)
    cx = -1 + 2 * (torch.arange(nw, **kw) * w + (w - 1) / 2) / (W - 1)  # (nw,)
    cy = -1 + 2 * (torch.arange(nh, **kw) * w + (w - 1) / 2) / (H - 1)  # (nh,)
    # r_u = 2 (u - (w-1)/2) / (L-1): the default window, centred, one pixel = 2/(L-1)
    rx = 2 * (u - (w - 1) / 2) / (W - 1)  # (w,)
    ry = 2 * (u - (w - 1) / 2) / (H - 1)  # (w,)
    # p = c_a + (1 + s) r + o / n, for x (axis 0 of off/sc) and y (axis 1)
    px = cx[None, None, :, None] + (1 + sc[:, 0, :, None, :, None]) * rx + off[:, 0, :, None, :, None] / nw
    py = (
        cy[None, :, None, None, None]
        + (1 + sc[:, 1, :, None, :, None]) * ry[:, None, None]
        + (off[:, 1, :, None, :, None] / nh)
    )
    # both are (BH, nh, w, nw, w): window row, row in window, window column, column in window
    BH = off.shape[0]
    grid = torch.stack(torch.broadcast_tensors(px, py), dim=-1)  # (BH, nh, w, nw, w, 2)
    return grid.reshape(BH, H, W, 2)


def window_partition(x: Tensor, w: int) -> Tensor:
    """(B, d, H, W) -> (B, nh·nw, w², d): windows in row-major order, pixels row-major inside."""
    require_tensor(x, "x", ndim=4, shape="(B, d, H, W)")
    w = require_int(w, "w", minimum=1)
    B, d, H, W = x.shape
    _divisible(H, W, w)
    x = x.reshape(B, d, H // w, w, W // w, w).permute(0, 2, 4, 3, 5, 1)  # (B, nh, nw, w, w, d)
    return x.reshape(B, (H // w) * (W // w), w * w, d)


def window_merge(x: Tensor, H: int, W: int, w: int) -> Tensor:
    """The inverse of :func:`window_partition`: (B, nh·nw, w², d) -> (B, d, H, W)."""
    require_tensor(x, "x", ndim=4, shape="(B, nh·nw, w², d)")
    B, _, _, d = x.shape
    x = x.reshape(B, H // w, W // w, w, w, d).permute(0, 5, 1, 3, 2, 4)  # (B, d, nh, w, nw, w)
    return x.reshape(B, d, H, W)


def vsa_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: Tensor, w: int, rel_bias: Tensor | None = None
) -> Tensor:
    """Window attention of the default windows' queries over the sampled target windows.

    Args:
        q, k, v: (BH, d, H, W) per-head queries, keys and values (heads folded into the batch).
        grid: (BH, H, W, 2) the sampling grid of :func:`vsa_grid`.
        w: the window size.
        rel_bias: None, (w², w²) or (BH, w², w²) added to the scores, indexed by the DEFAULT
            window's positions (query pixel, key slot).
    Returns:
        (BH, d, H, W) the attention output, same dtype and device as q.
    """
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        require_tensor(t, name, ndim=4, floating=True, shape="(BH, d, H, W)")
    require_tensor(grid, "grid", ndim=4, floating=True, shape="(BH, H, W, 2)")
    require_same_dtype_device(q=q, k=k, v=v, grid=grid)
    if k.shape != q.shape or v.shape[0] != q.shape[0] or v.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"q, k, v must share (BH, ., H, W): {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    BH, d, H, W = q.shape
    if grid.shape != (BH, H, W, 2):
        raise ValueError(f"grid must have shape ({BH}, {H}, {W}, 2), got {tuple(grid.shape)}")
    # K~ = grid_sample(K, p), V~ = grid_sample(V, p): bilinear, zeros outside the map
    k_t = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    v_t = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    qw, kw, vw = (window_partition(t, w) for t in (q, k_t, v_t))  # (BH, nW, w², d)
    mask = None
    if rel_bias is not None:
        require_tensor(rel_bias, "rel_bias", ndim=(2, 3), floating=True, shape="(w², w²) or (BH, w², w²)")
        mask = rel_bias if rel_bias.ndim == 2 else rel_bias[:, None]  # broadcasts over the windows
    # O[a] = softmax(Q[a] K~[a]^T / sqrt(d) + B_rel) V~[a], for every window a
    out, _ = scaled_dot_product_attention(qw, kw, vw, mask=mask)  # (BH, nW, w², d)
    return window_merge(out, H, W, w)


def relative_position_index(w: int, device: torch.device | str | None = None) -> Tensor:
    """(w², w²) long index into a (2w-1)² table: (Δy + w - 1)(2w - 1) + (Δx + w - 1), Swin's layout."""
    w = require_int(w, "w", minimum=1)
    yy, xx = torch.meshgrid(torch.arange(w, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = yy.reshape(-1), xx.reshape(-1)  # (w²,)
    return (ys[:, None] - ys[None] + w - 1) * (2 * w - 1) + (xs[:, None] - xs[None] + w - 1)


class WindowRegression(nn.Module):
    """One regression branch: AvgPool(w, stride w) -> LeakyReLU -> 1×1 conv to 2·heads channels.

    The conv starts at zero (weights and bias), so the branch outputs zeros at initialisation.
    forward: (B, C, H, W) -> (B·heads, 2, H//w, W//w), x then y for every head.
    """

    def __init__(self, C: int, heads: int, w: int):
        super().__init__()
        self.heads, self.w = require_int(heads, "heads", minimum=1), require_int(w, "w", minimum=1)
        self.pool = nn.AvgPool2d(kernel_size=w, stride=w)
        self.conv = nn.Conv2d(require_int(C, "C", minimum=1), 2 * heads, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        require_tensor(x, "x", ndim=4, floating=True, shape="(B, C, H, W)")
        B, _, H, W = x.shape
        _divisible(H, W, self.w)
        y = self.conv(F.leaky_relu(self.pool(x)))  # (B, 2·heads, nh, nw)
        return y.reshape(B * self.heads, 2, H // self.w, W // self.w)


class VariedSizeWindowAttention(nn.Module):
    """VSA on a (B, C, H, W) map: 1×1 convs for Q, K, V, per-head target windows, 1×1 output projection.

    forward(x) -> (B, C, H, W); with return_grid=True also the (B·heads, H, W, 2) sampling grid.
    """

    def __init__(self, C: int, heads: int, w: int):
        super().__init__()
        C, heads, w = (
            require_int(C, "C", minimum=1),
            require_int(heads, "heads", minimum=1),
            require_int(w, "w"),
        )
        if C % heads:
            raise ValueError(f"C={C} must be divisible by heads={heads}")
        self.C, self.heads, self.w = C, heads, w
        self.qkv = nn.Conv2d(C, 3 * C, kernel_size=1)
        self.proj = nn.Conv2d(C, C, kernel_size=1)
        self.offsets, self.scales = WindowRegression(C, heads, w), WindowRegression(C, heads, w)
        self.bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("bias_index", relative_position_index(w), persistent=False)

    def relative_bias(self) -> Tensor:
        """(heads, w², w²) the relative-position bias of the default window."""
        n = self.w * self.w
        return self.bias_table[self.bias_index.reshape(-1)].reshape(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, *, return_grid: bool = False):
        require_tensor(x, "x", ndim=4, floating=True, shape="(B, C, H, W)")
        B, C, H, W = x.shape
        if C != self.C:
            raise ValueError(f"x must have C={self.C} channels, got {C}")
        d = C // self.heads
        q, k, v = (t.reshape(B * self.heads, d, H, W) for t in self.qkv(x).chunk(3, dim=1))
        grid = vsa_grid(H, W, self.w, self.offsets(x), self.scales(x))  # (B·heads, H, W, 2)
        bias = self.relative_bias().repeat(B, 1, 1)  # (B·heads, w², w²)
        out = vsa_attention(q, k, v, grid, self.w, bias).reshape(B, C, H, W)
        out = self.proj(out)
        return (out, grid) if return_grid else out


# ---- VWA: query windows with larger context windows --------------------------------------------


def copy_shift_pad(x: Tensor, R: int, P: int) -> Tensor:
    """Copy-shift padding: extend each side by (R-1)P/2 with copies of interior strips.

    Width-wise the left pad is x[..., (R+1)P/2 : RP] and the right pad x[..., -RP : -(R+1)P/2];
    the rows are then padded the same way (corners come from the already-padded columns).

    Args:
        x: (B, C, H, W) with H, W >= R·P.
        R: the context ratio (R = 1 pads nothing); (R-1)P must be even.
        P: the query window size.
    Returns:
        (B, C, H + (R-1)P, W + (R-1)P), same dtype and device.
    """
    require_tensor(x, "x", ndim=4, shape="(B, C, H, W)")
    R, P = require_int(R, "R", minimum=1), require_int(P, "P", minimum=1)
    if ((R - 1) * P) % 2:
        raise ValueError(f"(R-1)·P must be even, got R={R}, P={P}")
    if x.shape[-2] < R * P or x.shape[-1] < R * P:
        raise ValueError(f"H and W must be at least R·P={R * P}, got {tuple(x.shape[-2:])}")
    if R == 1:
        return x
    a, b = (R + 1) * P // 2, R * P
    # [x[(R+1)P/2 : RP] | x | x[-RP : -(R+1)P/2]] along the width, then along the height
    x = torch.cat([x[..., a:b], x, x[..., -b:-a]], dim=-1)
    return torch.cat([x[..., a:b, :], x, x[..., -b:-a, :]], dim=-2)


def context_windows(x: Tensor, R: int, P: int) -> Tensor:
    """The R·P × R·P context window centred on every P×P query window, cut from the padded map.

    Args:
        x: (B, C, H, W) with H, W multiples of P.
    Returns:
        (B·nh·nw, C, R·P, R·P): window (a, b) (row-major, per image) is
        copy_shift_pad(x)[..., aP : aP + RP, bP : bP + RP].
    """
    require_tensor(x, "x", ndim=4, shape="(B, C, H, W)")
    B, C, H, W = x.shape
    _divisible(H, W, require_int(P, "P", minimum=1))
    padded = copy_shift_pad(x, R, P)
    # unfold rows then columns with kernel R·P and stride P
    win = padded.unfold(2, R * P, P).unfold(3, R * P, P)  # (B, C, nh, nw, RP, RP)
    return win.permute(0, 2, 3, 1, 4, 5).reshape(B * (H // P) * (W // P), C, R * P, R * P)


def space_to_depth(ctx: Tensor, R: int) -> Tensor:
    """Fold every R×R neighbourhood into channels, channel order (rh, rw, c).

    Args:
        ctx: (M, C', R·P, R·P) context windows.
    Returns:
        (M, R·R·C', P, P): out[m, (rh·R + rw)·C' + c, i, j] = ctx[m, c, i·R + rh, j·R + rw].
    """
    require_tensor(ctx, "ctx", ndim=4, shape="(M, C', R·P, R·P)")
    R = require_int(R, "R", minimum=1)
    M, C, S, S2 = ctx.shape
    if S % R or S2 % R:
        raise ValueError(f"the window size must be a multiple of R={R}, got {(S, S2)}")
    x = ctx.reshape(M, C, S // R, R, S2 // R, R).permute(0, 3, 5, 1, 2, 4)  # (M, rh, rw, c, i, j)
    return x.reshape(M, R * R * C, S // R, S2 // R)


def vwa_flops(H: int, W: int, C: int, P: int, R: int, rescale: bool) -> int:
    """Attention FLOPs (QK^T and AV, 2 per multiply-add) of VWA over all P×P windows of an H×W map.

    Per window: 4·P²·(R²P² keys)·C without re-scaling, 4·P²·P²·C with it (P² context tokens).
    """
    H, W, C, P, R = (
        require_int(n, s, minimum=1) for n, s in ((H, "H"), (W, "W"), (C, "C"), (P, "P"), (R, "R"))
    )
    _divisible(H, W, P)
    keys = P * P if rescale else R * R * P * P
    return (H // P) * (W // P) * 4 * P * P * keys * C
