"""Checks for chapter 01's exercises (random-feature attention), and their common mistakes.

Notation (book/notation.md): query x_q (B, D), context C (B, M, D) with M keys, H heads with
frozen W_QK^h (D+1, D+1), features Φ (n, P), trained values U (P,).

References are written here independently of the learner's code and of
attnbook.mechanisms.random_features: explicit loops over examples and heads, ridge regression
as least squares on an augmented system, torch.linalg.lstsq. The experiment exercise is the
exception: its reference is the chapter's experiment itself, run over several seeds with the
library, and the learner's number must fall in the range those runs span.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tuple, fresh_generator, fresh_seed


def _aug(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def _reference_features(
    xq, C, W, act, *, transpose_w=False, value="key", norm=True, over="keys", bias_in_score=True
):
    """Φ by explicit loops over examples and heads; keywords produce the known mistakes."""
    B, M, D = C.shape
    H = W.shape[0]
    out = torch.zeros(B, H, D + 1, dtype=C.dtype)
    all_scores = torch.zeros(B, H, M, dtype=C.dtype)
    for b in range(B):
        q, keys = _aug(xq[b]), _aug(C[b])  # (D+1,), (M, D+1)
        for h in range(H):
            Wh = W[h].T if transpose_w else W[h]
            if bias_in_score:
                all_scores[b, h] = torch.stack([q @ Wh @ keys[j] for j in range(M)])
            else:
                all_scores[b, h] = torch.stack([xq[b] @ Wh[:D, :D] @ C[b, j] for j in range(M)])
    if act == "relu":
        weights = torch.relu(all_scores) / (M if norm else 1)
    elif over == "keys":
        weights = torch.softmax(all_scores, dim=-1)
    else:  # softmax over the heads
        weights = torch.softmax(all_scores, dim=1)
    for b in range(B):
        keys = _aug(C[b])
        for h in range(H):
            vals = keys if value == "key" else _aug(xq[b]).expand(M, D + 1)
            out[b, h] = (weights[b, h, :, None] * vals).sum(0)
    return out


# (B, M, D, H, dtype, act): M = 1 key, H = 1 head, odd sizes, both dtypes, both activations
FEATURE_CASES = [
    (3, 5, 7, 3, torch.float64, "relu"),
    (2, 1, 4, 5, torch.float32, "relu"),
    (2, 3, 6, 1, torch.float64, "relu"),
    (4, 6, 3, 2, torch.float64, "softmax"),
    (1, 9, 5, 4, torch.float32, "softmax"),
]


@task("ch01.rfa_features", points=4)
def check_rfa_features(fn):
    """Φ = (φ_1..φ_H), φ_h = Σ_j A_hj c~_j, flattened head-major to (B, H(D+1))."""
    gen, _ = fresh_generator()
    for B, M, D, H, dtype, act in FEATURE_CASES:
        with case():
            xq = torch.randn(B, D, generator=gen, dtype=dtype) / math.sqrt(D)
            C = torch.randn(B, M, D, generator=gen, dtype=dtype) / math.sqrt(D)
            W = torch.randn(H, D + 1, D + 1, generator=gen, dtype=dtype)  # not symmetric
            case_text = describe({"B": B, "M": M, "D": D, "H": H, "act": act, "dtype": dtype})
            expect_close(
                fn(xq.clone(), C.clone(), W.clone(), act),
                _reference_features(xq, C, W, act).reshape(B, -1),
                what=f"features for {case_text}",
                hint="S_hj = x~_q^T W_QK^h c~_j with x~ = [x; 1]; A_hj = ReLU(S_hj)/M (or softmax over j); "
                "φ_h = Σ_j A_hj c~_j",
            )
    with case():  # invariance: permuting the keys must not change the features
        xq = torch.randn(2, 5, generator=gen, dtype=torch.float64)
        C = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
        W = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
        perm = torch.randperm(7, generator=gen)
        expect_close(
            fn(xq, C[:, perm].clone(), W, "relu"),
            fn(xq, C.clone(), W, "relu"),
            what="features of permuted keys",
            hint="the features must not depend on the keys' order",
        )


def _flat(xq, C, W, act, **mistake):
    return _reference_features(xq, C, W, act, **mistake).reshape(xq.shape[0], -1)


@mistake(
    "ch01.rfa_features", "the 1/M normalisation is missing (ReLU weights are divided by the number of keys M)"
)
def features_without_1_over_M(xq, C, W, act="relu"):
    return _flat(xq, C, W, act, norm=False)


@mistake("ch01.rfa_features", "the value is the query x~_q instead of the key c~_j")
def features_with_query_as_value(xq, C, W, act="relu"):
    return _flat(xq, C, W, act, value="query")


@mistake("ch01.rfa_features", "the softmax runs over the heads (the axis of H) instead of over the M keys")
def features_softmax_over_heads(xq, C, W, act="relu"):
    return _flat(xq, C, W, act, over="heads")


@mistake(
    "ch01.rfa_features",
    "the scores use W_QK^h transposed (c~_j^T W_QK^h x~_q instead of x~_q^T W_QK^h c~_j)",
)
def features_transposed_qk(xq, C, W, act="relu"):
    return _flat(xq, C, W, act, transpose_w=True)


@mistake("ch01.rfa_features", "features flattened as (B, D+1, H) instead of head-major (B, H, D+1)")
def features_feature_major(xq, C, W, act="relu"):
    return _reference_features(xq, C, W, act).transpose(1, 2).reshape(xq.shape[0], -1)


@mistake("ch01.rfa_features", "the constant coordinate is missing from the scores (x_q^T W_QK^h[:D, :D] c_j)")
def features_bias_only_in_value(xq, C, W, act="relu"):
    return _flat(xq, C, W, act, bias_in_score=False)


@mistake(
    "ch01.rfa_features",
    "the constant coordinate was dropped everywhere, giving (B, H*D): each head's feature lives in "
    "R^(D+1), with x~ = [x; 1] in the scores and as the value",
)
def features_without_bias_coordinate(xq, C, W, act="relu"):
    D = xq.shape[-1]
    s = torch.einsum("bi,hij,bmj->bhm", xq, W[:, :D, :D], C)
    a = torch.relu(s) / C.shape[1] if act == "relu" else torch.softmax(s, dim=-1)
    return torch.einsum("bhm,bmk->bhk", a, C).reshape(xq.shape[0], -1)  # (B, H*D)


def _reference_ridge(Phi: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin ||Φ U - y||² + λ||U||² as plain least squares on [Φ; sqrt(λ) I] U ≈ [y; 0], in float64."""
    P = Phi.shape[1]
    A = torch.cat([Phi.double(), math.sqrt(lam) * torch.eye(P, dtype=torch.float64)])
    b = torch.cat([y.double(), torch.zeros(P, dtype=torch.float64)])
    return torch.linalg.lstsq(A, b[:, None]).solution[:, 0].to(Phi.dtype)


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
    """U = argmin ||Φ U - y||² + λ ||U||² for n > P, P > n and n = P."""
    gen, _ = fresh_generator()
    for n, P, lam, dtype in RIDGE_CASES:
        with case():
            Phi = torch.randn(n, P, generator=gen, dtype=dtype)
            y = torch.randn(n, generator=gen, dtype=dtype)
            case_text = describe({"n": n, "P": P, "lam": lam, "dtype": dtype})
            got = fn(Phi.clone(), y.clone(), lam)
            tol = {"atol": 1e-9, "rtol": 1e-7} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-3}
            expect_close(
                got,
                _reference_ridge(Phi, y, lam),
                what=f"U for {case_text}",
                **tol,
                hint="setting the gradient to zero gives (Φ^T Φ + λI) U = Φ^T y",
            )
            # the optimality (KKT) condition, read off the learner's own answer
            U, F64 = got.double(), Phi.double()
            residual = (F64.T @ (F64 @ U - y.double()) + lam * U).norm()
            scale = (F64.T @ y.double()).norm()
            if residual > (1e-6 if dtype == torch.float64 else 1e-3) * scale:
                raise CheckFailed(
                    f"U for {case_text}: the gradient Φ^T(ΦU - y) + λU is not zero (norm {residual:.3g})"
                )
    with case():  # λ -> 0 with n > P: ordinary least squares
        Phi = torch.randn(50, 7, generator=gen, dtype=torch.float64)
        y = torch.randn(50, generator=gen, dtype=torch.float64)
        expect_close(
            fn(Phi, y, 1e-10),
            torch.linalg.lstsq(Phi, y[:, None]).solution[:, 0],
            atol=1e-7,
            rtol=1e-6,
            what="U for λ = 1e-10, n = 50 > P = 7",
            hint="as λ -> 0 with n > P, ridge becomes ordinary least squares",
        )


