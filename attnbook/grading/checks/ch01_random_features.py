"""Checks for chapter 01's exercises (random-feature attention).

References are written here independently of the learner's code and of
attnbook.mechanisms.random_features: explicit loops over examples and heads, ridge regression
as least squares on an augmented system, torch.linalg.lstsq.
"""
from __future__ import annotations

import math

import torch

from ..core import CheckFailed, task
from ..expect import describe, expect_close, expect_tensor, fresh_generator


def _aug(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def _reference_features(x0, X, W, act, *, transpose_w=False, value="key", norm=True, over="keys",
                        bias_in_score=True):
    """Φ by explicit loops over examples and heads; keywords produce the known mistakes."""
    B, N, d = X.shape
    M = W.shape[0]
    out = torch.zeros(B, M, d + 1, dtype=X.dtype)
    all_scores = torch.zeros(B, M, N, dtype=X.dtype)
    for b in range(B):
        q, keys = _aug(x0[b]), _aug(X[b])  # (d+1,), (N, d+1)
        for m in range(M):
            Wm = W[m].T if transpose_w else W[m]
            if bias_in_score:
                all_scores[b, m] = torch.stack([q @ Wm @ keys[i] for i in range(N)])
            else:
                all_scores[b, m] = torch.stack([x0[b] @ Wm[:d, :d] @ X[b, i] for i in range(N)])
    if act == "relu":
        weights = torch.relu(all_scores) / (N if norm else 1)
    elif over == "keys":
        weights = torch.softmax(all_scores, dim=-1)
    else:  # softmax over the heads
        weights = torch.softmax(all_scores, dim=1)
    for b in range(B):
        keys = _aug(X[b])
        for m in range(M):
            vals = keys if value == "key" else _aug(x0[b]).expand(N, d + 1)
            out[b, m] = (weights[b, m, :, None] * vals).sum(0)
    return out


# (B, N, d, M, dtype, act): N = 1, M = 1, odd sizes, both dtypes, both activations
FEATURE_CASES = [
    (3, 5, 7, 3, torch.float64, "relu"),
    (2, 1, 4, 5, torch.float32, "relu"),
    (2, 3, 6, 1, torch.float64, "relu"),
    (4, 6, 3, 2, torch.float64, "softmax"),
    (1, 9, 5, 4, torch.float32, "softmax"),
]


@task("ch01.rfa_features", points=4)
def check_rfa_features(fn):
    """Φ = (φ_1..φ_M), φ_m = Σ_i a_mi x~_i, flattened head-major to (B, M(d+1))."""
    gen, seed = fresh_generator()
    for B, N, d, M, dtype, act in FEATURE_CASES:
        x0 = torch.randn(B, d, generator=gen, dtype=dtype) / math.sqrt(d)
        X = torch.randn(B, N, d, generator=gen, dtype=dtype) / math.sqrt(d)
        W = torch.randn(M, d + 1, d + 1, generator=gen, dtype=dtype)  # not symmetric
        case = describe({"B": B, "N": N, "d": d, "M": M, "act": act, "dtype": dtype, "seed": seed})
        got = fn(x0.clone(), X.clone(), W.clone(), act)
        if hasattr(got, "shape") and tuple(got.shape) == (B, M * d):
            raise CheckFailed(f"features for {case}: shape (B, M*d) = {(B, M * d)}; each head's feature lives in "
                              f"R^(d+1): the value x~_i = [x_i; 1] keeps its constant coordinate")
        ref = _reference_features(x0, X, W, act).reshape(B, -1)
        flat = lambda t: t.reshape(B, -1)  # noqa: E731
        wrong = {
            "the scores use W_m transposed (x~_i^T W_m x~_0 instead of x~_0^T W_m x~_i)":
                lambda: flat(_reference_features(x0, X, W, act, transpose_w=True)),
            "the value is the query x~_0 instead of the key x~_i":
                lambda: flat(_reference_features(x0, X, W, act, value="query")),
            "the constant coordinate is missing from the scores (x_0^T W_m[:d, :d] x_i)":
                lambda: flat(_reference_features(x0, X, W, act, bias_in_score=False)),
            "features flattened as (B, d+1, M) instead of head-major (B, M, d+1)":
                lambda: _reference_features(x0, X, W, act).transpose(1, 2).reshape(B, -1),
        }
        if act == "relu":
            wrong["the 1/N normalisation is missing (ReLU weights are divided by the number of keys N)"] = (
                lambda: flat(_reference_features(x0, X, W, act, norm=False)))
        else:
            wrong["the softmax runs over the heads (dim of M) instead of over the N keys"] = (
                lambda: flat(_reference_features(x0, X, W, act, over="heads")))
        expect_close(got, ref, what=f"features for {case}", wrong=wrong,
                     hint="s_mi = x~_0^T W_m x~_i with x~ = [x; 1]; a_mi = ReLU(s_mi)/N (or softmax over i); "
                          "φ_m = Σ_i a_mi x~_i")
    # invariance: permuting the keys must not change the features
    x0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    X = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    W = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    perm = torch.randperm(7, generator=gen)
    expect_close(fn(x0, X[:, perm].clone(), W, "relu"), fn(x0, X.clone(), W, "relu"),
                 what=f"features of permuted keys (seed={seed})", hint="the features must not depend on the keys' order")


def _reference_ridge(F: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin ||Fw - y||² + λ||w||² as plain least squares on [F; sqrt(λ) I] w ≈ [y; 0], in float64."""
    F64, y64 = F.double(), y.double()
    P = F.shape[1]
    A = torch.cat([F64, math.sqrt(lam) * torch.eye(P, dtype=torch.float64)])
    b = torch.cat([y64, torch.zeros(P, dtype=torch.float64)])
    return torch.linalg.lstsq(A, b[:, None]).solution[:, 0].to(F.dtype)


# (n, P, lam, dtype): n > P, P > n, square, both dtypes
RIDGE_CASES = [
    (40, 12, 0.3, torch.float64),
    (15, 30, 0.05, torch.float64),
    (20, 20, 1.0, torch.float64),
    (25, 9, 2.5, torch.float32),
    (10, 23, 0.7, torch.float32),
]


@task("ch01.ridge_fit", points=3)
def check_ridge_fit(fn):
    """w = argmin ||F w - y||² + λ ||w||² for n > P, P > n and n = P."""
    gen, seed = fresh_generator()
    for n, P, lam, dtype in RIDGE_CASES:
        F = torch.randn(n, P, generator=gen, dtype=dtype)
        y = torch.randn(n, generator=gen, dtype=dtype)
        case = describe({"n": n, "P": P, "lam": lam, "dtype": dtype, "seed": seed})
        got = fn(F.clone(), y.clone(), lam)
        ref = _reference_ridge(F, y, lam)
        tol = {"atol": 1e-9, "rtol": 1e-7} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-3}
        wrong = {
            "λ multiplied by n (that is the minimiser of (1/n)||Fw - y||² + λ||w||²)": lambda: _reference_ridge(F, y, lam * n),
            "λ left out (plain least squares)": lambda: torch.linalg.pinv(F.double()).matmul(y.double()).to(dtype),
            "sqrt(λ) used instead of λ": lambda: _reference_ridge(F, y, math.sqrt(lam)),
            "the dual form without the final F^T: (F F^T + λI)^{-1} y is α, and w = F^T α":
                lambda: torch.linalg.solve(F.double() @ F.double().T + lam * torch.eye(n, dtype=torch.float64), y.double()).to(dtype),
            "(F^T F + λI)^{-1} y: the right-hand side must be F^T y":
                lambda: torch.linalg.solve(F.double().T @ F.double() + lam * torch.eye(P, dtype=torch.float64), y.double()).to(dtype),
        }
        if hasattr(got, "shape") and tuple(got.shape) == (n,) and n != P:
            raise CheckFailed(f"w for {case}: shape (n,) = ({n},), expected (P,) = ({P},). In the dual form "
                              f"α = (F F^T + λI)^(-1) y has one entry per example; the weights are w = F^T α")
        expect_close(got, ref, what=f"w for {case}", wrong=wrong, **tol,
                     hint="setting the gradient to zero gives (F^T F + λI) w = F^T y")
        # the optimality (KKT) condition, read off the learner's own answer
        w = got.double()
        residual = (F.double().T @ (F.double() @ w - y.double()) + lam * w).norm()
        scale = (F.double().T @ y.double()).norm()
        if residual > (1e-6 if dtype == torch.float64 else 1e-3) * scale:
            raise CheckFailed(f"w for {case}: the gradient F^T(Fw - y) + λw is not zero (norm {residual:.3g})")
    # λ -> 0 with n > P: ordinary least squares
    F = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    y = torch.randn(50, generator=gen, dtype=torch.float64)
    expect_close(fn(F, y, 1e-10), torch.linalg.lstsq(F, y[:, None]).solution[:, 0], atol=1e-7, rtol=1e-6,
                 what=f"w for λ = 1e-10, n = 50 > P = 7 (seed={seed})",
                 hint="as λ -> 0 with n > P, ridge becomes ordinary least squares")


@task("ch01.sample_qk", points=2)
def check_sample_qk(fn):
    """W_m = μ diag(I_d, 0) + G_m, G_m entries N(0, 1), drawn from the given generator."""
    _, seed = fresh_generator()
    W = fn(3, 4, 0.5, torch.Generator().manual_seed(seed))
    if isinstance(W, torch.Tensor) and W.dtype != torch.float64:
        raise CheckFailed(f"sample_qk(M=3, d=4, mu=0.5): return float64 matrices, got {W.dtype}")
    expect_tensor(W, shape=(3, 5, 5), dtype=torch.float64, what="sample_qk(M=3, d=4, mu=0.5)")
    again = fn(3, 4, 0.5, torch.Generator().manual_seed(seed))
    if not torch.equal(W, again):
        raise CheckFailed("two calls with generators seeded alike gave different matrices: draw with "
                          "torch.randn(..., generator=generator) so the heads are reproducible")
    other = fn(3, 4, 0.5, torch.Generator().manual_seed(seed + 1))
    if torch.equal(W, other):
        raise CheckFailed("different seeds gave the same matrices: the draw must come from the generator")
    M = 20_000
    for d, mu in [(3, 2.5), (5, 0.0), (2, -1.5)]:
        W = fn(M, d, mu, torch.Generator().manual_seed(seed + 7))
        expect_tensor(W, shape=(M, d + 1, d + 1), dtype=torch.float64, what=f"sample_qk(M={M}, d={d}, mu={mu})")
        expected = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        expected[:d, :d] = mu * torch.eye(d, dtype=torch.float64)
        mean = W.mean(0)
        bound = 6 / math.sqrt(M)  # six standard errors of a mean of M unit-variance draws
        bad = (mean - expected).abs() > bound
        if bad.any():
            i, j = [int(t) for t in bad.nonzero()[0]]
            where = "the constant coordinate's row/column (it stays zero-mean)" if d in (i, j) else (
                "the diagonal of the x-block" if i == j else "off the diagonal")
            raise CheckFailed(f"sample_qk(M={M}, d={d}, mu={mu}): the mean over heads of entry ({i}, {j}) is "
                              f"{mean[i, j]:.3f}, expected {expected[i, j]:.3f} ({where}). "
                              f"The mean is μ·diag(I_d, 0): μ on the first d diagonal entries, 0 elsewhere")
        std = (W - expected).std()
        if not 0.95 < std < 1.05:
            raise CheckFailed(f"sample_qk(M={M}, d={d}, mu={mu}): the entries' standard deviation around the "
                              f"mean is {std:.3f}, expected 1 (G_m has i.i.d. N(0, 1) entries; μ shifts, it does not scale)")


@task("ch01.empirical_kernel", points=1)
def check_empirical_kernel(fn):
    """K_M = (1/M) Σ_m Φ1_m Φ2_m^T = F1 F2^T / M: (n1, n2), symmetric PSD when F1 = F2."""
    gen, seed = fresh_generator()
    for n1, n2, M, D, dtype in [(5, 7, 3, 4, torch.float64), (1, 6, 8, 3, torch.float32), (9, 9, 1, 5, torch.float64)]:
        F1 = torch.randn(n1, M * D, generator=gen, dtype=dtype)
        F2 = torch.randn(n2, M * D, generator=gen, dtype=dtype)
        # reference: one head's block at a time
        ref = sum(F1[:, m * D:(m + 1) * D] @ F2[:, m * D:(m + 1) * D].T for m in range(M)) / M
        wrong = {
            "the 1/M average over heads is missing": lambda: F1 @ F2.T,
            "divided by the feature width P = M(d+1) instead of the number of heads M": lambda: F1 @ F2.T / (M * D),
        }
        case = describe({"n1": n1, "n2": n2, "M": M, "P": M * D, "dtype": dtype, "seed": seed})
        expect_close(fn(F1.clone(), F2.clone(), M), ref, what=f"kernel for {case}", wrong=wrong,
                     hint="K[a, b] = (1/M) <Φ(z_a), Φ(z_b)>: one row per example of F1, one column per example of F2")
    F = torch.randn(12, 20, generator=gen, dtype=torch.float64)
    K = fn(F, F, 4)
    expect_tensor(K, shape=(12, 12), dtype=torch.float64, what="kernel of F with itself")
    if not torch.allclose(K, K.T, atol=1e-12):
        raise CheckFailed("K(F, F) is not symmetric")
    if torch.linalg.eigvalsh(K).min() < -1e-8 * K.diagonal().max():
        raise CheckFailed("K(F, F) has a negative eigenvalue: a Gram matrix F F^T / M is positive semi-definite")
