"""Chapter 11 exercises: Head importance.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 11

or, in a notebook, ``check("ch11.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.head_importance (it solves these).
"""

from torch import Tensor


def masked_mha(
    x: Tensor, w_qkv: Tensor, w_o: Tensor, n_heads: int, head_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Multi-head self-attention with a gate on each head's output (no biases, no mask).

        out = Σ_h m_h (A_h V_h) W_O^h,   A_h = softmax(Q_h K_h^T / sqrt(d)),  d = D / H

    The weights are laid out as torch.nn.MultiheadAttention's: w_qkv = [W_q; W_k; W_v] stacked
    row-wise (q = x W_q^T), w_o as out_proj.weight (out = z w_o^T); head h owns rows
    h·d ... (h+1)·d - 1 of W_q, W_k, W_v and columns h·d ... (h+1)·d - 1 of w_o. With every
    gate 1 this is nn.MultiheadAttention(D, H, bias=False); a gate 0 removes its head.

    Args:
        x: (B, N, D) tokens, float32 or float64.
        w_qkv: (3D, D) packed projections.
        w_o: (D, D) output projection.
        n_heads: H (D is divisible by H).
        head_mask: (H,) gates m_h, real numbers (not only 0 and 1).

    Returns:
        out (B, N, D) and the attention weights A (B, H, N, N), both in x's dtype.
    """
    raise NotImplementedError("ch11.masked_mha")


def distance_profile(attn: Tensor, grid: int, has_cls: bool, metric: str, normalize: str) -> Tensor:
    """Attention strength by query-key distance on a G×G patch grid, per head.

    Patch j (row-major) sits at row j // G, column j % G. With has_cls, token 0 is the CLS
    token: drop its query row and its key column, then renormalise each patch row over the
    patches (so it sums to 1 again). The distance δ(i, j) between patches is "chebyshev"
    max(|Δr|, |Δc|) (square rings) or "euclidean" sqrt(Δr² + Δc²); the bins are the distinct
    values of δ over all pairs of patches, in increasing order.

        normalize="mass":  S(δ) = mean over examples b and queries i of Σ_{j: δ(i,j)=δ} A[b, h, i, j]
                           (the masses of one head sum to 1)
        normalize="mean":  P(δ) = Σ_b Σ_{(i, j): δ(i,j)=δ} A[b, h, i, j] / (B · #{(i, j): δ(i,j) = δ})
                           (the average weight of one (query, key) pair at distance δ)

    Args:
        attn: (B, H, N, N) attention weights (rows sum to 1); N = G² + 1 with CLS, else G².
        grid: G.
        has_cls: whether token 0 is a CLS token.
        metric: "chebyshev" or "euclidean".
        normalize: "mass" or "mean".

    Returns:
        (H, n_bins) in attn's dtype. Raise a ValueError when N does not match the grid.
    """
    raise NotImplementedError("ch11.distance_profile")