def _solve_primal(Phi, y, ridge, rhs=None):
    P = Phi.shape[1]
    return torch.linalg.solve(
        Phi.T @ Phi + ridge * torch.eye(P, dtype=Phi.dtype), Phi.T @ y if rhs is None else rhs
    )


@mistake("ch01.ridge_fit", "λ multiplied by n (that is the minimiser of (1/n)||ΦU - y||² + λ||U||²)")
def ridge_lambda_times_n(Phi, y, lam):
    return _solve_primal(Phi, y, Phi.shape[0] * lam)


@mistake("ch01.ridge_fit", "λ left out (plain least squares)")
def ridge_without_lambda(Phi, y, lam):
    return torch.linalg.pinv(Phi) @ y


@mistake("ch01.ridge_fit", "sqrt(λ) used instead of λ")
def ridge_sqrt_lambda(Phi, y, lam):
    return _solve_primal(Phi, y, math.sqrt(lam))


@mistake("ch01.ridge_fit", "the dual form without the final Φ^T: (Φ Φ^T + λI)^{-1} y is α, and U = Φ^T α")
def ridge_dual_without_Phi_T(Phi, y, lam):
    n = Phi.shape[0]
    return torch.linalg.solve(Phi @ Phi.T + lam * torch.eye(n, dtype=Phi.dtype), y)


