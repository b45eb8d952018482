"""Chapter 01 solutions: random-feature attention (frozen random QK, trained U)."""

import torch
from torch import Tensor

from attnbook.mechanisms import random_features as rf
from attnbook.tasks import permutation_invariant_task


def _augment(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)], dim=-1)


def rfa_features(xq: Tensor, C: Tensor, W: Tensor, act: str = "relu") -> Tensor:
    xqt, Ct = _augment(xq), _augment(C)  # (B, D+1), (B, M, D+1)
    scores = torch.einsum("bi,hij,bmj->bhm", xqt, W, Ct)  # (B, H, M): x~_q^T W_QK^h c~_j
    if act == "relu":
        weights = torch.relu(scores) / C.shape[1]
    elif act == "softmax":
        weights = torch.softmax(scores, dim=-1)  # over the keys
    else:
        raise ValueError(f"act must be 'relu' or 'softmax', got {act!r}")
    phi = torch.einsum("bhm,bmk->bhk", weights, Ct)  # (B, H, D+1)
    return phi.reshape(xq.shape[0], -1)


def ridge_fit(Phi: Tensor, y: Tensor, lam: float) -> Tensor:
    n, P = Phi.shape
    if n >= P:  # primal: (Φ^T Φ + λI) U = Φ^T y
        return torch.linalg.solve(Phi.T @ Phi + lam * torch.eye(P, dtype=Phi.dtype), Phi.T @ y)
    # dual: (Φ Φ^T + λI) α = y, U = Φ^T α
    return Phi.T @ torch.linalg.solve(Phi @ Phi.T + lam * torch.eye(n, dtype=Phi.dtype), y)


def ridge_validated(Phi_train, y_train, Phi_val, y_val, rel_lams):
    scale = Phi_train.pow(2).sum() / min(Phi_train.shape)  # mean eigenvalue of Φ^T Φ
    best = None
    for rel in rel_lams:
        lam = float(rel * scale)
        U = ridge_fit(Phi_train, y_train, lam)
        err = (Phi_val @ U - y_val).pow(2).mean().item()
        if best is None or err < best[0]:
            best = (err, U, lam)
    return best[1], best[2]


def rfa_vs_mlp_experiment(model: str, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    xq, C, y = permutation_invariant_task(1000, "linear", N=8, d=8, generator=gen)
    if model == "rfa":
        Phi = rf.rfa_features(xq, C, rf.sample_qk(64, 8, generator=gen))  # (1000, 576)
    elif model == "mlp":
        Phi = rf.rf_mlp_features(xq, C, rf.sample_mlp_weights(576, 8, 8, generator=gen))
    else:
        raise ValueError(f"model must be 'rfa' or 'mlp', got {model!r}")
    U, _ = rf.ridge_validated(Phi[:300], y[:300], Phi[300:500], y[300:500])
    return rf.normalized_mse(Phi[500:] @ U, y[500:])
