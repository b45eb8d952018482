"""attnbook.mechanisms.random_features: anchors, equivalences and bad-input errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.grading import run_task
from attnbook.mechanisms.random_features import (
    RandomFeatureAttention,
    augment,
    empirical_kernel,
    normalized_mse,
    rf_mlp_features,
    rfa_features,
    rfa_forward,
    rfa_scores,
    ridge_fit,
    ridge_validated,
    sample_mlp_weights,
    sample_qk,
)
from attnbook.tasks.permutation_invariant import (
    TARGETS,
    permutation_invariant_task,
    relu_mean,
    sphere,
    target_function,
)
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

f64 = dict(dtype=torch.float64)


def _inputs(B, N, d, M, seed, mu=0.0):
    g = torch.Generator().manual_seed(seed)
    x0 = sphere(B, d, generator=g)
    X = sphere(B, N, d, generator=g)
    W = sample_qk(M, d, mu, generator=g)
    return g, x0, X, W


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 4),
    N=st.integers(1, 9),
    d=st.integers(2, 7),
    M=st.integers(1, 6),
    act=st.sampled_from(["relu", "exp", "softmax"]),
    seed=st.integers(0, 10_000),
)
def test_features_are_invariant_to_key_permutations(B, N, d, M, act, seed):
    g, x0, X, W = _inputs(B, N, d, M, seed)
    perm = torch.randperm(N, generator=g)
    Phi = rfa_features(x0, X, W, act)
    assert Phi.shape == (B, M * (d + 1))
    torch.testing.assert_close(rfa_features(x0, X[:, perm], W, act), Phi, atol=1e-12, rtol=1e-12)


def test_features_match_an_explicit_loop():
    _, x0, X, W = _inputs(3, 5, 4, 3, seed=0)
    Phi = rfa_features(x0, X, W).view(3, 3, 5)
    for b in range(3):
        for m in range(3):
            s = torch.stack([augment(x0[b]) @ W[m] @ augment(X[b, i]) for i in range(5)])
            expected = sum(torch.relu(s[i]) / 5 * augment(X[b, i]) for i in range(5))
            torch.testing.assert_close(Phi[b, m], expected)


def test_forward_is_linear_in_V_and_its_gradient_is_the_features():
    g, x0, X, W = _inputs(4, 6, 5, 3, seed=1)
    V1, V2 = torch.randn(3, 6, generator=g, **f64), torch.randn(3, 6, generator=g, **f64)
    sum_of_parts = rfa_forward(x0, X, W, V1) + rfa_forward(x0, X, W, V2)
    torch.testing.assert_close(rfa_forward(x0, X, W, V1 + V2), sum_of_parts)
    V = V1.clone().requires_grad_(True)
    rfa_forward(x0[:1], X[:1], W, V).sum().backward()
    torch.testing.assert_close(V.grad.reshape(-1), rfa_features(x0[:1], X[:1], W)[0])


def test_softmax_head_equals_torch_sdpa():
    """With σ = softmax over keys, head m is SDPA(q = x~_0^T W_m, k = v = x~_i, scale = 1)."""
    _, x0, X, W = _inputs(2, 7, 4, 3, seed=2)
    Phi = rfa_features(x0, X, W, "softmax").view(2, 3, 5)
    q = torch.einsum("bi,mij->bmj", augment(x0), W)[:, :, None, :]  # (B, M, 1, d+1)
    kv = augment(X)[:, None].expand(2, 3, 7, 5)  # (B, M, N, d+1)
    ref = F.scaled_dot_product_attention(q, kv, kv, scale=1.0)[:, :, 0]  # (B, M, d+1)
    torch.testing.assert_close(Phi, ref, atol=1e-12, rtol=1e-12)


def test_one_key_is_a_random_feature_model_of_the_pair():
    """N = 1: φ_m = σ(<W_m, x~_0 x~_1^T>) x~_1, a random-feature model on the outer product."""
    _, x0, X, W = _inputs(3, 1, 4, 5, seed=3)
    outer = torch.einsum("bi,bj->bij", augment(x0), augment(X[:, 0]))  # (B, d+1, d+1)
    s = torch.einsum("mij,bij->bm", W, outer)
    expected = torch.relu(s)[:, :, None] * augment(X[:, 0])[:, None, :]
    torch.testing.assert_close(rfa_features(x0, X, W).view(3, 5, 5), expected)
    torch.testing.assert_close(rfa_scores(x0, X, W)[..., 0], s)


def test_empirical_kernel_is_symmetric_psd_and_converges_like_one_over_sqrt_M():
    g, x0, X, _ = _inputs(40, 4, 3, 1, seed=4)
    errors = {}
    for M in (32, 2048):
        K1 = empirical_kernel(*(2 * [rfa_features(x0, X, sample_qk(M, 3, generator=g))]), M)
        K2 = empirical_kernel(*(2 * [rfa_features(x0, X, sample_qk(M, 3, generator=g))]), M)
        torch.testing.assert_close(K1, K1.T)
        assert torch.linalg.eigvalsh(K1).min() > -1e-10 * K1.diagonal().max()
        errors[M] = ((K1 - K2).norm() / K1.norm()).item()
    # 64 times more heads: Monte-Carlo error about 8 times smaller
    assert 4 < errors[32] / errors[2048] < 16


@pytest.mark.parametrize("n,P", [(30, 8), (8, 30), (12, 12)])
def test_ridge_primal_and_dual_agree_and_satisfy_the_normal_equations(n, P):
    g = torch.Generator().manual_seed(5)
    Fm, y = torch.randn(n, P, generator=g, **f64), torch.randn(n, generator=g, **f64)
    w = ridge_fit(Fm, y, 0.3)
    torch.testing.assert_close(Fm.T @ (Fm @ w - y) + 0.3 * w, torch.zeros(P, **f64), atol=1e-10, rtol=0)
    dual = Fm.T @ torch.linalg.solve(Fm @ Fm.T + 0.3 * torch.eye(n, **f64), y)
    torch.testing.assert_close(w, dual)
    Y = torch.stack([y, 2 * y], 1)
    torch.testing.assert_close(ridge_fit(Fm, Y, 0.3), torch.stack([w, 2 * w], 1))


def test_ridge_with_zero_penalty_is_least_squares():
    g = torch.Generator().manual_seed(6)
    Fm, y = torch.randn(40, 6, generator=g, **f64), torch.randn(40, generator=g, **f64)
    torch.testing.assert_close(ridge_fit(Fm, y, 0.0), torch.linalg.lstsq(Fm, y[:, None]).solution[:, 0])


def test_closed_form_equals_lbfgs_minimiser():
    """Convexity: a generic optimiser on the same objective lands on the same predictions."""
    g, x0, X, W = _inputs(150, 5, 4, 6, seed=7)
    y = target_function("linear", x0, X)
    Phi = rfa_features(x0, X, W)
    lam = 1e-2
    w_star = ridge_fit(Phi, y, lam)
    w = torch.zeros(Phi.shape[1], **f64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = (Phi @ w - y).pow(2).sum() + lam * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert (Phi @ w.detach() - Phi @ w_star).abs().max() < 1e-5


def test_ridge_validated_picks_per_target_and_never_loses_to_its_grid():
    g = torch.Generator().manual_seed(8)
    Fm = torch.randn(60, 20, generator=g, **f64)
    Fv = torch.randn(30, 20, generator=g, **f64)
    beta = torch.randn(20, generator=g, **f64)
    Y = torch.stack([Fm @ beta, torch.randn(60, generator=g, **f64)], 1)  # clean signal, pure noise
    Yv = torch.stack([Fv @ beta, torch.randn(30, generator=g, **f64)], 1)
    W, lams = ridge_validated(Fm, Y, Fv, Yv)
    assert W.shape == (20, 2) and lams.shape == (2,)
    assert lams[0] < lams[1]  # noise is best fitted with a heavy penalty
    w0, lam0 = ridge_validated(Fm, Y[:, 0], Fv, Yv[:, 0])
    torch.testing.assert_close(w0, W[:, 0])
    torch.testing.assert_close(ridge_fit(Fm, Y[:, 0], float(lam0)), w0)


def test_sample_qk_statistics_and_reproducibility():
    W = sample_qk(20_000, 3, 2.0, generator=torch.Generator().manual_seed(9))
    expected = torch.diag(torch.tensor([2.0, 2.0, 2.0, 0.0], **f64))
    assert (W.mean(0) - expected).abs().max() < 6 / math.sqrt(20_000)
    assert abs((W - expected).std().item() - 1) < 0.02
    torch.testing.assert_close(
        sample_qk(3, 4, generator=torch.Generator().manual_seed(1)),
        sample_qk(3, 4, generator=torch.Generator().manual_seed(1)),
    )


def test_biased_heads_score_the_query_key_alignment():
    """With a large mean every head's score is about μ <x_0, x_i>."""
    _, x0, X, _ = _inputs(50, 6, 5, 1, seed=10)
    W = sample_qk(4, 5, mean=200.0, generator=torch.Generator().manual_seed(0))
    s = rfa_scores(x0, X, W) / 200.0  # (B, M, N)
    align = torch.einsum("bd,bnd->bn", x0, X)[:, None].expand_as(s)
    assert (s - align).abs().max() < 0.1


