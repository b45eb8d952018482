"""Chapter 09 exercises: MEDUSA's multi-scale heads and the gates they drive.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 09

or, in a notebook, ``check("ch09.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.multi_scale_heads (it solves these).
Maps and features are channel-first, (B, C, H, W): H is the height, W the width.
"""

from torch import Tensor


def gate(F_s: Tensor, A: Tensor, mode: str = "mul") -> Tensor:
    """Gate one backbone stage's features with one head's spatial attention map.

    The map is resized to the features' spatial size by bilinear interpolation with
    align_corners=False, then multiplies every channel at each position:

        "mul":       F' = F ⊙ resize(A)        (A ≡ 1 returns F unchanged)
        "residual":  F' = F ⊙ (1 + resize(A))  (A ≡ 0 returns F unchanged)

    Args:
        F_s: (B, C, H, W) stage features, float16, float32 or float64.
        A: (B, 1, h, w) attention map, already in [0, 1] (the head applied its sigmoid), same
            dtype; (h, w) may differ from (H, W), in either direction, and need not be square.
        mode: "mul" or "residual".

    Returns:
        (B, C, H, W) in F_s's dtype. Do not change A in place.
    """
    raise NotImplementedError("ch09.gate")


def medusa_heads(dec: list[Tensor], weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    """The S heads of the shared body: a 1×1 convolution to one channel, then a sigmoid.

        A_s = σ(Σ_c weights[s][c] · dec[s][:, c] + biases[s])

    Args:
        dec: S decoder maps, dec[s] of shape (B, C_s, h_s, w_s), float32 or float64.
        weights: S tensors, weights[s] of shape (C_s,).
        biases: S 0-d tensors.

    Returns:
        a list of S maps, map s of shape (B, 1, h_s, w_s) with values in [0, 1], in the inputs'
        dtype. Each position is gated on its own: nothing is normalised over the positions.
    """
    raise NotImplementedError("ch09.medusa_heads")
