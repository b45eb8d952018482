"""Checks for chapter 02's exercises (in-context linear regression).

References are written here, independently of the learner's code and of
attnbook.mechanisms.in_context_regression: torch.nn.functional.scaled_dot_product_attention for the
forward pass, explicit loops for debiased GD and for reading (ω, μ), and least squares
(the normal equations, one small system per prompt) to test the statistics of the prompt generator.

The chapter's common mistakes (the @mistake declarations) live in the companion module
``ch02_in_context_regression_mistakes.py``, which the grader loads with this one (it imports every
``checks/ch02_*.py`` of the chapter).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..core import CheckFailed, case, task
from ..expect import (
    describe,
    describe_value,
    expect_close,
    expect_tensor,
    expect_tuple,
    fresh_generator,
    fresh_seed,
)


# --------------------------------------------------------------------------------------------
# ch02.icl_batch
# --------------------------------------------------------------------------------------------
def _call_batch(fn, B, L, d, sigma2, seed):
    what = describe({"B": B, "M": L, "d_x": d, "sigma2": sigma2})
    Z, zq, yq = expect_tuple(
        fn(B, L, d, sigma2, torch.Generator().manual_seed(seed)), ("Z", "zq", "yq"), what
    )
    expect_tensor(Z, shape=(B, L, d + 1), dtype=torch.float32, what=f"Z for {what}")
    expect_tensor(zq, shape=(B, d + 1), dtype=torch.float32, what=f"zq for {what}")
    expect_tensor(yq, shape=(B,), dtype=torch.float32, what=f"yq for {what}")
    return Z, zq, yq


@task("ch02.icl_batch", points=2)
def check_icl_batch(fn):
    """Prompts (Z, zq, yq): x ~ N(0, I), β ~ N(0, I/d_x), y = βᵀx + ξ with Var ξ = σ², zq = [x_q; 0]."""
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
                describe({"B": B, "M": L, "d_x": d, "sigma2": sigma2}),
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
            f"the covariates x (Z[..., :-1] and zq[:, :-1]) should be N(0, I): got mean {mean:.3f}, "
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
            f"across prompts the fitted β should vary with variance ≈ 1/d_x = {1 / d:.3f} per coordinate "
            f"(a fresh β ~ N(0, I/d_x) for every prompt); they vary by {spread:.4f} for {case_text}"
        )
    if abs(norm2 - expected_norm2) > 0.12:
        raise CheckFailed(
            f"E‖β‖² should be 1 (β ~ N(0, I/d_x)); the per-prompt least-squares fits give "
            f"{norm2:.3f} (expected ≈ {expected_norm2:.3f}) for {case_text}"
        )
    # The query's target uses the same β and fresh noise of the same variance.
    r2 = (yq.double() - (zq[:, :d].double() * beta_hat).sum(-1)).pow(2).mean().item()
    expected_r2 = sigma2 * (1 + tr_inv)
    if abs(r2 - expected_r2) > 0.15 * expected_r2 + 5e-3:
        raise CheckFailed(
            f"the query target does not fit the prompt's β: mean (y_q - x_qᵀβ̂)² = {r2:.4f}, "
            f"expected ≈ {expected_r2:.4f} for {case_text}: y_q = βᵀx_q + ξ_q, with the prompt's "
            "β and fresh noise ξ_q ~ N(0, sigma2)"
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


# --------------------------------------------------------------------------------------------
# ch02.icl_forward
# --------------------------------------------------------------------------------------------
def _sdpa_reference(Z, zq, A, u):
    """ŷ through torch's SDPA: q_h = W_KQ^h z_q, k_j = z_j (scale 1/sqrt(D)), v_{hj} = u_hᵀ z_j."""
    B, L, D = Z.shape
    H = A.shape[0]
    q = torch.einsum("hde,be->bhd", A, zq)[:, :, None, :]  # (B, H, 1, D)
    k = Z[:, None].expand(B, H, L, D)  # (B, H, L, D)
    v = torch.einsum("hd,bld->bhl", u, Z)[..., None]  # (B, H, L, 1)
    return F.scaled_dot_product_attention(q, k, v)[:, :, 0, 0].sum(1)  # (B,)


@task("ch02.icl_forward", points=3)
def check_icl_forward(fn):
    """ŷ = Σ_h Σ_j softmax_j(z_jᵀ W_KQ^h z_q / sqrt(D)) u_hᵀ z_j over the M context tokens only."""
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
            A = torch.randn(H, D, D, generator=gen, dtype=dtype)  # W_KQ, not symmetric: a transpose shows
            u = torch.randn(H, D, generator=gen, dtype=dtype)
            # one context token: its weight is 1 in every head, so ŷ = Σ_h u_hᵀ z_1 exactly
            ref = (u @ Z[:, 0].T).sum(0) if L == 1 else _sdpa_reference(Z, zq, A, u)
            expect_close(
                fn(Z.clone(), zq.clone(), A.clone(), u.clone()),
                ref,
                what="ŷ",
                hint="per head: scores (B, M), softmax over the M context tokens, weighted sum of u_hᵀ z_j; "
                "then sum the heads",
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


# --------------------------------------------------------------------------------------------
# ch02.debiased_gd
# --------------------------------------------------------------------------------------------
def _dgd_loop(Z, zq, eta):
    """(η/M) Σ_j y_j (x_j - x̄)ᵀ x_q with explicit loops over prompts and tokens."""
    B, L, D = Z.shape
    out = torch.zeros(B, dtype=Z.dtype)
    for b in range(B):
        x_bar = sum(Z[b, l, :-1] for l in range(L)) / L
        out[b] = eta / L * sum(Z[b, l, -1] * torch.dot(Z[b, l, :-1] - x_bar, zq[b, :-1]) for l in range(L))
    return out


@task("ch02.debiased_gd", points=2)
def check_debiased_gd(fn):
    """ŷ = (η/M) Σ_j y_j (x_j - x̄)ᵀ x_q: invariant to y_j → y_j + κ."""
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
                hint="x̄ = Z[..., :-1].mean(1); ŷ = η/M · Σ_j y_j (x_j - x̄)·x_q",
            )
    with case():  # the debiasing property, stated on its own: shift every context label by κ
        Z = torch.randn(3, 11, 5, generator=gen, dtype=torch.float64) + 0.5
        zq = _query(3, 5, gen, torch.float64)
        shifted = Z.clone()
        shifted[..., -1] += 2.5
        expect_close(
            fn(shifted, zq.clone(), 0.8),
            fn(Z.clone(), zq.clone(), 0.8).detach(),
            what="ŷ after adding κ = 2.5 to every context label (debiased GD must not change)",
        )


