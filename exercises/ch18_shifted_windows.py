"""Chapter 18 exercises: MSW-MSA, HiDiffusion's shifted windows.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 18

or, in a notebook, ``check("ch18.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.shifted_windows (it solves these).

Conventions of the whole chapter: tokens sit on an H×W grid (H and W even), flattened row-major
(token i = r·W + c). MSW-MSA cuts the grid into a 2×2 grid of windows of (w_h, w_w) = (H/2, W/2)
tokens after rolling it by (−s_h, −s_w): token (r, c) falls in window
(⌊((r − s_h) mod H)/w_h⌋, ⌊((c − s_w) mod W)/w_w⌋), and tokens of opposite borders that wrap into
one window are NOT masked from each other (unlike Swin). Window k = 2·a + a' is the one at window
row a, window column a'.
"""

from torch import Tensor


def msw_partition(x: Tensor, shift: tuple[int, int]) -> Tensor:
    """Roll the map by (−s_h, −s_w) and cut it into its four windows.

    Args:
        x: (B, H, W, C) float32 or float64, H and W even.
        shift: (s_h, s_w) non-negative ints.

    Returns:
        (4B, H·W/4, C), same dtype: row b·4 + k holds window k of sample b (batch-major), its
        tokens row-major inside the window (token u·w_w + v is the window's row u, column v).
    """
    raise NotImplementedError("ch18.msw_partition")


def msw_reverse(win: Tensor, H: int, W: int, shift: tuple[int, int]) -> Tensor:
    """The inverse of msw_partition: put the windows back on the grid and undo the roll.

    Args:
        win: (4B, H·W/4, C) windows in msw_partition's layout, float32 or float64.
        H, W: the map's size (even ints).
        shift: (s_h, s_w), the shift the windows were cut with.

    Returns:
        (B, H, W, C), same dtype, with msw_reverse(msw_partition(x, s), H, W, s) == x exactly.
    """
    raise NotImplementedError("ch18.msw_reverse")


def msw_mask(H: int, W: int, shift: tuple[int, int]) -> Tensor:
    """MSW-MSA as a mask on global attention over the N = H·W tokens.

    Args:
        H, W: the map's size (even ints).
        shift: (s_h, s_w) non-negative ints.

    Returns:
        (N, N) torch.bool, True where tokens i and j fall in the same shifted window
        (wrap-around included).
    """
    raise NotImplementedError("ch18.msw_mask")


def share_prob(H: int, W: int) -> Tensor:
    """The probability that two tokens share an MSW-MSA window when the shift is random.

    MSW-MSA draws m uniformly from {0, 1, 2, 3} and shifts by (⌊w_h/4⌋·m, ⌊w_w/4⌋·m).

    Args:
        H, W: the map's size (even ints).

    Returns:
        (N, N) float64, N = H·W: entry (i, j) is the fraction of the four shifts under which
        tokens i and j share a window.
    """
    raise NotImplementedError("ch18.share_prob")
