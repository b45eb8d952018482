"""Chapter 16 checks: head perturbation guidance (SoftPAG, the guided prediction, HeadHunter, DDIM).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.head_perturbation_guidance: SoftPAG one head at a time from an explicit
softmax and the identity; the guided prediction in its (1 + w) ε - w ε̃ form; the greedy step
by scoring and a stable sort; the DDIM step from its two closed-form lines; the experiment (the
guided exact denoiser of the prototype images) from the distances and the softmax written out,
its range measured over 600 seeds.

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
    """x_{t'} = sqrt(Γ_{t'}) x̂_0 + sqrt(1 - Γ_{t'}) ε with x̂_0 = (x_t - sqrt(1 - Γ_t) ε) / sqrt(Γ_t)."""
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


# The experiment: the exact denoiser of the 54 prototype images (no training), 2 DDIM steps
MEMORY_SAMPLES, MEMORY_STEPS, MEMORY_T = 64, 2, 100
# memory_reference's distance per seed at w = 0, 1, 4, and the paired gain from w = 0 to w = 1:
# (mean, standard deviation) over seeds 0 … 599, measured once and written here. A mean over 3 seeds
# has standard deviation sd / sqrt(3); over every triple of consecutive seeds the check can draw
# (100 … 10001) the reference's 3-seed means lie within 4.8 of those deviations of the mean, so the
# check accepts ±6.
MEMORY_STATS = {0.0: (0.07122, 0.00994), 1.0: (0.04710, 0.00896), 4.0: (0.07633, 0.01334)}
MEMORY_GAIN = (0.02412, 0.00483)
MEMORY_BAND = 6.0


def _cosine_alpha_bar(T, s=0.008):
    """Γ_t = cos²((t/T + s)/(1 + s) · π/2) / cos²(s/(1 + s) · π/2), t = 0 … T, floored at 1e-4."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0]).clamp(min=1e-4)


def memory_reference(seed, w):
    """Mean distance to the nearest prototype of 64 samples of the memory denoiser, guided with scale w."""
    from ...tasks.template_images import prototypes

    memory = prototypes()[0].reshape(-1, 64).double()  # (54, 64)
    gamma = _cosine_alpha_bar(MEMORY_T)
    x = torch.randn(MEMORY_SAMPLES, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    times = torch.linspace(MEMORY_T, 0, MEMORY_STEPS + 1).round().long().tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        g = gamma[t]
        # posterior weights over the stored images, and the uniform weights of the weak model
        weights = torch.softmax(-(torch.cdist(x, g.sqrt() * memory) ** 2) / (2 * (1 - g)), dim=-1)
        uniform = torch.full_like(weights, 1 / memory.shape[0])
        eps, eps_weak = ((x - g.sqrt() * (a @ memory)) / (1 - g).sqrt() for a in (weights, uniform))
        eps = (1 + w) * eps - w * eps_weak
        x0 = ((x - (1 - g).sqrt() * eps) / g.sqrt()).clamp(-1, 1)
        eps = (x - g.sqrt() * x0) / (1 - g).sqrt()
        x = gamma[t_next].sqrt() * x0 + (1 - gamma[t_next]).sqrt() * eps
    return ((x[:, None] - memory[None]) ** 2).mean(-1).amin(-1).mean().item()


def _band(mean, sd):
    """The accepted range of a mean over 3 seeds: mean ± MEMORY_BAND · sd / sqrt(3)."""
    half = MEMORY_BAND * sd / math.sqrt(3)
    return mean - half, mean + half


@task("ch16.memory_guidance", points=3, time_limit=60.0)
def check_memory_guidance(fn):
    """The guided memory denoiser's distance over 3 seeds at w = 0, 1, 4, in the reference's ranges."""
    gen, _ = fresh_generator()
    first = int(torch.randint(100, 10_000, (1,), generator=gen))
    seeds = (first, first + 1, first + 2)
    measured = {}
    for w, (ref_mean, ref_sd) in MEMORY_STATS.items():
        low, high = _band(ref_mean, ref_sd)
        with case():
            values = [fn(seed, w) for seed in seeds]
            for value in values:
                if not isinstance(value, float) or not math.isfinite(value):
                    raise CheckFailed(f"memory_guidance(seed, {w}) must return a finite float, got {value!r}")
            mean = measured[w] = sum(values) / len(values)
            if not low <= mean <= high:
                raise CheckFailed(
                    f"memory_guidance(seed, w={w}) averages {mean:.4f} over seeds {seeds}; the reference "
                    f"averages {ref_mean:.4f} per seed, and its means over 3 seeds lie in {low:.4f} … "
                    f"{high:.4f}",
                    hint="64 samples from torch.randn(64, 8, 8) of the seed (float64), 2 DDIM steps on the "
                    "cosine schedule of T = 100 with x̂_0 clamped to [-1, 1], guidance ε + w (ε - ε̃)",
                )
    # the effect itself, paired on the same seeds: the gain from w = 0 to w = 1
    if 0.0 in measured and 1.0 in measured:
        low, _ = _band(*MEMORY_GAIN)
        with case():
            gain = measured[0.0] - measured[1.0]
            if gain < low:
                raise CheckFailed(
                    f"over seeds {seeds}, guidance at w = 1 lowers the distance by {gain:.4f} (from w = 0); "
                    f"the reference's gain averages {MEMORY_GAIN[0]:.4f} per seed and, over 3 seeds, is at "
                    f"least {low:.4f}",
                    hint="the weak model is the same denoiser with uniform weights 1/54 over the stored "
                    "images, and the guided noise is ε + w (ε - ε̃)",
                )
