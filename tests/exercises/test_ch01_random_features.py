"""Chapter 01: grade the target (solutions by default) and check that known mistakes fail."""
import math

import torch

from tests.exercises.grading import graded_task_test, rejects_test

test_task = graded_task_test("01")


# --- common wrong answers the checks must reject ------------------------------------------
def _aug(x):
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def _features(x0, X, W, act, *, norm=True, value="key", softmax_dim=-1, transpose=False, flatten="head"):
    x0t, Xt = _aug(x0), _aug(X)
    Wm = W.transpose(-1, -2) if transpose else W
    s = torch.einsum("bi,mij,bnj->bmn", x0t, Wm, Xt)  # (B, M, N)
    a = torch.relu(s) / (X.shape[1] if norm else 1) if act == "relu" else torch.softmax(s, dim=softmax_dim)
    if value == "key":
        phi = torch.einsum("bmn,bnj->bmj", a, Xt)
    else:
        phi = a.sum(-1, keepdim=True) * x0t[:, None, :]
    if flatten == "feature":
        phi = phi.transpose(1, 2)
    return phi.reshape(x0.shape[0], -1)


def features_without_1_over_N(x0, X, W, act="relu"):
    return _features(x0, X, W, act, norm=False)


def features_with_query_as_value(x0, X, W, act="relu"):
    return _features(x0, X, W, act, value="query")


def features_softmax_over_heads(x0, X, W, act="relu"):
    return _features(x0, X, W, act, softmax_dim=1)


def features_transposed_qk(x0, X, W, act="relu"):
    return _features(x0, X, W, act, transpose=True)


def features_feature_major(x0, X, W, act="relu"):
    return _features(x0, X, W, act, flatten="feature")


def features_without_bias_coordinate(x0, X, W, act="relu"):
    d = x0.shape[-1]
    s = torch.einsum("bi,mij,bnj->bmn", x0, W[:, :d, :d], X)
    a = torch.relu(s) / X.shape[1] if act == "relu" else torch.softmax(s, dim=-1)
    return torch.einsum("bmn,bnj->bmj", a, X).reshape(x0.shape[0], -1)  # (B, M*d)


def features_bias_only_in_value(x0, X, W, act="relu"):
    d = x0.shape[-1]
    s = torch.einsum("bi,mij,bnj->bmn", x0, W[:, :d, :d], X)
    a = torch.relu(s) / X.shape[1] if act == "relu" else torch.softmax(s, dim=-1)
    return torch.einsum("bmn,bnj->bmj", a, _aug(X)).reshape(x0.shape[0], -1)


def features_always_float32(x0, X, W, act="relu"):
    return _features(x0.float(), X.float(), W.float(), act)


def ridge_lambda_times_n(F, y, lam):
    n, P = F.shape
    return torch.linalg.solve(F.T @ F + n * lam * torch.eye(P, dtype=F.dtype), F.T @ y)


def ridge_without_lambda(F, y, lam):
    return torch.linalg.pinv(F) @ y


def ridge_sqrt_lambda(F, y, lam):
    P = F.shape[1]
    return torch.linalg.solve(F.T @ F + math.sqrt(lam) * torch.eye(P, dtype=F.dtype), F.T @ y)


def ridge_dual_without_Ft(F, y, lam):
    n = F.shape[0]
    return torch.linalg.solve(F @ F.T + lam * torch.eye(n, dtype=F.dtype), y)


def ridge_primal_only(F, y, lam):
    # (F^T F + λI)^{-1} F^T y is right, but this variant forgets F^T on the right-hand side
    P = F.shape[1]
    rhs = y[:P] if len(y) >= P else torch.cat([y, torch.zeros(P - len(y), dtype=y.dtype)])
    return torch.linalg.solve(F.T @ F + lam * torch.eye(P, dtype=F.dtype), rhs)


def qk_mean_on_constant_coordinate_too(M, d, mu, generator):
    return mu * torch.eye(d + 1, dtype=torch.float64) + torch.randn(M, d + 1, d + 1, generator=generator, dtype=torch.float64)


def qk_mean_all_ones(M, d, mu, generator):
    mean = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    mean[:d, :d] = 1.0
    return mu * mean + torch.randn(M, d + 1, d + 1, generator=generator, dtype=torch.float64)


def qk_mu_as_std(M, d, mu, generator):
    return (1 + abs(mu)) * torch.randn(M, d + 1, d + 1, generator=generator, dtype=torch.float64)


def qk_ignores_generator(M, d, mu, generator):
    mean = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    mean[:d, :d] = torch.eye(d, dtype=torch.float64)
    return mu * mean + torch.randn(M, d + 1, d + 1, dtype=torch.float64)


def qk_float32(M, d, mu, generator):
    mean = torch.zeros(d + 1, d + 1)
    mean[:d, :d] = torch.eye(d)
    return mu * mean + torch.randn(M, d + 1, d + 1, generator=generator)


def kernel_without_average(F1, F2, heads):
    return F1 @ F2.T


def kernel_divided_by_width(F1, F2, heads):
    return F1 @ F2.T / F1.shape[1]


def kernel_feature_gram(F1, F2, heads):
    return F1.T @ F2 / heads


WRONG_ANSWERS = {
    "ch01.rfa_features": [
        features_without_1_over_N, features_with_query_as_value, features_softmax_over_heads,
        features_transposed_qk, features_feature_major, features_without_bias_coordinate,
        features_bias_only_in_value, features_always_float32,
    ],
    "ch01.ridge_fit": [ridge_lambda_times_n, ridge_without_lambda, ridge_sqrt_lambda, ridge_dual_without_Ft, ridge_primal_only],
    "ch01.sample_qk": [qk_mean_on_constant_coordinate_too, qk_mean_all_ones, qk_mu_as_std, qk_ignores_generator, qk_float32],
    "ch01.empirical_kernel": [kernel_without_average, kernel_divided_by_width, kernel_feature_gram],
}
test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


def test_hints_name_the_mistake():
    from attnbook.grading import run_task

    assert "1/N" in run_task("ch01.rfa_features", features_without_1_over_N).message
    assert "query" in run_task("ch01.rfa_features", features_with_query_as_value).message
    assert "constant coordinate" in run_task("ch01.rfa_features", features_without_bias_coordinate).message
    assert "multiplied by n" in run_task("ch01.ridge_fit", ridge_lambda_times_n).message
    assert "constant coordinate" in run_task("ch01.sample_qk", qk_mean_on_constant_coordinate_too).message
    assert "generator" in run_task("ch01.sample_qk", qk_ignores_generator).message
    assert "1/M" in run_task("ch01.empirical_kernel", kernel_without_average).message
