"""Checks for chapter 02's exercises (in-context linear regression), and their common mistakes.

References are written here, independently of the learner's code and of
attnbook.mechanisms.in_context_regression: torch.nn.functional.scaled_dot_product_attention for the
forward pass, explicit loops for debiased GD and for reading (ω, μ), and least squares
(the normal equations, one small system per prompt) to test the statistics of the prompt generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tensor, expect_tuple, fresh_generator, fresh_seed


# --------------------------------------------------------------------------------------------
# ch02.icl_batch
# --------------------------------------------------------------------------------------------
def _call_batch(fn, B, L, d, sigma2, seed):
    what = describe({"B": B, "L": L, "d": d, "sigma2": sigma2})
    Z, zq, yq = expect_tuple(
        fn(B, L, d, sigma2, torch.Generator().manual_seed(seed)), ("Z", "zq", "yq"), what
    )
    expect_tensor(Z, shape=(B, L, d + 1), dtype=torch.float32, what=f"Z for {what}")
    expect_tensor(zq, shape=(B, d + 1), dtype=torch.float32, what=f"zq for {what}")
    expect_tensor(yq, shape=(B,), dtype=torch.float32, what=f"yq for {what}")
    return Z, zq, yq


@task("ch02.icl_batch", points=2)
def check_icl_batch(fn):
    """Prompts (Z, zq, yq): x ~ N(0, I), β ~ N(0, I/d), y = βᵀx + ε with Var ε = σ², zq = [x_q; 0]."""
    seed = fresh_seed()
    with case():  # reproducible through the generator, and different for another seed
        first, again, other = (_call_batch(fn, 4, 6, 3, 0.1, s) for s in (seed, seed, seed + 1))
        if not all(torch.equal(a, b) for a, b in zip(first, again)):
            raise CheckFailed(
                "two calls with generators of the same seed gave different prompts: draw every "
                "random number from the `generator` argument (torch.randn(..., generator=generator))"
            )
        if torch.equal(first[0], other[0]):
            raise CheckFailed(
                "generators with different seeds gave the same prompts: use the generator you are given"
            )
    for B, L, d, sigma2 in [(3000, 50, 4, 0.2), (2000, 40, 7, 0.05), (1500, 30, 3, 0.0)]:
        with case():
            _check_prompt_statistics(
                *_call_batch(fn, B, L, d, sigma2, seed),
                sigma2,
                describe({"B": B, "L": L, "d": d, "sigma2": sigma2}),
            )


def _check_prompt_statistics(Z, zq, yq, sigma2, case_text):
    B, L, D = Z.shape
    d = D - 1
    if not (zq[:, -1] == 0).all():
        raise CheckFailed(f"zq[:, -1] must be exactly 0 for {case_text}: the query's label slot is empty")
    x = torch.cat([Z[..., :d], zq[:, None, :d]], dim=1).double()  # (B, L+1, d)
    mean, var = x.mean().item(), x.var().item()
    if abs(mean) > 0.03 or abs(var - 1) > 0.05:
        raise CheckFailed(
            f"the covariates x (Z[..., :d] and zq[:, :d]) should be N(0, I): got mean {mean:.3f}, "
            f"variance {var:.3f} for {case_text}"
        )
    # Per-prompt least squares of y on x: β̂ = β + noise, residual variance ≈ σ².
    X, y = Z[..., :d].double(), Z[..., -1].double()
    # β̂ = (XᵀX)⁻¹ Xᵀy, one (d, d) system per prompt
    beta_hat = torch.linalg.solve(X.transpose(1, 2) @ X, (X.transpose(1, 2) @ y[..., None]))[..., 0]  # (B, d)
    residual = y - torch.einsum("bld,bd->bl", X, beta_hat)
    s2 = (residual.pow(2).sum(-1) / (L - d)).mean().item()
    if abs(s2 - sigma2) > 0.1 * sigma2 + 2e-3:
        raise CheckFailed(
            f"the context labels' noise variance (least-squares residual variance per prompt) should "
            f"be sigma2 = {sigma2}, got {s2:.4f} for {case_text}"
        )
    tr_inv = d / (L - d - 1)  # E tr((XᵀX)⁻¹) for Gaussian X
    norm2 = beta_hat.pow(2).sum(-1).mean().item()  # ≈ E‖β‖² + σ² tr_inv
    spread = beta_hat.var(dim=0).mean().item()  # across prompts, per coordinate
    expected_norm2 = 1 + sigma2 * tr_inv
    if abs(spread - expected_norm2 / d) > 0.25 / d:
        raise CheckFailed(
            f"across prompts the fitted β should vary with variance ≈ 1/d = {1 / d:.3f} per coordinate "
            f"(a fresh β ~ N(0, I/d) for every prompt); they vary by {spread:.4f} for {case_text}"
        )
    if abs(norm2 - expected_norm2) > 0.12:
        raise CheckFailed(
            f"E‖β‖² should be 1 (β ~ N(0, I/d)); the per-prompt least-squares fits give "
            f"{norm2:.3f} (expected ≈ {expected_norm2:.3f}) for {case_text}"
        )
    # The query's target uses the same β and fresh noise of the same variance.
    r2 = (yq.double() - (zq[:, :d].double() * beta_hat).sum(-1)).pow(2).mean().item()
    expected_r2 = sigma2 * (1 + tr_inv)
    if abs(r2 - expected_r2) > 0.15 * expected_r2 + 5e-3:
        raise CheckFailed(
            f"the query target does not fit the prompt's β: mean (y_q - x_qᵀβ̂)² = {r2:.4f}, "
            f"expected ≈ {expected_r2:.4f} for {case_text}: y_q = βᵀx_q + ε_q, with the prompt's "
            "β and fresh noise ε_q ~ N(0, sigma2)"
        )


def _batch(
    B,
    L,
    d,
    sigma2,
    generator,
    *,
    beta_scale=None,
    noise_std=None,
    query_label=False,
    noiseless_query=False,
    fresh_query_beta=False,
    shared_beta=False,
):
    """Prompts with switchable mistakes, as the learner's function would draw them."""
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
    return Z, zq, y[:, L]


