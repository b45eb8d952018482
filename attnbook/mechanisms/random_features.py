r"""Random-feature attention: frozen random query-key matrices, trained value vectors (chapter 01).

Symbols follow the book's table (book/notation.md): a query token x_q ∈ R^D, M context tokens
c_1 ... c_M ∈ R^D (keys and values), H heads, the merged query-key matrix W_QK^h and the merged
value-output vector u_h of chapter 00.

From multi-head attention to a random-feature model
---------------------------------------------------
Chapter 00 writes multi-head attention in the sum-over-heads form. Read it at one query x_q
attending to the M context tokens, with a scalar output:

    f(x_q, C) = Σ_h Σ_j softmax_j(τ x_q^T W_Q^h (W_K^h)^T c_j) · c_j^T W_V^h W_O^h.

Merge each head's query-key product into W_QK^h = W_Q^h (W_K^h)^T (the scale τ absorbed, τ = 1)
and its value-output product into the vector u_h = W_V^h W_O^h. Then change one thing at a time
(Fu, Guo, Bai and Mei 2023 fix the first two; the rest is the book's reading):

1. The W_QK^h (h = 1 ... H heads) are drawn at random and frozen.
2. Only the u_h are trained, so the model is linear in its parameters and training is a
   convex least-squares problem (ridge regression, solved in closed form).
3. [the book's reading] Append a constant coordinate, x~ = [x; 1] ∈ R^{D+1}, so that the
   score and the value can carry offsets; replace the softmax by act = ReLU with a 1/M
   normalisation (the softmax stays available as a variant).

The layer becomes

    f(x_q, C; U) = Σ_h (1/M) Σ_j act(x~_q^T W_QK^h c~_j) · <u_h, c~_j>,   W_QK^h ∈ R^{(D+1)×(D+1)}.  (1)

Each head contributes <u_h, φ_h(x_q, C)> with the feature vector

    φ_h(x_q, C) = (1/M) Σ_j act(x~_q^T W_QK^h c~_j) c~_j ∈ R^{D+1},                                (2)

so f = <U, Φ> with Φ = (φ_1, ..., φ_H) ∈ R^P, P = H(D+1): a random-feature model whose features
are attention heads. Two consequences are immediate from (1):

- f is invariant to permutations of the keys (a sum over j), and it is an average
  (1/M) Σ_j F_U(x_q, c_j) of one pair function F_U(x_q, c) = Σ_h act(x~_q^T W_QK^h c~) <u_h, c~>.
  That is the class of targets such a layer can express.
- As H → ∞ with u_h = O(1/H), F_U tends to an expectation over W and the model to a kernel
  method with kernel 𝒦 = E_W <φ_W(x_q, C), φ_W(x_q', C')>, estimated from H heads by
  𝒦_H = Φ_1 Φ_2^T / H (:func:`empirical_kernel`).

The QK distribution [the book's reading of "Gaussian with non-zero mean"]:
W_QK^h = W̄ + Ξ_h with W̄ = mean · diag(I_D, 0) and Ξ_h entries i.i.d. N(0, 1). With mean > 0
every head's score is mean · <x_q, c_j> plus noise: each head leans towards the keys aligned
with the query.

The baseline is a two-layer random-feature network on the concatenated input
[x_q; c_1; ...; c_M; 1]: features ReLU(Ω [x_q; c_1; ...; c_M; 1]), Ω frozen
(:func:`rf_mlp_features`).

This module stands alone instead of plugging into :class:`attnbook.attention.MultiHeadAttention`:
its H heads are not projections of one model width but full-width random bilinear forms on
[x; 1] with a ReLU/M weighting, read as a feature map that is linear in U and fitted in closed
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
    "qk_mean",
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


def _check_inputs(xq: Tensor, C: Tensor, **others: Tensor) -> tuple[int, int, int]:
    """xq (B, D) and C (B, M, D), floating, one dtype and device with ``others``: returns B, M, D."""
    require_tensor(xq, "xq", ndim=2, floating=True, shape="(B, D) (one query per example)")
    require_tensor(C, "C", ndim=3, floating=True, shape="(B, M, D) (the context: keys and values)")
    for name, t in others.items():
        require_tensor(t, name, floating=True)
    require_same_dtype_device(xq=xq, C=C, **others)
    B, D = xq.shape
    if C.shape[0] != B or C.shape[2] != D:
        raise ValueError(f"C must have shape (B={B}, M, D={D}) (the keys), got {tuple(C.shape)}")
    if C.shape[1] < 1:
        raise ValueError("C needs at least one key (M >= 1)")
    return B, C.shape[1], D


def _check_qk(W: Tensor, D: int) -> int:
    """W (H, D+1, D+1): returns H."""
    if W.ndim != 3 or W.shape[1:] != (D + 1, D + 1):
        raise ValueError(
            f"W must have shape (H, D+1={D + 1}, D+1={D + 1}) (one QK matrix per head), got {tuple(W.shape)}"
        )
    return W.shape[0]


def augment(x: Tensor) -> Tensor:
    r"""x~ = [x; 1]: append a constant coordinate on the last axis, (..., D) -> (..., D+1)."""
    require_tensor(x, "x", min_ndim=1, floating=True, shape="(..., D)")
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)


def _device(generator: torch.Generator | None, device: torch.device | str | None):
    """Where a sampler puts its draws: the given device, else the generator's, else torch's default."""
    return device if device is not None or generator is None else generator.device


def qk_mean(D: int, mean: float, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    r"""W̄ = mean · diag(I_D, 0): the mean of the QK matrices, (D+1, D+1).

    The constant coordinate's row and column stay zero.
    """
    D = require_int(D, "D", minimum=1)
    W_bar = torch.zeros(D + 1, D + 1, dtype=dtype, device=device)
    W_bar[:D, :D] = mean * torch.eye(D, dtype=dtype, device=device)
    return W_bar


def sample_qk(
    H: int,
    D: int,
    mean: float = 0.0,
    *,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Draw H frozen query-key matrices W_QK^h = W̄ + std · Ξ_h, W̄ = mean · diag(I_D, 0).

    Ξ_h has i.i.d. N(0, 1) entries. The mean acts on the x-block only: the row and column of the
    constant coordinate stay zero-mean. Returns (H, D+1, D+1) on ``device`` (default: the
    generator's device).
    """
    H, D = require_int(H, "H", minimum=1), require_int(D, "D", minimum=1)
    Xi = torch.randn(H, D + 1, D + 1, generator=generator, dtype=dtype, device=_device(generator, device))
    return qk_mean(D, mean, dtype=dtype, device=Xi.device) + std * Xi  # (H, D+1, D+1)


