"""Checks for chapter 04's exercises (RoPE as a complex rotation, Euler rotations).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.complex_rotations: RoPE with explicit 2×2 rotation matrices, one pair at a
time; the Euler form with torch's complex numbers (abs / angle) in float64.

The chapter's common mistakes (the @mistake declarations) live in the companion module
``ch04_complex_rotations_mistakes.py``, which the grader loads with this one (it imports every
``checks/ch04_*.py`` of the chapter).
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, task
from ..expect import expect_close, expect_number, expect_tuple, fresh_generator, one_thread
from ..process import largest_intermediate

# (leading dims, N, d, dtype): N = 1, odd N, d not a power of two, both dtypes.
ROTATION_CASES = [
    ((2, 3), 5, 8, torch.float64),
    ((1,), 1, 4, torch.float32),
    ((2, 2), 7, 6, torch.float32),
    ((), 9, 12, torch.float64),
    ((3, 1), 4, 10, torch.float32),
]


def _interleaved(x):
    return x[..., 0::2], x[..., 1::2]


def _merge_interleaved(re, im):
    return torch.stack([re, im], dim=-1).flatten(-2)


def _merge_half(re, im):
    return torch.cat([re, im], dim=-1)


def _rope_reference(x, pos, theta, pairs=_interleaved, merge=_merge_interleaved, sign=1.0):
    """Pair ν of token i times the 2×2 rotation by pos_i·θ_ν, one pair at a time (float64)."""
    x64 = x.double()
    r, p = pairs(x64)
    out_r, out_p = torch.empty_like(r), torch.empty_like(p)
    for m in range(x.shape[-2]):
        for j in range(r.shape[-1]):
            a = sign * float(pos[m]) * float(theta[j])
            c, s = math.cos(a), math.sin(a)
            # [r'; p'] = [[cos, -sin], [sin, cos]] [r; p]
            out_r[..., m, j] = c * r[..., m, j] - s * p[..., m, j]
            out_p[..., m, j] = s * r[..., m, j] + c * p[..., m, j]
    return merge(out_r, out_p).to(x.dtype)


def _polar(x, pairs=_interleaved, eps=1e-12):
    """(ρ, ψ) of the pairs with torch's complex numbers, float64."""
    r, p = pairs(x.double())
    z = torch.complex(r, p)
    return torch.sqrt(z.abs() ** 2 + eps), torch.angle(z)


def _euler_reference(
    x,
    pos,
    theta,
    gamma,
    bias,
    pairs=_interleaved,
    merge=_merge_interleaved,
    *,
    gamma_on_position=False,
    eps=1e-12,
):
    rho, psi = _polar(x, pairs, eps)  # (..., N, d/2)
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    position = pos.double()[:, None] * theta.double()  # (N, d/2)
    angle = gamma * (psi + position) + bias if gamma_on_position else gamma * psi + position + bias
    return merge(rho * torch.cos(angle), rho * torch.sin(angle)).to(x.dtype)


def _tolerance(dtype) -> dict:
    """float32 angles reach pos·θ ≈ 60 rad, where float32 keeps ~4e-6 rad: allow 1e-4 absolute."""
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}


