"""Chapter 02 exercises: in-context linear regression with multi-head softmax attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 02

or, in a notebook, ``check("ch02.<function name>", your_function)`` from attnbook.grading.
Use only torch. Notation: d covariates, tokens of width D = d + 1, L context examples,
H heads, B prompts.
"""

import torch
from torch import Tensor


def icl_batch(
    B: int, L: int, d: int, sigma2: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw B in-context regression prompts, float32, all randomness from ``generator``.

    For each prompt independently:
        β ~ N(0, I_d / d)                        (so E‖β‖² = 1)
        x_1, ..., x_L, x_q ~ N(0, I_d)
        y_ℓ = βᵀ x_ℓ + ε_ℓ,  y_q = βᵀ x_q + ε_q,   ε ~ N(0, sigma2)   (sigma2 is a VARIANCE)

    Returns:
        Z: (B, L, d+1) context tokens, Z[b, ℓ] = [x_ℓ; y_ℓ].
        zq: (B, d+1) query tokens [x_q; 0] (the label slot is 0: the model must not see y_q).
        yq: (B,) the query targets y_q.
    """
    raise NotImplementedError("ch02.icl_batch")


def icl_forward(Z: Tensor, zq: Tensor, A: Tensor, u: Tensor) -> Tensor:
    """Single-query multi-head softmax attention in the merged parametrisation.

        ŷ = Σ_h Σ_ℓ softmax_ℓ( z_ℓᵀ A_h z_q / sqrt(D) ) · u_hᵀ z_ℓ

    The softmax runs over the L CONTEXT tokens of each head separately; the query does not
    attend to itself.

    Args:
        Z: (B, L, D) context tokens; zq: (B, D) query tokens.
        A: (H, D, D) key-query matrices (A_h = W_K^h (W_Q^h)ᵀ); u: (H, D) output-value vectors.

    Returns:
        ŷ: (B,), same dtype as Z.
    """
    raise NotImplementedError("ch02.icl_forward")


def debiased_gd(Z: Tensor, zq: Tensor, eta: float) -> Tensor:
    """The debiased gradient-descent predictor.

        ŷ = (η / L) Σ_ℓ y_ℓ (x_ℓ - x̄)ᵀ x_q,   x̄ = (1/L) Σ_ℓ x_ℓ  (context covariates only)

    Args:
        Z: (B, L, D) context tokens [x_ℓ; y_ℓ]; zq: (B, D) query tokens [x_q; 0]; eta: step size.

    Returns:
        ŷ: (B,), same dtype as Z. Adding a constant to every y_ℓ must not change it.
    """
    raise NotImplementedError("ch02.debiased_gd")


def extract_omega_mu(A: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    """Read the learned pattern off the merged weights of H heads.

    A trained head has A_h ≈ sqrt(D)·diag(ω_h, ..., ω_h, ·) on the x-block and u_h ≈ (0, ..., 0, μ_h).

    Args:
        A: (H, D, D) key-query matrices; u: (H, D) output-value vectors; d = D - 1.

    Returns:
        omega: (H,) ω_h = mean of the d diagonal entries A_h[i, i], i < d, divided by sqrt(D)
            (the score divides by sqrt(D), so the softmax sees ω_h x_ℓᵀ x_q).
        mu: (H,) μ_h = u_h[-1], the label entry of the output-value vector.
        ratio: float. Only A's first d COLUMNS act on x_q (the query's last entry is 0). Over
            those entries A_h[i, j], i < D, j < d, pooled over all heads: the mean |A_h[i, j]| of
            the entries with i ≠ j, divided by the mean |A_h[i, i]| of the x-diagonal entries.
    """
    raise NotImplementedError("ch02.extract_omega_mu")
