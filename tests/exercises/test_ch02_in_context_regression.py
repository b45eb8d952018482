"""Chapter 02: grade the target (solutions by default) and check that known mistakes fail."""
import math

import torch

from tests.exercises.grading import graded_task_test, rejects_test

test_task = graded_task_test("02")


# --- ch02.icl_batch ------------------------------------------------------------------------
def _batch(B, L, d, sigma2, generator, *, beta_scale=None, noise_std=None, query_label=False,
           noiseless_query=False, fresh_query_beta=False, shared_beta=False, dtype=torch.float32):
    beta_scale = 1 / math.sqrt(d) if beta_scale is None else beta_scale
    noise_std = math.sqrt(sigma2) if noise_std is None else noise_std
    beta = torch.randn(1 if shared_beta else B, d, generator=generator).expand(B, d) * beta_scale
    x = torch.randn(B, L + 1, d, generator=generator)
    noise = noise_std * torch.randn(B, L + 1, generator=generator)
    if noiseless_query:
        noise[:, L] = 0
    y = torch.einsum("bld,bd->bl", x, beta) + noise
    if fresh_query_beta:
        y[:, L] = (x[:, L] * torch.randn(B, d, generator=generator) * beta_scale).sum(-1) + noise[:, L]
    Z = torch.cat([x[:, :L], y[:, :L, None]], -1)
    zq = torch.cat([x[:, L], y[:, L, None] if query_label else torch.zeros(B, 1)], -1)
    return Z.to(dtype), zq.to(dtype), y[:, L].to(dtype)


def batch_beta_standard_normal(B, L, d, sigma2, generator):  # a common slip: β ~ N(0, I)
    return _batch(B, L, d, sigma2, generator, beta_scale=1.0)


def batch_noise_std_is_sigma2(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, noise_std=sigma2)


def batch_label_in_query(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, query_label=True)


def batch_noiseless_query(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, noiseless_query=True)


def batch_query_from_another_beta(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, fresh_query_beta=True)


def batch_one_beta_for_all_prompts(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, shared_beta=True)


def batch_float64(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, dtype=torch.float64)


def batch_ignores_generator(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, None)


# --- ch02.icl_forward ----------------------------------------------------------------------
def _forward(Z, zq, A, u, *, scale=None, with_self=False, softmax_dim=-1, transpose=False):
    D = Z.shape[-1]
    keys = torch.cat([Z, zq[:, None]], 1) if with_self else Z
    A = A.transpose(-1, -2) if transpose else A
    s = torch.einsum("bld,hde,be->bhl", keys, A, zq) / math.sqrt(D if scale is None else scale)
    return (torch.softmax(s, dim=softmax_dim) * torch.einsum("hd,bld->bhl", u, keys)).sum((1, 2))


def forward_query_attends_to_itself(Z, zq, A, u):  # common slips
    return _forward(Z, zq, A, u, with_self=True)


def forward_scaled_by_sqrt_d(Z, zq, A, u):
    return _forward(Z, zq, A, u, scale=Z.shape[-1] - 1)


def forward_softmax_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u, softmax_dim=1)


def forward_transposed_kq(Z, zq, A, u):
    return _forward(Z, zq, A, u, transpose=True)


def forward_mean_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u) / A.shape[0]


# --- ch02.debiased_gd ----------------------------------------------------------------------
def _gd(Z, zq, eta, *, centre_x=True, centre_query=False, norm=None):
    x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
    x_bar = x.mean(1, keepdim=True)
    xc = x - x_bar if centre_x else x
    q = xq - x_bar[:, 0] if centre_query else xq
    return eta * torch.einsum("bl,bld,bd->b", y, xc, q) / (x.shape[1] if norm is None else norm)


def dgd_no_centring(Z, zq, eta):  # vanilla GD
    return _gd(Z, zq, eta, centre_x=False)


def dgd_centres_query_too(Z, zq, eta):  # a common slip: centring x_q
    return _gd(Z, zq, eta, centre_query=True)


