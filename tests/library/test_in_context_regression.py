"""attnbook.mechanisms.in_context_regression and attnbook.tasks.linear_regression: anchors, equivalences."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import scaled_dot_product_attention
from attnbook.mechanisms.in_context_regression import (
    ICLRegressor,
    constructed_weights,
    debiased_gd,
    effective_step,
    extract_omega_mu,
    icl_attention,
    linear_icl_attention,
    merge_projections,
    paired_optimal_step,
    reduced_loss,
    ridge_predict,
    single_head_optimum,
    vanilla_gd,
)
from attnbook.tasks.linear_regression import linear_regression_prompts
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

f64 = dict(dtype=torch.float64)


def _prompts(B, L, d, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return linear_regression_prompts(B, L, d, 0.1, g, dtype=torch.float64, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    H=st.integers(1, 4),
    L=st.integers(1, 12),
    d=st.integers(1, 7),
    seed=st.integers(0, 10_000),
)
def test_icl_attention_equals_torch_sdpa(B, H, L, d, seed):
    g = torch.Generator().manual_seed(seed)
    Z, zq, _, _ = _prompts(B, L, d, seed)
    D = d + 1
    A, u = torch.randn(H, D, D, generator=g, **f64), torch.randn(H, D, generator=g, **f64)
    y_hat, w = icl_attention(Z, zq, A, u, return_weights=True)
    q = torch.einsum("hde,be->bhd", A, zq)[:, :, None]  # (B, H, 1, D)
    v = torch.einsum("hd,bld->bhl", u, Z)[..., None]  # (B, H, L, 1)
    ref = F.scaled_dot_product_attention(q, Z[:, None].expand(B, H, L, D), v)[:, :, 0, 0].sum(1)
    torch.testing.assert_close(y_hat, ref, atol=1e-10, rtol=1e-10)
    assert w.shape == (B, H, L)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, **f64))


def test_equals_masked_multi_head_attention_on_the_full_sequence():
    """Plain per-head attention over [Z; z_q], the query's self position hidden, read at the end."""
    g = torch.Generator().manual_seed(1)
    B, L, d, H = 3, 9, 4, 3
    D = d + 1
    Z, zq, _, _ = _prompts(B, L, d)
    w_q, w_k, w_v = (torch.randn(H, D, D, generator=g, **f64) for _ in range(3))
    w_o = torch.randn(H, D, generator=g, **f64)
    seq = torch.cat([Z, zq[:, None]], 1)  # (B, L+1, D)
    q = torch.einsum("bnd,hde->bhne", seq, w_q)  # (B, H, L+1, D)
    k = torch.einsum("bnd,hde->bhne", seq, w_k)
    v = torch.einsum("bnd,hde->bhne", seq, w_v)
    mask = torch.ones(L + 1, L + 1, dtype=torch.bool).tril(-1)  # every token sees only earlier ones
    mask[0, 0] = True  # (the first row must see something; it is not read)
    out, _ = scaled_dot_product_attention(q, k, v, mask)  # (B, H, L+1, D)
    ref = torch.einsum("bhd,hd->b", out[:, :, -1], w_o)
    A, u = merge_projections(w_q, w_k, w_v, w_o)
    torch.testing.assert_close(icl_attention(Z, zq, A, u), ref, atol=1e-10, rtol=1e-10)


def test_a_stack_of_models_is_one_model_at_a_time():
    """Leading axes of the weights: S models in one call equal S separate calls."""
    g = torch.Generator().manual_seed(7)
    Z, zq, _, _ = _prompts(4, 9, 3)
    w = [torch.randn(5, 2, 4, 4, generator=g, **f64) for _ in range(3)]
    w_o = torch.randn(5, 2, 4, generator=g, **f64)
    W_kq, u = merge_projections(*w, w_o)  # (S, H, D, D), (S, H, D)
    assert W_kq.shape == (5, 2, 4, 4) and u.shape == (5, 2, 4)
    one_by_one = [merge_projections(*(t[s] for t in w), w_o[s]) for s in range(5)]
    torch.testing.assert_close(
        icl_attention(Z, zq, W_kq, u), torch.stack([icl_attention(Z, zq, *m) for m in one_by_one])
    )
    torch.testing.assert_close(
        linear_icl_attention(Z, zq, W_kq, u),
        torch.stack([linear_icl_attention(Z, zq, *m) for m in one_by_one]),
    )
    with pytest.raises(ValueError, match="u must have shape"):
        icl_attention(Z, zq, W_kq, u[0])
    with pytest.raises(ValueError, match="one model"):
        extract_omega_mu(W_kq, u)


