"""Chapter 15 exercises: aggregating cross-attention, occlusion saliency and their correlation.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 15

or, in a notebook, ``check("ch15.<function name>", your_function)`` from attnbook.grading.
Use only torch (and numpy); do not import attnbook.mechanisms.attention_vs_saliency (it solves these).
"""

from collections.abc import Callable, Sequence

from torch import Tensor


def aggregate_ca(
    ca: Tensor, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Tensor:
    """★ (10 min) The cross-attention map averaged over S = layers × heads.

    CA^(S) = (1/|S|) Σ_{(ℓ,h) ∈ S} CA^(ℓ,h).

    Args:
        ca: (L, H, I, T') per-layer, per-head cross-attention weights, float32 or float64;
            each row (one output token) sums to 1.
        layers: the chosen layer indices (negative ones count from the end); None = all L.
        heads: the chosen head indices (negative ones count from the end); None = all H.

    Returns:
        (I, T') in ca's dtype; each row still sums to 1. ca is not modified.
    """
    raise NotImplementedError("ch15.aggregate_ca")


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    """★★ (15 min) Bring a spectrogram saliency map onto the attention's time grid.

    First reduce over frequency (max or mean over F), then pool in time: output frame j takes
    the max (or mean) over input frames floor(j T / t_out) ... ceil((j+1) T / t_out) - 1, the
    windows of adaptive pooling (no frame is dropped when T is not a multiple of t_out).

    Args:
        sm: (I, T, F) saliency per token, frame and frequency bin, float32 or float64.
        t_out: the number of attention frames T', 1 <= t_out <= T.
        freq: "max" or "mean", the reduction over frequency.
        time: "max" or "mean", the pooling over time.

    Returns:
        (I, t_out) in sm's dtype.
    """
    raise NotImplementedError("ch15.reduce_saliency")


def occlusion_saliency(f: Callable[[Tensor], Tensor], x: Tensor, masks: Tensor) -> Tensor:
    """★★★ (25 min) RISE-style occlusion saliency of every output token under forced decoding.

    For each mask m, set the occluded cells of x to 0 and score token i by
    s_{m,i} = KL(p_i(x) ‖ p_i(x_m)) = Σ_v p_iv (log p_iv - log q_{m,iv}) (with 0 log 0 = 0).
    The relevance of cell c = (t, f) for token i is the average score over the masks that
    occlude c:  SM_{i,c} = Σ_m s_{m,i} o_{m,c} / Σ_m o_{m,c}, and 0 for a cell no mask occludes.

    Args:
        f: f(x_batch (B, T, F)) -> (B, I, V) per-token output distributions (rows sum to 1).
        x: (T, F) the input, float32 or float64.
        masks: (M, T, F) bool, True = occluded.

    Returns:
        (I, T, F) in x's dtype. x and masks are not modified.
    """
    raise NotImplementedError("ch15.occlusion_saliency")


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """★ (10 min) Pearson correlation of two maps, flattened, over the valid cells only.

    ρ = Σ a'_c b'_c / sqrt(Σ a'_c² Σ b'_c²), with a' = a - mean(a) over the valid cells (same for b).

    Args:
        a, b: maps of one shape (e.g. (I, T') attention and saliency), float32 or float64.
        valid: bool of that shape, True for the cells to compare (False on padding); None = all.

    Returns:
        ρ as a Python float; float("nan") when a or b is constant on the valid cells.
    """
    raise NotImplementedError("ch15.pearson_flat")