@mistake(
    "ch02.icl_batch",
    "β was drawn from N(0, I), so E‖β‖² = d; draw β ~ N(0, I/d) (divide by sqrt(d)) so that Var(βᵀx) = 1",
)
def batch_beta_standard_normal(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, beta_scale=1.0)


@mistake(
    "ch02.icl_batch",
    "the noise's standard deviation is sigma2 (its variance σ⁴); sigma2 is the VARIANCE: "
    "multiply N(0, 1) noise by sqrt(sigma2)",
)
def batch_noise_std_is_sigma2(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, noise_std=sigma2)


@mistake(
    "ch02.icl_batch",
    "the noise is N(0, 1) whatever sigma2 is; scale it to variance sigma2 (times sqrt(sigma2))",
)
def batch_unscaled_noise(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, noise_std=1.0)


@mistake(
    "ch02.icl_batch", "zq[:, -1] holds y_q, so the model would read the answer; the query's label slot is 0"
)
def batch_label_in_query(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, query_label=True)


@mistake(
    "ch02.icl_batch", "y_q has no noise; it is βᵀx_q + ε_q with ε_q ~ N(0, sigma2), like the context labels"
)
def batch_noiseless_query(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, noiseless_query=True)


@mistake("ch02.icl_batch", "y_q was drawn with another β; it uses the SAME β as the prompt's context labels")
def batch_query_from_another_beta(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, fresh_query_beta=True)


@mistake(
    "ch02.icl_batch", "one β is shared by all the prompts; draw a fresh β for every prompt (shape (B, d))"
)
def batch_one_beta_for_all_prompts(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, generator, shared_beta=True)


@mistake(
    "ch02.icl_batch",
    "the draws ignore the `generator` argument (torch's global generator was used); pass "
    "generator=generator to every torch.randn",
)
def batch_ignores_generator(B, L, d, sigma2, generator):
    return _batch(B, L, d, sigma2, None)


# --------------------------------------------------------------------------------------------
# ch02.icl_forward
# --------------------------------------------------------------------------------------------
def _sdpa_reference(Z, zq, A, u):
    """ŷ through torch's SDPA: q_h = A_h z_q, k_ℓ = z_ℓ (scale 1/sqrt(D)), v_{hℓ} = u_hᵀ z_ℓ."""
    B, L, D = Z.shape
    H = A.shape[0]
    q = torch.einsum("hde,be->bhd", A, zq)[:, :, None, :]  # (B, H, 1, D)
    k = Z[:, None].expand(B, H, L, D)  # (B, H, L, D)
    v = torch.einsum("hd,bld->bhl", u, Z)[..., None]  # (B, H, L, 1)
    return F.scaled_dot_product_attention(q, k, v)[:, :, 0, 0].sum(1)  # (B,)