def test_permutation_invariance_and_single_token():
    g = torch.Generator().manual_seed(2)
    Z, zq, _, _ = _prompts(4, 11, 5)
    A, u = torch.randn(2, 6, 6, generator=g, **f64), torch.randn(2, 6, generator=g, **f64)
    perm = torch.randperm(11, generator=g)
    torch.testing.assert_close(icl_attention(Z[:, perm], zq, A, u), icl_attention(Z, zq, A, u))
    one = Z[:, :1]
    torch.testing.assert_close(icl_attention(one, zq, A, u), (u @ one[:, 0].T).sum(0))


def test_constructed_weights_give_the_kernel_predictor():
    Z, zq, _, _ = _prompts(5, 13, 4)
    omega, mu = torch.tensor([0.3, -0.7], **f64), torch.tensor([1.5, 2.0], **f64)
    A, u = constructed_weights(omega, mu, 5)
    x, y, xq = Z[..., :-1], Z[..., -1], zq[:, :-1]
    s = torch.einsum("bld,bd->bl", x, xq)
    ref = sum(mu[h] * (torch.softmax(omega[h] * s, -1) * y).sum(-1) for h in range(2))
    torch.testing.assert_close(icl_attention(Z, zq, A, u), ref)
    got_omega, got_mu, ratio = extract_omega_mu(A, u)
    torch.testing.assert_close(got_omega, omega)
    torch.testing.assert_close(got_mu, mu)
    assert ratio == 0.0


def test_opposite_pair_matches_debiased_gd_to_second_order():
    Z, zq, _, _ = _prompts(2000, 40, 5)
    eta = 0.9
    errors = []
    for w in (0.02, 0.01):
        mu = torch.tensor([eta / (2 * w), -eta / (2 * w)], **f64)
        A, u = constructed_weights(torch.tensor([w, -w], **f64), mu, 6)
        p, q = icl_attention(Z, zq, A, u), debiased_gd(Z, zq, eta)
        errors.append(((p - q).pow(2).mean() / q.pow(2).mean()).sqrt().item())
    assert 3.5 < errors[0] / errors[1] < 4.5  # halving ω divides the error by 4: O(ω²)
    assert errors[1] < 1e-3


def test_debiasing_invariance():
    Z, zq, _, _ = _prompts(50, 20, 3)
    shifted = Z.clone()
    shifted[..., -1] += 3.0
    torch.testing.assert_close(debiased_gd(shifted, zq, 0.7), debiased_gd(Z, zq, 0.7))
    assert not torch.allclose(vanilla_gd(shifted, zq, 0.7), vanilla_gd(Z, zq, 0.7))
    centred = Z.clone()
    centred[..., :-1] -= centred[..., :-1].mean(1, keepdim=True)
    torch.testing.assert_close(debiased_gd(centred, zq, 0.7), vanilla_gd(centred, zq, 0.7))
    # centring the labels instead of the covariates is the same predictor
    x, y, xq = Z[..., :-1], Z[..., -1], zq[:, :-1]
    same = 0.7 * torch.einsum("bl,bld,bd->b", y - y.mean(1, keepdim=True), x, xq) / 20
    torch.testing.assert_close(debiased_gd(Z, zq, 0.7), same)


def test_ridge_is_least_squares_on_the_augmented_system():
    Z, zq, _, _ = _prompts(6, 9, 4)
    lam = 0.4
    for b in range(6):
        X, y = Z[b, :, :-1], Z[b, :, -1]
        X_aug = torch.cat([X, math.sqrt(lam) * torch.eye(4, **f64)])
        y_aug = torch.cat([y, torch.zeros(4, **f64)])
        beta = torch.linalg.lstsq(X_aug, y_aug[:, None]).solution[:, 0]
        torch.testing.assert_close(ridge_predict(Z[b : b + 1], zq[b : b + 1], lam)[0], zq[b, :-1] @ beta)