def test_module_fits_in_closed_form_and_only_U_is_trained():
    g = torch.Generator().manual_seed(11)
    x0, X, y = permutation_invariant_task(200, "linear", N=5, d=4, generator=g)
    layer = RandomFeatureAttention(4, H=16, generator=g)
    assert [n for n, _ in layer.named_parameters()] == ["U"] and "W" in dict(layer.named_buffers())
    layer.fit(x0, X, y, lam=1e-3)
    w = ridge_fit(layer.features(x0, X), y, 1e-3)
    torch.testing.assert_close(layer(x0, X), layer.features(x0, X) @ w)
    assert normalized_mse(layer(x0, X).detach(), y) < 0.5


def test_rf_mlp_baseline_is_not_permutation_invariant():
    g, x0, X, _ = _inputs(5, 4, 3, 1, seed=12)
    U = sample_mlp_weights(50, 4, 3, generator=g)
    Z = rf_mlp_features(x0, X, U)
    assert Z.shape == (5, 50)
    assert not torch.allclose(rf_mlp_features(x0, X.flip(1), U), Z)


def test_targets_are_permutation_invariant_and_relu_mean_is_exact():
    g = torch.Generator().manual_seed(13)
    x0, X, _ = permutation_invariant_task(200_000, N=1, d=6, generator=g)
    for name in TARGETS:
        y = target_function(name, x0[:10], X[:10])
        assert y.shape == (10,)
    x0s, Xs, _ = permutation_invariant_task(7, N=5, d=6, generator=g)
    perm = torch.randperm(5, generator=g)
    for name in TARGETS:
        torch.testing.assert_close(target_function(name, x0s, Xs[:, perm]), target_function(name, x0s, Xs))
    mc = target_function("aligned_relu", x0, X).mean().item()
    assert abs(mc - relu_mean(6)) < 0.01


