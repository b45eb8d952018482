"""Checks for chapter 04's exercises (RoPE as a complex rotation, adaptive Euler rotations).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.complex_rotation: RoPE with explicit 2×2 rotation matrices, one pair at a
time; the Euler form with torch's complex numbers (abs / angle) in float64.
"""
from __future__ import annotations

import math

import torch

from ..core import CheckFailed, task
from ..expect import describe, expect_close, fresh_generator

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
    return x[..., : d // 2], x[..., d // 2:]


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


def _euler_reference(x, pos, theta, delta, bias, pairs=_interleaved, merge=_merge_interleaved, *,
                     delta_on_position=False, eps=1e-12):
    lam, phi = _polar(x, pairs, eps)  # (..., N, d/2)
    delta = torch.as_tensor(delta, dtype=torch.float64)
    bias = torch.as_tensor(bias, dtype=torch.float64)
    position = pos.double()[:, None] * theta.double()  # (N, d/2)
    angle = delta * (phi + position) + bias if delta_on_position else delta * phi + position + bias
    return merge(lam * torch.cos(angle), lam * torch.sin(angle)).to(x.dtype)


def _random_inputs(gen, lead, N, d, dtype, *, pos_range=40):
    x = torch.randn(*lead, N, d, generator=gen, dtype=torch.float64).to(dtype)
    pos = torch.randint(pos_range, (N,), generator=gen)  # not 0..N-1: positions are an input
    theta = (torch.rand(d // 2, generator=gen, dtype=torch.float64) * 1.5 + 0.01).to(dtype)  # not base^{-2j/d}
    return x, pos, theta


@task("ch04.rope", points=2)
def check_rope(fn):
    """RoPE: pair (2j, 2j+1) of token m times e^{i pos_m θ_j}."""
    gen, seed = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
        case = describe({"x": x, "dtype": dtype, "seed": seed})
        ref = _rope_reference(x, pos, theta)
        standard = 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
        wrong = {
            "half-split pairing (j, j + d/2); this book pairs interleaved coordinates (2j, 2j+1)":
                lambda: _rope_reference(x, pos, theta, _half, _merge_half),
            "rotation the wrong way, by e^{-i m θ} (scores then depend on n - m)":
                lambda: _rope_reference(x, pos, theta, sign=-1.0),
            "pairs read interleaved but written back as [all real parts | all imaginary parts]":
                lambda: _rope_reference(x, pos, theta, _interleaved, _merge_half),
            "positions taken as 0 ... N-1 instead of the given pos":
                lambda: _rope_reference(x, torch.arange(N), theta),
            "the given theta ignored (recomputed as 10000^(-2j/d))":
                lambda: _rope_reference(x, pos, standard),
        }
        expect_close(fn(x.clone(), pos.clone(), theta.clone()), ref, what=f"rope for {case}", wrong=wrong,
                     hint="view x as d/2 complex numbers x[..., 2j] + i x[..., 2j+1], multiply pair j of token m "
                          "by cos(pos[m] θ_j) + i sin(pos[m] θ_j), and interleave the results back")


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
        raise CheckFailed(f"{what}: backward() through your function failed ({type(err).__name__}: {err}); "
                          "use differentiable torch operations only") from None
    if x.grad is None:
        raise CheckFailed(f"{what}: no gradient reached x; use differentiable torch operations only")
    if not torch.isfinite(x.grad).all():
        raise CheckFailed(
            f"{what}: the gradient is NaN or infinite at a pair (r, p) = (0, 0). The derivative of "
            "sqrt(u) is infinite at u = 0: compute λ = sqrt(r² + p² + eps), in float32 at least "
            "(eps = 1e-12 underflows to 0 in float16)")


@task("ch04.euler_rotate", points=3)
def check_euler_rotate(fn):
    """Polar form λ e^{iφ} rotated to angle δ φ + pos θ + b; magnitude kept."""
    gen, seed = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            x, pos, theta = _random_inputs(gen, lead, N, d, dtype)
            if shape == ():
                delta, bias = 0.5 + 1.5 * torch.rand((), generator=gen).item(), torch.randn((), generator=gen).item()
            else:
                delta = (2 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                bias = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
            case = describe({"x": x, "delta": delta if shape else round(delta, 3), "dtype": dtype, "seed": seed})
            ref = _euler_reference(x, pos, theta, delta, bias)
            wrong = {
                "half-split pairing (j, j + d/2); pair interleaved coordinates (2j, 2j+1)":
                    lambda: _euler_reference(x, pos, theta, delta, bias, _half, _merge_half),
                "δ multiplies the position angle too, δ(φ + pos·θ); only the semantic angle φ is scaled":
                    lambda: _euler_reference(x, pos, theta, delta, bias, delta_on_position=True),
                "the bias b is missing": lambda: _euler_reference(x, pos, theta, delta, 0.0),
                "the bias is subtracted instead of added": lambda: _euler_reference(x, pos, theta, delta, -torch.as_tensor(bias)),
                "the position angle is missing": lambda: _euler_reference(x, pos, theta * 0, delta, bias),
            }
            got = fn(x.clone(), pos.clone(), theta.clone(), delta, bias)
            expect_close(got, ref, what=f"euler_rotate for {case}", wrong=wrong,
                         hint="λ = sqrt(r² + p² + eps), φ = atan2(p, r); angle = δ·φ + pos·θ + b; "
                              "output pairs (λ cos angle, λ sin angle), interleaved")
    # RoPE limit: δ = 1, b = 0 must be RoPE; θ = 0 as well must be the identity.
    x, pos, theta = _random_inputs(gen, (2, 3), 6, 8, torch.float64)
    expect_close(fn(x.clone(), pos, theta, 1.0, 0.0), _rope_reference(x, pos, theta),
                 what=f"euler_rotate with delta = 1, bias = 0 (must equal RoPE), seed={seed}")
    expect_close(fn(x.clone(), pos, torch.zeros_like(theta), 1.0, 0.0), x,
                 what=f"euler_rotate with delta = 1, bias = 0, theta = 0 (must return x), seed={seed}", atol=1e-9)
    # float16 in, float16 out, with zero pairs: finite values and gradients.
    for dtype in (torch.float32, torch.float16):
        x, pos, theta = _random_inputs(gen, (2, 2), 5, 8, dtype)
        x[..., 1, 2:4] = 0  # one zero pair per (batch, head)
        delta = torch.full((2, 1, 4), 1.5, dtype=dtype)
        bias = torch.full((2, 1, 4), 0.3, dtype=dtype)
        what = f"euler_rotate with {str(dtype).replace('torch.', '')} input and a zero pair, seed={seed}"
        expect_close(fn(x.clone(), pos, theta, delta, bias), _euler_reference(x, pos, theta, delta, bias), what=what,
                     hint="compute in float32 (x.float(), theta.float(), ...) and cast the result back to x's dtype")
        _expect_finite_gradient(fn, x, pos, theta, delta, bias, what)
    # odd head width: a clear ValueError
    x_odd = torch.randn(1, 2, 3, 5, generator=gen)
    try:
        fn(x_odd, torch.arange(3), torch.ones(2), 1.0, 0.0)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001
        raise CheckFailed(f"x of shape (1, 2, 3, 5) (odd head width) must raise ValueError, got {type(err).__name__}: {err}") from None
    else:
        raise CheckFailed("x of shape (1, 2, 3, 5) has an odd head width d = 5 (no pairs): raise a ValueError naming it")


def _scores_reference(q, k, pos, theta, delta, bias, pairs=_interleaved, *, bias_on_keys=False, sign=1.0,
                      scale=True, delta_on_query_only=False):
    """Rotate queries and keys independently with the complex reference, then a dot product."""
    merge = _merge_interleaved if pairs is _interleaved else _merge_half
    q_rot = _euler_reference(q, sign * pos, theta, delta, bias, pairs, merge).double()
    k_delta = 1.0 if delta_on_query_only else delta
    k_rot = _euler_reference(k, sign * pos, theta, k_delta, bias if bias_on_keys else 0.0, pairs, merge).double()
    scores = q_rot @ k_rot.transpose(-2, -1)
    return (scores / math.sqrt(q.shape[-1]) if scale else scores).to(q.dtype)


@task("ch04.complex_scores", points=3)
def check_complex_scores(fn):
    """Σ_j λ^q λ^k cos(δ(φ^q_m - φ^k_n) + b + (m - n)θ_j) / sqrt(d), all pairs (m, n)."""
    gen, seed = fresh_generator()
    for lead, N, d, dtype in ROTATION_CASES:
        for shape in _param_shapes(lead, d):
            q, pos, theta = _random_inputs(gen, lead, N, d, dtype)
            k = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype)
            if shape == ():
                delta, bias = 0.5 + torch.rand((), generator=gen).item(), 0.5 + torch.rand((), generator=gen).item()
            else:
                delta = (0.25 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).to(dtype)
                bias = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
            case = describe({"q": q, "delta": delta if shape else round(delta, 3), "dtype": dtype, "seed": seed})
            ref = _scores_reference(q, k, pos, theta, delta, bias)
            wrong = {
                "the bias is added to the key angles too, where it cancels; add b to the query angle only":
                    lambda: _scores_reference(q, k, pos, theta, delta, bias, bias_on_keys=True),
                "the positional angle uses (n - m)·θ instead of (m - n)·θ":
                    lambda: _scores_reference(q, k, pos, theta, delta, bias, sign=-1.0),
                "the scores are not divided by sqrt(d)":
                    lambda: _scores_reference(q, k, pos, theta, delta, bias, scale=False),
                "δ scales the query angle only; it scales the difference φ^q - φ^k":
                    lambda: _scores_reference(q, k, pos, theta, delta, bias, delta_on_query_only=True),
                "half-split pairing (j, j + d/2); pair interleaved coordinates (2j, 2j+1)":
                    lambda: _scores_reference(q, k, pos, theta, delta, bias, _half),
            }
            got = fn(q.clone(), k.clone(), pos.clone(), theta.clone(), delta, bias)
            expect_close(got, ref, what=f"complex_scores for {case}", wrong=wrong,
                         hint="score[m, n] = Σ_j λq[m,j] λk[n,j] cos(δ_j (φq[m,j] - φk[n,j]) + b_j + (pos[m] - pos[n]) θ_j) / sqrt(d)")
    # shift invariance: moving every position by the same amount changes nothing
    q, pos, theta = _random_inputs(gen, (2, 2), 6, 8, torch.float64)
    k = torch.randn(q.shape, generator=gen, dtype=torch.float64)
    delta, bias = torch.full((2, 1, 4), 0.7, dtype=torch.float64), torch.full((2, 1, 4), 0.4, dtype=torch.float64)
    expect_close(fn(q.clone(), k.clone(), pos + 17, theta, delta, bias), fn(q.clone(), k.clone(), pos, theta, delta, bias),
                 what=f"complex_scores with every position shifted by 17 (must not change), seed={seed}",
                 hint="the positions may enter only through the differences pos[m] - pos[n]")


@task("ch04.rope_deviation", points=1)
def check_rope_deviation(fn):
    """Per head, the root-mean-square distance of δ from 1 and of b from 0."""
    gen, seed = fresh_generator()
    for H, F, dtype in [(4, 4, torch.float32), (1, 3, torch.float64), (6, 1, torch.float32), (3, 8, torch.float64)]:
        delta = (1 + 0.5 * torch.randn(H, F, generator=gen, dtype=torch.float64)).to(dtype)
        bias = torch.randn(H, F, generator=gen, dtype=torch.float64).to(dtype)
        # reference: explicit loops
        ref_d = torch.tensor([math.sqrt(sum((float(delta[h, j]) - 1) ** 2 for j in range(F)) / F) for h in range(H)], dtype=dtype)
        ref_b = torch.tensor([math.sqrt(sum(float(bias[h, j]) ** 2 for j in range(F)) / F) for h in range(H)], dtype=dtype)
        case = describe({"delta": delta, "dtype": dtype, "seed": seed})
        got = fn(delta.clone(), bias.clone())
        if not isinstance(got, tuple) or len(got) != 2:
            raise CheckFailed(f"return a tuple (delta_deviation, bias_deviation) of shape (H,) each; got {type(got).__name__}")
        wrong = {
            "distance of δ from 0; RoPE is δ = 1": lambda: delta.pow(2).mean(-1).sqrt(),
            "signed mean of δ - 1, where deviations of opposite signs cancel": lambda: (delta - 1).mean(-1),
            "mean absolute deviation instead of the root mean square": lambda: (delta - 1).abs().mean(-1),
        }
        expect_close(got[0], ref_d, what=f"delta deviation for {case}", wrong=wrong,
                     hint="per head h: sqrt(mean_j (δ[h, j] - 1)²), shape (H,)")
        expect_close(got[1], ref_b, what=f"bias deviation for {case}",
                     wrong={"signed mean of b": lambda: bias.mean(-1), "mean |b|": lambda: bias.abs().mean(-1)},
                     hint="per head h: sqrt(mean_j b[h, j]²), shape (H,)")
