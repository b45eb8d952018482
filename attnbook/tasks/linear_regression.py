r"""In-context linear regression prompts: L labelled examples of one random linear map, then a query.

One prompt (the setting of He, Pan, Chen and Yang 2025, chapter 02):

    β ~ N(0, I_d / d)                       one task per prompt, E‖β‖² = 1
    x_1, ..., x_L, x_q ~ N(0, I_d)          covariates, i.i.d.
    y_ℓ = βᵀ x_ℓ + ε_ℓ,   ε_ℓ ~ N(0, σ²)    labels of the context examples
    y_q = βᵀ x_q + ε_q                      the target the model must predict

The model sees tokens of width D = d + 1: the context tokens z_ℓ = [x_ℓ; y_ℓ] and the query
token z_q = [x_q; 0] (its label slot is zero: that is what it has to fill in).

The prior variance 1/d makes Var(βᵀx) = 1 whatever d, so the loss scale does not depend on
the dimension (the authors' code draws β this way; their notebook's text writes N(0, I_d)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["RegressionPrompts", "linear_regression_prompts"]


class RegressionPrompts(NamedTuple):
    """A batch of prompts; unpack as ``Z, zq, yq, beta = prompts``."""

    Z: Tensor  # (B, L, D) context tokens [x_ℓ; y_ℓ]
    zq: Tensor  # (B, D) query tokens [x_q; 0]
    yq: Tensor  # (B,) query targets
    beta: Tensor  # (B, d) the task vector of each prompt


def linear_regression_prompts(
    batch_size: int,
    L: int,
    d: int,
    sigma2: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    y_shift: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> RegressionPrompts:
    """Draw ``batch_size`` prompts of ``L`` context examples in dimension ``d``.

    Args:
        batch_size: number of prompts B.
        L: context examples per prompt (L >= 1).
        d: covariate dimension (tokens have width D = d + 1).
        sigma2: label-noise variance σ² (>= 0).
        generator: the source of all randomness, for reproducible batches.
        y_shift: a constant c added to every label (context and query): y = βᵀx + c + ε.
            0 is the paper's setting; a non-zero c tests which predictors are debiased.
        dtype: floating dtype of the returned tensors.

    Returns:
        :class:`RegressionPrompts` with Z (B, L, d+1), zq (B, d+1), yq (B,), beta (B, d).
    """
    batch_size, L, d = require_int(batch_size, "batch_size"), require_int(L, "L"), require_int(d, "d")
    if batch_size < 1 or L < 1 or d < 1:
        raise ValueError(f"batch_size, L and d must be >= 1, got batch_size={batch_size}, L={L}, d={d}")
    if sigma2 < 0:
        raise ValueError(f"sigma2 is a variance and must be >= 0, got {sigma2}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.float32), got {dtype}")
    B = batch_size
    # β ~ N(0, I_d / d)
    beta = torch.randn(B, d, generator=generator, dtype=dtype) / d**0.5  # (B, d)
    # x_ℓ, x_q ~ N(0, I_d): the query is drawn with the context, as an (L+1)-th example
    x = torch.randn(B, L + 1, d, generator=generator, dtype=dtype)  # (B, L+1, d)
    # y = βᵀx + c + ε,  ε ~ N(0, σ²)
    noise = torch.randn(B, L + 1, generator=generator, dtype=dtype) * sigma2**0.5  # (B, L+1)
    y = torch.einsum("bld,bd->bl", x, beta) + y_shift + noise  # (B, L+1)
    Z = torch.cat([x[:, :L], y[:, :L, None]], dim=-1)  # (B, L, D)
    # z_q = [x_q; 0]: the label slot of the query is empty
    zq = torch.cat([x[:, L], torch.zeros(B, 1, dtype=dtype, device=x.device)], dim=-1)  # (B, D)
    return RegressionPrompts(Z, zq, y[:, L], beta)
