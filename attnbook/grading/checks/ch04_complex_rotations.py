"""Checks for chapter 04's exercises (RoPE as a complex rotation, Euler rotations), and their mistakes.

The references are written here, independently of the learner's code and of
attnbook.mechanisms.complex_rotations: RoPE with explicit 2×2 rotation matrices, one pair at a
time; the Euler form with torch's complex numbers (abs / angle) in float64.
"""

from __future__ import annotations

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import expect_close, expect_tuple, fresh_generator

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


def _half(x):
    d = x.shape[-1]
    return x[..., : d // 2], x[..., d // 2 :]


def _merge_interleaved(r, p):
    return torch.stack([r, p], dim=-1).flatten(-2)


def _merge_half(r, p):
    return torch.cat([r, p], dim=-1)


def _rope_reference(x, pos, theta, pairs=_interleaved, merge=_merge_interleaved, sign=1.0):
    """Pair j of token m times the 2×2 rotation by m·θ_j, one pair at a time (float64)."""
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
    """(λ, φ) of the pairs with torch's complex numbers, float64."""
    r, p = pairs(x.double())
    z = torch.complex(r, p)
    return torch.sqrt(z.abs() ** 2 + eps), torch.angle(z)


def _euler_reference(
    x,
    pos,
    theta,
    delta,
    bias,
    pairs=_interleaved,
    merge=_merge_interleaved,
    *,
    delta_on_position=False,
    eps=1e-12,
):
    lam, phi = _polar(x, pairs, eps)  # (..., N, d/2)
    delta = torch.as_tensor(delta, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    position = pos.double()[:, None] * theta.double()  # (N, d/2)
    angle = delta * (phi + position) + bias if delta_on_position else delta * phi + position + bias
    return merge(lam * torch.cos(angle), lam * torch.sin(angle)).to(x.dtype)


def _tolerance(dtype) -> dict:
    """float32 angles reach pos·θ ≈ 60 rad, where float32 keeps ~4e-6 rad: allow 1e-4 absolute."""
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}


def _random_inputs(gen, lead, N, d, dtype, *, pos_range=40):
    x = torch.randn(*lead, N, d, generator=gen, dtype=torch.float64).to(dtype)
    pos = torch.randint(pos_range, (N,), generator=gen)  # not 0..N-1: positions are an input
    theta = (torch.rand(d // 2, generator=gen, dtype=torch.float64) * 1.5 + 0.01).to(
        dtype
    )  # not base^{-2j/d}
    return x, pos, theta


@task("ch04.rope", points=2)
def check_rope(fn):
    """RoPE: pair (2j, 2j+1) of token m times e^{i pos_m θ_j}."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        with case():
            x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
            expect_close(
                fn(x.clone(), pos.clone(), theta.clone()),
                _rope_reference(x, pos, theta),
                what="rope",
                **_tolerance(dtype),
                hint="view x as d/2 complex numbers x[..., 2j] + i x[..., 2j+1], multiply pair j of token m "
                "by cos(pos[m] θ_j) + i sin(pos[m] θ_j), and interleave the results back",
            )


@mistake("ch04.rope", "half-split pairing (j, j + d/2); this book pairs interleaved coordinates (2j, 2j+1)")
def rope_half_split(x, pos, theta):
    return _rope_reference(x, pos, theta, _half, _merge_half)


@mistake("ch04.rope", "rotation the wrong way, by e^{-i m θ} (scores then depend on n - m)")
def rope_wrong_direction(x, pos, theta):
    return _rope_reference(x, pos, theta, sign=-1.0)


@mistake("ch04.rope", "pairs read interleaved but written back as [all real parts | all imaginary parts]")
def rope_concatenated_output(x, pos, theta):
    return _rope_reference(x, pos, theta, _interleaved, _merge_half)


@mistake("ch04.rope", "positions taken as 0 ... N-1 instead of the given pos")
def rope_ignores_pos(x, pos, theta):
    return _rope_reference(x, torch.arange(x.shape[-2]), theta)


@mistake("ch04.rope", "the given theta ignored (recomputed as 10000^(-2j/d))")
def rope_recomputes_theta(x, pos, theta):
    d = x.shape[-1]
    return _rope_reference(x, pos, 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d))


def _param_shapes(lead, d):
    """Ways delta/bias may come: a float, shared (d/2,), per head (H, 1, d/2)."""
    shapes = [(), (d // 2,)]
    if len(lead) == 2:
        shapes.append((lead[1], 1, d // 2))
    return shapes


def _expect_finite_gradient(fn, x, pos, theta, delta, bias, what):
    x = x.clone().requires_grad_(True)
    try:
        out = fn(x, pos, theta, delta, bias)
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
            f"{what}: the gradient is NaN or infinite at a pair (r, p) = (0, 0). The derivative of "
            "sqrt(u) is infinite at u = 0: compute λ = sqrt(r² + p² + eps), in float32 at least "
            "(eps = 1e-12 underflows to 0 in float16)"
        )


@task("ch04.euler_rotate", points=3)
def check_euler_rotate(fn):
    """Polar form λ e^{iφ} rotated to angle δ φ + pos θ + b; magnitude kept."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            with case():
                x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
                if shape == ():
                    delta, bias = (
                        0.5 + 1.5 * torch.rand((), generator=gen).item(),
                        torch.randn((), generator=gen).item(),
                    )
                else:
                    delta = (2 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                    bias = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                expect_close(
                    fn(x.clone(), pos.clone(), theta.clone(), delta, bias),
                    _euler_reference(x, pos, theta, delta, bias),
                    what="euler_rotate",
                    **_tolerance(dtype),
                    hint="λ = sqrt(r² + p² + eps), φ = atan2(p, r); angle = δ·φ + pos·θ + b; "
                    "output pairs (λ cos angle, λ sin angle), interleaved",
                )
    with case():  # RoPE limit: δ = 1, b = 0 must be RoPE; θ = 0 as well must be the identity
        x, pos, theta = _random_inputs(gen, (2, 3), 6, 8, torch.float64)
        expect_close(
            fn(x.clone(), pos, theta, 1.0, 0.0),
            _rope_reference(x, pos, theta),
            what="euler_rotate with delta = 1, bias = 0 (must equal RoPE)",
        )
        expect_close(
            fn(x.clone(), pos, torch.zeros_like(theta), 1.0, 0.0),
            x,
            what="euler_rotate with delta = 1, bias = 0, theta = 0 (must return x)",
            atol=1e-9,
        )
    for dtype in (torch.float32, torch.float16):  # low precision in and out, with zero pairs
        with case():
            # far positions: in float16 itself, pos·θ would be off by radians
            far = 1000 if dtype == torch.float16 else 40
            x, pos, theta = _random_inputs(gen, (2, 2), 5, 8, dtype, pos_range=far)
            x[..., 1, 2:4] = 0  # one zero pair per (batch, head)
            delta = torch.full((2, 1, 4), 1.5, dtype=dtype)
            bias = torch.full((2, 1, 4), 0.3, dtype=dtype)
            what = f"euler_rotate with {str(dtype).replace('torch.', '')} input and a zero pair"
            expect_close(
                fn(x.clone(), pos, theta, delta, bias),
                _euler_reference(x, pos, theta, delta, bias),
                what=what,
                **_tolerance(dtype),
                hint="compute in float32 (x.float(), theta.float(), ...) and cast the result "
                "back to x's dtype",
            )
            _expect_finite_gradient(fn, x, pos, theta, delta, bias, what)
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


@mistake("ch04.euler_rotate", "half-split pairing (j, j + d/2); pair interleaved coordinates (2j, 2j+1)")
def euler_half_split(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, delta, bias, _half, _merge_half)


@mistake(
    "ch04.euler_rotate",
    "δ multiplies the position angle too, δ(φ + pos·θ); only the semantic angle φ is scaled",
)
def euler_delta_scales_position(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, delta, bias, delta_on_position=True)


@mistake("ch04.euler_rotate", "the bias b is missing")
def euler_forgets_bias(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, delta, 0.0)


@mistake("ch04.euler_rotate", "the bias is subtracted instead of added")
def euler_subtracts_bias(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, delta, -torch.as_tensor(bias))


@mistake("ch04.euler_rotate", "the position angle is missing")
def euler_without_position(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_reference(x, pos, theta * 0, delta, bias)


@mistake(
    "ch04.euler_rotate",
    "λ = sqrt(r² + p²) without eps: its gradient is NaN at a zero pair (r, p) = (0, 0); "
    "compute sqrt(r² + p² + eps)",
)
def euler_no_eps(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_float(x, pos, theta, delta, bias, eps=0.0)


@mistake(
    "ch04.euler_rotate",
    "computed in float16, where eps = 1e-12 underflows to 0 and the angles lose "
    "precision; compute in float32 and cast the result back to x's dtype",
)
def euler_no_upcast(x, pos, theta, delta, bias, eps=1e-12):
    return _euler_float(x, pos, theta, delta, bias, work=x.dtype)


@mistake(
    "ch04.euler_rotate",
    "an odd head width was accepted (its last coordinate dropped); raise a ValueError: "
    "with d odd there are no pairs",
)
def euler_accepts_odd_width(x, pos, theta, delta, bias, eps=1e-12):
    if x.shape[-1] % 2:
        x = x[..., :-1]
        theta = theta[: x.shape[-1] // 2]
    return _euler_float(x, pos, theta, delta, bias)


def _euler_float(x, pos, theta, delta, bias, *, eps=1e-12, work=None):
    """euler_rotate through atan2 in ``work`` (float32 by default), as a learner writes it."""
    if x.shape[-1] % 2:
        raise ValueError("odd head width")
    work = (torch.float64 if x.dtype == torch.float64 else torch.float32) if work is None else work
    r, p = _interleaved(x.to(work))
    lam = torch.sqrt(r * r + p * p + eps)
    angle = (
        torch.as_tensor(delta, dtype=work) * torch.atan2(p, r)
        + pos.to(work)[:, None] * theta.to(work)
        + torch.as_tensor(bias, dtype=work)
    )
    return _merge_interleaved(lam * torch.cos(angle), lam * torch.sin(angle)).to(x.dtype)


def _scores_reference(
    q,
    k,
    pos,
    theta,
    delta,
    bias,
    pairs=_interleaved,
    *,
    bias_on_keys=False,
    sign=1.0,
    scale=True,
    delta_on_query_only=False,
):
    """Rotate queries and keys independently with the complex reference, then a dot product."""
    merge = _merge_interleaved if pairs is _interleaved else _merge_half
    q_rot = _euler_reference(q, sign * pos, theta, delta, bias, pairs, merge).double()
    k_delta = 1.0 if delta_on_query_only else delta
    k_rot = _euler_reference(
        k, sign * pos, theta, k_delta, bias if bias_on_keys else 0.0, pairs, merge
    ).double()
    scores = q_rot @ k_rot.transpose(-2, -1)
    return (scores / math.sqrt(q.shape[-1]) if scale else scores).to(q.dtype)


@task("ch04.complex_scores", points=3)
def check_complex_scores(fn):
    """Σ_j λ^q λ^k cos(δ(φ^q_m - φ^k_n) + b + (m - n)θ_j) / sqrt(d), all pairs (m, n)."""
    gen, _ = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            with case():
                q, pos, theta = _random_inputs(gen, lead, N, d, dtype)
                k = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype)
                if shape == ():
                    delta, bias = (
                        0.5 + torch.rand((), generator=gen).item(),
                        0.5 + torch.rand((), generator=gen).item(),
                    )
                else:
                    delta = (0.25 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                    bias = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
                expect_close(
                    fn(q.clone(), k.clone(), pos.clone(), theta.clone(), delta, bias),
                    _scores_reference(q, k, pos, theta, delta, bias),
                    what="complex_scores",
                    **_tolerance(dtype),
                    hint="score[m, n] = Σ_j λq[m,j] λk[n,j] cos(δ_j (φq[m,j] - φk[n,j]) + b_j + "
                    "(pos[m] - pos[n]) θ_j) / sqrt(d)",
                )
    with case():  # shift invariance: moving every position by the same amount changes nothing
        q, pos, theta = _random_inputs(gen, (2, 2), 6, 8, torch.float64)
        k = torch.randn(q.shape, generator=gen, dtype=torch.float64)
        delta, bias = (
            torch.full((2, 1, 4), 0.7, dtype=torch.float64),
            torch.full((2, 1, 4), 0.4, dtype=torch.float64),
        )
        expect_close(
            fn(q.clone(), k.clone(), pos + 17, theta, delta, bias),
            fn(q.clone(), k.clone(), pos, theta, delta, bias),
            what="complex_scores with every position shifted by 17 (must not change)",
            hint="the positions may enter only through the differences pos[m] - pos[n]",
        )


@mistake(
    "ch04.complex_scores",
    "the bias is added to the key angles too, where it cancels; add b to the query angle only",
)
def scores_bias_on_both(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, delta, bias, bias_on_keys=True)


@mistake("ch04.complex_scores", "the positional angle uses (n - m)·θ instead of (m - n)·θ")
def scores_relative_sign_flipped(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, delta, bias, sign=-1.0)


@mistake("ch04.complex_scores", "the scores are not divided by sqrt(d)")
def scores_unscaled(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, delta, bias, scale=False)


@mistake("ch04.complex_scores", "δ scales the query angle only; it scales the difference φ^q - φ^k")
def scores_delta_on_query_only(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, delta, bias, delta_on_query_only=True)


@mistake("ch04.complex_scores", "half-split pairing (j, j + d/2); pair interleaved coordinates (2j, 2j+1)")
def scores_half_split(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, delta, bias, _half)


@mistake(
    "ch04.complex_scores",
    "only the queries were rotated by their positions, so the scores depend on absolute "
    "positions; rotate the keys by theirs too, so that (m - n)·θ remains",
)
def scores_absolute_positions(q, k, pos, theta, delta, bias, eps=1e-12):
    q_rot = _euler_reference(q, pos, theta, delta, bias).double()
    k_rot = _euler_reference(k, torch.zeros_like(pos), theta, delta, 0.0).double()
    return (q_rot @ k_rot.transpose(-2, -1) / math.sqrt(q.shape[-1])).to(q.dtype)


# ---------------------------------------------------------------------------------------------
@task("ch04.rope_deviation", points=1)
def check_rope_deviation(fn):
    """Per head, the root-mean-square distance of δ from 1 and of b from 0."""
    gen, _ = fresh_generator()
    for H, F, dtype in [
        (4, 4, torch.float32),
        (1, 3, torch.float64),
        (6, 1, torch.float32),
        (3, 8, torch.float64),
    ]:
        with case():
            delta = (1 + 0.5 * torch.randn(H, F, generator=gen, dtype=torch.float64)).to(dtype)
            bias = torch.randn(H, F, generator=gen, dtype=torch.float64).to(dtype)
            # reference: explicit loops
            rms = lambda t, centre: torch.tensor(  # noqa: E731
                [math.sqrt(sum((float(t[h, j]) - centre) ** 2 for j in range(F)) / F) for h in range(H)],
                dtype=dtype,
            )
            got = expect_tuple(fn(delta.clone(), bias.clone()), ("delta_deviation", "bias_deviation"))
            expect_close(
                got[0],
                rms(delta, 1.0),
                what="delta deviation",
                hint="per head h: sqrt(mean_j (δ[h, j] - 1)²), shape (H,)",
            )
            expect_close(
                got[1],
                rms(bias, 0.0),
                what="bias deviation",
                hint="per head h: sqrt(mean_j b[h, j]²), shape (H,)",
            )


@mistake("ch04.rope_deviation", "distance of δ from 0; RoPE is δ = 1")
def deviation_from_zero(delta, bias):
    return delta.pow(2).mean(-1).sqrt(), bias.pow(2).mean(-1).sqrt()


@mistake(
    "ch04.rope_deviation",
    "signed means of δ - 1 and of b, where deviations of opposite signs cancel; use the root mean square",
)
def deviation_signed_mean(delta, bias):
    return (delta - 1).mean(-1), bias.mean(-1)


@mistake("ch04.rope_deviation", "mean absolute deviation instead of the root mean square")
def deviation_mean_absolute(delta, bias):
    return (delta - 1).abs().mean(-1), bias.abs().mean(-1)


@mistake("ch04.rope_deviation", "one number for all the heads; the deviation is per head, shape (H,)")
def deviation_over_all_heads(delta, bias):
    return (delta - 1).pow(2).mean().sqrt(), bias.pow(2).mean().sqrt()
