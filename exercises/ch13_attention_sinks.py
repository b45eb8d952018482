"""Chapter 13 exercises: attention sinks, image-centric heads and VAR redistribution.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 13

or, in a notebook, ``check("ch13.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.attention_sinks (it solves these). The
experiment's recipe helpers that ablation_accuracy names live apart, in
attnbook.mechanisms.attention_sinks_experiment.

Conventions: attention weights A are post-softmax, (B, H, N, M): B sequences, H heads, N query
rows, M keys. The image is a span of key positions ``img`` (a slice with step 1, e.g.
slice(1, 17)). ``sink`` (B, M) is True on the sink tokens; sinks inside ``img`` are visual sinks,
the others (BOS, say) text sinks.
"""

from torch import Tensor


def sink_mask(h: Tensor, dims: Tensor, tau: float, eps: float = 1e-6) -> Tensor:
    """The sink tokens of a layer's input: MA(h_t) > χ_MA, on normalised activations.

        RMSNorm(x) = x / sqrt(mean_d x_d² + eps)          (over the last axis, no learned weight)
        MA(h_t) = max_{d ∈ dims} |RMSNorm(h_t)_d|
        sink ⇔ MA(h_t) > χ_MA                                  (strictly)

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

        VR = Σ_{j ∈ img} A_qj                               (the visual attention ratio)
        SR = Σ_{j ∈ img, sink[j]} A_qj / VR                  (the visual-sink share; SR = 0 when VR = 0)
        selected ⇔ VR ≥ summ and SR ≤ rho

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
        budget = (1 - p) · Σ_{j sink} A_qj
        A'_qj = A_qj + budget · A_qj / m_ns         j in img and not a sink
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


def var_heads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    h: Tensor,
    dims: Tensor,
    tau: float,
    img: slice,
    rho: float = 0.5,
    summ: float = 0.2,
    p: float = 0.6,
) -> Tensor:
    """One layer of VAR, from the block's input to the heads' outputs (the mechanism end to end).

    Causal self-attention over N tokens (query i sees the keys j <= i), then:

        sinks     = sink_mask(h, dims, tau)                   found on the block's INPUT h
        A         = softmax(q k^T / sqrt(d) + causal mask)    over the keys
        selected  = image_centric(A, img, sinks, rho, summ)   and only the query rows i >= img.stop
                                                              (the text after the image)
        A'        = redistribute(A, sinks, img, selected, p)
        return A' v

    You may call your three functions above.

    Args:
        q, k, v: (B, H, N, d) float32 or float64, one head per axis 1.
        h: (B, N, D) the block's input hidden states.
        dims: (k,) int64 sink dimensions; tau: the sink threshold.
        img: the image span of the N positions; rho, summ, p: as above.

    Returns:
        (B, H, N, d) in q's dtype.
    """
    raise NotImplementedError("ch13.var_heads")


def ablation_accuracy(seed: int) -> dict[str, float]:
    """EXPERIMENT: do the tokens that soak up attention carry information? Replace their values.

    Recipe (the chapter's miniature, scaled down to run in about a second):

        from attnbook.mechanisms.attention_sinks_experiment import CAPTIONS, caption_accuracy, train_captioner
        from attnbook.tasks import object_captions
        from attnbook.tasks.object_captions import BACKGROUND, OBJECT, REGISTER

        model = train_captioner(seed, D=32, layers=2, steps=40)        # planted register inside
        test = object_captions(500, generator=torch.Generator().manual_seed(1000 + seed), **CAPTIONS)

    Measure caption_accuracy(model(test.tokens), test) under torch.no_grad() three times:

        "intact":  the model as trained;
        "sinks":   the values v_j of every register and background token replaced, in EVERY layer,
                   by their mean over all those tokens of the whole test batch (one mean per head);
        "objects": the same for the object tokens (test.kinds == OBJECT).

    The replacement goes in through each layer's ``model.blocks[l].attn.value_transform``, a
    function v (B, H, M, d) -> v; set it back to None afterwards. Write the replacement yourself.

    Returns:
        {"intact": float, "sinks": float, "objects": float}, each in [0, 1].
    """
    raise NotImplementedError("ch13.ablation_accuracy")
