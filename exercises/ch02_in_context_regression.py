"""Chapter 02 exercises: in-context linear regression with multi-head softmax attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 02

or, in a notebook, ``check("ch02.<function name>", your_function)`` from attnbook.grading.
Use only torch. Notation (book/notation.md): d_x covariates, tokens of width D = d_x + 1 (every
head is full width, d = D), M context examples indexed by j, H heads, B prompts; W_KQ^h is the
merged key-query matrix of head h and u_h its merged value-output vector.

    ★   icl_batch             (15 min)  the prompt distribution
    ★★  icl_forward           (20 min)  the substantive one: equation (1), the model itself
    ★   debiased_gd           (10 min)  the algorithm the trained heads run
    ★★  extract_omega_mu      (20 min)  read the learned pattern off the weights
    ★★  pair_distance_to_dgd  (20 min)  an experiment: how close is a ±ω pair to debiased GD?
"""

import torch
from torch import Tensor


def icl_batch(
    B: int, M: int, d_x: int, sigma2: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw B in-context regression prompts, float32, all randomness from ``generator``.

    For each prompt independently:
        β ~ N(0, I_{d_x} / d_x)                  (so E‖β‖² = 1)
        x_1, ..., x_M, x_q ~ N(0, I_{d_x})
        y_j = βᵀ x_j + ξ_j,  y_q = βᵀ x_q + ξ_q,   ξ ~ N(0, sigma2)   (sigma2 is a VARIANCE)

    Returns:
        Z: (B, M, d_x+1) context tokens, Z[b, j] = [x_j; y_j].
        zq: (B, d_x+1) query tokens [x_q; 0] (the label slot is 0: the model must not see y_q).
        yq: (B,) the query targets y_q.
    """
    raise NotImplementedError("ch02.icl_batch")


def icl_forward(Z: Tensor, zq: Tensor, W_kq: Tensor, u: Tensor) -> Tensor:
    """Single-query multi-head softmax attention in the merged parametrisation, equation (1).

        ŷ = Σ_h Σ_j softmax_j( z_jᵀ W_KQ^h z_q / sqrt(D) ) · u_hᵀ z_j

    The softmax runs over the M CONTEXT tokens of each head separately; the query does not
    attend to itself.

    Args:
        Z: (B, M, D) context tokens; zq: (B, D) query tokens.
        W_kq: (H, D, D) merged key-query matrices, W_KQ^h = W_K^h (W_Q^h)ᵀ.
        u: (H, D) merged value-output vectors, u_h = W_V^h W_O^h.

    Returns:
        ŷ: (B,), same dtype as Z.
    """
    raise NotImplementedError("ch02.icl_forward")


def debiased_gd(Z: Tensor, zq: Tensor, eta: float) -> Tensor:
    """The debiased gradient-descent predictor.

        ŷ = (η / M) Σ_j y_j (x_j - x̄)ᵀ x_q,   x̄ = (1/M) Σ_j x_j  (context covariates only)

    Only the context covariates are centred; x_q stays as it is (the chapter's step 5 says why).

    Args:
        Z: (B, M, D) context tokens [x_j; y_j]; zq: (B, D) query tokens [x_q; 0]; eta: step size.

    Returns:
        ŷ: (B,), same dtype as Z. Adding a constant κ to every y_j must not change it.
    """
    raise NotImplementedError("ch02.debiased_gd")


def extract_omega_mu(W_kq: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    """Read the learned pattern off the merged weights of H heads.

    A trained head has W_KQ^h ≈ sqrt(D)·diag(ω_h, ..., ω_h, ·) on the x-block and
    u_h ≈ (0, ..., 0, μ_h).

    Args:
        W_kq: (H, D, D) key-query matrices; u: (H, D) value-output vectors; d_x = D - 1.

    Returns:
        omega: (H,) ω_h = mean of the d_x diagonal entries W_kq[h, i, i], i < d_x, divided by
            sqrt(D) (the score divides by sqrt(D), so the softmax sees ω_h x_jᵀ x_q).
        mu: (H,) μ_h = u[h, -1], the label entry of the value-output vector.
        ratio: float. Only the first d_x COLUMNS of W_kq act on x_q (the query's last entry is
            0). Over those entries W_kq[h, r, c], r < D, c < d_x, pooled over all heads: the mean
            |W_kq[h, r, c]| of the entries with r ≠ c, divided by the mean |W_kq[h, i, i]| of the
            x-diagonal entries.
    """
    raise NotImplementedError("ch02.extract_omega_mu")


def pair_distance_to_dgd(omega: float, seed: int) -> float:
    """EXPERIMENT: how far is a pair of mirror-image heads from debiased GD?

    1. Draw 8000 prompts with your ``icl_batch(8000, 40, 5, 0.1, torch.Generator().manual_seed(seed))``
       (M = 40, d_x = 5, D = 6, sigma2 = 0.1).
    2. Build two heads (ω, μ) and (-ω, -μ) with the step η = Σ_h μ_h ω_h = 0.9 held fixed
       (so μ = η / (2ω)): W_KQ^h = sqrt(D)·ω_h·diag(I_{d_x}, 0) (zero last row and column),
       u_h = μ_h e_D (only the label entry).
    3. Predict with your ``icl_forward`` and with your ``debiased_gd(..., eta=0.9)``.
    4. Return the relative distance sqrt(mean (ŷ - ŷ_dGD)² / mean ŷ_dGD²) as a float.

    Run it for ω = 0.05, 0.1, 0.2, 0.4: how does the distance grow with ω? The grader runs the
    same experiment on its own prompts over 8 seeds and checks your number against that range.
    """
    raise NotImplementedError("ch02.pair_distance_to_dgd")
