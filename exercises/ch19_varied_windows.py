"""Chapter 19 exercises: varied windows (VSA's target windows, VWA's context windows).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 19

or, in a notebook, ``check("ch19.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.varied_windows (it solves these).
"""

from torch import Tensor


def vsa_grid(H: int, W: int, w: int, off: Tensor, sc: Tensor) -> Tensor:
    """The sampling grid of VSA's target windows, for ``grid_sample(..., align_corners=True)``.

    The H×W map is cut into (H//w)×(W//w) windows of w×w pixels. Pixel (i, j) lies in window
    (a, b) = (i // w, j // w) at (u, v) = (i mod w, j mod w). Its sample, in normalised
    coordinates where pixel column j sits at -1 + 2j/(W-1) (rows alike with H), is

        p = c_ab + (1 + s) * r_uv + o / n,

    with c_ab the window's centre, r_uv = 2 ((v, u) - (w-1)/2) / (W-1, H-1) the centred default
    window, s and o the window's scale and offset (per head), and n = (W//w, H//w).

    Args:
        H, W: the map's size, multiples of w.
        w: the window size.
        off: (BH, 2, H//w, W//w) offsets, channel 0 along x (columns), 1 along y (rows); float.
        sc: (BH, 2, H//w, W//w) scales, same layout and dtype.

    Returns:
        (BH, H, W, 2) grid in off's dtype; the last axis is (x, y). With off = sc = 0,
        grid_sample(x, grid, align_corners=True) returns x.
    """
    raise NotImplementedError("ch19.vsa_grid")


def vsa_attention(q: Tensor, k: Tensor, v: Tensor, grid: Tensor, w: int, rel_bias: Tensor) -> Tensor:
    """Window attention of default-window queries over bilinearly sampled keys and values.

    Sample K~ and V~ from k and v at ``grid`` (bilinear, zeros outside the map,
    align_corners=True), cut q, K~ and V~ into w×w windows (pixels in row-major order inside a
    window), and in every window compute softmax(Q K~^T / sqrt(d) + rel_bias) V~.

    Args:
        q, k, v: (BH, d, H, W) per-head maps, float32 or float64; H, W multiples of w.
        grid: (BH, H, W, 2) sampling positions (x, y) in [-1, 1] coordinates.
        w: the window size.
        rel_bias: (w², w²) added to every window's scores (query pixel, key slot).

    Returns:
        (BH, d, H, W) output in q's dtype; the output of pixel (i, j) sits at (i, j).
    """
    raise NotImplementedError("ch19.vsa_attention")


def copy_shift_pad(x: Tensor, R: int, P: int) -> Tensor:
    """VWA's copy-shift padding: add p = (R-1)P/2 pixels on every side, copied from the interior.

    Along the width, the left pad is x[..., (R+1)P/2 : R*P] and the right pad is
    x[..., -R*P : -(R+1)P/2]; then pad the rows of that result the same way along the height.

    Args:
        x: (B, C, H, W) float, H and W at least R*P.
        R: the context ratio (R >= 2); P: the query window size; (R-1)P is even.

    Returns:
        (B, C, H + 2p, W + 2p) in x's dtype, with x in the middle.
    """
    raise NotImplementedError("ch19.copy_shift_pad")


def space_to_depth(ctx: Tensor, R: int) -> Tensor:
    """Fold every R×R neighbourhood of a context window into channels.

    Args:
        ctx: (M, C, R*P, R*P) context windows.
        R: the neighbourhood size.

    Returns:
        (M, R*R*C, P, P) with out[m, (rh*R + rw)*C + c, i, j] = ctx[m, c, i*R + rh, j*R + rw].
    """
    raise NotImplementedError("ch19.space_to_depth")
