"""Chapter 15 exercises: aggregating cross-attention, occlusion saliency and their correlation.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 15

or, in a notebook, ``check("ch15.<function name>", your_function)`` from attnbook.grading.
Use only torch (and numpy). The one import from attnbook that these exercises need is
``from attnbook.mechanisms.attention_vs_saliency_experiment import mixing_toy`` (the toy model of
the last exercise); import nothing else from attnbook.mechanisms: attention_vs_saliency and the
rest of attention_vs_saliency_experiment hold finished versions of these functions.
"""

from collections.abc import Callable, Sequence

from torch import Tensor


def aggregate_ca(
    ca: Tensor, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Tensor:
    """★ (10 min) The cross-attention map averaged over a set 𝓗 = layers × heads of (layer, head) pairs.

    CA^(𝓗) = (1/|𝓗|) Σ_{(l,h) ∈ 𝓗} CA^(l,h).

    Args:
        ca: (L, H, N, M) per-layer, per-head cross-attention weights (N tokens, M encoder frames),
            float32 or float64; each row (one output token) sums to 1.
        layers: the chosen layer indices (negative ones count from the end); None = all L.
        heads: the chosen head indices (negative ones count from the end); None = all H.

    Returns:
        (N, M) in ca's dtype; each row still sums to 1. ca is not modified.
    """
    raise NotImplementedError("ch15.aggregate_ca")


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    """★★ (15 min) Bring a spectrogram saliency map onto the attention's time grid.

    First reduce over frequency (max or mean over the n_freq bins), then pool in time: output
    frame j takes the max (or mean) over input frames floor(j n_frame / M) ... ceil((j+1) n_frame / M) - 1,
    the windows of adaptive pooling (no frame is dropped when M does not divide n_frame).

    Args:
        sm: (N, n_frame, n_freq) saliency per token, input frame and frequency bin, float32 or float64.
        t_out: the number M of encoder frames, 1 <= M <= n_frame.
        freq: "max" or "mean", the reduction over frequency.
        time: "max" or "mean", the pooling over time.

    Returns:
        (N, M) in sm's dtype.
    """
    raise NotImplementedError("ch15.reduce_saliency")


def occlusion_saliency(f: Callable[[Tensor], Tensor], x: Tensor, masks: Tensor) -> Tensor:
    """★★★ (25 min) RISE-style occlusion saliency of every output token under forced decoding.

    For each mask O_r (r = 1 ... n_occ), set the hidden cells of x to 0, giving the token
    distributions ŷ_i^(r), and score token i by
    KL_{r,i} = KL(ŷ_i(x) ‖ ŷ_i^(r)) = Σ_v ŷ_iv (log ŷ_iv - log ŷ^(r)_iv) (with 0 log 0 = 0).
    The relevance of cell (t, ν) for token i is the average score over the masks that hide it:
    SM_{i,tν} = Σ_r KL_{r,i} O_{r,tν} / Σ_r O_{r,tν}, and 0 for a cell no mask hides.

    Args:
        f: f(x_batch (B, n_frame, n_freq)) -> (B, N, V) per-token output distributions ŷ_i
            under forced decoding (rows sum to 1; V the vocabulary).
        x: (n_frame, n_freq) the input, float32 or float64.
        masks: (n_occ, n_frame, n_freq) bool, True = hidden.

    Returns:
        (N, n_frame, n_freq) in x's dtype. x and masks are not modified.
    """
    raise NotImplementedError("ch15.occlusion_saliency")


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """★ (10 min) Pearson correlation of two maps, flattened, over the valid cells only.

    corr = Σ a'b' / sqrt(Σ a'² Σ b'²), summed over the valid cells, with a' = a - mean(a) over
    the valid cells (same for b).

    Args:
        a, b: maps of one shape (e.g. (N, M) attention and saliency), float32 or float64.
        valid: bool of that shape, True for the cells to compare (False on padding); None = all.

    Returns:
        corr as a Python float; float("nan") when a or b is constant on the valid cells.
    """
    raise NotImplementedError("ch15.pearson_flat")


def mixing_gap(alpha: float, seed: int) -> float:
    """★★ (25 min) Experiment: how much does context mixing in the encoder cost SM^X?

    Build the untrained toy ``toy = mixing_toy(alpha)`` (import it from
    attnbook.mechanisms.attention_vs_saliency_experiment): an encoder that only mixes each frame
    with its neighbours, C = W_mix X with W_mix = (1 - alpha) I_M + alpha W_nb (``toy.encode``;
    W_nb averages a frame's two neighbours), and one cross-attention head (``toy.cross_attention``,
    ``toy.decode``). The toy keeps the frame count: toy.x is (M, n_freq) = (12, 6). Then, with your
    functions above:

    - C = toy.encode(toy.x[None])[0] (M, n_freq); CA = toy.cross_attention(C[None])[0] (N, M);
    - ONE draw of n_occ = 200 whole-frame masks: g = torch.Generator().manual_seed(seed);
      masks = (torch.rand(200, M, 1, generator=g) < 0.5).expand(-1, -1, n_freq), used for both maps;
    - SM^X: occlusion saliency of x through encoder and decoder, f(xb) = toy.decode(toy.encode(xb));
    - SM^C: occlusion saliency of C through the decoder alone, f = toy.decode;
    - both reduced by a max over the n_freq features to (N, M).

    The recipe fixes every random draw, so the answer for a seed is one number: the check
    compares it with its reference within 1e-6. Try alpha = 0, 0.3, 0.6 over a few seeds first.

    Returns:
        corr(CA, SM^C) - corr(CA, SM^X), Pearson over the (N, M) cells, as a Python float.
    """
    raise NotImplementedError("ch15.mixing_gap")
