"""Chapter 07 exercises: Mixture of heads.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 07

or, in a notebook, ``check("ch07.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.mixture_of_heads (it solves these).
"""

from torch import Tensor


def moh_gates(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int) -> Tensor:
    """The per-token gates of every head of a mixture of heads.

    p = softmax(W_r x) over the E routed heads; keep the top k, renormalise them over the kept
    ones and multiply by k. Shared gates: h_s · softmax(W_s x). Then [α₁, α₂] = 2 · softmax(W_h x)
    scales the shared gates by α₁ and the routed ones by α₂. With no shared heads (w_s and w_h
    None) the gates are the routed gates alone.

    Args:
        x: (B, N, D) tokens, float32 or float64.
        w_r: (E, D) routed-head router.
        w_s: (h_s, D) shared-head router, or None.
        w_h: (2, D) head-type balance, or None (exactly when w_s is None).
        k: routed heads kept per token, 1 <= k <= E.

    Returns:
        (B, N, h_s + E) gates in x's dtype, shared heads first; h_s + k non-zero per token.
    """
    raise NotImplementedError("ch07.moh_gates")
