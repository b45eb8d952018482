"""Checks for chapter 01's exercises (random-feature attention), and their common mistakes.

References are written here independently of the learner's code and of
attnbook.mechanisms.random_features: explicit loops over examples and heads, ridge regression
as least squares on an augmented system, torch.linalg.lstsq.
"""

from __future__ import annotations

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tensor, fresh_generator, fresh_seed


def _aug(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def _reference_features(
    x0, X, W, act, *, transpose_w=False, value="key", norm=True, over="keys", bias_in_score=True
):
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
    gen, _ = fresh_generator()
    for B, N, d, M, dtype, act in FEATURE_CASES:
        with case():
            x0 = torch.randn(B, d, generator=gen, dtype=dtype) / math.sqrt(d)
            X = torch.randn(B, N, d, generator=gen, dtype=dtype) / math.sqrt(d)
            W = torch.randn(M, d + 1, d + 1, generator=gen, dtype=dtype)  # not symmetric
            case_text = describe({"B": B, "N": N, "d": d, "M": M, "act": act, "dtype": dtype})
            expect_close(
                fn(x0.clone(), X.clone(), W.clone(), act),
                _reference_features(x0, X, W, act).reshape(B, -1),
                what=f"features for {case_text}",
                hint="s_mi = x~_0^T W_m x~_i with x~ = [x; 1]; a_mi = ReLU(s_mi)/N (or softmax over i); "
                "φ_m = Σ_i a_mi x~_i",
            )
    with case():  # invariance: permuting the keys must not change the features
        x0 = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        X = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
        W = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
        perm = torch.randperm(7, generator=gen)
        expect_close(
            fn(x0, X[:, perm].clone(), W, "relu"),
            fn(x0, X.clone(), W, "relu"),
            what="features of permuted keys",
            hint="the features must not depend on the keys' order",
        )


def _flat(x0, X, W, act, **mistake):
    return _reference_features(x0, X, W, act, **mistake).reshape(x0.shape[0], -1)


@mistake(
    "ch01.rfa_features", "the 1/N normalisation is missing (ReLU weights are divided by the number of keys N)"
)
def features_without_1_over_N(x0, X, W, act="relu"):
    return _flat(x0, X, W, act, norm=False)


@mistake("ch01.rfa_features", "the value is the query x~_0 instead of the key x~_i")
def features_with_query_as_value(x0, X, W, act="relu"):
    return _flat(x0, X, W, act, value="query")


@mistake("ch01.rfa_features", "the softmax runs over the heads (dim of M) instead of over the N keys")
def features_softmax_over_heads(x0, X, W, act="relu"):
    return _flat(x0, X, W, act, over="heads")


@mistake("ch01.rfa_features", "the scores use W_m transposed (x~_i^T W_m x~_0 instead of x~_0^T W_m x~_i)")
def features_transposed_qk(x0, X, W, act="relu"):
    return _flat(x0, X, W, act, transpose_w=True)


@mistake("ch01.rfa_features", "features flattened as (B, d+1, M) instead of head-major (B, M, d+1)")
def features_feature_major(x0, X, W, act="relu"):
    return _reference_features(x0, X, W, act).transpose(1, 2).reshape(x0.shape[0], -1)


@mistake("ch01.rfa_features", "the constant coordinate is missing from the scores (x_0^T W_m[:d, :d] x_i)")
def features_bias_only_in_value(x0, X, W, act="relu"):
    return _flat(x0, X, W, act, bias_in_score=False)


@mistake(
    "ch01.rfa_features",
    "the constant coordinate was dropped everywhere, giving (B, M*d): each head's feature lives in "
    "R^(d+1), with x~ = [x; 1] in the scores and as the value",
)
def features_without_bias_coordinate(x0, X, W, act="relu"):
    d = x0.shape[-1]
    s = torch.einsum("bi,mij,bnj->bmn", x0, W[:, :d, :d], X)
    a = torch.relu(s) / X.shape[1] if act == "relu" else torch.softmax(s, dim=-1)
    return torch.einsum("bmn,bnj->bmj", a, X).reshape(x0.shape[0], -1)  # (B, M*d)


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
    gen, _ = fresh_generator()
    for n, P, lam, dtype in RIDGE_CASES:
        with case():
            F = torch.randn(n, P, generator=gen, dtype=dtype)
            y = torch.randn(n, generator=gen, dtype=dtype)
            case_text = describe({"n": n, "P": P, "lam": lam, "dtype": dtype})
            got = fn(F.clone(), y.clone(), lam)
            tol = {"atol": 1e-9, "rtol": 1e-7} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-3}
            expect_close(
                got,
                _reference_ridge(F, y, lam),
                what=f"w for {case_text}",
                **tol,
                hint="setting the gradient to zero gives (F^T F + λI) w = F^T y",
            )
            # the optimality (KKT) condition, read off the learner's own answer
            w = got.double()
            residual = (F.double().T @ (F.double() @ w - y.double()) + lam * w).norm()
            scale = (F.double().T @ y.double()).norm()
            if residual > (1e-6 if dtype == torch.float64 else 1e-3) * scale:
                raise CheckFailed(
                    f"w for {case_text}: the gradient F^T(Fw - y) + λw is not zero (norm {residual:.3g})"
                )
    with case():  # λ -> 0 with n > P: ordinary least squares
        F = torch.randn(50, 7, generator=gen, dtype=torch.float64)
        y = torch.randn(50, generator=gen, dtype=torch.float64)
        expect_close(
            fn(F, y, 1e-10),
            torch.linalg.lstsq(F, y[:, None]).solution[:, 0],
            atol=1e-7,
            rtol=1e-6,
            what="w for λ = 1e-10, n = 50 > P = 7",
            hint="as λ -> 0 with n > P, ridge becomes ordinary least squares",
        )


