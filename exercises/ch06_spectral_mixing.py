"""Chapter 06 exercises: Spectral mixing before attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 06

or, in a notebook, ``check("ch06.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.spectral_mixing (it solves these).
"""

from torch import Tensor


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """GFNet's global filter on the token grid: irfft2(rfft2(x) ⊙ W, s=(h, w)), ortho norm in both.

    Args:
        x: (B, N, C) tokens, N = h·w in row-major order; float16, float32 or float64.
        weight: (h, w//2+1, C, 2) real; weight[..., 0] + i·weight[..., 1] is the complex filter W.
        hw: the token grid (h, w); w may be odd.

    Returns:
        (B, N, C): float64 for float64 input, float32 otherwise (compute half precision in float32).
        x is not changed.
    """
    raise NotImplementedError("ch06.spectral_gating")
