"""The common mistakes of chapter 04's exercises, declared for the checks of ``ch04_complex_rotations``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake
from .ch04_complex_rotations import (
    PAIRWISE_HINT,
    RECIPE,
    _attention_reference,
    _euler_reference,
    _interleaved,
    _merge_half,
    _merge_interleaved,
    _rope_reference,
    _scores_reference,
)


def _half(x):
    d = x.shape[-1]
    return x[..., : d // 2], x[..., d // 2 :]


@mistake("ch04.rope", "half-split pairing (ν, ν + d/2); this book pairs interleaved coordinates (2ν, 2ν+1)")
def rope_half_split(x, pos, theta):
    return _rope_reference(x, pos, theta, _half, _merge_half)


@mistake("ch04.rope", "rotation the wrong way, by e^{-i p θ} (scores then depend on j - p_i)")
def rope_wrong_direction(x, pos, theta):
    return _rope_reference(x, pos, theta, sign=-1.0)


@mistake("ch04.rope", "pairs read interleaved but written back as [all real parts | all imaginary parts]")
def rope_concatenated_output(x, pos, theta):
    return _rope_reference(x, pos, theta, _interleaved, _merge_half)


@mistake("ch04.rope", "positions taken as 0 ... N-1 instead of the given pos")
def rope_ignores_pos(x, pos, theta):
    return _rope_reference(x, torch.arange(x.shape[-2]), theta)


@mistake("ch04.rope", "the given theta ignored (recomputed as 10000^(-2ν/d))")
def rope_recomputes_theta(x, pos, theta):
    d = x.shape[-1]
    return _rope_reference(x, pos, 10000.0 ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d))


@mistake("ch04.euler_rotate", "half-split pairing (ν, ν + d/2); pair interleaved coordinates (2ν, 2ν+1)")
def euler_half_split(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, gamma, bias, _half, _merge_half)


@mistake(
    "ch04.euler_rotate",
    "γ multiplies the position angle too, γ(ψ + pos·θ); only the semantic angle ψ is scaled",
)
def euler_gamma_scales_position(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, gamma, bias, gamma_on_position=True)


@mistake("ch04.euler_rotate", "the bias b is missing")
def euler_forgets_bias(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, gamma, 0.0)


@mistake("ch04.euler_rotate", "the bias is subtracted instead of added")
def euler_subtracts_bias(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_reference(x, pos, theta, gamma, -torch.as_tensor(bias))


@mistake("ch04.euler_rotate", "the position angle is missing")
def euler_without_position(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_reference(x, pos, theta * 0, gamma, bias)


@mistake(
    "ch04.euler_rotate",
    "ρ = sqrt(Re² + Im²) without eps: its gradient is NaN at a zero pair (Re, Im) = (0, 0); "
    "compute sqrt(Re² + Im² + eps)",
)
def euler_no_eps(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_float(x, pos, theta, gamma, bias, eps=0.0)


@mistake(
    "ch04.euler_rotate",
    "computed in float16, where eps = 1e-12 underflows to 0 and the angles lose "
    "precision; compute in float32 and cast the result back to x's dtype",
)
def euler_no_upcast(x, pos, theta, gamma, bias, eps=1e-12):
    return _euler_float(x, pos, theta, gamma, bias, work=x.dtype)


@mistake(
    "ch04.euler_rotate",
    "an odd head width was accepted (its last coordinate dropped); raise a ValueError: "
    "with d odd there are no pairs",
)
def euler_accepts_odd_width(x, pos, theta, gamma, bias, eps=1e-12):
    if x.shape[-1] % 2:
        x = x[..., :-1]
        theta = theta[: x.shape[-1] // 2]
    return _euler_float(x, pos, theta, gamma, bias)


def _euler_float(x, pos, theta, gamma, bias, *, eps=1e-12, work=None):
    """euler_rotate through atan2 in ``work`` (float32 by default), as a learner writes it."""
    if x.shape[-1] % 2:
        raise ValueError("odd head width")
    work = (torch.float64 if x.dtype == torch.float64 else torch.float32) if work is None else work
    r, p = _interleaved(x.to(work))
    rho = torch.sqrt(r * r + p * p + eps)
    angle = (
        torch.as_tensor(gamma, dtype=work) * torch.atan2(p, r)
        + pos.to(work)[:, None] * theta.to(work)
        + torch.as_tensor(bias, dtype=work)
    )
    return _merge_interleaved(rho * torch.cos(angle), rho * torch.sin(angle)).to(x.dtype)


@mistake(
    "ch04.complex_scores",
    "the bias is added to the key angles too, where it cancels; add b to the query angle only",
)
def scores_bias_on_both(q, k, pos, theta, gamma, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, gamma, bias, bias_on_keys=True)


@mistake(
    "ch04.complex_scores", "the positional angle uses (pos[j] - pos[i])·θ instead of (pos[i] - pos[j])·θ"
)
def scores_relative_sign_flipped(q, k, pos, theta, gamma, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, gamma, bias, sign=-1.0)


@mistake("ch04.complex_scores", "the scores are not divided by sqrt(d)")
def scores_unscaled(q, k, pos, theta, gamma, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, gamma, bias, scale=False)


@mistake("ch04.complex_scores", "γ scales the query angle only; it scales the difference ψ^q - ψ^k")
def scores_gamma_on_query_only(q, k, pos, theta, gamma, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, gamma, bias, gamma_on_query_only=True)


@mistake("ch04.complex_scores", "half-split pairing (ν, ν + d/2); pair interleaved coordinates (2ν, 2ν+1)")
def scores_half_split(q, k, pos, theta, gamma, bias, eps=1e-12):
    return _scores_reference(q, k, pos, theta, gamma, bias, _half)


@mistake(
    "ch04.complex_scores",
    "only the queries were rotated by their positions, so the scores depend on absolute "
    "positions; rotate the keys by theirs too, so that (pos[i] - pos[j])·θ remains",
)
def scores_absolute_positions(q, k, pos, theta, gamma, bias, eps=1e-12):
    q_rot = _euler_reference(q, pos, theta, gamma, bias).double()
    k_rot = _euler_reference(k, torch.zeros_like(pos), theta, gamma, 0.0).double()
    return (q_rot @ k_rot.transpose(-2, -1) / math.sqrt(q.shape[-1])).to(q.dtype)


def _attention_mistake(
    q, k, v, theta, gamma, bias, *, q_pos=None, bias_on_keys=False, top_left=False, rotate_v=False, scale=True
):
    """A wrong answer, computed per token (rotate once, one matrix product), as a learner would."""
    N, M, d = q.shape[-2], k.shape[-2], q.shape[-1]
    p_q = torch.arange(M - N, M) if q_pos is None else q_pos
    p_k = torch.arange(M)
    q_rot = _euler_reference(q, p_q, theta, gamma, bias).double()  # (B, H, N, d)
    k_rot = _euler_reference(k, p_k, theta, gamma, bias if bias_on_keys else 0.0).double()  # (B, H, M, d)
    scores = q_rot @ k_rot.transpose(-2, -1)  # (B, H, N, M)
    if scale:
        scores = scores / math.sqrt(d)
    visible = p_k[None, :] <= (torch.arange(N)[:, None] if top_left else torch.arange(M - N, M)[:, None])
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    values = _euler_reference(v, p_k, theta, gamma, 0.0).double() if rotate_v else v.double()
    return (weights @ values).to(q.dtype), weights.to(q.dtype)


@mistake(
    "ch04.adaptive_attention",
    "the bias b is added to the keys' angles too, where it cancels; b goes on the queries only",
)
def attention_bias_on_keys(q, k, v, theta, gamma, bias):
    return _attention_mistake(q, k, v, theta, gamma, bias, bias_on_keys=True)


@mistake(
    "ch04.adaptive_attention",
    "the queries are rotated by positions 0 ... N-1; they are the LAST N of the M positions, p_i = i + M - N",
)
def attention_queries_at_start(q, k, v, theta, gamma, bias):
    return _attention_mistake(q, k, v, theta, gamma, bias, q_pos=torch.arange(q.shape[-2]))


@mistake(
    "ch04.adaptive_attention",
    "the causal mask is aligned top-left (key j visible when j <= i); compare with the query's "
    "position: j <= p_i = i + M - N",
)
def attention_top_left_mask(q, k, v, theta, gamma, bias):
    return _attention_mistake(q, k, v, theta, gamma, bias, top_left=True)


@mistake("ch04.adaptive_attention", "the values are rotated too; only queries and keys carry positions")
def attention_rotates_values(q, k, v, theta, gamma, bias):
    return _attention_mistake(q, k, v, theta, gamma, bias, rotate_v=True)


@mistake("ch04.adaptive_attention", "the scores are not multiplied by τ = 1/sqrt(d)")
def attention_unscaled(q, k, v, theta, gamma, bias):
    return _attention_mistake(q, k, v, theta, gamma, bias, scale=False)


@mistake("ch04.adaptive_attention", PAIRWISE_HINT)
def attention_pairwise(q, k, v, theta, gamma, bias):
    return _attention_reference(q, k, v, theta, gamma, bias)  # every (i, j, ν) angle at once


def _experiment(mode, seed, *, kind=0, all_positions=False):
    from ...mechanisms.complex_rotations_experiment import train_lookup
    from ...tasks.mixed_lookup import mixed_lookup

    model, _ = train_lookup(mode, seed, **RECIPE)
    test = mixed_lookup(
        500, RECIPE["N"], RECIPE["n_sym"], generator=torch.Generator().manual_seed(1000 + seed)
    )
    with torch.no_grad():
        correct = model(test.tokens).argmax(-1) == test.targets  # (B, N)
    return (
        correct.float().mean().item() if all_positions else correct[test.kind == kind].float().mean().item()
    )


@mistake(
    "ch04.positional_accuracy",
    "the accuracy on the content questions (kind == 1); the experiment measures the positional ones",
)
def experiment_content_accuracy(mode, seed):
    return _experiment(mode, seed, kind=1)


@mistake("ch04.positional_accuracy", "the rotation mode is not passed on: every run trains the RoPE model")
def experiment_ignores_mode(mode, seed):
    return _experiment("rope", seed)


@mistake(
    "ch04.positional_accuracy",
    "the accuracy over every position, where positions without a question (target IGNORE) count as "
    "wrong and content questions count too; keep the positional questions only (kind == 0)",
)
def experiment_all_positions(mode, seed):
    return _experiment(mode, seed, all_positions=True)
