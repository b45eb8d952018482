"""The common mistakes of chapter 02's exercises, declared for the checks of ``ch02_in_context_regression``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake
from .ch02_in_context_regression import PAIR_DX, _batch, _gd, _pair_experiment


@mistake(
    "ch02.icl_batch",
    "β was drawn from N(0, I), so E‖β‖² = d_x; draw β ~ N(0, I/d_x) (divide by sqrt(d_x)) so that "
    "Var(βᵀx) = 1",
)
def batch_beta_standard_normal(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, beta_scale=1.0)


@mistake(
    "ch02.icl_batch",
    "the noise's standard deviation is sigma2 (its variance σ⁴); sigma2 is the VARIANCE: "
    "multiply N(0, 1) noise by sqrt(sigma2)",
)
def batch_noise_std_is_sigma2(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, noise_std=sigma2)


@mistake(
    "ch02.icl_batch",
    "the noise is N(0, 1) whatever sigma2 is; scale it to variance sigma2 (times sqrt(sigma2))",
)
def batch_unscaled_noise(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, noise_std=1.0)


@mistake(
    "ch02.icl_batch", "zq[:, -1] holds y_q, so the model would read the answer; the query's label slot is 0"
)
def batch_label_in_query(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, query_label=True)


@mistake(
    "ch02.icl_batch", "y_q has no noise; it is βᵀx_q + ξ_q with ξ_q ~ N(0, sigma2), like the context labels"
)
def batch_noiseless_query(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, noiseless_query=True)


@mistake("ch02.icl_batch", "y_q was drawn with another β; it uses the SAME β as the prompt's context labels")
def batch_query_from_another_beta(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, fresh_query_beta=True)


@mistake(
    "ch02.icl_batch", "one β is shared by all the prompts; draw a fresh β for every prompt (shape (B, d_x))"
)
def batch_one_beta_for_all_prompts(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, generator, shared_beta=True)


@mistake(
    "ch02.icl_batch",
    "the draws ignore the `generator` argument (torch's global generator was used); pass "
    "generator=generator to every torch.randn",
)
def batch_ignores_generator(B, M, d_x, sigma2, generator):
    return _batch(B, M, d_x, sigma2, None)


def _forward(Z, zq, A, u, *, scale=None, with_self=False, softmax_dim=-1, transpose=False):
    """ŷ with switchable mistakes."""
    D = Z.shape[-1]
    keys = torch.cat([Z, zq[:, None]], dim=1) if with_self else Z
    A = A.transpose(-1, -2) if transpose else A
    s = torch.einsum("bld,hde,be->bhl", keys, A, zq) * (1 / math.sqrt(D) if scale is None else scale)
    p = torch.softmax(s, dim=softmax_dim)
    v = torch.einsum("hd,bld->bhl", u, keys)
    return (p * v).sum((1, 2))


@mistake("ch02.icl_forward", "the query attends to itself too; it must see only the M context tokens")
def forward_query_attends_to_itself(Z, zq, A, u):
    return _forward(Z, zq, A, u, with_self=True)


@mistake(
    "ch02.icl_forward",
    "scores scaled by 1/sqrt(d_x) with d_x = D - 1 covariates; the scale is 1/sqrt(D), the token "
    "width (every head is full width, d = D)",
)
def forward_scaled_by_sqrt_d(Z, zq, A, u):
    return _forward(Z, zq, A, u, scale=1 / math.sqrt(Z.shape[-1] - 1))


@mistake("ch02.icl_forward", "scores not scaled by 1/sqrt(D)")
def forward_unscaled(Z, zq, A, u):
    return _forward(Z, zq, A, u, scale=1.0)


@mistake(
    "ch02.icl_forward", "softmax over the heads; it runs over the M context tokens, separately in each head"
)
def forward_softmax_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u, softmax_dim=1)


@mistake(
    "ch02.icl_forward",
    "W_KQ^h transposed: the score is z_jᵀ W_KQ^h z_q (key on the left), not z_qᵀ W_KQ^h z_j",
)
def forward_transposed_kq(Z, zq, A, u):
    return _forward(Z, zq, A, u, transpose=True)


@mistake("ch02.icl_forward", "the heads were averaged; ŷ is the SUM of the H heads' outputs")
def forward_mean_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u) / A.shape[0]


@mistake(
    "ch02.debiased_gd",
    "vanilla GD: the covariates x_j are not centred (subtract x̄ = mean of the context x_j)",
)
def dgd_no_centring(Z, zq, eta):
    return _gd(Z, zq, eta, centre=False)


_WHY_XQ_STAYS = (
    "x_q stays as it is because the centring comes from the softmax: it subtracts the mean score over "
    "the context keys, s_j - s̄ = (x_j - x̄)ᵀx_q, and x_q is the same in every score; and the target "
    "is βᵀx_q (the labels have no intercept), so the estimate β̂ = (η/M) Σ_j y_j (x_j - x̄) is "
    "applied to x_q itself, not to x_q - x̄"
)


@mistake("ch02.debiased_gd", "x_q is centred too; only the context covariates are centred. " + _WHY_XQ_STAYS)
def dgd_centres_query_too(Z, zq, eta):
    return _gd(Z, zq, eta, centre_query=True)


@mistake(
    "ch02.debiased_gd",
    "x_q is centred instead of the context covariates; centre the x_j by x̄ and keep x_q. " + _WHY_XQ_STAYS,
)
def dgd_centres_only_query(Z, zq, eta):
    return _gd(Z, zq, eta, centre=False, centre_query=True)


@mistake("ch02.debiased_gd", "x̄ includes x_q; it is the mean of the M context covariates only")
def dgd_mean_with_query(Z, zq, eta):
    return _gd(Z, zq, eta, mean_with_query=True)


@mistake("ch02.debiased_gd", "the 1/M factor is missing")
def dgd_missing_one_over_L(Z, zq, eta):
    return _gd(Z, zq, eta, norm=1)


@mistake("ch02.debiased_gd", "divided by M - 1 instead of M")
def dgd_divided_by_L_minus_1(Z, zq, eta):
    return _gd(Z, zq, eta, norm=Z.shape[1] - 1)


@mistake("ch02.debiased_gd", "the labels were read from Z[..., 0]; y_j is the LAST column, Z[..., -1]")
def dgd_label_from_first_column(Z, zq, eta):
    return _gd(Z, zq, eta, label=0)


def _pattern(A, u, *, omega_width=None, corner=False, mu=None, rows=slice(None), cols=None, no_y_row=False):
    """(ω, μ, ratio) with switchable mistakes; the ratio's block is W_KQ[:, rows, cols]."""
    D = A.shape[-1]
    d = D - 1
    diag = torch.diagonal(A, dim1=-2, dim2=-1)
    omega = (diag if corner else diag[:, :d]).mean(-1) / math.sqrt(D if omega_width is None else omega_width)
    block = A[:, rows, slice(None, d) if cols is None else cols]
    r, c = block.shape[1:]
    off = ~torch.eye(r, c, dtype=torch.bool)
    if no_y_row:
        off[d] = False
    ratio = block[:, off].abs().mean() / diag[:, :d].abs().mean()
    return omega, u[:, -1] if mu is None else mu(u), ratio.item()