@task("ch02.icl_forward", points=3)
def check_icl_forward(fn):
    """ŷ = Σ_h Σ_ℓ softmax_ℓ(z_ℓᵀ A_h z_q / sqrt(D)) u_hᵀ z_ℓ over the L context tokens only."""
    gen, _ = fresh_generator()
    for B, H, L, D, dtype in [
        (4, 3, 7, 6, torch.float64),
        (2, 1, 1, 3, torch.float32),
        (5, 2, 13, 5, torch.float32),
        (3, 4, 40, 6, torch.float64),
        (1, 2, 1, 8, torch.float64),
    ]:
        with case():
            Z = torch.randn(B, L, D, generator=gen, dtype=dtype)
            zq = _query(B, D, gen, dtype)
            A = torch.randn(H, D, D, generator=gen, dtype=dtype)  # not symmetric: a transpose shows
            u = torch.randn(H, D, generator=gen, dtype=dtype)
            # one context token: its weight is 1 in every head, so ŷ = Σ_h u_hᵀ z_1 exactly
            ref = (u @ Z[:, 0].T).sum(0) if L == 1 else _sdpa_reference(Z, zq, A, u)
            expect_close(
                fn(Z.clone(), zq.clone(), A.clone(), u.clone()),
                ref,
                what="ŷ",
                hint="per head: scores (B, L), softmax over L, weighted sum of u_hᵀ z_ℓ; then sum the heads",
            )
    with case():  # permutation invariance over the context pairs
        Z = torch.randn(3, 9, 5, generator=gen, dtype=torch.float64)
        zq = _query(3, 5, gen, torch.float64)
        A, u = (
            torch.randn(2, 5, 5, generator=gen, dtype=torch.float64),
            torch.randn(2, 5, generator=gen, dtype=torch.float64),
        )
        perm = torch.randperm(9, generator=gen)
        expect_close(
            fn(Z[:, perm].clone(), zq, A, u),
            fn(Z, zq, A, u).detach(),
            what="ŷ after permuting the context pairs (it must not change: attention is a set operation)",
        )


def _query(B, D, gen, dtype, shift=0.0):
    """z_q = [x_q; 0]: (B, D) with an empty label slot."""
    x = torch.randn(B, D - 1, generator=gen, dtype=dtype) + shift
    return torch.cat([x, torch.zeros(B, 1, dtype=dtype)], -1)


def _forward(Z, zq, A, u, *, scale=None, with_self=False, softmax_dim=-1, transpose=False):
    """ŷ with switchable mistakes."""
    D = Z.shape[-1]
    keys = torch.cat([Z, zq[:, None]], dim=1) if with_self else Z
    A = A.transpose(-1, -2) if transpose else A
    s = torch.einsum("bld,hde,be->bhl", keys, A, zq) * (1 / math.sqrt(D) if scale is None else scale)
    p = torch.softmax(s, dim=softmax_dim)
    v = torch.einsum("hd,bld->bhl", u, keys)
    return (p * v).sum((1, 2))


@mistake("ch02.icl_forward", "the query attends to itself too; it must see only the L context tokens")
def forward_query_attends_to_itself(Z, zq, A, u):
    return _forward(Z, zq, A, u, with_self=True)


@mistake(
    "ch02.icl_forward", "scores scaled by 1/sqrt(d) with d = D - 1; the scale is 1/sqrt(D), the token width"
)
def forward_scaled_by_sqrt_d(Z, zq, A, u):
    return _forward(Z, zq, A, u, scale=1 / math.sqrt(Z.shape[-1] - 1))


@mistake("ch02.icl_forward", "scores not scaled by 1/sqrt(D)")
def forward_unscaled(Z, zq, A, u):
    return _forward(Z, zq, A, u, scale=1.0)


@mistake(
    "ch02.icl_forward", "softmax over the heads; it runs over the L context tokens, separately in each head"
)
def forward_softmax_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u, softmax_dim=1)


@mistake("ch02.icl_forward", "A_h transposed: the score is z_ℓᵀ A_h z_q (key on the left), not z_qᵀ A_h z_ℓ")
def forward_transposed_kq(Z, zq, A, u):
    return _forward(Z, zq, A, u, transpose=True)


@mistake("ch02.icl_forward", "the heads were averaged; ŷ is the SUM of the H heads' outputs")
def forward_mean_over_heads(Z, zq, A, u):
    return _forward(Z, zq, A, u) / A.shape[0]


