"""Chapter 16 checks: head perturbation guidance (SoftPAG, the guided prediction, HeadHunter, DDIM).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.head_perturbation_guidance: SoftPAG one head at a time from an explicit
softmax and the identity; the guided prediction in its (1 + w) ε - w ε̃ form; the greedy step
by scoring and a stable sort; the DDIM step from its two closed-form lines.

The common mistakes (the @mistake declarations) live in ``ch16_head_perturbation_guidance_mistakes.py``.
"""

from __future__ import annotations

import math

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, fresh_generator

# (B, H, N, d, dtype): N = 1, odd sizes, N = H, both dtypes
SOFTPAG_CASES = (
    (1, 2, 1, 4, torch.float64),
    (2, 3, 5, 6, torch.float32),
    (1, 4, 4, 3, torch.float64),
    (3, 2, 7, 8, torch.float32),
)


def softpag_reference(q, k, v, u):
    """(1 - u_h) softmax(q_h k_h^T / sqrt(d)) v_h + u_h v_h, one head at a time, in float64."""
    q, k, v, u = q.double(), k.double(), v.double(), u.double()
    out = torch.empty_like(v)
    for h in range(q.shape[1]):
        scores = q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(q.shape[-1])
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        weights = weights / weights.sum(-1, keepdim=True)
        out[:, h] = (1 - u[h]) * (weights @ v[:, h]) + u[h] * v[:, h]
    return out


@task("ch16.softpag_attention", points=2)
def check_softpag_attention(fn):
    """SoftPAG per head: u_h = 0 is attention, u_h = 1 returns V, values in between mix the weights."""
    g, _ = fresh_generator()
    for B, H, N, d, dtype in SOFTPAG_CASES:
        q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(3))
        # distinct strengths per head, with the two ends 0 and 1 among them
        u = torch.cat([torch.tensor([0.0, 1.0]), torch.rand(H - 2, generator=g) * 0.8 + 0.1])[:H]
        u = u[torch.randperm(H, generator=g)].to(dtype)
        if H == 2:
            u = torch.tensor([0.35, 1.0], dtype=dtype)
        what = (
            f"softpag_attention({describe({'B': B, 'H': H, 'N': N, 'd': d, 'dtype': dtype})}, u={u.tolist()})"
        )
        with case():
            before = [t.clone() for t in (q, k, v, u)]
            answer = fn(q, k, v, u)
            if not all(torch.equal(a, b) for a, b in zip((q, k, v, u), before)):
                raise CheckFailed(f"{what} changed one of its inputs in place")
            expect_close(answer, softpag_reference(q, k, v, u).to(dtype), what=what)


@task("ch16.guided_eps", points=1)
def check_guided_eps(fn):
    """ε̂ = ε + w (ε - ε̃): w = 0 gives ε, and the step points away from ε̃."""
    g, _ = fresh_generator()
    for shape, w, dtype in (
        ((2, 16, 4), 0.0, torch.float64),
        ((3, 5), 1.5, torch.float32),
        ((4, 1, 3), 3.0, torch.float64),
    ):
        eps = torch.randn(shape, generator=g, dtype=dtype)
        eps_pert = eps + 0.5 * torch.randn(shape, generator=g, dtype=dtype)
        what = f"guided_eps({describe({'shape': shape, 'w': w, 'dtype': dtype})})"
        with case():
            before = (eps.clone(), eps_pert.clone())
            answer = fn(eps, eps_pert, w)
            if not (torch.equal(eps, before[0]) and torch.equal(eps_pert, before[1])):
                raise CheckFailed(f"{what} changed eps or eps_pert in place")
            # the reference in the other convention: (1 + w) ε - w ε̃
            expect_close(answer, (1 + w) * eps - w * eps_pert, what=what)


def headhunter_reference(candidates, selected, evaluate, k):
    """Score every unselected candidate with the selection, keep the k best (a stable sort)."""
    pool = [c for c in candidates if c not in selected]
    scored = [(evaluate(list(selected) + [c]), i) for i, c in enumerate(pool)]
    ranked = sorted(scored, key=lambda s: (-s[0], s[1]))
    return list(selected) + [pool[i] for _, i in ranked[:k]]


def _objective(values, bonus):
    """f(S) = Σ_{c ∈ S} value_c + Σ over pairs {a, b} ⊆ S of bonus[a, b] (0 for most pairs)."""

    def evaluate(S):
        total = sum(values[c] for c in S)
        return total + sum(bonus.get((a, b), 0.0) for a in S for b in S if a < b)

    return evaluate


@task("ch16.headhunter_step", points=2)
def check_headhunter_step(fn):
    """One greedy step: candidates scored together with the selection, top k, ties to the first listed."""
    g, _ = fresh_generator()
    heads = [(layer, h) for layer in range(3) for h in range(3)]
    # a random listing order, so that tie-breaking by listing differs from sorting the heads
    listing = [heads[i] for i in torch.randperm(len(heads), generator=g).tolist()]
    # (0, 0) listed first: under all ties, the listing and a comparison of the heads disagree
    listing.remove((0, 0))
    listing.insert(0, (0, 0))
    values = {c: round(float(torch.randn((), generator=g)), 3) for c in heads}
    best, worst = max(values, key=values.get), min(values, key=values.get)
    # the second-worst head: worth the most once the worst is selected (a pair bonus)
    partner = min((c for c in heads if c != worst), key=values.get)
    scenarios = [
        ("an additive objective, empty selection, k=2", [], _objective(values, {}), 2),
        ("an additive objective, two selected, k=3", [best, worst], _objective(values, {}), 3),
        # a pair bonus: the best addition depends on what is already selected
        (
            "an objective with a pair bonus, one selected, k=1",
            [worst],
            _objective(values, {tuple(sorted((worst, partner))): 10.0}),
            1,
        ),
        ("k larger than the candidates left", listing[:6], _objective(values, {}), 5),
        # every candidate ties: the order of the listing decides
        ("a constant objective (all ties), k=3", [], lambda S: 1.0, 3),
    ]
    for text, selected, evaluate, k in scenarios:
        what = f"headhunter_step with {text}"
        with case():
            answer = fn(list(listing), list(selected), evaluate, k)
            expected = headhunter_reference(listing, selected, evaluate, k)
            if not isinstance(answer, list):
                raise CheckFailed(f"{what}: return a list, got {type(answer).__name__}")
            if answer != expected:
                raise CheckFailed(f"{what}: got {answer}, expected {expected}")


@task("ch16.ddim_step", points=1)
def check_ddim_step(fn):
    """x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'}) ε with x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."""
    g, _ = fresh_generator()
    for shape, ab_t, ab_next, dtype in (
        ((2, 16, 4), 0.3, 0.55, torch.float64),
        ((3, 8, 8), 0.02, 0.2, torch.float32),
        ((1, 5), 0.9, 1.0, torch.float64),
    ):
        x0 = torch.randn(shape, generator=g, dtype=dtype)
        eps = torch.randn(shape, generator=g, dtype=dtype)
        x_t = math.sqrt(ab_t) * x0 + math.sqrt(1 - ab_t) * eps
        what = f"ddim_step({describe({'shape': shape, 'alpha_bar_t': ab_t, 'alpha_bar_next': ab_next})})"
        with case():
            answer = fn(x_t, eps, ab_t, ab_next)
            # with the true noise, the step lands exactly on the forward process at t'
            expect_close(answer, math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps, what=what)
