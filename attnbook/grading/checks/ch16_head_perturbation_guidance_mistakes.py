"""The common mistakes of chapter 16's exercises, for the checks of ``ch16_head_perturbation_guidance``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake


def _weights(q, k):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, N, N)


@mistake(
    "ch16.softpag_attention",
    "mix the probabilities, not the scores: (1 - u) softmax(S) + u I; pulling the scores toward a large "
    "diagonal is not affine in u and snaps to the identity for any u > 0",
)
def softpag_logits_toward_diagonal(q, k, v, u):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    big = 1e4 * torch.eye(q.shape[-2], dtype=q.dtype)
    u = u[:, None, None]
    return torch.softmax((1 - u) * scores + u * big, dim=-1) @ v


@mistake(
    "ch16.softpag_attention",
    "u is the identity's share: u = 0 leaves the head as it is and u = 1 returns V",
)
def softpag_swapped_strength(q, k, v, u):
    u = u[:, None, None]
    return u * (_weights(q, k) @ v) + (1 - u) * v


@mistake("ch16.softpag_attention", "u holds one strength per head: head h uses u[h], not u[0] for all")
def softpag_one_strength(q, k, v, u):
    return (1 - u[0]) * (_weights(q, k) @ v) + u[0] * v


@mistake(
    "ch16.guided_eps",
    "guidance moves AWAY from the perturbed prediction: ε + w (ε - ε̃), not ε + w (ε̃ - ε)",
)
def guided_toward_perturbed(eps, eps_pert, w):
    return eps + w * (eps_pert - eps)


@mistake(
    "ch16.guided_eps",
    "start from ε, not from ε̃: with this book's w, w = 0 means no guidance (ε̃ + s (ε - ε̃) needs s = 1 + w)",
)
def guided_from_perturbed(eps, eps_pert, w):
    return eps_pert + w * (eps - eps_pert)


@mistake(
    "ch16.headhunter_step",
    "score each candidate together with the current selection, evaluate(selected + [c]), not alone",
)
def headhunter_alone(candidates, selected, evaluate, k):
    pool = [c for c in candidates if c not in selected]
    scores = [evaluate([c]) for c in pool]
    order = sorted(range(len(pool)), key=lambda i: -scores[i])
    return list(selected) + [pool[i] for i in order[:k]]


@mistake("ch16.headhunter_step", "higher scores are better: add the k candidates with the LARGEST scores")
def headhunter_lowest(candidates, selected, evaluate, k):
    pool = [c for c in candidates if c not in selected]
    scores = [evaluate(list(selected) + [c]) for c in pool]
    order = sorted(range(len(pool)), key=lambda i: scores[i])
    return list(selected) + [pool[i] for i in order[:k]]


@mistake(
    "ch16.headhunter_step",
    "break ties by the order of the candidates' list, not by comparing the candidates themselves",
)
def headhunter_ties_by_value(candidates, selected, evaluate, k):
    pool = [c for c in candidates if c not in selected]
    ranked = sorted(((evaluate(list(selected) + [c]), c) for c in pool), reverse=True)
    return list(selected) + [c for _, c in ranked[:k]]


@mistake("ch16.headhunter_step", "skip the candidates already selected: a head is added at most once")
def headhunter_reselects(candidates, selected, evaluate, k):
    scores = [evaluate(list(selected) + [c]) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -scores[i])
    return list(selected) + [candidates[i] for i in order[:k]]


@mistake(
    "ch16.ddim_step",
    "Γ scales variances: x_t = sqrt(Γ_t) x_0 + sqrt(1 - Γ_t) ε, so the step uses square roots of Γ",
)
def ddim_without_square_roots(x_t, eps, alpha_bar_t, alpha_bar_next):
    x0 = (x_t - (1 - alpha_bar_t) * eps) / alpha_bar_t
    return alpha_bar_next * x0 + (1 - alpha_bar_next) * eps


@mistake(
    "ch16.ddim_step",
    "return x at the next time t' (the clean estimate x̂_0 re-noised with Γ_{t'}), not x̂_0 itself",
)
def ddim_returns_clean_estimate(x_t, eps, alpha_bar_t, alpha_bar_next):
    return (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)


@mistake(
    "ch16.memory_guidance",
    "guidance moves AWAY from the weak model (uniform weights): ε + w (ε - ε̃); toward it, the samples "
    "drift to the mean image",
)
def memory_guidance_toward_weak(seed, w):
    from .ch16_head_perturbation_guidance import memory_reference

    return memory_reference(seed, -w)