# --------------------------------------------------------------------------------------------
# ch02.debiased_gd
# --------------------------------------------------------------------------------------------
def _dgd_loop(Z, zq, eta):
    """(η/L) Σ_ℓ y_ℓ (x_ℓ - x̄)ᵀ x_q with explicit loops over prompts and tokens."""
    B, L, D = Z.shape
    out = torch.zeros(B, dtype=Z.dtype)
    for b in range(B):
        x_bar = sum(Z[b, l, :-1] for l in range(L)) / L
        out[b] = eta / L * sum(Z[b, l, -1] * torch.dot(Z[b, l, :-1] - x_bar, zq[b, :-1]) for l in range(L))
    return out


@task("ch02.debiased_gd", points=2)
def check_debiased_gd(fn):
    """ŷ = (η/L) Σ_ℓ y_ℓ (x_ℓ - x̄)ᵀ x_q: invariant to y_ℓ → y_ℓ + c."""
    gen, _ = fresh_generator()
    for B, L, D, dtype in [
        (4, 9, 6, torch.float64),
        (3, 1, 4, torch.float32),
        (5, 17, 3, torch.float32),
        (2, 40, 7, torch.float64),
    ]:
        with case():
            # covariates with a non-zero mean, so that centring them matters
            Z = torch.randn(B, L, D, generator=gen, dtype=dtype) + 0.7
            zq = _query(B, D, gen, dtype, shift=0.7)
            eta = 0.3 + torch.rand(1, generator=gen).item()
            expect_close(
                fn(Z.clone(), zq.clone(), eta),
                _dgd_loop(Z, zq, eta),
                what=f"ŷ for eta={eta:.3f}",
                hint="x̄ = Z[..., :-1].mean(1); ŷ = η/L · Σ_ℓ y_ℓ (x_ℓ - x̄)·x_q",
            )
    with case():  # the debiasing property, stated on its own: shift every context label by c
        Z = torch.randn(3, 11, 5, generator=gen, dtype=torch.float64) + 0.5
        zq = _query(3, 5, gen, torch.float64)
        shifted = Z.clone()
        shifted[..., -1] += 2.5
        expect_close(
            fn(shifted, zq.clone(), 0.8),
            fn(Z.clone(), zq.clone(), 0.8).detach(),
            what="ŷ after adding c = 2.5 to every context label (debiased GD must not change)",
        )


def _gd(Z, zq, eta, *, centre=True, centre_query=False, mean_with_query=False, norm=None, label=-1):
    """Debiased GD with switchable mistakes."""
    x, y, xq = Z[..., :-1], Z[..., label], zq[..., :-1]
    L = x.shape[1]
    x_bar = (x.sum(1) + xq) / (L + 1) if mean_with_query else x.mean(1)
    xc = x - x_bar[:, None] if centre else x
    q = xq - x_bar if centre_query else xq
    return eta * torch.einsum("bl,bld,bd->b", y, xc, q) / (L if norm is None else norm)


@mistake(
    "ch02.debiased_gd",
    "vanilla GD: the covariates x_ℓ are not centred (subtract x̄ = mean of the context x_ℓ)",
)
def dgd_no_centring(Z, zq, eta):
    return _gd(Z, zq, eta, centre=False)


@mistake("ch02.debiased_gd", "x_q is centred too; only the context covariates are centred")
def dgd_centres_query_too(Z, zq, eta):
    return _gd(Z, zq, eta, centre_query=True)


@mistake(
    "ch02.debiased_gd", "x_q is centred instead of the context covariates; centre the x_ℓ by x̄ and keep x_q"
)
def dgd_centres_only_query(Z, zq, eta):
    return _gd(Z, zq, eta, centre=False, centre_query=True)


@mistake("ch02.debiased_gd", "x̄ includes x_q; it is the mean of the L context covariates only")
def dgd_mean_with_query(Z, zq, eta):
    return _gd(Z, zq, eta, mean_with_query=True)


@mistake("ch02.debiased_gd", "the 1/L factor is missing")
def dgd_missing_one_over_L(Z, zq, eta):
    return _gd(Z, zq, eta, norm=1)


@mistake("ch02.debiased_gd", "divided by L - 1 instead of L")
def dgd_divided_by_L_minus_1(Z, zq, eta):
    return _gd(Z, zq, eta, norm=Z.shape[1] - 1)


@mistake("ch02.debiased_gd", "the labels were read from Z[..., 0]; y_ℓ is the LAST column, Z[..., -1]")
def dgd_label_from_first_column(Z, zq, eta):
    return _gd(Z, zq, eta, label=0)