def rfa_scores(xq: Tensor, C: Tensor, W: Tensor) -> Tensor:
    r"""Scores S_hj = x~_q^T W_QK^h c~_j of every head for every key: (B, H, M).

    Args: xq (B, D) queries, C (B, M, D) context, W (H, D+1, D+1) frozen QK matrices.
    """
    _, _, D = _check_inputs(xq, C, W=W)
    _check_qk(W, D)
    xqt, Ct = augment(xq), augment(C)  # (B, D+1), (B, M, D+1)
    # each head's query vector q_h = (W_QK^h)^T x~_q (one small GEMM for all heads)
    q = torch.einsum("bi,hij->bhj", xqt, W)  # (B, H, D+1)
    # S_hj = <q_h, c~_j>
    return torch.einsum("bhj,bmj->bhm", q, Ct)  # (B, H, M)


def _weights(scores: Tensor, act: str) -> Tensor:
    M = scores.shape[-1]
    if act == "relu":  # act(s) = ReLU(s) / M  [the book's reading]
        return torch.relu(scores) / M
    if act == "exp":  # exp(s) / M: softmax's numerator with a fixed denominator
        return torch.exp(scores) / M
    if act == "softmax":  # normalised over the M keys, as in chapter 00
        return torch.softmax(scores, dim=-1)
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


