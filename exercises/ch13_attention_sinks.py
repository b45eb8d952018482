"""Chapter 13 exercises: attention sinks, image-centric heads and VAR redistribution.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 13

or, in a notebook, ``check("ch13.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.attention_sinks (it solves these).

Conventions: attention weights A are post-softmax, (B, H, N, M): B sequences, H heads, N query
rows, M keys. The image is a span of key positions ``img`` (a slice with step 1, e.g.
slice(1, 17)). ``sink`` (B, M) is True on the sink tokens; sinks inside ``img`` are visual sinks,
the others (BOS, say) text sinks.
"""

from torch import Tensor


def sink_mask(h: Tensor, dims: Tensor, tau: float, eps: float = 1e-6) -> Tensor:
    """The sink tokens of a layer's input: φ(h_t) > τ, on normalised activations.

        RMSNorm(x) = x / sqrt(mean_d x_d² + eps)          (over the last axis, no learned weight)
        φ(h_t) = max_{d ∈ dims} |RMSNorm(h_t)_d|
        sink ⇔ φ(h_t) > τ                                  (strictly)

    Args:
        h: (B, N, D) hidden states, float16, float32 or float64; compute the norm in float32 at
            least (in float16, mean(h²) overflows for |h| > ~256).
        dims: (k,) int64, the sink dimensions.
        tau: the threshold.
        eps: added to mean(h²).

    Returns:
        (B, N) bool, True on the sink tokens.
    """
    raise NotImplementedError("ch13.sink_mask")


def image_centric(A: Tensor, img: slice, sink: Tensor, rho: float, summ: float) -> Tensor:
    """The (head, query) rows that look at the image but not mostly at its sinks.

        ν = Σ_{j ∈ img} A_qj                               (the visual attention ratio)
        r = Σ_{j ∈ img, sink[j]} A_qj / ν                  (the visual-sink share; r = 0 when ν = 0)
        selected ⇔ ν ≥ summ and r ≤ rho

    Only the sinks inside ``img`` count in r. A sequence with no visual sink at all selects
    nothing (all False), as the official code does.

    Args:
        A: (B, H, N, M) attention weights, float32 or float64.
        img: the image span of the M keys.
        sink: (B, M) bool sink tokens.
        rho: the largest visual-sink share; summ: the least visual attention ratio.

    Returns:
        (B, H, N) bool.
    """
    raise NotImplementedError("ch13.image_centric")


def redistribute(A: Tensor, sink: Tensor, img: slice, sel: Tensor, p: float) -> Tensor:
    """VAR: move (1 - p) of the sink attention onto the non-sink image tokens of the selected rows.

    On a selected row q, with m_ns = Σ_{j ∈ img, not sink} A_qj:

        A'_qj = p · A_qj                       j a sink (text or visual)
        Ω     = (1 - p) · Σ_{j sink} A_qj      the budget
        A'_qj = A_qj + Ω · A_qj / m_ns         j in img and not a sink
        A'_qj = A_qj                           every other key

    Unselected rows, and rows with m_ns = 0 (nowhere to send the budget), are returned
    unchanged. Each row keeps its sum. Do not change A in place.

    Args:
        A: (B, H, N, M) attention weights, float32 or float64.
        sink: (B, M) bool; img: the image span; sel: (B, H, N) bool, the rows to edit.
        p: the fraction of its weight a sink keeps, in [0, 1].

    Returns:
        (B, H, N, M) in A's dtype.
    """
    raise NotImplementedError("ch13.redistribute")