@mistake(
    "ch01.ridge_fit",
    "the right-hand side is y (cut or padded to P entries); it must be Φ^T y: (Φ^T Φ + λI) U = Φ^T y",
)
def ridge_primal_only(Phi, y, lam):
    P = Phi.shape[1]
    rhs = y[:P] if len(y) >= P else torch.cat([y, torch.zeros(P - len(y), dtype=y.dtype)])
    return _solve_primal(Phi, y, lam, rhs)


# ---------------------------------------------------------------------------------------------
def _validated(Phi_tr, y_tr, Phi_va, y_va, rel_lams, *, scale="mean", pick="val"):
    """Reference ridge with λ chosen on validation; keywords produce the known mistakes."""
    n, P = Phi_tr.shape
    total = float(Phi_tr.double().pow(2).sum())  # trace of Φ^T Φ
    unit = {"mean": total / min(n, P), "trace": total, "none": 1.0}[scale]
    best = None
    for rel in rel_lams:
        lam = rel * unit
        U = _reference_ridge(Phi_tr, y_tr, lam)
        rows, ys = (Phi_va, y_va) if pick == "val" else (Phi_tr, y_tr)
        err = float((rows.double() @ U.double() - ys.double()).pow(2).mean())
        if best is None or err < best[0]:
            best = (err, U, lam)
    return best[1], best[2]


RELS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@task("ch01.ridge_validated", points=3)
def check_ridge_validated(fn):
    """(U, λ): the ridge fit whose λ = rel·tr(Φ^T Φ)/min(n, P) has the lowest validation error."""
    gen, _ = fresh_generator()
    # (n, n_val, P, feature scale, noise, dtype): n > P and P > n, features far from unit scale
    for n, n_val, P, scale, noise, dtype in [
        (30, 20, 12, 7.0, 1.0, torch.float64),
        (16, 25, 40, 0.2, 0.5, torch.float64),
        (24, 30, 10, 3.0, 2.0, torch.float32),
    ]:
        with case():
            Phi = scale * torch.randn(n + n_val, P, generator=gen, dtype=dtype)
            beta = torch.randn(P, generator=gen, dtype=dtype) / (scale * math.sqrt(P))
            y = Phi @ beta + noise * torch.randn(n + n_val, generator=gen, dtype=dtype)
            args = (Phi[:n], y[:n], Phi[n:], y[n:])
            case_text = describe({"n": n, "n_val": n_val, "P": P, "dtype": dtype})
            U_ref, lam_ref = _validated(*args, RELS)
            got = expect_tuple(fn(*(t.clone() for t in args), RELS), ("U", "lam"), case_text)
            lam = got[1]
            if not isinstance(lam, (int, float, torch.Tensor)) or not math.isclose(
                float(lam), lam_ref, rel_tol=1e-5
            ):
                raise CheckFailed(
                    f"λ for {case_text}: got {lam!r}, expected {lam_ref:.6g} (= rel · tr(Φ^T Φ) / min(n, P) "
                    "for the rel with the lowest validation error)"
                )
            tol = {"atol": 1e-8, "rtol": 1e-6} if dtype == torch.float64 else {"atol": 1e-4, "rtol": 1e-3}
            expect_close(
                got[0],
                U_ref,
                what=f"U for {case_text}",
                **tol,
                hint="refit (or keep) the ridge solution of the chosen λ on the training rows",
            )


@mistake(
    "ch01.ridge_validated",
    "λ was chosen by the training error, which always prefers the smallest λ; choose it on the "
    "validation rows",
)
def validated_on_training_rows(Phi_train, y_train, Phi_val, y_val, rel_lams):
    return _validated(Phi_train, y_train, Phi_val, y_val, rel_lams, pick="train")