def _gd(Z, zq, eta, *, centre=True, centre_query=False, mean_with_query=False, norm=None, label=-1):
    """Debiased GD with switchable mistakes."""
    x, y, xq = Z[..., :-1], Z[..., label], zq[..., :-1]
    L = x.shape[1]
    x_bar = (x.sum(1) + xq) / (L + 1) if mean_with_query else x.mean(1)
    xc = x - x_bar[:, None] if centre else x
    q = xq - x_bar if centre_query else xq
    return eta * torch.einsum("bl,bld,bd->b", y, xc, q) / (L if norm is None else norm)


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
    """(W_KQ, u) shaped like a trained model's: ω_h on the x-diagonal, μ_h in u's last entry, plus noise."""
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
    """ω_h = mean diag(W_KQ^h[:d_x, :d_x]) / sqrt(D), μ_h = u_h[-1], off-diagonal ratio on d_x columns."""
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


# --------------------------------------------------------------------------------------------
# ch02.pair_distance_to_dgd (an experiment: the grader runs it itself, over seeds)
# --------------------------------------------------------------------------------------------
PAIR_ETA, PAIR_PROMPTS, PAIR_M, PAIR_DX, PAIR_SIGMA2 = 0.9, 8000, 40, 5, 0.1


@functools.lru_cache(maxsize=1024)  # the engine replays a check once per declared mistake
def _pair_experiment(omega, seed, *, heads=2, mu_scale=0.5, score_scale=1.0, root=True):
    """Relative RMS distance of an (ω, μ), (-ω, -μ) pair to debiased GD, with switchable mistakes.

    Written from the kernel-smoother form (2), ŷ = Σ_h μ_h Σ_j y_j softmax_j(ω_h x_jᵀx_q), not
    through W_KQ: the learner builds the weights, the reference does not need them.
    """
    gen = torch.Generator().manual_seed(int(seed))
    Z, zq, _ = _batch(PAIR_PROMPTS, PAIR_M, PAIR_DX, PAIR_SIGMA2, gen)
    Z, zq = Z.double(), zq.double()
    mu = mu_scale * PAIR_ETA / omega  # the pair: η = Σ_h μ_h ω_h = 2ωμ
    signs = (1.0, -1.0)[:heads]
    s = torch.einsum("bjd,bd->bj", Z[..., :-1], zq[:, :-1]) * score_scale  # x_jᵀ x_q
    pred = sum(sg * mu * (torch.softmax(sg * omega * s, -1) * Z[..., -1]).sum(-1) for sg in signs)
    target = _gd(Z, zq, PAIR_ETA)
    ratio = (pred - target).pow(2).mean() / target.pow(2).mean()
    return (ratio.sqrt() if root else ratio).item()


@task("ch02.pair_distance_to_dgd", points=2)
def check_pair_distance_to_dgd(fn):
    """The experiment of §3: how far the ±ω pair is from debiased GD, against the grader's own runs."""
    base = fresh_seed()
    for omega in (0.05, 0.2, 0.4):
        with case():
            runs = torch.tensor([_pair_experiment(omega, base + 1000 + r) for r in range(8)])
            mean, spread = runs.mean().item(), runs.std().item()
            # k·spread over 8 seeds, and at least 40 % of the mean: the distance has a heavy right tail
            # (over 300 seeds it reached +27 % at omega = 0.05); every declared mistake is off by >= 3×
            half = max(4 * spread, 0.4 * mean)
            got = fn(omega, base)
            try:
                got = float(got)
            except (TypeError, ValueError, RuntimeError):
                raise CheckFailed(
                    f"return one float (the relative distance), got {describe_value(got)}"
                ) from None
            if not abs(got - mean) <= half:
                raise CheckFailed(
                    f"for omega={omega} the relative distance to debiased GD should lie in "
                    f"{mean:.4f} ± {half:.4f} (the grader's runs over 8 seeds); got {got:.4f}",
                    hint="heads (ω, μ) and (-ω, -μ) with μ = η/(2ω), W_KQ^h = sqrt(D)·ω_h·diag(I, 0), "
                    "u_h = μ_h e_D; distance = sqrt(mean (ŷ - ŷ_dGD)² / mean ŷ_dGD²)",
                )
