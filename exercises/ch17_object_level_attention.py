"""Chapter 17 exercises: Object-level attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 17

or, in a notebook, ``check("ch17.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.object_level_attention (it solves these).
"""

from torch import Tensor


def fit_gaussian_pe(n_pos: int, dim: int, sigma: float, steps: int, lr: float, seed: int) -> Tensor:
    """Fit a position table whose rows' cosine similarities follow a Gaussian kernel of the index distance.

    Start from W = torch.randn(n_pos, dim, generator=torch.Generator().manual_seed(seed)) (float64 is
    fine) and take ``steps`` Adam steps (learning rate ``lr``) on

        L = [Σ_{a,b} (cos(W_a, W_b) - exp(-(a - b)² / (2σ²)))² + mean_a (|W_a| - mean_b |W_b|)²] / (R (R - 1))

    over all pairs a, b of the R = n_pos rows (the second term keeps the row norms equal).

    Args:
        n_pos: R, the number of index values (grid rows or columns), R ≥ 2.
        dim: C, the width of a row; the graded cases have C ≥ R, where an exact fit exists.
        sigma: σ > 0, in grid units.
        steps, lr, seed: Adam steps, Adam's learning rate, the seed of the initial table.

    Returns:
        (R, C) floating table W (detached). Graded: cos(W_a, W_b) within 0.02 of the kernel, every row
        norm within 5 % of the mean norm, and the same table again for the same seed.
    """
    raise NotImplementedError("ch17.fit_gaussian_pe")


def object_tokens(app: Tensor, rc: Tensor, pe: Tensor) -> Tensor:
    """The object tokens e_i = [a_i ; pe[r_i] ; pe[c_i]].

    Args:
        app: (B, N, Da) appearance features, float32 or float64.
        rc: (B, N, 2) int64 grid indices: rc[..., 0] the row r_i, rc[..., 1] the column c_i.
        pe: (R, dp) position table, same dtype as app.

    Returns:
        (B, N, Da + 2 dp) in app's dtype: the appearance first, then the row's encoding, then the
        column's.
    """
    raise NotImplementedError("ch17.object_tokens")


def pointer_logits(
    enc: Tensor, dec: Tensor, We: Tensor, Wd: Tensor, readout: Tensor, pad: Tensor | None = None
) -> Tensor:
    """The pointer over objects: next-fixation logits for N objects plus "stop".

    For each of C pointer heads, s^c[b, t, i] = (dec[b, t] @ Wd[c]) · (enc[b, i] @ We[c]) / sqrt(dk);
    the heads are combined by the readout, logit[b, t, i] = Σ_c readout[c] s^c[b, t, i]. Padded objects
    get -inf, and a column of zeros (the stop logit) is appended at index N.

    Args:
        enc: (B, N, D) encoder outputs, one per object, float32 or float64.
        dec: (B, T, D) decoder states, one per step, same dtype.
        We: (C, D, dk) key projections; Wd: (C, D, dk) query projections.
        readout: (C,) head weights (may be negative).
        pad: None, or (B, N) bool, True where an object is padding.

    Returns:
        (B, T, N + 1) logits in enc's dtype; softmax over the last axis gives the next object (or stop).
    """
    raise NotImplementedError("ch17.pointer_logits")


def normalized_levenshtein(a: list[int], b: list[int]) -> float:
    """The normalised edit distance between two scanpaths (sequences of object ids).

    Args:
        a, b: lists of ints, possibly empty.

    Returns:
        The fewest insertions, deletions and substitutions (each costing 1) that turn a into b, divided
        by max(len(a), len(b)); 0.0 when both are empty. A float in [0, 1].
    """
    raise NotImplementedError("ch17.normalized_levenshtein")