def test_library_passes_the_graded_checks():
    assert run_task("ch01.rfa_features", lambda x0, X, W, act: rfa_features(x0, X, W, act)).passed
    assert run_task("ch01.ridge_fit", ridge_fit).passed
    assert run_task(
        "ch01.ridge_validated", lambda *a: (lambda U, lam: (U, float(lam)))(*ridge_validated(*a[:4], a[4]))
    ).passed


def test_bad_inputs_raise_clear_errors():
    _, x0, X, W = _inputs(2, 3, 4, 2, seed=14)
    with pytest.raises(ValueError, match="xq must have shape"):
        rfa_features(x0[0], X, W)
    with pytest.raises(ValueError, match="C must have shape"):
        rfa_features(x0, X[:, :, :3], W)
    with pytest.raises(ValueError, match="W must have shape"):
        rfa_features(x0, X, W[:, :4, :4])
    with pytest.raises(ValueError, match="act must be one of"):
        rfa_features(x0, X, W, act="gelu")
    with pytest.raises(ValueError, match="U must have shape"):
        rfa_forward(x0, X, W, torch.zeros(3, 5, **f64))
    with pytest.raises(ValueError, match="Omega must have shape"):
        rf_mlp_features(x0, X, torch.zeros(7, 10, **f64))
    with pytest.raises(ValueError, match="lam must be"):
        ridge_fit(torch.zeros(3, 2, **f64), torch.zeros(3, **f64), -1.0)
    with pytest.raises(ValueError, match="target must be one of"):
        target_function("quartic", x0, X)
    with pytest.raises(ValueError, match="act must be one of"):
        RandomFeatureAttention(4, 2, act="tanh")