@mistake(
    "ch01.ridge_validated",
    "the grid was used as absolute λ; it is relative: λ = rel · tr(Φ^T Φ) / min(n, P)",
)
def validated_unscaled(Phi_train, y_train, Phi_val, y_val, rel_lams):
    return _validated(Phi_train, y_train, Phi_val, y_val, rel_lams, scale="none")


@mistake(
    "ch01.ridge_validated",
    "λ was scaled by the trace tr(Φ^T Φ); the unit is the MEAN eigenvalue, tr(Φ^T Φ) / min(n, P)",
)
def validated_scaled_by_trace(Phi_train, y_train, Phi_val, y_val, rel_lams):
    return _validated(Phi_train, y_train, Phi_val, y_val, rel_lams, scale="trace")


# ---------------------------------------------------------------------------------------------
EXPERIMENT_SEEDS = (101, 202, 303, 404)  # the grader's own seeds for the reference range


def _experiment(model: str, seed: int, *, split: str = "test", normalise: bool = True) -> float:
    """The chapter's comparison at n = 300 (the library's pipeline); keywords make the mistakes."""
    from ...mechanisms import random_features as rf
    from ...tasks import permutation_invariant_task

    gen = torch.Generator().manual_seed(seed)
    xq, C, y = permutation_invariant_task(1000, "linear", N=8, d=8, generator=gen)
    if model == "rfa":
        Phi = rf.rfa_features(xq, C, rf.sample_qk(64, 8, generator=gen))  # (1000, 576)
    else:
        Phi = rf.rf_mlp_features(xq, C, rf.sample_mlp_weights(576, 8, 8, generator=gen))
    U, _ = rf.ridge_validated(Phi[:300], y[:300], Phi[300:500], y[300:500])
    rows = slice(500, None) if split == "test" else slice(0, 300)
    pred, truth = Phi[rows] @ U, y[rows]
    return rf.normalized_mse(pred, truth) if normalise else float((pred - truth).pow(2).mean())


@functools.cache
def _reference_range(model: str) -> tuple[float, float, float, float]:
    """(low, high, mean, std) of the reference error over EXPERIMENT_SEEDS: mean ± max(4 std, 0.15).

    The seed-to-seed standard deviation is about 0.05 for "rfa" and 0.01 for "mlp", so a correct
    run on any other seed lands inside with near certainty, while the two models' ranges stay apart.
    """
    errs = torch.tensor([_experiment(model, s) for s in EXPERIMENT_SEEDS])
    mean, std = float(errs.mean()), float(errs.std())
    half = max(4 * std, 0.15)
    return mean - half, mean + half, mean, std


@task("ch01.rfa_vs_mlp_experiment", points=3, time_limit=60.0)
def check_rfa_vs_mlp_experiment(fn):
    """The learner's test error, per model, lies in the range of the reference over seeds."""
    seed = fresh_seed() % 10_000
    results = {}
    for model in ("rfa", "mlp"):
        with case():
            got = fn(model, seed)
            if not isinstance(got, (int, float)) or isinstance(got, bool) or not math.isfinite(got):
                raise CheckFailed(
                    f"rfa_vs_mlp_experiment({model!r}, {seed}) must return a finite float, got {got!r}"
                )
            low, high, mean, std = _reference_range(model)
            if not low <= got <= high:
                raise CheckFailed(
                    f"rfa_vs_mlp_experiment({model!r}, seed={seed}) = {got:.3f}, outside the range "
                    f"[{low:.3f}, {high:.3f}] of the reference (mean {mean:.3f}, std {std:.3f} over "
                    f"{len(EXPERIMENT_SEEDS)} seeds)",
                    hint="follow the protocol in the docstring: test rows 500-999, error divided by "
                    "Var(y_test)",
                )
            results[model] = got
    with case():  # the effect the chapter reports: random attention learns, the RF-MLP does not
        if not results["rfa"] < results["mlp"] - 0.2:
            raise CheckFailed(
                f"the random-attention error {results['rfa']:.3f} should be well below the RF-MLP's "
                f"{results['mlp']:.3f}"
            )


@mistake(
    "ch01.rfa_vs_mlp_experiment",
    "the error is the raw MSE; divide it by Var(y_test) (normalized_mse), so 1 means 'no better "
    "than the mean'",
)
def experiment_raw_mse(model, seed):
    return _experiment(model, seed, normalise=False)


@mistake(
    "ch01.rfa_vs_mlp_experiment",
    "the error was measured on the training rows (0-299), where ridge with P = 576 > n = 300 fits "
    "almost perfectly; measure it on the test rows 500-999",
)
def experiment_training_error(model, seed):
    return _experiment(model, seed, split="train")