def test_linear_attention_is_the_explicit_sum():
    g = torch.Generator().manual_seed(3)
    Z, zq, _, _ = _prompts(3, 7, 3)
    A, u = torch.randn(2, 4, 4, generator=g, **f64), torch.randn(2, 4, generator=g, **f64)
    ref = sum((Z[:, l] @ A[h] * zq).sum(-1) / 2.0 * (Z[:, l] @ u[h]) for h in range(2) for l in range(7)) / 7
    torch.testing.assert_close(linear_icl_attention(Z, zq, A, u), ref)
    torch.testing.assert_close(linear_icl_attention(Z, zq, A, u, length=14), ref / 2)


def test_reduced_loss_optima():
    d, L, s2 = 5, 40, 0.1
    w, m = single_head_optimum(d, L, s2)
    assert math.isclose(w, 1 / math.sqrt(5)) and math.isclose(m, math.sqrt(5) / (1 + 1.1 * 5 * math.e / 40))
    best = reduced_loss(torch.tensor([w]), torch.tensor([m]), d_x=d, M=L, sigma2=s2)
    for dw in (-0.05, 0.05):
        for dm in (-0.1, 0.0, 0.1):
            assert reduced_loss(torch.tensor([w + dw]), torch.tensor([m + dm]), d_x=d, M=L, sigma2=s2) > best
    # A ±ω pair with ω -> 0 and 2ωμ = η* reaches 1 + σ² - η*, below the single head's best.
    eta = paired_optimal_step(d, L, s2)
    pair_mu = torch.tensor([eta / 2e-4, -eta / 2e-4])
    small = reduced_loss(torch.tensor([1e-4, -1e-4]), pair_mu, d_x=d, M=L, sigma2=s2)
    assert abs(small.item() - (1 + s2 - eta)) < 1e-3 and small < best
    step = effective_step(torch.tensor([0.2, -0.2]), torch.tensor([2.0, -2.0])).item()
    assert math.isclose(step, 0.8, rel_tol=1e-6)


def test_regressor_merges_its_projections_and_validates():
    model = ICLRegressor(3, 2, generator=torch.Generator().manual_seed(0))
    Z, zq, _, _ = linear_regression_prompts(5, 8, 3, 0.1, torch.Generator().manual_seed(0))
    A, u = model.merged()
    torch.testing.assert_close(model(Z, zq), icl_attention(Z, zq, A, u))
    g = torch.Generator().manual_seed(0)
    linear = ICLRegressor(3, 2, attention="linear", train_length=8, generator=g)
    torch.testing.assert_close(linear(Z, zq), linear_icl_attention(Z, zq, *linear.merged(), length=8))
    assert len(model.pattern()) == 3
    with pytest.raises(ValueError, match="train_length"):
        ICLRegressor(3, 2, attention="linear")
    with pytest.raises(ValueError, match="attention"):
        ICLRegressor(3, 2, attention="cosine")


def test_bad_shapes_name_the_argument():
    Z, zq, _, _ = _prompts(2, 5, 3)
    A, u = torch.randn(2, 4, 4, **f64), torch.randn(2, 4, **f64)
    with pytest.raises(ValueError, match="Z must have shape"):
        icl_attention(Z[0], zq, A, u)
    with pytest.raises(ValueError, match="zq must have shape"):
        icl_attention(Z, zq[:, :3], A, u)
    with pytest.raises(ValueError, match="W_kq must have shape"):
        icl_attention(Z, zq, A[:, :3], u)
    with pytest.raises(ValueError, match="u must have shape"):
        icl_attention(Z, zq, A, u[:1])
    with pytest.raises(ValueError, match="w_o"):
        merge_projections(A, A, A, u[:, :2])


