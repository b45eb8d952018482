r"""In-context linear regression with one layer of multi-head softmax attention (chapter 02).

Notation (book/notation.md): d_x covariates, tokens of width D = d_x + 1, M context examples
indexed by j, H full-width heads (head width d = D), W_KQ^h the merged key-query matrix.

From multi-head attention to the in-context regressor
----------------------------------------------------
Chapter 00 writes multi-head attention in the sum-over-heads form

    MHA(X, C) = Σ_h softmax(τ Q_h K_h^T) V_h W_O^h + b_O,   Q_h = X W_Q^h, K_h = C W_K^h, V_h = C W_V^h.

Change one thing at a time (He, Pan, Chen and Yang 2025):

1. Tokens are (x, y) pairs: z_j = [x_j; y_j] ∈ R^D with D = d_x + 1, and the query token is
   z_q = [x_q; 0]. Context Z = [z_1 ... z_M]^T ∈ R^{M×D}.
2. One query, x_q's token, attends to the M context tokens only (not to itself): cross-attention
   with X = z_q^T and C = Z, or causal MHA on [Z; z_q] with the query's own position hidden.
3. Every head is full width (d = D, τ = 1/sqrt(D)), the output projection W_O^h maps to one
   scalar, and b_O = 0.
4. No residual, LayerNorm or MLP. Loss: squared error against y_q.

For one query the score of token j in head h is τ (z_q^T W_Q^h)(z_j^T W_K^h)^T
= z_j^T W_KQ^h z_q / sqrt(D) with the merged key-query matrix W_KQ^h = W_K^h (W_Q^h)^T ∈ R^{D×D}
(the paper's KQ_h), and the head writes (z_j^T W_V^h) W_O^h = u_h^T z_j with the merged
value-output vector u_h = W_V^h W_O^h ∈ R^D (the paper's OV_h). Hence

    ŷ = Σ_h Σ_j softmax_j(z_j^T W_KQ^h z_q / sqrt(D)) · u_h^T z_j.                 (1)

What training finds
-------------------
W_KQ^h ≈ sqrt(D)·diag(ω_h I_{d_x}, 0) (diagonal, homogeneous; ω absorbs the 1/sqrt(D) of the
score, so the score is ω_h x_j^T x_q) and u_h ≈ μ_h e_D (last entry only), with Σ_h μ_h ≈ 0
(zero-sum). The last column of W_KQ^h multiplies the query's empty label slot, so it never
matters (and never receives a gradient). Then (1) becomes

    ŷ = Σ_h μ_h Σ_j y_j softmax_j(ω_h x_j^T x_q).                                   (2)

For small ω, softmax_j(ω s) = (1/M)(1 + ω(s_j - s̄)) + O(ω²) with s̄ the mean score, so

    ŷ ≈ (Σ_h μ_h) ȳ + (Σ_h μ_h ω_h) (1/M) Σ_j y_j (x_j - x̄)^T x_q.                 (3)

The softmax subtracts the mean score over the keys, s_j - s̄ = (x_j - x̄)^T x_q: the context
covariates get centred, the query's x_q (the same in every score) does not. Zero-sum removes the
ȳ term and leaves the debiased GD predictor with step η = Σ_h μ_h ω_h (= 2ωμ for a pair (ω, μ),
(-ω, -μ)). For such a pair the even powers of ω cancel between the heads, so (2) matches debiased
GD up to a relative O(ω²). One head cannot cancel μ ȳ.

This module stands alone instead of plugging into :class:`attnbook.attention.MultiHeadAttention`:
the paper's model has full-width heads (d = D, so H·d ≠ D), a scalar readout and one query
that does not see itself, and it is trained and read in the merged (W_KQ^h, u_h) parametrisation;
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
    """Z (B, M, D) and zq (B, D), floating, one dtype and device: returns B, M, D."""
    require_tensor(Z, "Z", ndim=3, floating=True, shape="(B, M, D) (context tokens [x; y])")
    require_tensor(zq, "zq", ndim=2, floating=True, shape="(B, D) (query tokens [x_q; 0])")
    require_same_dtype_device(Z=Z, zq=zq)
    B, M, D = Z.shape
    if D < 2:
        raise ValueError(f"tokens need width D = d_x + 1 >= 2, got Z of shape {tuple(Z.shape)}")
    if zq.shape != (B, D):
        raise ValueError(f"zq must have shape (B={B}, D={D}) (query tokens [x_q; 0]), got {tuple(zq.shape)}")
    return B, M, D


def _check_weights(W_kq: Tensor, u: Tensor, D: int | None = None, **prompts: Tensor) -> int:
    """W_kq (H, D, D) and u (H, D), one dtype and device with each other and ``prompts``: returns H."""
    require_tensor(
        W_kq, "W_kq", min_ndim=3, floating=True, shape="(..., H, D, D) (a key-query matrix per head)"
    )
    require_tensor(u, "u", min_ndim=2, floating=True, shape="(..., H, D) (a value-output vector per head)")
    require_same_dtype_device(**prompts, W_kq=W_kq, u=u)
    D = W_kq.shape[-1] if D is None else D
    if W_kq.shape[-2:] != (D, D):
        raise ValueError(
            f"W_kq must have shape (..., H, D={D}, D={D}) (a key-query matrix per head), "
            f"got {tuple(W_kq.shape)}"
        )
    H = W_kq.shape[-3]
    if u.shape != W_kq.shape[:-1]:
        raise ValueError(
            f"u must have shape {tuple(W_kq.shape[:-1])} (..., H, D) (a value-output vector per head), "
            f"got {tuple(u.shape)}"
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


def icl_attention(Z: Tensor, zq: Tensor, W_kq: Tensor, u: Tensor, *, return_weights: bool = False):
    r"""Single-query multi-head softmax attention, equation (1).

    Args:
        Z: context tokens (B, M, D), z_j = [x_j; y_j].
        zq: query tokens (B, D), z_q = [x_q; 0].
        W_kq: merged key-query matrices (H, D, D), W_KQ^h = W_K^h (W_Q^h)^T.
        u: merged value-output vectors (H, D), u_h = W_V^h W_O^h.
        return_weights: also return the attention weights A_h of the query (B, H, M).

    Returns:
        ŷ (B,) [, weights (B, H, M)].

    A stack of S models, W_kq (S, H, D, D) and u (S, H, D), gives ŷ (S, B) and weights
    (S, B, H, M) in one pass (any leading axes work the same way).
    """
    B, M, D = _check_prompts(Z, zq)
    _check_weights(W_kq, u, D, Z=Z)
    # S_j = z_j^T W_KQ^h z_q / sqrt(D); applying W_KQ^h to the query first costs O(D²) per head
    kq = torch.einsum("...hde,be->...bhd", W_kq, zq)  # (B, H, D)
    scores = torch.einsum("bjd,...bhd->...bhj", Z, kq) / math.sqrt(D)  # (B, H, M)
    # A_j = softmax_j(S_j) over the M context tokens (the query does not see itself)
    weights = torch.softmax(scores, dim=-1)  # (B, H, M)
    # v_j = u_h^T z_j: each head reads one number from each token
    values = torch.einsum("...hd,bjd->...bhj", u, Z)  # (B, H, M)
    # ŷ = Σ_h Σ_j A_j v_j
    y_hat = (weights * values).sum(dim=(-2, -1))  # (B,)
    return (y_hat, weights) if return_weights else y_hat


def linear_icl_attention(
    Z: Tensor, zq: Tensor, W_kq: Tensor, u: Tensor, *, length: float | None = None
) -> Tensor:
    r"""The linear-attention baseline: (1) with the softmax replaced by a fixed 1/length.

    ŷ = (1 / length) Σ_h Σ_j (z_j^T W_KQ^h z_q / sqrt(D)) · u_h^T z_j

    ``length`` defaults to the prompt's own M. A model that fixes it to its training length
    (as :class:`ICLRegressor` does) has no way to know how many tokens it sums over.
    Shapes as in :func:`icl_attention`; returns (B,).
    """
    B, M, D = _check_prompts(Z, zq)
    _check_weights(W_kq, u, D, Z=Z)
    length = M if length is None else check_scale(length, "length")  # the fixed normaliser, > 0
    kq = torch.einsum("...hde,be->...bhd", W_kq, zq)  # (B, H, D)
    scores = torch.einsum("bjd,...bhd->...bhj", Z, kq) / math.sqrt(D)  # (B, H, M)
    values = torch.einsum("...hd,bjd->...bhj", u, Z)  # (B, H, M)
    return (scores * values).sum(dim=(-2, -1)) / length  # (B,)


def merge_projections(w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor) -> tuple[Tensor, Tensor]:
    r"""Merge per-head projections into (W_KQ, u): W_KQ^h = W_K^h (W_Q^h)^T, u_h = W_V^h W_O^h.

    Args (chapter 00's convention, projections act on the right, q = z W_Q):
        w_q, w_k, w_v: (H, D, d) with d = D here (full-width heads); w_o: (H, d) (each head
        writes one scalar). Leading axes (a stack of models, (S, H, D, d)) are kept.

    Returns:
        W_kq (H, D, D), u (H, D).
    """
    for name, t in (("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)):
        require_tensor(t, name, floating=True)
    require_same_dtype_device(w_q=w_q, w_k=w_k, w_v=w_v, w_o=w_o)
    if w_q.ndim < 3 or w_k.shape != w_q.shape or w_v.shape != w_q.shape:
        raise ValueError(
            f"w_q, w_k, w_v must share one shape (H, D, d); got {tuple(w_q.shape)}, "
            f"{tuple(w_k.shape)}, {tuple(w_v.shape)}"
        )
    if w_o.shape != (*w_q.shape[:-2], w_q.shape[-1]):
        want = (*w_q.shape[:-2], w_q.shape[-1])
        raise ValueError(f"w_o must have shape (H, d) = {want}, got {tuple(w_o.shape)}")
    W_kq = w_k @ w_q.transpose(-1, -2)  # (H, D, D)
    u = torch.einsum("...hde,...he->...hd", w_v, w_o)  # (H, D)
    return W_kq, u


def constructed_weights(omega: Tensor, mu: Tensor, D: int) -> tuple[Tensor, Tensor]:
    r"""The pattern training finds: W_KQ^h = sqrt(D)·diag(ω_h I_{d_x}, 0), u_h = μ_h e_D.

    Args:
        omega, mu: (H,) per-head score scale and label weight.
        D: token width d_x + 1.

    Returns:
        W_kq (H, D, D), u (H, D) in omega's dtype, such that :func:`icl_attention` computes (2).
    """
    omega, mu = _per_head(omega, mu)
    require_tensor(omega, "omega", floating=True, shape="(H,)")
    mu = mu.to(omega.dtype)
    require_same_dtype_device(omega=omega, mu=mu)
    D = require_int(D, "D", minimum=2)
    x_block = torch.eye(D, dtype=omega.dtype, device=omega.device)
    x_block[-1, -1] = 0  # diag(I_{d_x}, 0)
    W_kq = math.sqrt(D) * omega[:, None, None] * x_block  # (H, D, D)
    u = torch.zeros(len(mu), D, dtype=omega.dtype, device=omega.device)
    u[:, -1] = mu  # (H, D)
    return W_kq, u


def extract_omega_mu(W_kq: Tensor, u: Tensor) -> tuple[Tensor, Tensor, float]:
    r"""Read (ω_h, μ_h) off trained weights, and how far W_KQ is from the diagonal pattern.

    Only the first d_x COLUMNS of W_KQ^h act on the query's x_q (its last entry is the empty
    label slot, always 0, so the last column never matters and never receives a gradient). Then

    ω_h = mean_{r<d_x} W_KQ^h[r, r] / sqrt(D)   (the score is ω_h x_j^T x_q, 1/sqrt(D) absorbed)
    μ_h = u_h[d_x]                               (the last, label entry of u_h)
    ratio = mean |W_KQ^h[r, c]| over r < D, c < d_x, r ≠ c  /  mean |W_KQ^h[r, r]| over r < d_x,
            pooled over heads (the off-diagonal x-block AND the y-row count as "off").

    Args:
        W_kq: (H, D, D) key-query matrices; u: (H, D) value-output vectors.

    Returns:
        omega (H,), mu (H,), ratio (a float; small when W_KQ is diagonal).
    """
    _check_weights(W_kq, u)
    if W_kq.ndim != 3:
        raise ValueError(f"W_kq must have shape (H, D, D) (one model), got {tuple(W_kq.shape)}")
    D = W_kq.shape[-1]
    d_x = D - 1
    diag = torch.diagonal(W_kq, dim1=-2, dim2=-1)[:, :d_x]  # (H, d_x)
    omega = diag.mean(dim=-1) / math.sqrt(D)  # (H,)
    mu = u[:, -1]  # (H,)
    acts_on_xq = W_kq[:, :, :d_x]  # (H, D, d_x): rows = key side (x_j, y_j), columns = x_q
    off = ~torch.eye(D, d_x, dtype=torch.bool, device=W_kq.device)  # (D, d_x): all but the x-diagonal
    ratio = acts_on_xq[:, off].abs().mean() / diag.abs().mean().clamp_min(torch.finfo(W_kq.dtype).tiny)
    return omega, mu, ratio.item()


def effective_step(omega: Tensor, mu: Tensor) -> Tensor:
    r"""η = Σ_h μ_h ω_h: the step size of the debiased GD predictor in (3). omega, mu (H,) -> ()."""
    omega, mu = _per_head(omega, mu)
    return (omega * mu).sum()


def _split(Z: Tensor, zq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _check_prompts(Z, zq)
    return Z[..., :-1], Z[..., -1], zq[..., :-1]  # x (B, M, d_x), y (B, M), x_q (B, d_x)


def debiased_gd(Z: Tensor, zq: Tensor, eta: float | Tensor) -> Tensor:
    r"""ŷ = (η/M) Σ_j y_j (x_j - x̄)^T x_q  (one GD step from 0 on centred covariates). (B,)

    Only the context covariates are centred: the softmax subtracts the mean score over the keys,
    which centres the x_j, and x_q is the same in every score.
    """
    x, y, xq = _split(Z, zq)
    x_centred = x - x.mean(dim=1, keepdim=True)  # (B, M, d_x)
    return eta * torch.einsum("bj,bjd,bd->b", y, x_centred, xq) / x.shape[1]  # (B,)


def vanilla_gd(Z: Tensor, zq: Tensor, eta: float | Tensor) -> Tensor:
    r"""ŷ = (η/M) Σ_j y_j x_j^T x_q  (one GD step from 0 on the in-context least squares). (B,)"""
    x, y, xq = _split(Z, zq)
    return eta * torch.einsum("bj,bjd,bd->b", y, x, xq) / x.shape[1]  # (B,)


def ridge_predict(Z: Tensor, zq: Tensor, lam: float) -> Tensor:
    r"""ŷ = x_q^T (Z_x^T Z_x + λ I)^{-1} Z_x^T y with Z_x the context covariates (M × d_x). With
    λ = σ² d_x this is the posterior mean under β ~ N(0, I/d_x) and noise N(0, σ²): the
    Bayes-optimal predictor for the squared loss. (B,)"""
    x, y, xq = _split(Z, zq)
    lam = check_scale(lam, "lam", allow_zero=True)  # λ >= 0
    # Z_x^T Z_x + λ I
    gram = x.transpose(1, 2) @ x + lam * torch.eye(
        x.shape[-1], dtype=x.dtype, device=x.device
    )  # (B, d_x, d_x)
    beta_hat = torch.linalg.solve(gram, torch.einsum("bjd,bj->bd", x, y))  # (B, d_x)
    return (beta_hat * xq).sum(-1)  # (B,)


def reduced_loss(omega: Tensor, mu: Tensor, *, d_x: int, M: int, sigma2: float) -> Tensor:
    r"""The approximate loss of (2) in (ω, μ) ∈ R^H × R^H (the chapter's step 7 derives it):

    L_approx = 1 + σ² - 2 μ^T ω + μ^T (ω ω^T + (1 + σ²)/M · exp(d_x ω ω^T)) μ   (exp entrywise).

    Approximations: the softmax's denominator is replaced by its mean given x_q (M large),
    |x_q|² by its mean d_x, M(M-1)/M² by 1, and terms of order ω² inside the label variance
    are dropped. As ω → 0 with the products μ_h ω_h fixed, the last term tends to
    (1 + σ²)(Σ_h μ_h)²/M: any non-zero Σ μ costs loss, which is why the zero-sum pattern appears.
    """
    omega, mu = _per_head(omega, mu, torch.float64)
    d_x, M = require_int(d_x, "d_x", minimum=1), require_int(M, "M", minimum=1)
    outer = torch.outer(omega, omega)
    # ωω^T + (1+σ²)/M · exp(d_x ωω^T)
    kernel = outer + (1 + sigma2) / M * torch.exp(d_x * outer)
    return 1 + sigma2 - 2 * mu @ omega + mu @ kernel @ mu


def single_head_optimum(d_x: int, M: int, sigma2: float) -> tuple[float, float]:
    r"""Minimiser of :func:`reduced_loss` for H = 1: ω = 1/sqrt(d_x), μ = sqrt(d_x) / (1 + (1+σ²) d_x e / M).

    (For H = 1, L_approx minimised over μ is 1 + σ² - ω²/(ω² + (1+σ²)/M · e^{d_x ω²}), whose
    best ω makes e^{d_x ω²}/ω² smallest: ω² = 1/d_x.)
    """
    d_x, M = require_int(d_x, "d_x", minimum=1), require_int(M, "M", minimum=1)
    return 1 / math.sqrt(d_x), math.sqrt(d_x) / (1 + (1 + sigma2) * d_x * math.e / M)


def paired_optimal_step(d_x: int, M: int, sigma2: float) -> float:
    r"""Best η for a ±ω pair as ω → 0: L_approx → 1 + σ² - 2η + η²(1 + (1+σ²) d_x / M), so
    η* = 1 / (1 + (1+σ²) d_x / M) and L_approx* = 1 + σ² - η*."""
    d_x, M = require_int(d_x, "d_x", minimum=1), require_int(M, "M", minimum=1)
    return 1 / (1 + (1 + sigma2) * d_x / M)


class ICLRegressor(nn.Module):
    r"""One layer of H full-width attention heads on regression prompts (plain MHA parameters).

    Per head h: W_Q^h, W_K^h, W_V^h ∈ R^{D×D} and W_O^h ∈ R^D (one output scalar), initialised
    like ``nn.Linear`` (uniform in ±1/sqrt(fan_in)), as in the authors' code. The forward pass
    merges them (:func:`merge_projections`) and computes (1); ``attention="linear"`` computes
    the linear baseline with its normaliser fixed at ``train_length`` (a prompt length M).
    """

    def __init__(
        self,
        d_x: int,
        H: int,
        *,
        attention: str = "softmax",
        train_length: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        d_x, H = require_int(d_x, "d_x", minimum=1), require_int(H, "H", minimum=1)
        if attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', got {attention!r}")
        if attention == "linear" and train_length is None:
            raise ValueError("the linear baseline needs train_length (its fixed normaliser)")
        if train_length is not None:
            train_length = require_int(train_length, "train_length", minimum=1)
        D = d_x + 1
        self.d_x, self.H, self.attention, self.train_length = d_x, H, attention, train_length

        def uniform(*shape, fan_in):
            return nn.Parameter((2 * torch.rand(*shape, generator=generator) - 1) / math.sqrt(fan_in))

        self.w_q, self.w_k, self.w_v = (uniform(H, D, D, fan_in=D) for _ in range(3))  # (H, D, d=D)
        self.w_o = uniform(H, D, fan_in=H * D)  # (H, d): W_O as one (H·d → 1) linear map

    def merged(self) -> tuple[Tensor, Tensor]:
        """(W_kq (H, D, D), u (H, D)): the key-query matrices and value-output vectors."""
        return merge_projections(self.w_q, self.w_k, self.w_v, self.w_o)

    def forward(self, Z: Tensor, zq: Tensor) -> Tensor:
        """ŷ (B,) for context tokens Z (B, M, D) and query tokens zq (B, D)."""
        W_kq, u = self.merged()
        if self.attention == "linear":
            return linear_icl_attention(Z, zq, W_kq, u, length=self.train_length)
        return icl_attention(Z, zq, W_kq, u)

    def pattern(self) -> tuple[Tensor, Tensor, float]:
        """(ω (H,), μ (H,), off-diagonal ratio) of the current weights, see :func:`extract_omega_mu`."""
        with torch.no_grad():
            return extract_omega_mu(*self.merged())