# --------------------------------------------------------------------------------------------
# ch02.extract_omega_mu
# --------------------------------------------------------------------------------------------
def _pattern_reference(A, u):
    H, D, _ = A.shape
    d = D - 1
    omega = torch.stack([sum(A[h, i, i] for i in range(d)) / d / math.sqrt(D) for h in range(H)])
    mu = torch.stack([u[h, D - 1] for h in range(H)])
    off = [abs(A[h, i, j].item()) for h in range(H) for i in range(D) for j in range(d) if i != j]
    on = [abs(A[h, i, i].item()) for h in range(H) for i in range(d)]
    return omega, mu, (sum(off) / len(off)) / (sum(on) / len(on))


def _trained_like(H, D, gen, dtype):
    """(A, u) shaped like a trained model's: ω_h on A's x-diagonal, μ_h in u's last entry, plus noise."""
    d = D - 1
    sign = torch.where(torch.arange(H) % 2 == 0, 1.0, -1.0).to(dtype)
    omega_true = (torch.rand(H, generator=gen, dtype=dtype) + 0.2) * sign
    mu_true = 3 * torch.randn(H, generator=gen, dtype=dtype)
    A = math.sqrt(D) * omega_true[:, None, None] * torch.eye(D, dtype=dtype)
    A = A + 0.05 * torch.randn(H, D, D, generator=gen, dtype=dtype)
    A[:, d, :d] += 0.3 * torch.randn(H, d, generator=gen, dtype=dtype)  # the y-row (acts on x_q)
    A[:, :, d] += torch.randn(H, D, generator=gen, dtype=dtype)  # last column: multiplies z_q's 0
    A[:, d, d] = 3.0  # the y–y corner is not part of ω
    u = 0.1 * torch.randn(H, D, generator=gen, dtype=dtype)
    u[:, -1] = mu_true
    return A, u


@task("ch02.extract_omega_mu", points=2)
def check_extract_omega_mu(fn):
    """ω_h = mean diag(A_h[:d, :d]) / sqrt(D), μ_h = u_h[-1], off-diagonal ratio on A's first d columns."""
    gen, _ = fresh_generator()
    for H, D, dtype in [
        (2, 6, torch.float64),
        (1, 4, torch.float32),
        (4, 7, torch.float64),
        (3, 9, torch.float32),
    ]:
        with case():
            A, u = _trained_like(H, D, gen, dtype)
            omega, mu, ratio = expect_tuple(fn(A.clone(), u.clone()), ("omega", "mu", "ratio"))
            ref_omega, ref_mu, ref_ratio = _pattern_reference(A, u)
            expect_close(omega, ref_omega, what="omega")
            expect_close(mu, ref_mu, what="mu")
            try:
                ratio_t = torch.as_tensor(float(ratio), dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise CheckFailed(
                    f"ratio must be a float (or a one-element tensor), got {type(ratio).__name__}"
                ) from None
            expect_close(
                ratio_t, torch.tensor(ref_ratio, dtype=torch.float64), what="ratio", atol=1e-5, rtol=1e-4
            )


def _pattern(A, u, *, omega_width=None, corner=False, mu=None, rows=slice(None), cols=None, no_y_row=False):
    """(ω, μ, ratio) with switchable mistakes; the ratio's block is A[:, rows, cols]."""
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
    "the 1/sqrt(D) is missing: the score divides z_ℓᵀ A z_q by sqrt(D), so ω = diag / sqrt(D)",
)
def pattern_forgets_sqrt_D(A, u):
    return _pattern(A, u, omega_width=1.0)


@mistake("ch02.extract_omega_mu", "divided by sqrt(d) instead of sqrt(D) = sqrt(d + 1)")
def pattern_sqrt_d(A, u):
    return _pattern(A, u, omega_width=A.shape[-1] - 1)


@mistake(
    "ch02.extract_omega_mu", "the y–y corner A[d, d] is averaged into ω; use only the d x-diagonal entries"
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
    "the transposed block: the entries acting on x_q are A[:, :, :d] (the first d "
    "COLUMNS), not the first d rows",
)
def pattern_transposed_block(A, u):
    d = A.shape[-1] - 1
    return _pattern(A, u, rows=slice(None, d), cols=slice(None))


@mistake(
    "ch02.extract_omega_mu",
    "the whole matrix is used; A's last column multiplies z_q's empty label slot and never matters",
)
def pattern_whole_matrix(A, u):
    return _pattern(A, u, cols=slice(None))


@mistake(
    "ch02.extract_omega_mu", "the y-row A[d, :d] is left out; a score that depends on y_ℓ is off-pattern too"
)
def pattern_without_y_row(A, u):
    return _pattern(A, u, no_y_row=True)
