r"""In-context linear regression prompts: M labelled examples of one random linear map, then a query.

One prompt (the setting of He, Pan, Chen and Yang 2025, chapter 02; symbols of book/notation.md):

    β ~ N(0, I_{d_x} / d_x)                 one task per prompt, E‖β‖² = 1
    x_1, ..., x_M, x_q ~ N(0, I_{d_x})      covariates, i.i.d.
    y_j = βᵀ x_j + ξ_j,   ξ_j ~ N(0, σ²)    labels of the M context examples
    y_q = βᵀ x_q + ξ_q                      the target the model must predict

The model sees tokens of width D = d_x + 1: the context tokens z_j = [x_j; y_j] (the M keys)
and the query token z_q = [x_q; 0] (its label slot is zero: that is what it has to fill in).

The prior variance 1/d_x makes Var(βᵀx) = 1 whatever d_x, so the loss scale does not depend on
the dimension (the authors' code draws β this way; their notebook's text writes N(0, I)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["RegressionPrompts", "linear_regression_prompts"]


class RegressionPrompts(NamedTuple):
    """A batch of prompts; unpack as ``Z, zq, yq, beta = prompts``."""

    Z: Tensor  # (B, M, D) context tokens [x_j; y_j]
    zq: Tensor  # (B, D) query tokens [x_q; 0]
    yq: Tensor  # (B,) query targets
    beta: Tensor  # (B, d_x) the task vector of each prompt


def linear_regression_prompts(
    batch_size: int,
    M: int,
    d_x: int,
    sigma2: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    y_shift: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> RegressionPrompts:
    """Draw ``batch_size`` prompts of ``M`` context examples in dimension ``d_x``.

    Args:
        batch_size: number of prompts B.
        M: context examples per prompt (M >= 1): the query's keys.
        d_x: covariate dimension (tokens have width D = d_x + 1).
        sigma2: label-noise variance σ² (>= 0).
        generator: the source of all randomness, for reproducible batches.
        y_shift: a constant κ added to every label (context and query): y = βᵀx + κ + ξ.
            0 is the paper's setting; a non-zero κ tests which predictors are debiased.
        dtype: floating dtype of the returned tensors.

    Returns:
        :class:`RegressionPrompts` with Z (B, M, d_x+1), zq (B, d_x+1), yq (B,), beta (B, d_x).
    """
    batch_size, M, d_x = require_int(batch_size, "batch_size"), require_int(M, "M"), require_int(d_x, "d_x")
    if batch_size < 1 or M < 1 or d_x < 1:
        raise ValueError(f"batch_size, M and d_x must be >= 1, got batch_size={batch_size}, M={M}, d_x={d_x}")
    if sigma2 < 0:
        raise ValueError(f"sigma2 is a variance and must be >= 0, got {sigma2}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype}")
    B = batch_size
    # β ~ N(0, I / d_x)
    beta = torch.randn(B, d_x, generator=generator, dtype=dtype) / d_x**0.5  # (B, d_x)
    # x_j, x_q ~ N(0, I): the query is drawn with the context, as an (M+1)-th example
    x = torch.randn(B, M + 1, d_x, generator=generator, dtype=dtype)  # (B, M+1, d_x)
    # y = βᵀx + κ + ξ,  ξ ~ N(0, σ²)
    noise = torch.randn(B, M + 1, generator=generator, dtype=dtype) * sigma2**0.5  # (B, M+1)
    y = torch.einsum("bjd,bd->bj", x, beta) + y_shift + noise  # (B, M+1)
    Z = torch.cat([x[:, :M], y[:, :M, None]], dim=-1)  # (B, M, D)
    # z_q = [x_q; 0]: the label slot of the query is empty
    zq = torch.cat([x[:, M], torch.zeros(B, 1, dtype=dtype, device=x.device)], dim=-1)  # (B, D)
    return RegressionPrompts(Z, zq, y[:, M], beta)
