r"""In-context linear regression with one layer of multi-head softmax attention (chapter 02).

From multi-head attention to the in-context regressor
----------------------------------------------------
Chapter 00 writes multi-head attention in the sum-over-heads form

    MHA(X) = Σ_h softmax(Q_h K_h^T / sqrt(d_head)) V_h W_O^h,   Q_h = X W_Q^h, K_h = X W_K^h, V_h = X W_V^h.

Here, as in the paper, d is the dimension of the covariates x (not a head width). Change one
thing at a time (He, Pan, Chen and Yang 2025):

1. Tokens are (x, y) pairs: z_ℓ = [x_ℓ; y_ℓ] ∈ R^D with D = d + 1, and the query token is
   z_q = [x_q; 0]. Context Z = [z_1 ... z_L]^T ∈ R^{L×D}.
2. Only the query's output is read, and the query attends to the L context tokens only (not to
   itself). This is causal MHA on [Z; z_q] with the query's own position hidden, read at the
   last position.
3. Every head is full width (d_head = D), and the output projection W_O^h maps to one scalar.
4. No residual, LayerNorm, MLP or biases. Loss: squared error against y_q.

For one query the score of token ℓ in head h is (z_q W_Q^h)(z_ℓ W_K^h)^T / sqrt(D)
= z_ℓ^T A_h z_q / sqrt(D) with the merged key-query matrix A_h = W_K^h (W_Q^h)^T ∈ R^{D×D}
(the paper's KQ_h), and the head writes (z_ℓ W_V^h) W_O^h = u_h^T z_ℓ with the merged
output-value vector u_h = W_V^h W_O^h ∈ R^D (the paper's OV_h). Hence

    ŷ = Σ_h Σ_ℓ softmax_ℓ(z_ℓ^T A_h z_q / sqrt(D)) · u_h^T z_ℓ.                 (1)

What training finds
-------------------
A_h ≈ sqrt(D)·diag(ω_h I_d, 0) (diagonal, homogeneous; we report ω with the 1/sqrt(D) of the
score absorbed, so the score is ω_h x_ℓ^T x_q) and u_h ≈ μ_h e_D (last entry only), with
Σ_h μ_h ≈ 0 (zero-sum). A_h's last column multiplies the query's empty label slot, so it never
matters (and never receives a gradient). Then (1) becomes

    ŷ = Σ_h μ_h Σ_ℓ y_ℓ softmax_ℓ(ω_h x_ℓ^T x_q).                                   (2)

For small ω, softmax_ℓ(ω s) = (1/L)(1 + ω(s_ℓ - s̄)) + O(ω²) with s̄ the mean score, so

    ŷ ≈ (Σ_h μ_h) ȳ + (Σ_h μ_h ω_h) (1/L) Σ_ℓ y_ℓ (x_ℓ - x̄)^T x_q.                 (3)

Zero-sum removes the ȳ term and leaves the debiased GD predictor with step η = Σ_h μ_h ω_h
(= 2ωμ for a pair (ω, μ), (-ω, -μ)). For such a pair the even powers of ω cancel between the
heads, so (2) matches debiased GD up to a relative O(ω²). One head cannot cancel μ ȳ.

This module stands alone instead of plugging into :class:`attnbook.attention.MultiHeadAttention`:
the paper's model has full-width heads (d_head = D, so H·D ≠ D), a scalar readout and one query
that does not see itself, and it is trained and read in the merged (A_h, u_h) parametrisation;
the tests check it against masked multi-head attention of the core.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..validate import check_scale, require_int, require_same_dtype_device, require_tensor

__all__ = [
    "icl_attention",
    "linear_icl_attention",
    "merge_projections",
    "constructed_weights",
    "extract_omega_mu",
    "effective_step",
    "debiased_gd",
    "vanilla_gd",
    "ridge_predict",
    "reduced_loss",
    "single_head_optimum",
    "paired_optimal_step",
    "ICLRegressor",
]


def _check_prompts(Z: Tensor, zq: Tensor) -> tuple[int, int, int]:
    """Z (B, L, D) and zq (B, D), floating, one dtype and device: returns B, L, D."""
    require_tensor(Z, "Z", ndim=3, floating=True, shape="(B, L, D) (context tokens [x; y])")
    require_tensor(zq, "zq", ndim=2, floating=True, shape="(B, D) (query tokens [x_q; 0])")
    require_same_dtype_device(Z=Z, zq=zq)
    B, L, D = Z.shape
    if D < 2:
        raise ValueError(f"tokens need width D = d + 1 >= 2, got Z of shape {tuple(Z.shape)}")
    if zq.shape != (B, D):
        raise ValueError(f"zq must have shape (B={B}, D={D}) (query tokens [x_q; 0]), got {tuple(zq.shape)}")
    return B, L, D


def _check_weights(A: Tensor, u: Tensor, D: int | None = None, **prompts: Tensor) -> int:
    """A (H, D, D) and u (H, D), one dtype and device with each other and ``prompts``: returns H."""
    require_tensor(A, "A", ndim=3, floating=True, shape="(H, D, D) (one key-query matrix per head)")
    require_tensor(u, "u", ndim=2, floating=True, shape="(H, D) (one output-value vector per head)")
    require_same_dtype_device(**prompts, A=A, u=u)
    D = A.shape[-1] if D is None else D
    if A.shape[1:] != (D, D):
        raise ValueError(
            f"A must have shape (H, D={D}, D={D}) (one key-query matrix per head), got {tuple(A.shape)}"
        )
    H = A.shape[0]
    if u.shape != (H, D):
        raise ValueError(
            f"u must have shape (H={H}, D={D}) (one output-value vector per head), got {tuple(u.shape)}"
        )
    return H


def _per_head(omega: object, mu: object, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """omega and mu as tensors of one shape (H,) (in ``dtype`` if given); tensors keep their device."""
    omega, mu = (
        t.to(dtype or t.dtype) if isinstance(t, Tensor) else torch.as_tensor(t, dtype=dtype)
        for t in (omega, mu)
    )
    if omega.ndim != 1 or mu.shape != omega.shape:
        raise ValueError(f"omega and mu must both be (H,), got {tuple(omega.shape)} and {tuple(mu.shape)}")
    return omega, mu


def icl_attention(Z: Tensor, zq: Tensor, A: Tensor, u: Tensor, *, return_weights: bool = False):
    r"""Single-query multi-head softmax attention, equation (1).

    Args:
        Z: context tokens (B, L, D), z_ℓ = [x_ℓ; y_ℓ].
        zq: query tokens (B, D), z_q = [x_q; 0].
        A: merged key-query matrices (H, D, D), A_h = W_K^h (W_Q^h)^T.
        u: merged output-value vectors (H, D), u_h = W_V^h W_O^h.
        return_weights: also return the attention weights (B, H, L).

    Returns:
        ŷ (B,) [, weights (B, H, L)].
    """
    B, L, D = _check_prompts(Z, zq)
    _check_weights(A, u, D, Z=Z)
    # s_{hℓ} = z_ℓ^T A_h z_q / sqrt(D); applying A_h to the query first costs O(D²) per head
    Aq = torch.einsum("hde,be->bhd", A, zq)  # (B, H, D)
    scores = torch.einsum("bld,bhd->bhl", Z, Aq) / math.sqrt(D)  # (B, H, L)
    # softmax over the L context tokens (the query does not see itself)
    weights = torch.softmax(scores, dim=-1)  # (B, H, L)
    # v_{hℓ} = u_h^T z_ℓ: each head reads one number from each token
    values = torch.einsum("hd,bld->bhl", u, Z)  # (B, H, L)
    # ŷ = Σ_h Σ_ℓ p_{hℓ} v_{hℓ}
    y_hat = (weights * values).sum(dim=(1, 2))  # (B,)
    return (y_hat, weights) if return_weights else y_hat


def linear_icl_attention(
    Z: Tensor, zq: Tensor, A: Tensor, u: Tensor, *, length: float | None = None
) -> Tensor:
    r"""The linear-attention baseline: (1) with the softmax replaced by a fixed 1/length.

    ŷ = (1 / length) Σ_h Σ_ℓ (z_ℓ^T A_h z_q / sqrt(D)) · u_h^T z_ℓ

    ``length`` defaults to the prompt's own L. A model that fixes it to its training length
    (as :class:`ICLRegressor` does) has no way to know how many tokens it sums over.
    Shapes as in :func:`icl_attention`; returns (B,).
    """
    B, L, D = _check_prompts(Z, zq)
    _check_weights(A, u, D, Z=Z)
    length = L if length is None else check_scale(length, "length")  # the fixed normaliser, > 0
    Aq = torch.einsum("hde,be->bhd", A, zq)  # (B, H, D)
    scores = torch.einsum("bld,bhd->bhl", Z, Aq) / math.sqrt(D)  # (B, H, L)
    values = torch.einsum("hd,bld->bhl", u, Z)  # (B, H, L)
    return (scores * values).sum(dim=(1, 2)) / length  # (B,)


def merge_projections(w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor) -> tuple[Tensor, Tensor]:
    r"""Merge per-head projections into (A, u): A_h = W_K^h (W_Q^h)^T, u_h = W_V^h W_O^h.

    Args (chapter 00's convention, projections act on the right, q = z W_Q):
        w_q, w_k, w_v: (H, D, d_head); w_o: (H, d_head) (each head writes one scalar).

    Returns:
        A (H, D, D), u (H, D).
    """
    for name, t in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        require_tensor(t, name, floating=True)
    require_same_dtype_device(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    if w_q.ndim != 3 or w_k.shape != w_q.shape or w_v.shape != w_q.shape:
        raise ValueError(
            f"w_q, w_k, w_v must share one shape (H, D, d_head); got {tuple(w_q.shape)}, "
            f"{tuple(w_k.shape)}, {tuple(w_v.shape)}"
        )
    if w_o.shape != (w_q.shape[0], w_q.shape[2]):
        raise ValueError(
            f"w_o must have shape (H, d_head) = {(w_q.shape[0], w_q.shape[2])}, got {tuple(w_o.shape)}"
        )
    A = w_k @ w_q.transpose(-1, -2)  # (H, D, D)
    u = torch.einsum("hde,he->hd", w_v, w_o)  # (H, D)
    return A, u


def constructed_weights(omega: Tensor, mu: Tensor, D: int) -> tuple[Tensor, Tensor]:
    r"""The pattern training finds: A_h = sqrt(D)·diag(ω_h I_d, 0), u_h = μ_h e_D.

    Args:
        omega, mu: (H,) per-head score scale and output weight.
        D: token width d + 1.

    Returns:
        A (H, D, D), u (H, D) in omega's dtype, such that :func:`icl_attention` computes (2).
    """
    omega, mu = _per_head(omega, mu)
    require_tensor(omega, "omega", floating=True, shape="(H,)")
    mu = mu.to(omega.dtype)
    require_same_dtype_device(omega=omega, mu=mu)
    D = require_int(D, "D", minimum=2)
    x_block = torch.eye(D, dtype=omega.dtype, device=omega.device)
    x_block[-1, -1] = 0  # diag(I_d, 0)
    A = math.sqrt(D) * omega[:, None, None] * x_block  # (H, D, D)
    u = torch.zeros(len(mu), D, dtype=omega.dtype, device=omega.device)
    u[:, -1] = mu  # (H, D)
    return A, u


def extract_omega_mu(A: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    r"""Read (ω_h, μ_h) off trained weights, and how far A is from the diagonal pattern.

    Only the first d COLUMNS of A act on the query's x_q (its last entry is the empty label
    slot, always 0, so A's last column never matters and never receives a gradient). Then

    ω_h = mean_{i<d} A_h[i, i] / sqrt(D)    (the score is ω_h x_ℓ^T x_q, the 1/sqrt(D) absorbed)
    μ_h = u_h[d]                             (the last, label entry of OV)
    ratio = mean |A_h[i, j]| over i < D, j < d, i ≠ j  /  mean |A_h[i, i]| over i < d,
            pooled over heads (the off-diagonal x-block AND the y-row A_h[d, :d] count as "off").

    Args:
        A: (H, D, D) key-query matrices; u: (H, D) output-value vectors.

    Returns:
        omega (H,), mu (H,), ratio (a float; small when KQ is diagonal).
    """
    _check_weights(A, u)
    D = A.shape[-1]
    d = D - 1
    diag = torch.diagonal(A, dim1=-2, dim2=-1)[:, :d]  # (H, d)
    omega = diag.mean(dim=-1) / math.sqrt(D)  # (H,)
    mu = u[:, -1]  # (H,)
    acts_on_xq = A[:, :, :d]  # (H, D, d): rows = key side (x_ℓ, y_ℓ), columns = x_q
    off = ~torch.eye(D, d, dtype=torch.bool, device=A.device)  # (D, d): everything but the x-diagonal
    ratio = acts_on_xq[:, off].abs().mean() / diag.abs().mean().clamp_min(torch.finfo(A.dtype).tiny)
    return omega, mu, ratio.item()


def effective_step(omega: Tensor, mu: Tensor) -> Tensor:
    r"""η = Σ_h μ_h ω_h: the step size of the debiased GD predictor in (3). omega, mu (H,) -> ()."""
    omega, mu = _per_head(omega, mu)
    return (omega * mu).sum()


def _split(Z: Tensor, zq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _check_prompts(Z, zq)
    return Z[..., :-1], Z[..., -1], zq[..., :-1]  # x (B, L, d), y (B, L), x_q (B, d)


def debiased_gd(Z: Tensor, zq: Tensor, eta: float | Tensor) -> Tensor:
    r"""ŷ = (η/L) Σ_ℓ y_ℓ (x_ℓ - x̄)^T x_q  (one GD step from 0 on centred covariates). (B,)"""
    x, y, xq = _split(Z, zq)
    x_centred = x - x.mean(dim=1, keepdim=True)  # (B, L, d)
    return eta * torch.einsum("bl,bld,bd->b", y, x_centred, xq) / x.shape[1]  # (B,)


def vanilla_gd(Z: Tensor, zq: Tensor, eta: float | Tensor) -> Tensor:
    r"""ŷ = (η/L) Σ_ℓ y_ℓ x_ℓ^T x_q  (one GD step from 0 on the in-context least squares). (B,)"""
    x, y, xq = _split(Z, zq)
    return eta * torch.einsum("bl,bld,bd->b", y, x, xq) / x.shape[1]  # (B,)


def ridge_predict(Z: Tensor, zq: Tensor, lam: float) -> Tensor:
    r"""ŷ = x_q^T (X^T X + λ I)^{-1} X^T y. With λ = σ² d this is the posterior mean under
    β ~ N(0, I/d) and noise N(0, σ²): the Bayes-optimal predictor for the squared loss. (B,)"""
    x, y, xq = _split(Z, zq)
    lam = check_scale(lam, "lam", allow_zero=True)  # λ >= 0
    # X^T X + λ I
    gram = x.transpose(1, 2) @ x + lam * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)  # (B, d, d)
    beta_hat = torch.linalg.solve(gram, torch.einsum("bld,bl->bd", x, y))  # (B, d)
    return (beta_hat * xq).sum(-1)  # (B,)


def reduced_loss(omega: Tensor, mu: Tensor, *, d: int, L: int, sigma2: float) -> Tensor:
    r"""The authors' approximate loss of (2) in (ω, μ) ∈ R^H × R^H (their code's ``approx_loss``):

    L̃ = 1 + σ² - 2 μ^T ω + μ^T (ω ω^T + (1 + σ²)/L · exp(d ω ω^T)) μ   (exp entrywise).

    As ω → 0 with the products μ_h ω_h fixed, the last term tends to (1 + σ²)(Σ_h μ_h)²/L:
    any non-zero Σ μ costs loss, which is why the zero-sum pattern appears.
    """
    omega, mu = _per_head(omega, mu, torch.float64)
    d, L = require_int(d, "d", minimum=1), require_int(L, "L", minimum=1)
    outer = torch.outer(omega, omega)
    kernel = outer + (1 + sigma2) / L * torch.exp(d * outer)
    return 1 + sigma2 - 2 * mu @ omega + mu @ kernel @ mu


def single_head_optimum(d: int, L: int, sigma2: float) -> tuple[float, float]:
    r"""Minimiser of :func:`reduced_loss` for H = 1: ω = 1/sqrt(d), μ = sqrt(d) / (1 + (1+σ²) d e / L).

    (For H = 1, L̃ minimised over μ is 1 + σ² - ω²/(ω² + c e^{dω²}) with c = (1+σ²)/L, whose
    best ω makes e^{dω²}/ω² smallest: ω² = 1/d.)
    """
    d, L = require_int(d, "d", minimum=1), require_int(L, "L", minimum=1)
    return 1 / math.sqrt(d), math.sqrt(d) / (1 + (1 + sigma2) * d * math.e / L)


def paired_optimal_step(d: int, L: int, sigma2: float) -> float:
    r"""Best η for a ±ω pair as ω → 0: L̃ → 1 + σ² - 2η + η²(1 + (1+σ²) d / L), so
    η* = 1 / (1 + (1+σ²) d / L) and L̃* = 1 + σ² - η*."""
    d, L = require_int(d, "d", minimum=1), require_int(L, "L", minimum=1)
    return 1 / (1 + (1 + sigma2) * d / L)


class ICLRegressor(nn.Module):
    r"""One layer of H full-width attention heads on regression prompts (plain MHA parameters).

    Per head h: W_Q^h, W_K^h, W_V^h ∈ R^{D×D} and W_O^h ∈ R^D (one output scalar), initialised
    like ``nn.Linear`` (uniform in ±1/sqrt(fan_in)), as in the authors' code. The forward pass
    merges them (:func:`merge_projections`) and computes (1); ``attention="linear"`` computes
    the linear baseline with its normaliser fixed at ``train_length``.
    """

    def __init__(
        self,
        d: int,
        H: int,
        *,
        attention: str = "softmax",
        train_length: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        d, H = require_int(d, "d", minimum=1), require_int(H, "H", minimum=1)
        if attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', got {attention!r}")
        if attention == "linear" and train_length is None:
            raise ValueError("the linear baseline needs train_length (its fixed normaliser)")
        if train_length is not None:
            train_length = require_int(train_length, "train_length", minimum=1)
        D = d + 1
        self.d, self.H, self.attention, self.train_length = d, H, attention, train_length

        def uniform(*shape, fan_in):
            return nn.Parameter((2 * torch.rand(*shape, generator=generator) - 1) / math.sqrt(fan_in))

        self.w_q, self.w_k, self.w_v = (uniform(H, D, D, fan_in=D) for _ in range(3))  # (H, D, d_head=D)
        self.w_o = uniform(H, D, fan_in=H * D)  # (H, D): W_O as one (H·D → 1) linear map

    def merged(self) -> tuple[Tensor, Tensor]:
        """(A (H, D, D), u (H, D)): the key-query matrices and output-value vectors."""
        return merge_projections(self.w_q, self.w_k, self.w_v, self.w_o)

    def forward(self, Z: Tensor, zq: Tensor) -> Tensor:
        """ŷ (B,) for context tokens Z (B, L, D) and query tokens zq (B, D)."""
        A, u = self.merged()
        if self.attention == "linear":
            return linear_icl_attention(Z, zq, A, u, length=self.train_length)
        return icl_attention(Z, zq, A, u)

    def pattern(self) -> tuple[Tensor, Tensor, float]:
        """(ω (H,), μ (H,), off-diagonal ratio) of the current weights, see :func:`extract_omega_mu`."""
        with torch.no_grad():
            return extract_omega_mu(*self.merged())
