"""Checks for chapter 02's exercises (in-context linear regression with multi-head softmax attention).

References are written here, independently of the learner's code and of
attnbook.mechanisms.icl_regression: torch.nn.functional.scaled_dot_product_attention for the
forward pass, explicit loops for debiased GD and for reading (ω, μ), and least squares
(torch.linalg.lstsq) to test the statistics of the prompt generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import CheckFailed, task
from ..expect import describe, expect_close, expect_tensor, fresh_generator


# --------------------------------------------------------------------------------------------
# ch02.icl_batch
# --------------------------------------------------------------------------------------------
def _call_batch(fn, B, L, d, sigma2, seed):
    returned = fn(B, L, d, sigma2, torch.Generator().manual_seed(seed))
    if not isinstance(returned, tuple) or len(returned) != 3:
        raise CheckFailed(f"return a tuple (Z, zq, yq); got {type(returned).__name__}")
    Z, zq, yq = returned
    what = describe({"B": B, "L": L, "d": d, "sigma2": sigma2, "seed": seed})
    expect_tensor(Z, shape=(B, L, d + 1), dtype=torch.float32, what=f"Z for {what}")
    expect_tensor(zq, shape=(B, d + 1), dtype=torch.float32, what=f"zq for {what}")
    expect_tensor(yq, shape=(B,), dtype=torch.float32, what=f"yq for {what}")
    return Z, zq, yq


@task("ch02.icl_batch", points=2)
def check_icl_batch(fn):
    """Prompts (Z, zq, yq): x ~ N(0, I), β ~ N(0, I/d), y = βᵀx + ε with Var ε = σ², zq = [x_q; 0]."""
    _, seed = fresh_generator()
    # Reproducible through the generator, and different for another seed.
    first, again, other = (_call_batch(fn, 4, 6, 3, 0.1, s) for s in (seed, seed, seed + 1))
    if not all(torch.equal(a, b) for a, b in zip(first, again)):
        raise CheckFailed("two calls with generators of the same seed gave different prompts: draw every "
                          "random number from the `generator` argument (torch.randn(..., generator=generator))")
    if torch.equal(first[0], other[0]):
        raise CheckFailed("generators with different seeds gave the same prompts: use the generator you are given")
    for B, L, d, sigma2 in [(3000, 50, 4, 0.2), (2000, 40, 7, 0.05), (1500, 30, 3, 0.0)]:
        Z, zq, yq = _call_batch(fn, B, L, d, sigma2, seed)
        case = describe({"B": B, "L": L, "d": d, "sigma2": sigma2, "seed": seed})
        if not (zq[:, -1] == 0).all():
            extra = " (it holds y_q: the model would read the answer)" if torch.allclose(zq[:, -1], yq) else ""
            raise CheckFailed(f"zq[:, -1] must be exactly 0 for {case}: the query's label slot is empty{extra}")
        x = torch.cat([Z[..., :d], zq[:, None, :d]], dim=1).double()  # (B, L+1, d)
        mean, var = x.mean().item(), x.var().item()
        if abs(mean) > 0.03 or abs(var - 1) > 0.05:
            raise CheckFailed(f"the covariates x (Z[..., :d] and zq[:, :d]) should be N(0, I): got mean {mean:.3f}, "
                              f"variance {var:.3f} for {case}")
        # Per-prompt least squares of y on x: β̂ = β + noise, residual variance ≈ σ².
        X, y = Z[..., :d].double(), Z[..., -1].double()
        beta_hat = torch.linalg.lstsq(X, y[..., None]).solution[..., 0]  # (B, d)
        residual = y - torch.einsum("bld,bd->bl", X, beta_hat)
        s2 = (residual.pow(2).sum(-1) / (L - d)).mean().item()
        if abs(s2 - sigma2) > 0.1 * sigma2 + 2e-3:
            hint = ""
            if sigma2 > 0 and abs(s2 - sigma2**2) < 0.1 * sigma2**2 + 2e-3:
                hint = " — that is σ⁴: the noise's VARIANCE is sigma2, its standard deviation sqrt(sigma2)"
            elif sigma2 > 0 and abs(s2 - 1) < 0.1:
                hint = " — the noise must be scaled to variance sigma2"
            raise CheckFailed(f"the context labels' noise variance (least-squares residual variance per prompt) should "
                              f"be sigma2 = {sigma2}, got {s2:.4f} for {case}{hint}")
        tr_inv = d / (L - d - 1)  # E tr((XᵀX)⁻¹) for Gaussian X
        norm2 = beta_hat.pow(2).sum(-1).mean().item()  # ≈ E‖β‖² + σ² tr_inv
        spread = beta_hat.var(dim=0).mean().item()  # across prompts, per coordinate
        expected_norm2 = 1 + sigma2 * tr_inv
        if abs(norm2 - d * expected_norm2) < 0.2 * d:
            raise CheckFailed(f"E‖β‖² should be 1, the per-prompt least-squares fits give {norm2:.3f} ≈ d for {case}: "
                              "β ~ N(0, I) has E‖β‖² = d; draw β ~ N(0, I/d) (divide by sqrt(d)) so that Var(βᵀx) = 1")
        if abs(spread - expected_norm2 / d) > 0.25 / d:
            raise CheckFailed(f"β should be drawn afresh for every prompt, with variance 1/d = {1 / d:.3f} per coordinate; "
                              f"across prompts the fitted β vary by {spread:.4f} for {case}")
        if abs(norm2 - expected_norm2) > 0.12:
            raise CheckFailed(f"E‖β‖² should be 1 (β ~ N(0, I/d)); the per-prompt least-squares fits give "
                              f"{norm2:.3f} (expected ≈ {expected_norm2:.3f}) for {case}")
        # The query's target uses the same β and fresh noise of the same variance.
        r2 = (yq.double() - (zq[:, :d].double() * beta_hat).sum(-1)).pow(2).mean().item()
        expected_r2 = sigma2 * (1 + tr_inv)
        if abs(r2 - expected_r2) > 0.15 * expected_r2 + 5e-3:
            if r2 < 0.5 * expected_r2:
                why = "y_q must carry noise ε_q ~ N(0, sigma2) like the context labels"
            else:
                why = "y_q must be βᵀx_q + ε_q with the SAME β as the prompt's context labels"
            raise CheckFailed(f"the query target does not fit the prompt's β: mean (y_q - x_qᵀβ̂)² = {r2:.4f}, "
                              f"expected ≈ {expected_r2:.4f} for {case}: {why}")


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


def _forward_variant(Z, zq, A, u, *, scale=None, with_self=False, softmax_dim=-1, transpose=False):
    """Known mistakes, computed from scratch so hints can name them."""
    D = Z.shape[-1]
    keys = torch.cat([Z, zq[:, None]], dim=1) if with_self else Z
    A = A.transpose(-1, -2) if transpose else A
    s = torch.einsum("bld,hde,be->bhl", keys, A, zq) * (1 / math.sqrt(D) if scale is None else scale)
    p = torch.softmax(s, dim=softmax_dim)
    v = torch.einsum("hd,bld->bhl", u, keys)
    return (p * v).sum((1, 2))


@task("ch02.icl_forward", points=3)
def check_icl_forward(fn):
    """ŷ = Σ_h Σ_ℓ softmax_ℓ(z_ℓᵀ A_h z_q / sqrt(D)) u_hᵀ z_ℓ over the L context tokens only."""
    gen, seed = fresh_generator()
    for B, H, L, D, dtype in [(4, 3, 7, 6, torch.float64), (2, 1, 1, 3, torch.float32), (5, 2, 13, 5, torch.float32),
                              (3, 4, 40, 6, torch.float64), (1, 2, 1, 8, torch.float64)]:
        Z = torch.randn(B, L, D, generator=gen, dtype=dtype)
        zq = torch.cat([torch.randn(B, D - 1, generator=gen, dtype=dtype), torch.zeros(B, 1, dtype=dtype)], -1)
        A = torch.randn(H, D, D, generator=gen, dtype=dtype)  # not symmetric: a transpose shows
        u = torch.randn(H, D, generator=gen, dtype=dtype)
        # one context token: its weight is 1 in every head, so ŷ = Σ_h u_hᵀ z_1 exactly
        ref = (u @ Z[:, 0].T).sum(0) if L == 1 else _sdpa_reference(Z, zq, A, u)
        case = describe({"Z": Z, "zq": zq, "H": H, "dtype": dtype, "seed": seed})
        wrong = {
            "the query attends to itself too; it must see only the L context tokens":
                lambda: _forward_variant(Z, zq, A, u, with_self=True),
            "scores scaled by 1/sqrt(d) with d = D - 1; the scale is 1/sqrt(D), the token width":
                lambda: _forward_variant(Z, zq, A, u, scale=1 / math.sqrt(D - 1)),
            "scores not scaled by 1/sqrt(D)": lambda: _forward_variant(Z, zq, A, u, scale=1.0),
            "softmax over the heads; it runs over the L context tokens, separately in each head":
                lambda: _forward_variant(Z, zq, A, u, softmax_dim=1),
            "A_h transposed: the score is z_ℓᵀ A_h z_q (key on the left), not z_qᵀ A_h z_ℓ":
                lambda: _forward_variant(Z, zq, A, u, transpose=True),
        }
        args = (Z.clone(), zq.clone(), A.clone(), u.clone())
        expect_close(fn(*args), ref, what=f"ŷ for {case}", wrong=wrong,
                     hint="per head: scores (B, L), softmax over L, weighted sum of u_hᵀ z_ℓ; then sum the heads")
    # Permutation invariance over the context pairs.
    Z = torch.randn(3, 9, 5, generator=gen, dtype=torch.float64)
    zq = torch.cat([torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)], -1)
    A, u = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64), torch.randn(2, 5, generator=gen, dtype=torch.float64)
    perm = torch.randperm(9, generator=gen)
    expect_close(fn(Z[:, perm].clone(), zq, A, u), fn(Z, zq, A, u).detach(),
                 what="ŷ after permuting the context pairs (it must not change: attention is a set operation)")


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


def _gd_variant(Z, zq, eta, *, centre=True, centre_query=False, mean_with_query=False, norm=None):
    x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
    L = x.shape[1]
    if mean_with_query:
        x_bar = (x.sum(1) + xq) / (L + 1)
    else:
        x_bar = x.mean(1)
    xc = x - x_bar[:, None] if centre else x
    q = xq - x_bar if centre_query else xq
    return eta * torch.einsum("bl,bld,bd->b", y, xc, q) / (L if norm is None else norm)


@task("ch02.debiased_gd", points=2)
def check_debiased_gd(fn):
    """ŷ = (η/L) Σ_ℓ y_ℓ (x_ℓ - x̄)ᵀ x_q: invariant to y_ℓ → y_ℓ + c."""
    gen, seed = fresh_generator()
    for B, L, D, dtype in [(4, 9, 6, torch.float64), (3, 1, 4, torch.float32), (5, 17, 3, torch.float32), (2, 40, 7, torch.float64)]:
        # covariates with a non-zero mean, so that centring them matters
        Z = torch.randn(B, L, D, generator=gen, dtype=dtype) + 0.7
        zq = torch.cat([torch.randn(B, D - 1, generator=gen, dtype=dtype) + 0.7, torch.zeros(B, 1, dtype=dtype)], -1)
        eta = 0.3 + torch.rand(1, generator=gen).item()
        ref = _dgd_loop(Z, zq, eta)
        case = describe({"Z": Z, "eta": round(eta, 3), "dtype": dtype, "seed": seed})
        wrong = {
            "vanilla GD: the covariates x_ℓ are not centred (subtract x̄ = mean of the context x_ℓ)":
                lambda: _gd_variant(Z, zq, eta, centre=False),
            "x_q is centred too; only the context covariates are centred":
                lambda: _gd_variant(Z, zq, eta, centre_query=True),
            "x̄ includes x_q; it is the mean of the L context covariates only":
                lambda: _gd_variant(Z, zq, eta, mean_with_query=True),
            "the 1/L factor is missing": lambda: _gd_variant(Z, zq, eta, norm=1),
            "divided by L - 1 instead of L": lambda: _gd_variant(Z, zq, eta, norm=L - 1),
        }
        expect_close(fn(Z.clone(), zq.clone(), eta), ref, what=f"ŷ for {case}", wrong=wrong,
                     hint="x̄ = Z[..., :-1].mean(1); ŷ = η/L · Σ_ℓ y_ℓ (x_ℓ - x̄)·x_q")
    # The debiasing property, stated on its own: shift every context label by c.
    Z = torch.randn(3, 11, 5, generator=gen, dtype=torch.float64) + 0.5
    zq = torch.cat([torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)], -1)
    shifted = Z.clone()
    shifted[..., -1] += 2.5
    expect_close(fn(shifted, zq.clone(), 0.8), fn(Z.clone(), zq.clone(), 0.8).detach(),
                 what="ŷ after adding c = 2.5 to every context label (debiased GD must not change)")


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


def _ratio(A, rows, cols, exclude_y_row=False):
    D = A.shape[-1]
    d = D - 1
    block = A[:, rows, cols]
    r, c = block.shape[1:]
    off = ~torch.eye(r, c, dtype=torch.bool)
    if exclude_y_row and r == D:
        off[d] = False
    diag = torch.diagonal(A, dim1=-2, dim2=-1)[:, :d]
    return (block[:, off].abs().mean() / diag.abs().mean()).to(torch.float64)


@task("ch02.extract_omega_mu", points=2)
def check_extract_omega_mu(fn):
    """ω_h = mean diag(A_h[:d, :d]) / sqrt(D), μ_h = u_h[-1], off-diagonal ratio on A's first d columns."""
    gen, seed = fresh_generator()
    for H, D, dtype in [(2, 6, torch.float64), (1, 4, torch.float32), (4, 7, torch.float64), (3, 9, torch.float32)]:
        d = D - 1
        omega_true = (torch.rand(H, generator=gen, dtype=dtype) + 0.2) * torch.where(torch.arange(H) % 2 == 0, 1.0, -1.0).to(dtype)
        mu_true = 3 * torch.randn(H, generator=gen, dtype=dtype)
        A = math.sqrt(D) * omega_true[:, None, None] * torch.eye(D, dtype=dtype)
        A = A + 0.05 * torch.randn(H, D, D, generator=gen, dtype=dtype)
        A[:, d, :d] += 0.3 * torch.randn(H, d, generator=gen, dtype=dtype)  # the y-row (acts on x_q)
        A[:, :, d] += torch.randn(H, D, generator=gen, dtype=dtype)  # last column: multiplies z_q's 0
        A[:, d, d] = 3.0  # the y–y corner is not part of ω
        u = 0.1 * torch.randn(H, D, generator=gen, dtype=dtype)
        u[:, -1] = mu_true
        returned = fn(A.clone(), u.clone())
        case = describe({"A": A, "dtype": dtype, "seed": seed})
        if not isinstance(returned, tuple) or len(returned) != 3:
            raise CheckFailed(f"return a tuple (omega, mu, ratio); got {type(returned).__name__} for {case}")
        omega, mu, ratio = returned
        ref_omega, ref_mu, ref_ratio = _pattern_reference(A, u)
        diag_d = torch.diagonal(A, dim1=-2, dim2=-1)[:, :d]
        wrong_omega = {
            "the 1/sqrt(D) is missing: the score divides z_ℓᵀ A z_q by sqrt(D), so ω = diag / sqrt(D)":
                lambda: diag_d.mean(-1),
            "divided by sqrt(d) instead of sqrt(D) = sqrt(d + 1)": lambda: diag_d.mean(-1) / math.sqrt(d),
            "the y–y corner A[d, d] is averaged into ω; use only the d x-diagonal entries":
                lambda: torch.diagonal(A, dim1=-2, dim2=-1).mean(-1) / math.sqrt(D),
        }
        expect_close(omega, ref_omega, what=f"omega for {case}", wrong=wrong_omega)
        wrong_mu = {
            "μ read from the first entry of u; it is the last (label) entry u[:, -1]": lambda: u[:, 0],
            "the x-entries of u are summed into μ; μ is the last entry alone": lambda: u.sum(-1),
        }
        expect_close(mu, ref_mu, what=f"mu for {case}", wrong=wrong_mu)
        try:
            ratio_t = torch.as_tensor(float(ratio), dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise CheckFailed(f"ratio must be a float (or a one-element tensor), got {type(ratio).__name__}") from None
        wrong_ratio = {
            "the transposed block: the entries acting on x_q are A[:, :, :d] (the first d COLUMNS), not the first d rows":
                lambda: _ratio(A, slice(None, d), slice(None)),
            "the whole matrix is used; A's last column multiplies z_q's empty label slot and never matters":
                lambda: _ratio(A, slice(None), slice(None)),
            "the y-row A[d, :d] is left out; a score that depends on y_ℓ is off-pattern too":
                lambda: _ratio(A, slice(None), slice(None, d), exclude_y_row=True),
        }
        expect_close(ratio_t, torch.tensor(ref_ratio, dtype=torch.float64), what=f"ratio for {case}",
                     wrong=wrong_ratio, atol=1e-5, rtol=1e-4)