def _random_inputs(gen, lead, N, d, dtype, *, pos_range=40):
    x = torch.randn(*lead, N, d, generator=gen, dtype=torch.float64).to(dtype)
    pos = torch.randint(pos_range, (N,), generator=gen)  # not 0..N-1: positions are an input
    theta = (torch.rand(d // 2, generator=gen, dtype=torch.float64) * 1.5 + 0.01).to(
        dtype
    )  # not base^{-2ν/d}
    return x, pos, theta


@task("ch04.rope", points=2)
def check_rope(fn):
    """RoPE: pair (2ν, 2ν+1) of token i times e^{i pos_i θ_ν}."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        with case():
            x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
            expect_close(
                fn(x.clone(), pos.clone(), theta.clone()),
                _rope_reference(x, pos, theta),
                what="rope",
                **_tolerance(dtype),
                hint="view x as d/2 complex numbers x[..., 2ν] + i x[..., 2ν+1], multiply pair ν of token i "
                "by cos(pos[i] θ_ν) + i sin(pos[i] θ_ν), and interleave the results back",
            )


def _param_shapes(lead, d):
    """Ways gamma/bias may come: a float, shared (d/2,), per head (H, 1, d/2)."""
    shapes = [(), (d // 2,)]
    if len(lead) == 2:
        shapes.append((lead[1], 1, d // 2))
    return shapes


def _expect_finite_gradient(fn, x, pos, theta, gamma, bias, what):
    x = x.clone().requires_grad_(True)
    try:
        out = fn(x, pos, theta, gamma, bias)
        out.float().pow(2).sum().backward()
    except CheckFailed:
        raise
    except Exception as err:  # noqa: BLE001 - a broken graph is the learner's error, named plainly
        raise CheckFailed(
            f"{what}: backward() through your function failed ({type(err).__name__}: {err}); "
            "use differentiable torch operations only"
        ) from None
    if x.grad is None:
        raise CheckFailed(f"{what}: no gradient reached x; use differentiable torch operations only")
    if not torch.isfinite(x.grad).all():
        raise CheckFailed(
            f"{what}: the gradient is NaN or infinite at a pair (Re, Im) = (0, 0). The derivative of "
            "sqrt(u) is infinite at u = 0: compute ρ = sqrt(Re² + Im² + eps), in float32 at least "
            "(eps = 1e-12 underflows to 0 in float16)"
        )


@task("ch04.euler_rotate", points=3)
def check_euler_rotate(fn):
    """Polar form ρ e^{iψ} rotated to angle γ ψ + pos θ + b; magnitude kept."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            with case():
                x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
                if shape == ():
                    gamma, bias = (
                        0.5 + 1.5 * torch.rand((), generator=gen).item(),
                        torch.randn((), generator=gen).item(),
                    )
                else:
                    gamma = (2 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                    bias = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                expect_close(
                    fn(x.clone(), pos.clone(), theta.clone(), gamma, bias),
                    _euler_reference(x, pos, theta, gamma, bias),
                    what="euler_rotate",
                    **_tolerance(dtype),
                    hint="ρ = sqrt(Re² + Im² + eps), ψ = atan2(Im, Re); angle = γ·ψ + pos·θ + b; "
                    "output pairs (ρ cos angle, ρ sin angle), interleaved",
                )
    with case():  # RoPE limit: γ = 1, b = 0 must be RoPE; θ = 0 as well must be the identity
        x, pos, theta = _random_inputs(gen, (2, 3), 6, 8, torch.float64)
        expect_close(
            fn(x.clone(), pos, theta, 1.0, 0.0),
            _rope_reference(x, pos, theta),
            what="euler_rotate with gamma = 1, bias = 0 (must equal RoPE)",
        )
        expect_close(
            fn(x.clone(), pos, torch.zeros_like(theta), 1.0, 0.0),
            x,
            what="euler_rotate with gamma = 1, bias = 0, theta = 0 (must return x)",
            atol=1e-9,
        )
    for dtype in (torch.float32, torch.float16):  # low precision in and out, with zero pairs
        with case():
            # far positions: in float16 itself, pos·θ would be off by radians
            far = 1000 if dtype == torch.float16 else 40
            x, pos, theta = _random_inputs(gen, (2, 2), 5, 8, dtype, pos_range=far)
            x[..., 1, 2:4] = 0  # one zero pair per (batch, head)
            gamma = torch.full((2, 1, 4), 1.5, dtype=dtype)
            bias = torch.full((2, 1, 4), 0.3, dtype=dtype)
            what = f"euler_rotate with {str(dtype).replace('torch.', '')} input and a zero pair"
            expect_close(
                fn(x.clone(), pos, theta, gamma, bias),
                _euler_reference(x, pos, theta, gamma, bias),
                what=what,
                **_tolerance(dtype),
                hint="compute in float32 (x.float(), theta.float(), ...) and cast the result "
                "back to x's dtype",
            )
            _expect_finite_gradient(fn, x, pos, theta, gamma, bias, what)
    with case():  # odd head width: a clear ValueError
        x_odd = torch.randn(1, 2, 3, 5, generator=gen)
        try:
            fn(x_odd, torch.arange(3), torch.ones(2), 1.0, 0.0)
        except ValueError:
            pass
        except Exception as err:  # noqa: BLE001
            raise CheckFailed(
                f"x of shape (1, 2, 3, 5) (odd head width) must raise ValueError, got "
                f"{type(err).__name__}: {err}"
            ) from None
        else:
            raise CheckFailed(
                "x of shape (1, 2, 3, 5) has an odd head width d = 5 (no pairs): raise a ValueError naming it"
            )


def _scores_reference(
    q,
    k,
    pos,
    theta,
    gamma,
    bias,
    pairs=_interleaved,
    *,
    bias_on_keys=False,
    sign=1.0,
    scale=True,
    gamma_on_query_only=False,
):
    """Rotate queries and keys independently with the complex reference, then a dot product."""
    merge = _merge_interleaved if pairs is _interleaved else _merge_half
    q_rot = _euler_reference(q, sign * pos, theta, gamma, bias, pairs, merge).double()
    k_gamma = 1.0 if gamma_on_query_only else gamma
    k_rot = _euler_reference(
        k, sign * pos, theta, k_gamma, bias if bias_on_keys else 0.0, pairs, merge
    ).double()
    scores = q_rot @ k_rot.transpose(-2, -1)
    return (scores / math.sqrt(q.shape[-1]) if scale else scores).to(q.dtype)


@task("ch04.complex_scores", points=3)
def check_complex_scores(fn):
    """Σ_ν ρ^q ρ^k cos(γ(ψ^q_i - ψ^k_j) + b + (p_i - j)θ_ν) / sqrt(d), every (i, j)."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            with case():
                q, pos, theta = _random_inputs(gen, lead, N, d, dtype)
                k = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype)
                if shape == ():
                    gamma, bias = (
                        0.5 + torch.rand((), generator=gen).item(),
                        0.5 + torch.rand((), generator=gen).item(),
                    )
                else:
                    gamma = (0.25 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                    bias = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
                expect_close(
                    fn(q.clone(), k.clone(), pos.clone(), theta.clone(), gamma, bias),
                    _scores_reference(q, k, pos, theta, gamma, bias),
                    what="complex_scores",
                    **_tolerance(dtype),
                    hint="S[i, j] = Σ_ν ρq[i,ν] ρk[j,ν] cos(γ_ν (ψq[i,ν] - ψk[j,ν]) + b_ν + "
                    "(pos[i] - pos[j]) θ_ν) / sqrt(d)",
                )
    with case():  # shift invariance: moving every position by the same amount changes nothing
        q, pos, theta = _random_inputs(gen, (2, 2), 6, 8, torch.float64)
        k = torch.randn(q.shape, generator=gen, dtype=torch.float64)
        gamma, bias = (
            torch.full((2, 1, 4), 0.7, dtype=torch.float64),
            torch.full((2, 1, 4), 0.4, dtype=torch.float64),
        )
        expect_close(
            fn(q.clone(), k.clone(), pos + 17, theta, gamma, bias),
            fn(q.clone(), k.clone(), pos, theta, gamma, bias),
            what="complex_scores with every position shifted by 17 (must not change)",
            hint="the positions may enter only through the differences pos[i] - pos[j]",
        )


# ---------------------------------------------------------------------------------------------
# (B, H, N, M, d, dtype, parameter shape): a cache (N < M), one decoding step (N = 1), N = M.
ATTENTION_CASES = [
    (2, 3, 5, 5, 8, torch.float64, "per_head"),
    (1, 2, 3, 7, 6, torch.float32, "shared"),
    (2, 1, 1, 9, 4, torch.float64, "float"),
    (1, 4, 6, 11, 10, torch.float32, "per_head"),
]


def _attention_reference(q, k, v, theta, gamma, bias):
    """The pairwise formula with complex numbers (float64), masked, softmax, values (unrotated)."""
    N, M, d = q.shape[-2], k.shape[-2], q.shape[-1]
    p_q = torch.arange(M - N, M)  # p_i = i + M - N
    p_k = torch.arange(M)
    rq, fq = _polar(q)  # (B, H, N, d/2)
    rk, fk = _polar(k)  # (B, H, M, d/2)
    gamma = torch.as_tensor(gamma, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    g = gamma[..., None, :] if gamma.ndim else gamma  # (H, 1, 1, d/2): a key axis
    b = bias[..., None, :] if bias.ndim else bias
    rel = (p_q[:, None] - p_k[None, :]).double()[..., None] * theta.double()  # (N, M, d/2)
    # S_ij = Σ_ν ρq ρk cos(γ(ψq_i - ψk_j) + b + (p_i - j) θ_ν) / sqrt(d)
    angle = g * (fq[..., :, None, :] - fk[..., None, :, :]) + b + rel
    scores = (rq[..., :, None, :] * rk[..., None, :, :] * torch.cos(angle)).sum(-1) / math.sqrt(d)
    weights = torch.softmax(scores.masked_fill(p_k[None, :] > p_q[:, None], float("-inf")), dim=-1)
    return (weights @ v.double()).to(q.dtype), weights.to(q.dtype)


def _attention_inputs(gen, B, H, N, M, d, dtype, shape):
    q = torch.randn(B, H, N, d, generator=gen, dtype=torch.float64).to(dtype)
    k, v = (torch.randn(B, H, M, d, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
    theta = (torch.rand(d // 2, generator=gen, dtype=torch.float64) * 1.5 + 0.01).to(dtype)
    if shape == "float":
        return (
            q,
            k,
            v,
            theta,
            0.5 + torch.rand((), generator=gen).item(),
            torch.rand((), generator=gen).item(),
        )
    size = (H, 1, d // 2) if shape == "per_head" else (d // 2,)
    gamma = (0.25 + 1.5 * torch.rand(size, generator=gen, dtype=torch.float64)).to(dtype)
    bias = (2 * torch.rand(size, generator=gen, dtype=torch.float64) - 1).to(dtype)
    return q, k, v, theta, gamma, bias


PAIRWISE_HINT = (
    "the answer builds the pairwise angle tensor (..., N, M, d/2); the adapted angle is linear, so "
    "rotate every query and every key once and take one matrix product (the factorisation)"
)


@task("ch04.adaptive_attention", points=4)
def check_adaptive_attention(fn):
    """Causal attention with per-token adaptive rotations; queries are the last N of M positions."""
    gen, _ = fresh_generator()
    for B, H, N, M, d, dtype, shape in ATTENTION_CASES:
        with case():
            q, k, v, theta, gamma, bias = _attention_inputs(gen, B, H, N, M, d, dtype, shape)
            with largest_intermediate() as seen:
                got = fn(q.clone(), k.clone(), v.clone(), theta.clone(), gamma, bias)
            out, weights = expect_tuple(got, ("out", "weights"))
            ref_out, ref_weights = _attention_reference(q, k, v, theta, gamma, bias)
            expect_close(
                weights,
                ref_weights,
                what=f"weights for (B, H, N, M, d) = {(B, H, N, M, d)}, {dtype}, γ {shape}",
                **_tolerance(dtype),
                hint="softmax over keys of S_ij = τ q'_i · k'_j, key j hidden when j > p_i = i + M - N",
            )
            expect_close(
                out,
                ref_out,
                what=f"out for (N, M) = {(N, M)}",
                **_tolerance(dtype),
                hint="out = weights @ v (v unrotated)",
            )
            if N > 1 and seen.first(lambda s: len(s) >= 3 and s[-3:] == (N, M, d // 2)):
                raise CheckFailed(PAIRWISE_HINT)


# ---------------------------------------------------------------------------------------------
# The experiment: the chapter's recipe, scaled down to run in about a second per model.
RECIPE = dict(N=12, n_sym=6, D=16, H=2, layers=1, steps=60, batch_size=32, lr=2e-2)
REFERENCE_SEEDS = (0, 1, 2)
LEARNER_SEED = 7


@functools.cache
def _reference_accuracies(mode: str) -> tuple[float, ...]:
    """The positional accuracy of the recipe over REFERENCE_SEEDS (cached: it trains models)."""
    from ...mechanisms.complex_rotations_experiment import lookup_accuracy, train_lookup
    from ...tasks.mixed_lookup import mixed_lookup

    accs = []
    for seed in REFERENCE_SEEDS:
        model, _ = train_lookup(mode, seed, **RECIPE)
        test = mixed_lookup(
            500, RECIPE["N"], RECIPE["n_sym"], generator=torch.Generator().manual_seed(1000 + seed)
        )
        accs.append(lookup_accuracy(model, test)["positional"])
    return tuple(accs)


def _accepted_range(mode: str) -> tuple[float, float, float, float]:
    accs = torch.tensor(_reference_accuracies(mode), dtype=torch.float64)
    mean, std = accs.mean().item(), accs.std().item()
    half = max(4 * std, 0.05)  # mean ± 4 std over the seeds, at least ± 0.05
    return mean - half, mean + half, mean, std


@task("ch04.positional_accuracy", points=3, time_limit=60.0)
def check_positional_accuracy(fn):
    """The learner's measured positional accuracy lies in the range the reference runs give."""
    with one_thread():
        for mode in ("nope", "rope"):
            with case():
                low, high, mean, std = _accepted_range(mode)
                got = expect_number(fn(mode, LEARNER_SEED), "positional_accuracy")
                if not low <= got <= high:
                    raise CheckFailed(
                        f"positional_accuracy({mode!r}, seed={LEARNER_SEED}) = {got:.3f}, but the "
                        f"reference runs give {mean:.3f} ± {std:.3f} over seeds {REFERENCE_SEEDS} "
                        f"(accepted: {low:.3f} ... {high:.3f})",
                        hint="follow the recipe in the docstring and return the accuracy on the "
                        "positional questions (kind == 0) of the test batch",
                    )