def _solve_primal(F, y, ridge, rhs=None):
    P = F.shape[1]
    return torch.linalg.solve(F.T @ F + ridge * torch.eye(P, dtype=F.dtype), F.T @ y if rhs is None else rhs)


@mistake("ch01.ridge_fit", "λ multiplied by n (that is the minimiser of (1/n)||Fw - y||² + λ||w||²)")
def ridge_lambda_times_n(F, y, lam):
    return _solve_primal(F, y, F.shape[0] * lam)


@mistake("ch01.ridge_fit", "λ left out (plain least squares)")
def ridge_without_lambda(F, y, lam):
    return torch.linalg.pinv(F) @ y


@mistake("ch01.ridge_fit", "sqrt(λ) used instead of λ")
def ridge_sqrt_lambda(F, y, lam):
    return _solve_primal(F, y, math.sqrt(lam))


@mistake("ch01.ridge_fit", "the dual form without the final F^T: (F F^T + λI)^{-1} y is α, and w = F^T α")
def ridge_dual_without_Ft(F, y, lam):
    n = F.shape[0]
    return torch.linalg.solve(F @ F.T + lam * torch.eye(n, dtype=F.dtype), y)


@mistake(
    "ch01.ridge_fit",
    "the right-hand side is y (cut or padded to P entries); it must be F^T y: (F^T F + λI) w = F^T y",
)
def ridge_primal_only(F, y, lam):
    P = F.shape[1]
    rhs = y[:P] if len(y) >= P else torch.cat([y, torch.zeros(P - len(y), dtype=y.dtype)])
    return _solve_primal(F, y, lam, rhs)


# ---------------------------------------------------------------------------------------------
@task("ch01.sample_qk", points=2)
def check_sample_qk(fn):
    """W_m = μ diag(I_d, 0) + G_m, G_m entries N(0, 1), drawn from the given generator."""
    seed = fresh_seed()
    with case():  # the draw comes from the generator it is given
        W = fn(3, 4, 0.5, torch.Generator().manual_seed(seed))
        expect_tensor(W, shape=(3, 5, 5), dtype=torch.float64, what="sample_qk(M=3, d=4, mu=0.5)")
        again = fn(3, 4, 0.5, torch.Generator().manual_seed(seed))
        if not torch.equal(W, again):
            raise CheckFailed(
                "two calls with generators seeded alike gave different matrices: draw with "
                "torch.randn(..., generator=generator) so the heads are reproducible"
            )
        other = fn(3, 4, 0.5, torch.Generator().manual_seed(seed + 1))
        if torch.equal(W, other):
            raise CheckFailed("different seeds gave the same matrices: the draw must come from the generator")
    M = 20_000
    for d, mu in [(3, 2.5), (5, 0.0), (2, -1.5)]:
        with case():
            W = fn(M, d, mu, torch.Generator().manual_seed(seed + 7))
            what = f"sample_qk(M={M}, d={d}, mu={mu})"
            expect_tensor(W, shape=(M, d + 1, d + 1), dtype=torch.float64, what=what)
            expected = _qk_mean(d, mu, torch.eye(d, dtype=torch.float64))
            mean = W.mean(0)
            bound = 6 / math.sqrt(M)  # six standard errors of a mean of M unit-variance draws
            bad = (mean - expected).abs() > bound
            if bad.any():
                i, j = (int(t) for t in bad.nonzero()[0])
                where = (
                    "the constant coordinate's row/column (it stays zero-mean)"
                    if d in (i, j)
                    else ("the diagonal of the x-block" if i == j else "off the diagonal")
                )
                raise CheckFailed(
                    f"{what}: the mean over heads of entry ({i}, {j}) is {mean[i, j]:.3f}, expected "
                    f"{expected[i, j]:.3f} ({where}). The mean is μ·diag(I_d, 0): μ on the first d "
                    "diagonal entries, 0 elsewhere"
                )
            std = (W - expected).std()
            if not 0.95 < std < 1.05:
                raise CheckFailed(
                    f"{what}: the entries' standard deviation around the mean is {std:.3f}, expected 1 "
                    "(G_m has i.i.d. N(0, 1) entries; μ shifts, it does not scale)"
                )


