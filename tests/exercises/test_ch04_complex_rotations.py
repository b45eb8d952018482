"""Chapter 04: grade the target (solutions by default) and check that known mistakes fail."""
import math

import torch

from tests.exercises.grading import graded_task_test, rejects_test

test_task = graded_task_test("04")


# --- helpers for the wrong answers ----------------------------------------------------------
def _interleaved(x):
    return x[..., 0::2], x[..., 1::2]


def _half(x):
    d = x.shape[-1]
    return x[..., : d // 2], x[..., d // 2:]


def _weave(r, p):
    return torch.stack([r, p], dim=-1).flatten(-2)


def _rotate(x, angle_fn, pairs=_interleaved, merge=_weave, eps=1e-12, upcast=True):
    """Polar form of x's pairs, new angle angle_fn(phi), magnitude kept."""
    work = (torch.float64 if x.dtype == torch.float64 else torch.float32) if upcast else x.dtype
    r, p = pairs(x.to(work))
    lam = torch.sqrt(r * r + p * p + eps) if eps else torch.sqrt(r * r + p * p)
    angle = angle_fn(torch.atan2(p, r), work)
    return merge(lam * torch.cos(angle), lam * torch.sin(angle)).to(x.dtype)


def _t(v, dtype):
    return torch.as_tensor(v, dtype=dtype)


# --- ch04.rope --------------------------------------------------------------------------------
def rope_half_split(x, pos, theta):
    return _rotate(x, lambda phi, w: phi + pos.to(w)[:, None] * theta.to(w), _half, lambda r, p: torch.cat([r, p], -1))


def rope_wrong_direction(x, pos, theta):
    return _rotate(x, lambda phi, w: phi - pos.to(w)[:, None] * theta.to(w))


def rope_concatenated_output(x, pos, theta):
    return _rotate(x, lambda phi, w: phi + pos.to(w)[:, None] * theta.to(w), merge=lambda r, p: torch.cat([r, p], -1))


def rope_ignores_pos(x, pos, theta):
    N = x.shape[-2]
    return _rotate(x, lambda phi, w: phi + torch.arange(N, dtype=w)[:, None] * theta.to(w))


def rope_recomputes_theta(x, pos, theta):
    d = x.shape[-1]
    standard = 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    return _rotate(x, lambda phi, w: phi + pos.to(w)[:, None] * standard.to(w))


def rope_returns_float64(x, pos, theta):
    return _rotate(x.double(), lambda phi, w: phi + pos.to(w)[:, None] * theta.to(w))


# --- ch04.euler_rotate ------------------------------------------------------------------------
def _euler(x, pos, theta, delta, bias, **kw):
    return _rotate(x, lambda phi, w: _t(delta, w) * phi + pos.to(w)[:, None] * theta.to(w) + _t(bias, w), **kw)


def euler_half_split(x, pos, theta, delta, bias, eps=1e-12):
    return _euler(x, pos, theta, delta, bias, pairs=_half, merge=lambda r, p: torch.cat([r, p], -1))


def euler_delta_scales_position(x, pos, theta, delta, bias, eps=1e-12):
    return _rotate(x, lambda phi, w: _t(delta, w) * (phi + pos.to(w)[:, None] * theta.to(w)) + _t(bias, w))


def euler_forgets_bias(x, pos, theta, delta, bias, eps=1e-12):
    return _euler(x, pos, theta, delta, 0.0)


def euler_no_eps(x, pos, theta, delta, bias, eps=1e-12):
    if x.shape[-1] % 2:
        raise ValueError("odd width")
    return _euler(x, pos, theta, delta, bias, eps=0.0)


def euler_no_upcast(x, pos, theta, delta, bias, eps=1e-12):
    if x.shape[-1] % 2:
        raise ValueError("odd width")
    return _euler(x, pos, theta, delta, bias, upcast=False)


def euler_returns_float32(x, pos, theta, delta, bias, eps=1e-12):
    if x.shape[-1] % 2:
        raise ValueError("odd width")
    out = _euler(x, pos, theta, delta, bias)
    return out.float() if x.dtype == torch.float16 else out


def euler_accepts_odd_width(x, pos, theta, delta, bias, eps=1e-12):
    if x.shape[-1] % 2:  # silently drops the last coordinate
        x = x[..., :-1]
        theta = theta[: x.shape[-1] // 2]
    return _euler(x, pos, theta, delta, bias)


# --- ch04.complex_scores ----------------------------------------------------------------------
def _scores(q, k, pos, theta, delta, bias, *, key_bias=None, sign=1.0, scale=True, key_delta=None, pairs=_interleaved):
    merge = _weave if pairs is _interleaved else (lambda r, p: torch.cat([r, p], -1))
    qr = _euler(q, sign * pos, theta, delta, bias, pairs=pairs, merge=merge)
    kr = _euler(k, sign * pos, theta, delta if key_delta is None else key_delta,
                0.0 if key_bias is None else key_bias, pairs=pairs, merge=merge)
    s = qr @ kr.transpose(-2, -1)
    return s / math.sqrt(q.shape[-1]) if scale else s


def scores_bias_on_both(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores(q, k, pos, theta, delta, bias, key_bias=bias)


def scores_relative_sign_flipped(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores(q, k, pos, theta, delta, bias, sign=-1.0)


def scores_unscaled(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores(q, k, pos, theta, delta, bias, scale=False)


def scores_delta_on_query_only(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores(q, k, pos, theta, delta, bias, key_delta=1.0)


def scores_half_split(q, k, pos, theta, delta, bias, eps=1e-12):
    return _scores(q, k, pos, theta, delta, bias, pairs=_half)


def scores_absolute_positions(q, k, pos, theta, delta, bias, eps=1e-12):
    # rotates only the queries by their absolute position: not shift invariant
    qr = _euler(q, pos, theta, delta, bias)
    kr = _euler(k, torch.zeros_like(pos), theta, delta, 0.0)
    return qr @ kr.transpose(-2, -1) / math.sqrt(q.shape[-1])


# --- ch04.rope_deviation ----------------------------------------------------------------------
def deviation_from_zero(delta, bias):
    return delta.pow(2).mean(-1).sqrt(), bias.pow(2).mean(-1).sqrt()


def deviation_signed_mean(delta, bias):
    return (delta - 1).mean(-1), bias.mean(-1)


def deviation_over_all_heads(delta, bias):
    return (delta - 1).pow(2).mean().sqrt(), bias.pow(2).mean().sqrt()


WRONG_ANSWERS = {
    "ch04.rope": [rope_half_split, rope_wrong_direction, rope_concatenated_output, rope_ignores_pos,
                  rope_recomputes_theta, rope_returns_float64],
    "ch04.euler_rotate": [euler_half_split, euler_delta_scales_position, euler_forgets_bias, euler_no_eps,
                          euler_no_upcast, euler_returns_float32, euler_accepts_odd_width],
    "ch04.complex_scores": [scores_bias_on_both, scores_relative_sign_flipped, scores_unscaled,
                            scores_delta_on_query_only, scores_half_split, scores_absolute_positions],
    "ch04.rope_deviation": [deviation_from_zero, deviation_signed_mean, deviation_over_all_heads],
}
test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


def test_hints_name_the_mistakes():
    """The two mistakes the chapter warns about most get a hint that names them."""
    from attnbook.grading import run_task

    assert "half-split" in run_task("ch04.rope", rope_half_split).message
    assert "cancels" in run_task("ch04.complex_scores", scores_bias_on_both).message
    assert "NaN" in run_task("ch04.euler_rotate", euler_no_eps).message
    assert "float16" in run_task("ch04.euler_rotate", euler_no_upcast).message