@mistake(
    "ch02.extract_omega_mu",
    "the 1/sqrt(D) is missing: the score divides z_jᵀ W_KQ z_q by sqrt(D), so ω = diag / sqrt(D)",
)
def pattern_forgets_sqrt_D(A, u):
    return _pattern(A, u, omega_width=1.0)


@mistake("ch02.extract_omega_mu", "divided by sqrt(d_x) instead of sqrt(D) = sqrt(d_x + 1)")
def pattern_sqrt_d(A, u):
    return _pattern(A, u, omega_width=A.shape[-1] - 1)


@mistake(
    "ch02.extract_omega_mu",
    "the y–y corner W_KQ[-1, -1] is averaged into ω; use only the d_x x-diagonal entries",
)
def pattern_y_corner_in_omega(A, u):
    return _pattern(A, u, corner=True)


@mistake("ch02.extract_omega_mu", "μ read from the first entry of u; it is the last (label) entry u[:, -1]")
def pattern_mu_first_entry(A, u):
    return _pattern(A, u, mu=lambda u: u[:, 0])


@mistake("ch02.extract_omega_mu", "the x-entries of u are summed into μ; μ is the last entry alone")
def pattern_mu_sums_u(A, u):
    return _pattern(A, u, mu=lambda u: u.sum(-1))


@mistake(
    "ch02.extract_omega_mu",
    "the transposed block: the entries acting on x_q are W_KQ[:, :, :d_x] (the first d_x "
    "COLUMNS), not the first d rows",
)
def pattern_transposed_block(A, u):
    d = A.shape[-1] - 1
    return _pattern(A, u, rows=slice(None, d), cols=slice(None))


@mistake(
    "ch02.extract_omega_mu",
    "the whole matrix is used; W_KQ's last column multiplies z_q's empty label slot and never matters",
)
def pattern_whole_matrix(A, u):
    return _pattern(A, u, cols=slice(None))


@mistake(
    "ch02.extract_omega_mu",
    "the y-row W_KQ[-1, :d_x] is left out; a score that depends on y_j is off-pattern too",
)
def pattern_without_y_row(A, u):
    return _pattern(A, u, no_y_row=True)


@mistake(
    "ch02.pair_distance_to_dgd",
    "one head with μ = η/ω: a single head keeps its μ·ȳ term, so it is far from debiased GD at "
    "every ω; the experiment needs the pair (ω, μ), (-ω, -μ)",
)
def pair_single_head(omega, seed):
    return _pair_experiment(omega, seed, heads=1, mu_scale=1.0)


@mistake(
    "ch02.pair_distance_to_dgd",
    "each head got μ = η/ω, so the pair's step is 2η; η = Σ_h μ_h ω_h = 2ωμ, so μ = η/(2ω)",
)
def pair_mu_twice(omega, seed):
    return _pair_experiment(omega, seed, mu_scale=1.0)


@mistake(
    "ch02.pair_distance_to_dgd",
    "W_KQ^h = ω_h·diag(I, 0) without the sqrt(D): the score divides by sqrt(D), so the heads "
    "run at ω/sqrt(D); build W_KQ^h = sqrt(D)·ω_h·diag(I_{d_x}, 0)",
)
def pair_forgets_sqrt_D(omega, seed):
    return _pair_experiment(omega, seed, score_scale=1 / math.sqrt(PAIR_DX + 1))


@mistake(
    "ch02.pair_distance_to_dgd",
    "the squared ratio was returned; the relative distance is its square root, "
    "sqrt(mean (ŷ - ŷ_dGD)² / mean ŷ_dGD²)",
)
def pair_squared_distance(omega, seed):
    return _pair_experiment(omega, seed, root=False)