def _qk_mean(d, mu, block):
    """μ · [[block, 0], [0, 0]]: the mean of W_m, (d+1, d+1) float64."""
    mean = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    mean[:d, :d] = block
    return mu * mean


def _noise(M, d, generator=None):
    return torch.randn(M, d + 1, d + 1, generator=generator, dtype=torch.float64)


@mistake(
    "ch01.sample_qk",
    "the mean μ·I was put on the constant coordinate too; the mean is μ·diag(I_d, 0): "
    "the last row and column stay zero-mean",
)
def qk_mean_on_constant_coordinate_too(M, d, mu, generator):
    return mu * torch.eye(d + 1, dtype=torch.float64) + _noise(M, d, generator)


@mistake(
    "ch01.sample_qk", "the mean's x-block is μ times a matrix of ones; it is μ·I_d (μ on the diagonal only)"
)
def qk_mean_all_ones(M, d, mu, generator):
    return _qk_mean(d, mu, 1.0) + _noise(M, d, generator)


@mistake("ch01.sample_qk", "μ scales the noise, (1 + |μ|)·G_m; μ shifts the mean: W_m = μ·diag(I_d, 0) + G_m")
def qk_mu_as_std(M, d, mu, generator):
    return (1 + abs(mu)) * _noise(M, d, generator)


@mistake(
    "ch01.sample_qk",
    "the draw ignores the `generator` argument (torch's global generator was used); "
    "pass generator=generator to torch.randn",
)
def qk_ignores_generator(M, d, mu, generator):
    return _qk_mean(d, mu, torch.eye(d, dtype=torch.float64)) + _noise(M, d)


# ---------------------------------------------------------------------------------------------
@task("ch01.empirical_kernel", points=1)
def check_empirical_kernel(fn):
    """K_M = (1/M) Σ_m Φ1_m Φ2_m^T = F1 F2^T / M: (n1, n2), symmetric PSD when F1 = F2."""
    gen, _ = fresh_generator()
    for n1, n2, M, D, dtype in [
        (5, 7, 3, 4, torch.float64),
        (1, 6, 8, 3, torch.float32),
        (9, 9, 1, 5, torch.float64),
    ]:
        with case():
            F1 = torch.randn(n1, M * D, generator=gen, dtype=dtype)
            F2 = torch.randn(n2, M * D, generator=gen, dtype=dtype)
            # reference: one head's block at a time
            ref = sum(F1[:, m * D : (m + 1) * D] @ F2[:, m * D : (m + 1) * D].T for m in range(M)) / M
            case_text = describe({"n1": n1, "n2": n2, "M": M, "P": M * D, "dtype": dtype})
            expect_close(
                fn(F1.clone(), F2.clone(), M),
                ref,
                what=f"kernel for {case_text}",
                hint="K[a, b] = (1/M) <Φ(z_a), Φ(z_b)>: one row per example of F1, one column per "
                "example of F2",
            )
    with case():
        F = torch.randn(12, 20, generator=gen, dtype=torch.float64)
        K = fn(F, F, 4)
        expect_tensor(K, shape=(12, 12), dtype=torch.float64, what="kernel of F with itself")
        if not torch.allclose(K, K.T, atol=1e-12):
            raise CheckFailed("K(F, F) is not symmetric")
        if torch.linalg.eigvalsh(K).min() < -1e-8 * K.diagonal().max():
            raise CheckFailed(
                "K(F, F) has a negative eigenvalue: a Gram matrix F F^T / M is positive semi-definite"
            )


@mistake("ch01.empirical_kernel", "the 1/M average over heads is missing")
def kernel_without_average(F1, F2, heads):
    return F1 @ F2.T


@mistake("ch01.empirical_kernel", "divided by the feature width P = M(d+1) instead of the number of heads M")
def kernel_divided_by_width(F1, F2, heads):
    return F1 @ F2.T / F1.shape[1]


@mistake(
    "ch01.empirical_kernel",
    "F1^T F2 is the (P, P) Gram matrix of the feature coordinates; the kernel is F1 F2^T / M, (n1, n2)",
)
def kernel_feature_gram(F1, F2, heads):
    return F1.T @ F2 / heads