def rfa_features(xq: Tensor, C: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    r"""The random attention features Φ = (φ_1, ..., φ_H), equation (2), flattened head-major.

    φ_h = Σ_j A_hj c~_j with A_hj = ReLU(S_hj) / M (relu; exp likewise) or softmax_j(S_hj).

    Args:
        xq: queries (B, D); C: context (B, M, D); W: (H, D+1, D+1).
        act: "relu" (default), "exp" or "softmax".

    Returns:
        (B, H·(D+1)); entry h·(D+1) + k is coordinate k of head h's feature φ_h.
    """
    A = _weights(rfa_scores(xq, C, W), act)  # (B, H, M)
    # φ_h = Σ_j A_hj c~_j: the head's attention output with values c~_j
    Phi = torch.einsum("bhm,bmk->bhk", A, augment(C))  # (B, H, D+1)
    return Phi.reshape(Phi.shape[0], -1)  # (B, H(D+1))


def rfa_forward(xq: Tensor, C: Tensor, W: Tensor, U: Tensor, act: str = "relu") -> Tensor:
    r"""f(x_q, C; U) = Σ_h <u_h, φ_h(x_q, C)>, equation (1). U: (H, D+1); returns (B,)."""
    _, _, D = _check_inputs(xq, C, W=W, U=U)
    H = _check_qk(W, D)
    if U.shape != (H, D + 1):
        raise ValueError(
            f"U must have shape (H={H}, D+1={D + 1}) (one value vector per head), got {tuple(U.shape)}"
        )
    return rfa_features(xq, C, W, act) @ U.reshape(-1)  # (B,)


def sample_mlp_weights(
    width: int,
    M: int,
    D: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Frozen first layer of the RF-MLP baseline: Ω (P, (M+1)D + 1), entries N(0, 1 / ((M+1)D + 1)).

    ``width`` is P, the number of features. On ``device`` (default: the generator's device).
    """
    width = require_int(width, "width", minimum=1)
    M, D = require_int(M, "M", minimum=1), require_int(D, "D", minimum=1)
    fan_in = (M + 1) * D + 1
    Omega = torch.randn(width, fan_in, generator=generator, dtype=dtype, device=_device(generator, device))
    return Omega / math.sqrt(fan_in)  # (P, (M+1)D + 1)


def rf_mlp_features(xq: Tensor, C: Tensor, Omega: Tensor) -> Tensor:
    r"""Two-layer random-feature network on the concatenated input: ReLU(Ω z), (B, P).

    z = [x_q; c_1; ...; c_M; 1] ∈ R^{(M+1)D+1}: the keys are laid side by side, so this model
    has no built-in permutation invariance. Ω: (P, (M+1)D+1) from :func:`sample_mlp_weights`.
    """
    B, M, D = _check_inputs(xq, C, Omega=Omega)
    if Omega.ndim != 2 or Omega.shape[1] != (M + 1) * D + 1:
        raise ValueError(
            f"Omega must have shape (P, (M+1)*D+1 = {(M + 1) * D + 1}), got {tuple(Omega.shape)}"
        )
    z = augment(torch.cat([xq, C.reshape(B, M * D)], dim=-1))  # (B, (M+1)D + 1)
    return torch.relu(z @ Omega.T)  # (B, P)


def ridge_fit(Phi: Tensor, y: Tensor, lam: float) -> Tensor:
    r"""argmin_U ||Φ U - y||² + λ ||U||²  =  (Φ^T Φ + λI)^{-1} Φ^T y  =  Φ^T (Φ Φ^T + λI)^{-1} y.

    The second form (the dual) solves an n×n system instead of P×P; the smaller one is used.
    λ = 0 gives the minimum-norm least-squares solution.

    Args: Phi (n, P), y (n,) or (n, T), lam >= 0. Returns U flattened, (P,) or (P, T).
    """
    _check_design(Phi, y, "Phi", "y")
    lam = check_scale(lam, "lam", allow_zero=True)  # λ >= 0
    n, P = Phi.shape
    if lam == 0:
        return torch.linalg.pinv(Phi) @ y
    if n >= P:  # primal: (Φ^T Φ + λI) U = Φ^T y
        L = torch.linalg.cholesky(Phi.T @ Phi + lam * torch.eye(P, dtype=Phi.dtype, device=Phi.device))
        rhs = Phi.T @ y
        return torch.cholesky_solve(rhs.reshape(P, -1), L).reshape(rhs.shape)
    # dual: α = (Φ Φ^T + λI)^{-1} y, U = Φ^T α
    L = torch.linalg.cholesky(Phi @ Phi.T + lam * torch.eye(n, dtype=Phi.dtype, device=Phi.device))
    alpha = torch.cholesky_solve(y.reshape(n, -1), L).reshape(y.shape)
    return Phi.T @ alpha


def _check_design(Phi: Tensor, y: Tensor, f_name: str, y_name: str) -> None:
    """Features Phi (n, P) and targets y (n,) or (n, T): floating, one dtype and device."""
    require_tensor(Phi, f_name, ndim=2, floating=True, shape="(n, P)")
    require_tensor(y, y_name, ndim=(1, 2), floating=True, shape=f"(n={Phi.shape[0]},) or (n, T)")
    require_same_dtype_device(**{f_name: Phi, y_name: y})
    if y.shape[0] != Phi.shape[0]:
        raise ValueError(
            f"{y_name} must have shape (n={Phi.shape[0]},) or (n, T), like {f_name}'s rows; "
            f"got {tuple(y.shape)}"
        )


def ridge_validated(
    Phi_train: Tensor,
    y_train: Tensor,
    Phi_val: Tensor,
    y_val: Tensor,
    rel_lams=tuple(10.0**k for k in range(-7, 2)),
) -> tuple[Tensor, Tensor]:
    r"""Ridge regression with λ picked on a validation split, separately for each target column.

    λ runs over ``rel_lams`` times the mean eigenvalue of Φ Φ^T (training rows),
    ||Φ||² / min(n, P), so one grid suits every feature scale. The Gram matrix is formed once;
    each λ then costs one Cholesky solve of the dual (n < P) or primal system, for all T targets.

    Args: Phi_train (n, P), y_train (n,) or (n, T), Phi_val (n_val, P), y_val like y_train.

    Returns:
        U (P,) or (P, T) refitted with the chosen λ, and the chosen λ: () or (T,).
    """
    _check_design(Phi_train, y_train, "Phi_train", "y_train")
    _check_design(Phi_val, y_val, "Phi_val", "y_val")
    require_same_dtype_device(Phi_train=Phi_train, Phi_val=Phi_val)
    if Phi_val.shape[1] != Phi_train.shape[1] or y_val.shape[1:] != y_train.shape[1:]:
        raise ValueError(
            f"Phi_val {tuple(Phi_val.shape)} / y_val {tuple(y_val.shape)} do not match "
            f"Phi_train {tuple(Phi_train.shape)} / y_train {tuple(y_train.shape)}"
        )
    squeeze = y_train.ndim == 1
    Ytr = y_train.reshape(len(y_train), -1)  # (n, T)
    Yva = y_val.reshape(len(y_val), -1)  # (n_val, T)
    n, P = Phi_train.shape
    dual = n < P
    # one Gram matrix for every λ: Φ Φ^T (n×n) in the dual, Φ^T Φ (P×P) in the primal
    gram = Phi_train @ Phi_train.T if dual else Phi_train.T @ Phi_train
    rhs = Ytr if dual else Phi_train.T @ Ytr
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    scale = torch.diagonal(gram).sum() / min(n, P)  # mean eigenvalue
    like = dict(dtype=Phi_train.dtype, device=Phi_train.device)
    best_err = torch.full((Ytr.shape[1],), float("inf"), **like)  # (T,)
    best_U = torch.zeros(P, Ytr.shape[1], **like)  # (P, T)
    best_lam = torch.zeros(Ytr.shape[1], **like)  # (T,)
    for rel in rel_lams:
        lam = float(rel * scale)
        sol = torch.cholesky_solve(rhs, torch.linalg.cholesky(gram + lam * eye))
        U = Phi_train.T @ sol if dual else sol  # (P, T)
        err = (Phi_val @ U - Yva).pow(2).mean(dim=0)  # (T,)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_U[:, better] = U[:, better]
        best_lam[better] = lam
    if squeeze:
        return best_U[:, 0], best_lam[0]
    return best_U, best_lam


def empirical_kernel(Phi1: Tensor, Phi2: Tensor, H: int) -> Tensor:
    r"""𝒦_H = (1/H) Σ_h <φ_h(x_q, C), φ_h(x_q', C')> = Φ_1 Φ_2^T / H: (n1, n2).

    As H grows it tends to the random-feature attention kernel 𝒦 = E_W <φ_W, φ_W'>, with a
    Monte-Carlo error of order 1/sqrt(H). Phi1 (n1, P), Phi2 (n2, P).
    """
    require_tensor(Phi1, "Phi1", ndim=2, floating=True, shape="(n1, P)")
    require_tensor(Phi2, "Phi2", ndim=2, floating=True, shape="(n2, P)")
    require_same_dtype_device(Phi1=Phi1, Phi2=Phi2)
    if Phi1.shape[1] != Phi2.shape[1]:
        raise ValueError(
            f"Phi1 and Phi2 must be (n1, P) and (n2, P), got {tuple(Phi1.shape)}, {tuple(Phi2.shape)}"
        )
    H = require_int(H, "H", minimum=1)
    return Phi1 @ Phi2.T / H  # (n1, n2)


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
    r"""One attention layer with H heads: frozen random QK matrices (buffer W), trainable U.

    out(x_q, C) = Σ_h (1/M) Σ_j act(x~_q^T W_QK^h c~_j) <u_h, c~_j>        (B,)

    Args:
        D: token width (without the constant coordinate).
        H: number of heads.
        mean: W̄ = mean · diag(I_D, 0) is the QK matrices' mean (0 = zero-mean Gaussian).
        act: "relu", "exp" or "softmax".
    """

    def __init__(
        self,
        D: int,
        H: int,
        mean: float = 0.0,
        act: str = "relu",
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        D, H = require_int(D, "D", minimum=1), require_int(H, "H", minimum=1)
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        self.D, self.H, self.mean, self.act = D, H, mean, act
        self.register_buffer("W", sample_qk(H, D, mean, generator=generator, dtype=dtype))  # frozen
        self.U = nn.Parameter(torch.zeros(H, D + 1, dtype=dtype, device=self.W.device))  # trained

    def features(self, xq: Tensor, C: Tensor) -> Tensor:
        """Φ(x_q, C): (B, H(D+1))."""
        return rfa_features(xq, C, self.W, self.act)

    def forward(self, xq: Tensor, C: Tensor) -> Tensor:
        """out (B,) for queries xq (B, D) and context C (B, M, D)."""
        return rfa_forward(xq, C, self.W, self.U, self.act)

    @torch.no_grad()
    def fit(self, xq: Tensor, C: Tensor, y: Tensor, lam: float) -> RandomFeatureAttention:
        """Set U to the ridge solution on (xq, C, y): the global minimiser, no SGD needed."""
        self.U.copy_(ridge_fit(self.features(xq, C), y, lam).reshape(self.H, self.D + 1))
        return self