def dgd_centres_only_query(Z, zq, eta):
    return _gd(Z, zq, eta, centre_x=False, centre_query=True)


def dgd_missing_one_over_L(Z, zq, eta):
    return _gd(Z, zq, eta, norm=1)


def dgd_label_from_first_column(Z, zq, eta):
    x, y, xq = Z[..., :-1], Z[..., 0], zq[..., :-1]
    return eta * torch.einsum("bl,bld,bd->b", y, x - x.mean(1, keepdim=True), xq) / x.shape[1]


# --- ch02.extract_omega_mu -----------------------------------------------------------------
def _pattern(A, u, *, omega_scale=None, include_corner=False, mu_index=-1, rows_not_cols=False, whole=False):
    D = A.shape[-1]
    d = D - 1
    full_diag = torch.diagonal(A, dim1=-2, dim2=-1)
    omega = (full_diag if include_corner else full_diag[:, :d]).mean(-1) / math.sqrt(D if omega_scale is None else omega_scale)
    mu = u[:, mu_index]
    if whole:
        block, off = A, ~torch.eye(D, D, dtype=torch.bool)
    elif rows_not_cols:
        block, off = A[:, :d, :], ~torch.eye(d, D, dtype=torch.bool)
    else:
        block, off = A[:, :, :d], ~torch.eye(D, d, dtype=torch.bool)
    return omega, mu, (block[:, off].abs().mean() / full_diag[:, :d].abs().mean()).item()


def pattern_forgets_sqrt_D(A, u):  # common slips
    return _pattern(A, u, omega_scale=1.0)


def pattern_sqrt_d(A, u):
    return _pattern(A, u, omega_scale=A.shape[-1] - 1)


def pattern_y_corner_in_omega(A, u):
    return _pattern(A, u, include_corner=True)


def pattern_mu_first_entry(A, u):
    return _pattern(A, u, mu_index=0)


def pattern_transposed_block(A, u):
    return _pattern(A, u, rows_not_cols=True)


def pattern_whole_matrix(A, u):
    return _pattern(A, u, whole=True)


WRONG_ANSWERS = {
    "ch02.icl_batch": [
        batch_beta_standard_normal, batch_noise_std_is_sigma2, batch_label_in_query, batch_noiseless_query,
        batch_query_from_another_beta, batch_one_beta_for_all_prompts, batch_float64, batch_ignores_generator,
    ],
    "ch02.icl_forward": [
        forward_query_attends_to_itself, forward_scaled_by_sqrt_d, forward_softmax_over_heads,
        forward_transposed_kq, forward_mean_over_heads,
    ],
    "ch02.debiased_gd": [
        dgd_no_centring, dgd_centres_query_too, dgd_centres_only_query, dgd_missing_one_over_L,
        dgd_label_from_first_column,
    ],
    "ch02.extract_omega_mu": [
        pattern_forgets_sqrt_D, pattern_sqrt_d, pattern_y_corner_in_omega, pattern_mu_first_entry,
        pattern_transposed_block, pattern_whole_matrix,
    ],
}
test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


def test_centring_y_instead_of_x_is_the_same_predictor():
    """Σ_ℓ (y_ℓ - ȳ) x_ℓ = Σ_ℓ y_ℓ (x_ℓ - x̄): centring the labels is NOT a mistake, so it must pass."""
    from attnbook.grading import run_task

    def centre_labels(Z, zq, eta):
        x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
        return eta * torch.einsum("bl,bld,bd->b", y - y.mean(1, keepdim=True), x, xq) / x.shape[1]

    assert run_task("ch02.debiased_gd", centre_labels).passed


def test_hints_name_the_mistake():
    from attnbook.grading import run_task

    assert "N(0, I/d)" in run_task("ch02.icl_batch", batch_beta_standard_normal).message
    assert "itself" in run_task("ch02.icl_forward", forward_query_attends_to_itself).message
    assert "vanilla GD" in run_task("ch02.debiased_gd", dgd_no_centring).message
    assert "COLUMNS" in run_task("ch02.extract_omega_mu", pattern_transposed_block).message
