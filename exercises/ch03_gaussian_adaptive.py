"""Chapter 03 exercises: Gaussian adaptive attention (GAAM).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 03

or, in a notebook, ``check("ch03.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.gaussian_adaptive (it solves these).
"""

from torch import Tensor


def gaam_weights(x: Tensor, delta: Tensor, c: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    """The weights of one GAAM head, product form.

    Every "column" of x along ``axis`` (all other indices fixed) is treated on its own:
    with its mean m and its UNBIASED variance v (divide by n - 1, torch.var's default),
    s = sqrt(v + eps), and for each of the G Gaussians

        y_g = (x - (m + delta[g])) / s          (the offset joins the mean, THEN divide by s)
        logit = Σ_g -y_g² / (2 c[g]²)
        weights = softmax(logit) along ``axis``

    This equals the product of the G Gaussian pdfs divided by its sum along the axis (the
    1/sqrt(2π c²) factors cancel); compute it as a softmax, which never underflows.

    Args:
        x: (B, n, C) float32 or float64 (any shape works; ``axis`` may be negative).
        delta: (G,) offsets, in the units of x.
        c: (G,) scales (nonzero).
        axis: the normalisation axis.
        eps: added to the variance.

    Returns:
        Weights of x's shape and dtype; along ``axis`` they sum to 1. When n = 1 the
        unbiased variance is 0/0 (torch gives NaN): use variance 0, so the weight is 1.
    """
    raise NotImplementedError("ch03.gaam_weights")


def multi_head_gaam(x: Tensor, deltas: Tensor, cs: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    """Multi-head GAAM, gated output without the residual.

    The heads split the NORMALISATION axis (not the features) into H contiguous chunks:
    head h owns elements h*k ... h*k + k - 1 with k = n // H, and the LAST head also takes
    the remainder (n = 10, H = 4 -> chunk lengths 2, 2, 2, 4). Each head computes
    gaam_weights on its own chunk with its own parameters (deltas[h], cs[h]).

    Args:
        x: (B, n, C); n >= H, n need not be divisible by H.
        deltas, cs: (H, G).
        axis: the normalisation axis.

    Returns:
        x ⊙ a, shape and dtype of x, where a holds the heads' weights side by side (each
        chunk of a sums to 1 along ``axis``).
    """
    raise NotImplementedError("ch03.multi_head_gaam")


def collapse_product(delta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The one Gaussian equal to the product of G Gaussians (in the product form of GAAM).

    Find (delta_eff, c_eff) such that for every z
        Σ_g (z - delta[g]/s)² / c[g]² = (z - delta_eff/s)² / c_eff² + (a constant),
    so that gaam_weights(x, delta, c) == gaam_weights(x, delta_eff[None], c_eff[None]).

    Args:
        delta, c: (G,) float32 or float64; c may be negative (only c² matters).

    Returns:
        (delta_eff, c_eff): two 0-d tensors (shape ()), dtype of the input, c_eff > 0.
    """
    raise NotImplementedError("ch03.collapse_product")


def importance_factor(A: Tensor) -> Tensor:
    """The book's reading of the paper's Importance Factor.

    Average the weights over the samples, then min-max scale to [0, 1] over the WHOLE
    (n, C) map: IF = (ā - min ā) / (max ā - min ā), ā = A.mean(0).

    Args:
        A: (S, n, C) GAAM weights of S samples.

    Returns:
        (n, C), same dtype, values in [0, 1]. When every entry of ā is equal, return zeros
        (not NaN).
    """
    raise NotImplementedError("ch03.importance_factor")
