r"""Random-feature attention: frozen random query-key matrices, trained value vectors (chapter 01).

From multi-head attention to a random-feature model
---------------------------------------------------
Chapter 00 writes multi-head attention in the sum-over-heads form. Read it at one query token
x_0 ∈ R^d attending to N key tokens x_1 ... x_N, with a scalar output:

    f(x_0, X) = Σ_h Σ_i softmax_i(x_0^T W_Q^h (W_K^h)^T x_i / sqrt(d_h)) · x_i^T W_V^h W_O^h.

Merge each head's query-key product into one matrix W_h = W_Q^h (W_K^h)^T / sqrt(d_h) and its
value-output product into one vector v_h = W_V^h W_O^h. Then change one thing at a time
(Fu, Guo, Bai and Mei 2023 fix the first two; the rest is the book's reading):

1. The W_m (m = 1 ... M heads) are drawn at random and frozen.
2. Only the v_m are trained, so the model is linear in its parameters and training is a
   convex least-squares problem (ridge regression, solved in closed form).
3. [the book's reading] Append a constant coordinate, x~ = [x; 1] ∈ R^{d+1}, so that the
   score and the value can carry offsets; replace the softmax by σ = ReLU with a 1/N
   normalisation (the softmax stays available as a variant).

The layer becomes

    f_M(x_0, X; V) = Σ_m (1/N) Σ_i σ(x~_0^T W_m x~_i) · <v_m, x~_i>,   W_m ∈ R^{(d+1)×(d+1)}.   (1)

Each head contributes <v_m, φ_m(x_0, X)> with the feature vector

    φ_m(x_0, X) = (1/N) Σ_i σ(x~_0^T W_m x~_i) x~_i ∈ R^{d+1},                                 (2)

so f_M = <V, Φ> with Φ = (φ_1, ..., φ_M) ∈ R^{M(d+1)}: a random-feature model whose features
are attention heads. Two consequences are immediate from (1):

- f_M is invariant to permutations of the keys (a sum over i), and it is an average
  (1/N) Σ_i F(x_0, x_i) of one pair function F(x_0, x) = Σ_m σ(x~_0^T W_m x~) <v_m, x~>.
  That is the class of targets such a layer can express.
- As M → ∞ with v_m = O(1/M), F tends to E_W[σ(x~_0^T W x~) <v(W), x~>] and the model to a
  kernel method with kernel K(z, z') = E_W <φ_W(z), φ_W(z')>, estimated by
  (1/M) Σ_m <φ_m(z), φ_m(z')> (:func:`empirical_kernel`).

The QK distribution [the book's reading of "Gaussian with non-zero mean"]:
W_m = μ · diag(I_d, 0) + G_m with G_m entries i.i.d. N(0, 1). With μ > 0 every head's score is
μ <x_0, x_i> plus noise: each head leans towards the keys aligned with the query.

The baseline is a two-layer random-feature network on the concatenated input
z = [x_0; x_1; ...; x_N; 1]: features ReLU(U z), U frozen (:func:`rf_mlp_features`).

This module stands alone instead of plugging into :class:`attnbook.attention.MultiHeadAttention`:
its M heads are not projections of one model width but full-width random bilinear forms on
[x; 1] with a ReLU/N weighting, read as a feature map that is linear in V and fitted in closed
form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..validate import check_scale, require_int, require_same_dtype_device, require_tensor

__all__ = [
    "ACTIVATIONS",
    "augment",
    "sample_qk",
    "rfa_scores",
    "rfa_features",
    "rfa_forward",
    "sample_mlp_weights",
    "rf_mlp_features",
    "ridge_fit",
    "ridge_validated",
    "empirical_kernel",
    "normalized_mse",
    "RandomFeatureAttention",
]

ACTIVATIONS = ("relu", "exp", "softmax")


def _check_inputs(x0: Tensor, X: Tensor, **others: Tensor) -> tuple[int, int, int]:
    """x0 (B, d) and X (B, N, d), floating, one dtype and device with ``others``: returns B, N, d."""
    require_tensor(x0, "x0", ndim=2, floating=True, shape="(B, d) (one query per example)")
    require_tensor(X, "X", ndim=3, floating=True, shape="(B, N, d) (the keys)")
    for name, t in others.items():
        require_tensor(t, name, floating=True)
    require_same_dtype_device(x0=x0, X=X, **others)
    B, d = x0.shape
    if X.shape[0] != B or X.shape[2] != d:
        raise ValueError(f"X must have shape (B={B}, N, d={d}) (the keys), got {tuple(X.shape)}")
    if X.shape[1] < 1:
        raise ValueError("X needs at least one key (N >= 1)")
    return B, X.shape[1], d


def _check_qk(W: Tensor, d: int) -> int:
    """W (M, d+1, d+1): returns M."""
    if W.ndim != 3 or W.shape[1:] != (d + 1, d + 1):
        raise ValueError(
            f"W must have shape (M, d+1={d + 1}, d+1={d + 1}) (one QK matrix per head), got {tuple(W.shape)}"
        )
    return W.shape[0]


def augment(x: Tensor) -> Tensor:
    r"""x~ = [x; 1]: append a constant coordinate on the last axis, (..., d) -> (..., d+1)."""
    require_tensor(x, "x", min_ndim=1, floating=True, shape="(..., d)")
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)


def _device(generator: torch.Generator | None, device: torch.device | str | None):
    """Where a sampler puts its draws: the given device, else the generator's, else torch's default."""
    return device if device is not None or generator is None else generator.device


def sample_qk(
    heads: int,
    d: int,
    mu: float = 0.0,
    *,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Draw M frozen query-key matrices W_m = μ · diag(I_d, 0) + std · G_m, G_m entries N(0, 1).

    The mean acts on the x-block only: the row and column of the constant coordinate stay
    zero-mean. Returns (M, d+1, d+1) on ``device`` (default: the generator's device).
    """
    heads, d = require_int(heads, "heads", minimum=1), require_int(d, "d", minimum=1)
    G = torch.randn(heads, d + 1, d + 1, generator=generator, dtype=dtype, device=_device(generator, device))
    mean = torch.zeros(d + 1, d + 1, dtype=dtype, device=G.device)
    mean[:d, :d] = torch.eye(d, dtype=dtype, device=G.device)  # diag(I_d, 0)
    return mu * mean + std * G  # (M, d+1, d+1)


