"""Chapter 01 exercises: random-feature attention (frozen random QK, trained V).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 01

or, in a notebook, ``check("ch01.<function name>", your_function)`` from attnbook.grading.
Use only torch. Notation: a query x_0 ∈ R^d, N keys x_1 ... x_N ∈ R^d, the augmented vectors
x~ = [x; 1] ∈ R^{d+1}, and M heads with frozen query-key matrices W_m ∈ R^{(d+1)×(d+1)}.
"""

import torch
from torch import Tensor


def rfa_features(x0: Tensor, X: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    """The random attention features of M heads, flattened head-major.

    For each example, head m and key i:
        s_mi = x~_0^T W_m x~_i                       (the score; x~ = [x; 1])
        a_mi = ReLU(s_mi) / N        if act == "relu"
        a_mi = softmax over the N keys of s_m·      if act == "softmax"
        φ_m  = Σ_i a_mi x~_i ∈ R^{d+1}               (the head's output with values x~_i)

    Args:
        x0: queries (B, d), float32 or float64.
        X: keys (B, N, d), same dtype; N may be 1.
        W: frozen query-key matrices (M, d+1, d+1), not symmetric in general.
        act: "relu" or "softmax".

    Returns:
        (B, M*(d+1)) in the input's dtype; entry m*(d+1) + j is coordinate j of φ_m
        (i.e. the (B, M, d+1) tensor of the φ_m, reshaped).
    """
    raise NotImplementedError("ch01.rfa_features")


def ridge_fit(F: Tensor, y: Tensor, lam: float) -> Tensor:
    """Ridge regression: the w minimising ||F w - y||² + lam ||w||² (no 1/n in front).

    Args:
        F: features (n, P), float32 or float64. n may be larger or smaller than P.
        y: targets (n,), same dtype.
        lam: the penalty λ > 0 (it may be tiny, e.g. 1e-10).

    Returns:
        w (P,) in F's dtype. Hint: (F^T F + λI) w = F^T y, or equivalently
        w = F^T α with (F F^T + λI) α = y (cheaper when P > n).
    """
    raise NotImplementedError("ch01.ridge_fit")


def sample_qk(M: int, d: int, mu: float, generator: torch.Generator) -> Tensor:
    """Draw M frozen query-key matrices W_m = mu * diag(I_d, 0) + G_m.

    G_m has i.i.d. standard normal entries; the mean mu sits on the first d diagonal entries
    only (the row and column of the constant coordinate stay zero-mean). Draw every random
    number from ``generator`` so the same seed gives the same heads.

    Returns:
        (M, d+1, d+1), float64.
    """
    raise NotImplementedError("ch01.sample_qk")


def empirical_kernel(F1: Tensor, F2: Tensor, heads: int) -> Tensor:
    """The kernel of an M-head random-feature attention layer, K = F1 F2^T / M.

    K[a, b] = (1/M) Σ_m <φ_m(z_a), φ_m(z_b)>: the average over heads of the per-head inner
    products, which converges as M grows.

    Args:
        F1: features (n1, P) of n1 examples, P = M*(d+1), head-major as in rfa_features.
        F2: features (n2, P).
        heads: the number of heads M.

    Returns:
        (n1, n2) in the input's dtype.
    """
    raise NotImplementedError("ch01.empirical_kernel")
