"""Chapter 19 checks: VSA's sampling grid and attention, VWA's copy-shift padding and space-to-depth.

Each @task grades one function of exercises/ch19_varied_windows.py on fresh random inputs against an
independent reference written here (pixel-unit formulas, explicit window loops over torch's own
grid_sample and SDPA, explicit slices), apart from attnbook.mechanisms.varied_windows. The common
mistakes (the @mistake declarations) live in ``ch19_varied_windows_mistakes.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, fresh_generator


def _unchanged(before: dict, after: dict, what: str) -> None:
    for name, tensor in before.items():
        if not torch.equal(tensor, after[name]):
            raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


# ---- vsa_grid ------------------------------------------------------------------------------------


def grid_reference(H, W, w, off, sc):
    """Pixel units first: column j of window b sits at b w + (w-1)/2 + (1 + s)(j mod w - (w-1)/2),
    then normalised by 2/(W-1) - 1; the offset adds o / (W/w) in normalised units (rows alike)."""
    i = torch.arange(H, dtype=off.dtype)
    j = torch.arange(W, dtype=off.dtype)
    a, u = torch.div(i, w, rounding_mode="floor").long(), i % w  # window row, row inside it
    b, v = torch.div(j, w, rounding_mode="floor").long(), j % w
    sx, sy = sc[:, 0][:, a][:, :, b], sc[:, 1][:, a][:, :, b]  # (BH, H, W)
    ox, oy = off[:, 0][:, a][:, :, b], off[:, 1][:, a][:, :, b]
    x_pix = b.to(off.dtype) * w + (w - 1) / 2 + (1 + sx) * (v - (w - 1) / 2)  # (BH, H, W)
    y_pix = a.to(off.dtype)[:, None] * w + (w - 1) / 2 + (1 + sy) * (u - (w - 1) / 2)[:, None]
    x = 2 * x_pix / (W - 1) - 1 + ox / (W // w)
    y = 2 * y_pix / (H - 1) - 1 + oy / (H // w)
    return torch.stack([x, y], dim=-1)


# (BH, H, W, w, dtype): non-square, w = H (one window row), odd w, both dtypes
GRID_CASES = ((3, 12, 20, 4, torch.float64), (2, 6, 9, 3, torch.float32), (1, 4, 8, 4, torch.float64))


@task("ch19.vsa_grid", points=2)
def check_vsa_grid(fn):
    """The target windows' sampling grid: c_a + (1 + s) r + o / n_w, (x, y), align_corners=True."""
    g, _ = fresh_generator()
    for BH, H, W, w, dtype in GRID_CASES:
        shape = (BH, 2, H // w, W // w)
        zero = torch.zeros(shape, dtype=dtype)
        what = f"vsa_grid({describe({'H': H, 'W': W, 'w': w, 'off': zero, 'dtype': dtype})})"
        with case():
            # zero offsets and scales sample every pixel at its own centre
            grid = fn(H, W, w, zero.clone(), zero.clone())
            x = torch.randn(BH, 3, H, W, generator=g, dtype=dtype)
            got = F.grid_sample(x, grid.to(dtype), align_corners=True) if torch.is_tensor(grid) else grid
            expect_close(
                got,
                x,
                what=f"grid_sample(x, {what} with o = s = 0, align_corners=True)",
                atol=3e-5 if dtype == torch.float32 else None,
            )
        with case():
            off = torch.randn(shape, generator=g, dtype=dtype)
            sc = 0.5 * torch.randn(shape, generator=g, dtype=dtype)
            before = {"off": off.clone(), "sc": sc.clone()}
            answer = fn(H, W, w, off, sc)
            _unchanged(before, {"off": off, "sc": sc}, what)
            expect_close(answer, grid_reference(H, W, w, before["off"], before["sc"]), what=what)


# ---- vsa_attention -------------------------------------------------------------------------------


def attention_reference(q, k, v, grid, w, rel_bias, align_corners=True):
    """Sample K and V, then one torch SDPA per window (queries from the default window)."""
    BH, d, H, W = q.shape
    kt = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    vt = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    out = torch.zeros_like(q)
    for a in range(H // w):
        for b in range(W // w):
            sl = (slice(None), slice(None), slice(a * w, (a + 1) * w), slice(b * w, (b + 1) * w))
            qs, ks, vs = (t[sl].flatten(2).transpose(1, 2) for t in (q, kt, vt))  # (BH, w², d)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=rel_bias)
            out[sl] = o.transpose(1, 2).reshape(BH, d, w, w)
    return out


# (BH, d, H, W, w, dtype)
ATTENTION_CASES = (
    (2, 4, 8, 12, 4, torch.float64),
    (3, 3, 6, 9, 3, torch.float32),
    (1, 5, 4, 4, 2, torch.float64),
)


@task("ch19.vsa_attention", points=2)
def check_vsa_attention(fn):
    """Default-window queries attend to the bilinearly sampled keys/values of their target window."""
    g, _ = fresh_generator()
    for BH, d, H, W, w, dtype in ATTENTION_CASES:
        q, k, v = (torch.randn(BH, d, H, W, generator=g, dtype=dtype) for _ in range(3))
        rel_bias = torch.randn(w * w, w * w, generator=g, dtype=dtype)
        # a grid in the image that still crosses the border: random windows around each pixel
        grid = torch.rand(BH, H, W, 2, generator=g, dtype=dtype) * 2.4 - 1.2
        what = f"vsa_attention({describe({'q': q, 'grid': grid, 'w': w, 'dtype': dtype})})"
        with case():
            before = {"q": q.clone(), "k": k.clone(), "v": v.clone(), "grid": grid.clone()}
            answer = fn(q, k, v, grid, w, rel_bias)
            _unchanged(before, {"q": q, "k": k, "v": v, "grid": grid}, what)
            expect_close(answer, attention_reference(q, k, v, grid, w, rel_bias), what=what)


# ---- copy_shift_pad ------------------------------------------------------------------------------

# (B, C, H, W, R, P)
PAD_CASES = ((1, 2, 8, 8, 2, 2), (2, 1, 8, 12, 4, 2), (1, 3, 16, 16, 8, 2), (1, 1, 12, 8, 2, 4))


@task("ch19.copy_shift_pad", points=1)
def check_copy_shift_pad(fn):
    """Pad each side by (R-1)P/2 with the strips x[(R+1)P/2 : RP] (left/top) and x[-RP : -(R+1)P/2]."""
    g, _ = fresh_generator()
    for B, C, H, W, R, P in PAD_CASES:
        x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
        what = f"copy_shift_pad({describe({'x': x, 'R': R, 'P': P})})"
        with case():
            answer = fn(x.clone(), R, P)
            p, a, b = (R - 1) * P // 2, (R + 1) * P // 2, R * P
            expected = torch.zeros(B, C, H + 2 * p, W + 2 * p, dtype=x.dtype)
            cols = list(range(a, b)) + list(range(W)) + list(range(W - b, W - a))  # padded col -> col
            rows = list(range(a, b)) + list(range(H)) + list(range(H - b, H - a))
            for r, src_r in enumerate(rows):
                for c, src_c in enumerate(cols):
                    expected[..., r, c] = x[..., src_r, src_c]
            expect_close(answer, expected, what=what)


# ---- space_to_depth ------------------------------------------------------------------------------


@task("ch19.space_to_depth", points=1)
def check_space_to_depth(fn):
    """Fold each R×R neighbourhood into channels in the order (rh, rw, c)."""
    g, _ = fresh_generator()
    for M, C, R, P in ((1, 1, 2, 1), (2, 3, 2, 3), (1, 2, 4, 2)):
        ctx = torch.randn(M, C, R * P, R * P, generator=g, dtype=torch.float64)
        what = f"space_to_depth({describe({'ctx': ctx, 'R': R})})"
        with case():
            answer = fn(ctx.clone(), R)
            expected = torch.empty(M, R * R * C, P, P, dtype=ctx.dtype)
            for rh in range(R):
                for rw in range(R):
                    for c in range(C):
                        expected[:, (rh * R + rw) * C + c] = ctx[:, c, rh::R, rw::R]
            expect_close(answer, expected, what=what)
