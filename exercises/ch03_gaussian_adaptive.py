"""Chapter 03 exercises: Gaussian adaptive attention (GAAM).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 03

or, in a notebook, ``check("ch03.<function name>", your_function)`` from attnbook.grading.

Difficulty and time: gaam_weights ★★ (20 min, the heart of the mechanism), multi_head_gaam
★★ (15 min), collapse_product ★ (10 min), importance_factor ★ (10 min), gain_sweep_share ★★
(15 min, an experiment: it measures a quantity that the grader checks against its own runs).
Use only torch; do not import attnbook.mechanisms.gaussian_adaptive (it solves these).
"""

from torch import Tensor


def gaam_weights(x: Tensor, delta: Tensor, c: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    """The weights of one GAAM head, product form.

    Every "column" x_1..x_M of x along ``axis`` (all other indices fixed) is treated on its
    own: with its mean x̄ and its UNBIASED variance (divide by M - 1, torch.var's default),
    σ_x = sqrt(variance + eps), and for each of the G Gaussians r (offset b_r = delta[r],
    width σ_r = c[r])

        y_r = (x - (x̄ + b_r)) / σ_x          (the offset joins the mean, THEN divide by σ_x)
        s = Σ_r -y_r² / (2 σ_r²)              (the scores)
        weights = softmax(s) along ``axis``

    This equals the product of the G Gaussian pdfs divided by its sum along the axis (the
    1/sqrt(2π σ_r²) factors cancel); compute it as a softmax, which never underflows.

    Args:
        x: (B, M, D) float32 or float64 (any shape works; ``axis`` may be negative).
        delta: (G,) offsets b_r, in the units of x.
        c: (G,) widths σ_r (nonzero).
        axis: the normalisation axis.
        eps: added to the variance.

    Returns:
        Weights of x's shape and dtype; along ``axis`` they sum to 1. When M = 1 the
        unbiased variance is 0/0 (torch gives NaN): use variance 0, so the weight is 1.
    """
    raise NotImplementedError("ch03.gaam_weights")


def multi_head_gaam(x: Tensor, deltas: Tensor, cs: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    """Multi-head GAAM, gated output without the residual.

    The heads split the NORMALISATION axis (not the features) into H contiguous chunks:
    head h owns elements h*k ... h*k + k - 1 with k = M // H, and the LAST head also takes
    the remainder (M = 10, H = 4 -> chunk lengths M_h = 2, 2, 2, 4). Each head computes
    gaam_weights on its own chunk with its own parameters (deltas[h], cs[h]).

    Args:
        x: (B, M, D); M >= H, M need not be divisible by H.
        deltas, cs: (H, G) offsets b_r and widths σ_r of each head.
        axis: the normalisation axis.

    Returns:
        x ⊙ a, shape and dtype of x, where a holds the heads' weights side by side (each
        chunk of a sums to 1 along ``axis``).
    """
    raise NotImplementedError("ch03.multi_head_gaam")


def collapse_product(delta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The one Gaussian equal to the product of G Gaussians (in the product form of GAAM).

    Find (delta_eff, c_eff) = (b_prod, σ_prod) such that for every standardised value ζ
        Σ_r (ζ - b_r/σ_x)² / σ_r² = (ζ - b_prod/σ_x)² / σ_prod² + (a constant),
    so that gaam_weights(x, delta, c) == gaam_weights(x, delta_eff[None], c_eff[None]).

    Args:
        delta, c: (G,) offsets b_r and widths σ_r, float32 or float64; c may be negative
            (only σ_r² matters).

    Returns:
        (delta_eff, c_eff): two 0-d tensors (shape ()), dtype of the input, c_eff > 0.
    """
    raise NotImplementedError("ch03.collapse_product")


def importance_factor(A: Tensor) -> Tensor:
    """The book's reading of the paper's Importance Factor.

    Average the weights over the samples, then min-max scale to [0, 1] over the WHOLE
    (M, D) map: IF = (ā - min ā) / (max ā - min ā), ā = A.mean(0).

    Args:
        A: (S, M, D) GAAM weights of S samples.

    Returns:
        (M, D), same dtype, values in [0, 1]. When every entry of ā is equal, return zeros
        (not NaN).
    """
    raise NotImplementedError("ch03.importance_factor")


def gain_sweep_share(gain: float, seed: int = 0) -> float:
    """EXPERIMENT: how much weight a fixed GAAM head puts on the informative layers at a gain.

    The offset b_1 is learned in raw units, so a band set for one loudness misses at another.
    Measure it:

    1. Draw a drift-free sample of the chapter's task,
       ``drifting_layers(1000, torch.Generator().manual_seed(seed), offset=0.0, gain=1.0)``
       (from attnbook.tasks.drifting_layers): ``.x`` is (1000, M=32, D=16) float32 and
       ``.role`` (1000, 32) int64 with 1 on the informative layers.
    2. Multiply ``.x`` by ``gain`` (κ_gain).
    3. Apply H = 4 heads over the layer axis (axis=1, contiguous chunks of 8), every head with
       one Gaussian, b_1 = 0.9 and σ_1 = 0.2 (your ``gaam_weights`` on each chunk).
    4. For every sample and feature, sum the weights on the informative layers and divide by
       H (each head's weights sum to 1 over its chunk); return the mean as a float.

    Then call it at gains 0.5, 0.7, 1, 1.43 and 2, and compare with the chapter's gain sweep.
    The grader runs the same experiment on three seeds of its own and accepts your value
    within mean ± max(4·spread, 0.01).
    """
    raise NotImplementedError("ch03.gain_sweep_share")