def test_bad_dtypes_sizes_and_values_get_attnbook_errors_not_torch_errors():
    Z, zq, _, _ = _prompts(2, 5, 3)
    A, u = torch.randn(2, 4, 4, **f64), torch.randn(2, 4, **f64)
    # mixed dtypes (einsum would raise a bare RuntimeError)
    with pytest.raises(TypeError, match="Z and zq must share one dtype"):
        icl_attention(Z, zq.float(), A, u)
    with pytest.raises(TypeError, match="one dtype"):
        icl_attention(Z, zq, A.float(), u.float())
    with pytest.raises(TypeError, match="one dtype"):
        merge_projections(A, A, A.float(), u)
    model = ICLRegressor(3, 2, generator=torch.Generator().manual_seed(0))  # float32 parameters
    with pytest.raises(TypeError, match="one dtype"):
        model(Z, zq)
    with pytest.raises(TypeError, match="floating dtype"):
        icl_attention(Z.long(), zq.long(), A, u)
    with pytest.raises(ValueError, match=r"omega and mu must both be \(H,\)"):
        effective_step(torch.ones(2), torch.ones(3))
    # sizes must be integers
    with pytest.raises(TypeError, match="d_x must be an integer"):
        ICLRegressor(3.0, 2)
    with pytest.raises(TypeError, match="M must be an integer"):
        linear_regression_prompts(2, 3.5, 2)
    with pytest.raises(TypeError, match="D must be an integer"):
        constructed_weights(torch.ones(2), torch.ones(2), 4.5)
    with pytest.raises(TypeError, match="M must be an integer"):
        single_head_optimum(3, 40.0, 0.1)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        linear_regression_prompts(2, 3, 2, dtype=torch.int64)
    # values
    with pytest.raises(ValueError, match="lam must be"):
        ridge_predict(Z, zq, -0.1)
    with pytest.raises(ValueError, match="length must be"):
        linear_icl_attention(Z, zq, A, u, length=0)


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    """Every tensor a function creates lives on its inputs' device and dtype (so it runs on a GPU)."""
    Z, zq, _, _ = (t.to(device, dtype) for t in _prompts(6, 7, 3, seed=5))
    g = torch.Generator().manual_seed(6)
    w = [torch.randn(2, 4, 4, generator=g).to(device, dtype) for _ in range(3)]
    w_o = torch.randn(2, 4, generator=g).to(device, dtype)
    omega, mu = torch.tensor([0.3, -0.3]).to(device, dtype), torch.tensor([1.0, -1.0]).to(device, dtype)
    model = ICLRegressor(3, 2, generator=g).to(device, dtype)
    with tensors_without_device_go_to_meta():
        A, u = merge_projections(*w, w_o)
        A_c, u_c = constructed_weights(omega, mu, 4)
        om, m, _ = extract_omega_mu(A, u)
        results = [
            A,
            u,
            A_c,
            u_c,
            om,
            m,
            *icl_attention(Z, zq, A, u, return_weights=True),
            linear_icl_attention(Z, zq, A, u),
            effective_step(omega, mu),
            debiased_gd(Z, zq, 0.5),
            vanilla_gd(Z, zq, 0.5),
            ridge_predict(Z, zq, 0.5),
            model(Z, zq),
        ]
        loss = reduced_loss(omega, mu, d_x=3, M=7, sigma2=0.1)
    assert_follow(results, Z.device, dtype)
    assert loss.device == Z.device and loss.dtype == torch.float64  # the reduced loss is always float64


def test_prompt_generator():
    g = torch.Generator().manual_seed(4)
    Z, zq, yq, beta = linear_regression_prompts(7, 5, 3, 0.2, g)
    assert Z.shape == (7, 5, 4) and zq.shape == (7, 4) and yq.shape == (7,) and beta.shape == (7, 3)
    assert Z.dtype == torch.float32 and (zq[:, -1] == 0).all()
    again = linear_regression_prompts(7, 5, 3, 0.2, torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip((Z, zq, yq, beta), again))
    noiseless = linear_regression_prompts(4, 6, 2, 0.0, torch.Generator().manual_seed(5), y_shift=1.5)
    labels = torch.einsum("bld,bd->bl", noiseless.Z[..., :-1], noiseless.beta) + 1.5
    torch.testing.assert_close(noiseless.Z[..., -1], labels)
    torch.testing.assert_close(noiseless.yq, (noiseless.zq[:, :-1] * noiseless.beta).sum(-1) + 1.5)
    with pytest.raises(ValueError, match="sigma2"):
        linear_regression_prompts(2, 3, 2, -1.0)
    with pytest.raises(ValueError, match="M="):
        linear_regression_prompts(2, 0, 2)