def rfa_scores(x0: Tensor, X: Tensor, W: Tensor) -> Tensor:
    r"""Scores s_{mi} = x~_0^T W_m x~_i of every head for every key: (B, M, N).

    Args: x0 (B, d) queries, X (B, N, d) keys, W (M, d+1, d+1) frozen QK matrices.
    """
    _, _, d = _check_inputs(x0, X, W=W)
    _check_qk(W, d)
    x0t, Xt = augment(x0), augment(X)  # (B, d+1), (B, N, d+1)
    # each head's query vector q_m = W_m^T x~_0 (one small GEMM for all heads)
    q = torch.einsum("bi,mij->bmj", x0t, W)  # (B, M, d+1)
    # s_{mi} = <q_m, x~_i>
    return torch.einsum("bmj,bnj->bmn", q, Xt)  # (B, M, N)


def _weights(scores: Tensor, act: str) -> Tensor:
    N = scores.shape[-1]
    if act == "relu":  # σ(s) / N  [the book's reading]
        return torch.relu(scores) / N
    if act == "exp":  # exp(s) / N: softmax's numerator with a fixed denominator
        return torch.exp(scores) / N
    if act == "softmax":  # normalised over the N keys, as in chapter 00
        return torch.softmax(scores, dim=-1)
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


def rfa_features(x0: Tensor, X: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    r"""The random attention features Φ = (φ_1, ..., φ_M), equation (2), flattened head-major.

    φ_m = Σ_i a_{mi} x~_i with a_{mi} = σ(s_{mi}) / N (relu, exp) or softmax_i(s_{mi}).

    Args:
        x0: queries (B, d); X: keys (B, N, d); W: (M, d+1, d+1).
        act: "relu" (default), "exp" or "softmax".

    Returns:
        (B, M·(d+1)); entry m·(d+1) + j is coordinate j of head m's feature φ_m.
    """
    A = _weights(rfa_scores(x0, X, W), act)  # (B, M, N)
    # φ_m = Σ_i a_{mi} x~_i: the head's attention output with values x~_i
    Phi = torch.einsum("bmn,bnj->bmj", A, augment(X))  # (B, M, d+1)
    return Phi.reshape(Phi.shape[0], -1)  # (B, M(d+1))


def rfa_forward(x0: Tensor, X: Tensor, W: Tensor, V: Tensor, act: str = "relu") -> Tensor:
    r"""f_M(x_0, X; V) = Σ_m <v_m, φ_m(x_0, X)>, equation (1). V: (M, d+1); returns (B,)."""
    _, _, d = _check_inputs(x0, X, W=W, V=V)
    M = _check_qk(W, d)
    if V.shape != (M, d + 1):
        raise ValueError(
            f"V must have shape (M={M}, d+1={d + 1}) (one value vector per head), got {tuple(V.shape)}"
        )
    return rfa_features(x0, X, W, act) @ V.reshape(-1)  # (B,)


def sample_mlp_weights(
    width: int,
    N: int,
    d: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Frozen first layer of the RF-MLP baseline: U (K, (N+1)d + 1), entries N(0, 1 / ((N+1)d + 1)).

    On ``device`` (default: the generator's device).
    """
    width = require_int(width, "width", minimum=1)
    N, d = require_int(N, "N", minimum=1), require_int(d, "d", minimum=1)
    fan_in = (N + 1) * d + 1
    U = torch.randn(width, fan_in, generator=generator, dtype=dtype, device=_device(generator, device))
    return U / math.sqrt(fan_in)  # (K, (N+1)d + 1)


def rf_mlp_features(x0: Tensor, X: Tensor, U: Tensor) -> Tensor:
    r"""Two-layer random-feature network on the concatenated input: ReLU(U z), (B, K).

    z = [x_0; x_1; ...; x_N; 1] ∈ R^{(N+1)d+1}: the keys are laid side by side, so this model
    has no built-in permutation invariance. U: (K, (N+1)d+1) from :func:`sample_mlp_weights`.
    """
    B, N, d = _check_inputs(x0, X, U=U)
    if U.ndim != 2 or U.shape[1] != (N + 1) * d + 1:
        raise ValueError(f"U must have shape (K, (N+1)*d+1 = {(N + 1) * d + 1}), got {tuple(U.shape)}")
    z = augment(torch.cat([x0, X.reshape(B, N * d)], dim=-1))  # (B, (N+1)d + 1)
    return torch.relu(z @ U.T)  # (B, K)


def ridge_fit(F: Tensor, y: Tensor, lam: float) -> Tensor:
    r"""argmin_w ||F w - y||² + λ ||w||²  =  (F^T F + λI)^{-1} F^T y  =  F^T (F F^T + λI)^{-1} y.

    The second form (the dual) solves an n×n system instead of P×P; the smaller one is used.
    λ = 0 gives the minimum-norm least-squares solution.

    Args: F (n, P), y (n,) or (n, T), lam >= 0. Returns w (P,) or (P, T).
    """
    _check_design(F, y, "F", "y")
    lam = check_scale(lam, "lam", allow_zero=True)  # λ >= 0
    n, P = F.shape
    if lam == 0:
        return torch.linalg.pinv(F) @ y
    if n >= P:  # primal: (F^T F + λI) w = F^T y
        L = torch.linalg.cholesky(F.T @ F + lam * torch.eye(P, dtype=F.dtype, device=F.device))
        rhs = F.T @ y
        return torch.cholesky_solve(rhs.reshape(P, -1), L).reshape(rhs.shape)
    # dual: α = (F F^T + λI)^{-1} y, w = F^T α
    L = torch.linalg.cholesky(F @ F.T + lam * torch.eye(n, dtype=F.dtype, device=F.device))
    alpha = torch.cholesky_solve(y.reshape(n, -1), L).reshape(y.shape)
    return F.T @ alpha


def _check_design(F: Tensor, y: Tensor, f_name: str, y_name: str) -> None:
    """Features F (n, P) and targets y (n,) or (n, T): floating, one dtype and device."""
    require_tensor(F, f_name, ndim=2, floating=True, shape="(n, P)")
    require_tensor(y, y_name, ndim=(1, 2), floating=True, shape=f"(n={F.shape[0]},) or (n, T)")
    require_same_dtype_device(**{f_name: F, y_name: y})
    if y.shape[0] != F.shape[0]:
        raise ValueError(
            f"{y_name} must have shape (n={F.shape[0]},) or (n, T), like {f_name}'s rows; "
            f"got {tuple(y.shape)}"
        )


def ridge_validated(
    F_train: Tensor,
    y_train: Tensor,
    F_val: Tensor,
    y_val: Tensor,
    rel_lams=tuple(10.0**k for k in range(-7, 2)),
) -> tuple[Tensor, Tensor]:
    r"""Ridge regression with λ picked on a validation split, separately for each target column.

    λ runs over ``rel_lams`` times the mean eigenvalue of F_train F_train^T, ||F||² / min(n, P),
    so one grid suits every feature scale. The Gram matrix is formed once; each λ then costs one
    Cholesky solve of the dual (n < P) or primal system, for all T targets at once.

    Args: F_train (n, P), y_train (n,) or (n, T), F_val (n_val, P), y_val like y_train.

    Returns:
        w (P,) or (P, T) refitted with the chosen λ, and the chosen λ: () or (T,).
    """
    _check_design(F_train, y_train, "F_train", "y_train")
    _check_design(F_val, y_val, "F_val", "y_val")
    require_same_dtype_device(F_train=F_train, F_val=F_val)
    if F_val.shape[1] != F_train.shape[1] or y_val.shape[1:] != y_train.shape[1:]:
        raise ValueError(
            f"F_val {tuple(F_val.shape)} / y_val {tuple(y_val.shape)} do not match "
            f"F_train {tuple(F_train.shape)} / y_train {tuple(y_train.shape)}"
        )
    squeeze = y_train.ndim == 1
    Ytr = y_train.reshape(len(y_train), -1)  # (n, T)
    Yva = y_val.reshape(len(y_val), -1)  # (n_val, T)
    n, P = F_train.shape
    dual = n < P
    # one Gram matrix for every λ: F F^T (n×n) in the dual, F^T F (P×P) in the primal
    gram = F_train @ F_train.T if dual else F_train.T @ F_train
    rhs = Ytr if dual else F_train.T @ Ytr
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = torch.diagonal(gram).sum() / min(n, P)  # mean eigenvalue
    like = dict(dtype=F_train.dtype, device=F_train.device)
    best_err = torch.full((Ytr.shape[1],), float("inf"), **like)  # (T,)
    best_w = torch.zeros(P, Ytr.shape[1], **like)  # (P, T)
    best_lam = torch.zeros(Ytr.shape[1], **like)  # (T,)
    for rel in rel_lams:
        lam = float(rel * scale)
        sol = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram + lam * eye))
        w = F_train.T @ sol if dual else sol  # (P, T)
        err = (F_val @ w - Yva).pow(2).mean(dim=0)  # (T,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_w[:, better] = w[:, better]
        best_lam[better] = lam
    if squeeze:
        return best_w[:, 0], best_lam[0]
    return best_w, best_lam


def empirical_kernel(F1: Tensor, F2: Tensor, heads: int) -> Tensor:
    r"""K_M(z, z') = (1/M) Σ_m <φ_m(z), φ_m(z')> = F1 F2^T / M: (n1, n2).

    As M grows it tends to the random-feature attention kernel E_W <φ_W(z), φ_W(z')>, with a
    Monte-Carlo error of order 1/sqrt(M). F1 (n1, P), F2 (n2, P).
    """
    require_tensor(F1, "F1", ndim=2, floating=True, shape="(n1, P)")
    require_tensor(F2, "F2", ndim=2, floating=True, shape="(n2, P)")
    require_same_dtype_device(F1=F1, F2=F2)
    if F1.shape[1] != F2.shape[1]:
        raise ValueError(f"F1 and F2 must be (n1, P) and (n2, P), got {tuple(F1.shape)}, {tuple(F2.shape)}")
    heads = require_int(heads, "heads", minimum=1)
    return F1 @ F2.T / heads  # (n1, n2)


def normalized_mse(pred: Tensor, y: Tensor) -> float:
    r"""Test error E(pred - y)² / Var(y): 1 for the best constant predictor, 0 for a perfect one.

    pred and y have one shape, e.g. (n,): a (n, 1) prediction against (n,) targets would
    broadcast to (n, n) and give a meaningless number, so it is refused.
    """
    require_tensor(pred, "pred", floating=True)
    require_tensor(y, "y", floating=True)
    require_same_dtype_device(pred=pred, y=y)
    if pred.shape != y.shape:
        raise ValueError(f"pred and y must have one shape, got {tuple(pred.shape)} and {tuple(y.shape)}")
    return float((pred - y).pow(2).mean() / y.var(unbiased=False))


class RandomFeatureAttention(nn.Module):
    r"""One attention layer with M heads: frozen random QK matrices (buffer W), trainable V.

    out(x_0, X) = Σ_m (1/N) Σ_i σ(x~_0^T W_m x~_i) <v_m, x~_i>        (B,)

    Args:
        d: token width (without the constant coordinate).
        heads: number of heads M.
        mu: mean of the QK matrices' x-block diagonal (0 = zero-mean Gaussian).
        act: "relu", "exp" or "softmax".
    """

    def __init__(
        self,
        d: int,
        heads: int,
        mu: float = 0.0,
        act: str = "relu",
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        d, heads = require_int(d, "d", minimum=1), require_int(heads, "heads", minimum=1)
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        self.d, self.heads, self.mu, self.act = d, heads, mu, act
        self.register_buffer("W", sample_qk(heads, d, mu, generator=generator, dtype=dtype))  # frozen
        self.V = nn.Parameter(torch.zeros(heads, d + 1, dtype=dtype, device=self.W.device))  # trained

    def features(self, x0: Tensor, X: Tensor) -> Tensor:
        """Φ(x_0, X): (B, M(d+1))."""
        return rfa_features(x0, X, self.W, self.act)

    def forward(self, x0: Tensor, X: Tensor) -> Tensor:
        """out (B,) for queries x0 (B, d) and keys X (B, N, d)."""
        return rfa_forward(x0, X, self.W, self.V, self.act)

    @torch.no_grad()
    def fit(self, x0: Tensor, X: Tensor, y: Tensor, lam: float) -> RandomFeatureAttention:
        """Set V to the ridge solution on (x0, X, y): the global minimiser, no SGD needed."""
        self.V.copy_(ridge_fit(self.features(x0, X), y, lam).reshape(self.heads, self.d + 1))
        return self