def test_bad_dtypes_sizes_and_shapes_get_attnbook_errors_not_torch_errors():
    _, x0, X, W = _inputs(6, 3, 4, 2, seed=15)
    Phi, y = rfa_features(x0, X, W), target_function("linear", x0, X)
    # mixed dtypes (einsum or matmul would raise a bare RuntimeError)
    with pytest.raises(TypeError, match="xq and C must share one dtype"):
        rfa_features(x0.float(), X, W)
    with pytest.raises(TypeError, match="one dtype"):
        rfa_features(x0, X, W.float())
    with pytest.raises(TypeError, match="Phi and y must share one dtype"):
        ridge_fit(Phi, y.float(), 0.1)
    with pytest.raises(TypeError, match="one dtype"):
        ridge_validated(Phi, y, Phi.float(), y.float())
    with pytest.raises(TypeError, match="floating dtype"):
        rfa_features(x0.long(), X.long(), W.long())
    # 1-D features to ridge_validated (an unpacking error before)
    with pytest.raises(ValueError, match=r"Phi_train must have shape \(n, P\)"):
        ridge_validated(Phi[:, 0], y, Phi, y)
    with pytest.raises(ValueError, match="y_train must have shape"):
        ridge_validated(Phi, y[:4], Phi, y)
    with pytest.raises(ValueError, match="do not match"):
        ridge_validated(Phi, y, Phi[:, :3], y)
    # a (n, 1) prediction against (n,) targets would broadcast to (n, n)
    with pytest.raises(ValueError, match="pred and y must have one shape"):
        normalized_mse(y[:, None], y)
    # sizes must be integers: 2.5 heads is not a number of heads
    with pytest.raises(TypeError, match="H must be an integer"):
        sample_qk(2.5, 3)
    with pytest.raises(TypeError, match="M must be an integer"):
        sample_mlp_weights(10, 3.0, 2)
    with pytest.raises(TypeError, match="D must be an integer"):
        RandomFeatureAttention(4.0, 2)
    with pytest.raises(TypeError, match="H must be an integer"):
        empirical_kernel(Phi, Phi, 2.5)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        permutation_invariant_task(10.5)
    with pytest.raises(TypeError, match="lam must be a number"):
        ridge_fit(Phi, y, "0.1")


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    """Every tensor a function creates lives on its inputs' device and dtype (so it runs on a GPU)."""
    g, x0, X, W = _inputs(12, 4, 3, 5, seed=16)
    x0, X, W = (t.to(device, dtype) for t in (x0, X, W))
    U = sample_mlp_weights(7, 4, 3, generator=g).to(device, dtype)
    gen = torch.Generator(device)
    layer = RandomFeatureAttention(3, 5, generator=torch.Generator().manual_seed(0)).to(device, dtype)
    with tensors_without_device_go_to_meta():
        Phi = rfa_features(x0, X, W)
        y = Phi[:, 0] + Phi[:, 1]
        Y = torch.stack([y, Phi[:, 2]], 1)
        results = [
            Phi,
            rfa_forward(x0, X, W, W[:, 0]),
            rf_mlp_features(x0, X, U),
            augment(x0),
            ridge_fit(Phi, y, 0.1),
            ridge_fit(Phi[:5], y[:5], 0.1),
            ridge_fit(Phi, Y, 0.0),
            *ridge_validated(Phi[:8], Y[:8], Phi[8:], Y[8:]),
            *ridge_validated(Phi[:8], y[:8], Phi[8:], y[8:]),
            empirical_kernel(Phi, Phi, 5),
            layer.fit(x0, X, y, 1e-3)(x0, X),
        ]
        samples = [
            sample_qk(3, 4, generator=gen, dtype=dtype),
            sample_mlp_weights(5, 2, 3, generator=gen, dtype=dtype),
        ]
    assert_follow(results + samples, x0.device, dtype)
