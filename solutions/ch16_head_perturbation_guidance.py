"""Chapter 16 solutions: Head perturbation guidance."""

import math
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor


def softpag_attention(q: Tensor, k: Tensor, v: Tensor, u: Tensor) -> Tensor:
    # A_h = softmax(q_h k_h^T / sqrt(d)) over the keys
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, H, N, N)
    eye = torch.eye(q.shape[-2], dtype=q.dtype, device=q.device)  # (N, N)
    u = u[:, None, None]  # (H, 1, 1)
    # A^soft_h = (1 - u_h) A_h + u_h I
    return ((1 - u) * weights + u * eye) @ v  # (B, H, N, d)


def guided_eps(eps: Tensor, eps_pert: Tensor, w: float) -> Tensor:
    # ε̂ = ε + w (ε - ε̃)
    return eps + w * (eps - eps_pert)


def headhunter_step(
    candidates: Sequence[Hashable], selected: Sequence[Hashable], evaluate: Callable[[list], float], k: int
) -> list:
    selected = list(selected)
    pool = [c for c in candidates if c not in selected]
    scores = [evaluate(selected + [c]) for c in pool]
    # descending score; sorted() is stable, so ties keep the listed order
    order = sorted(range(len(pool)), key=lambda i: -scores[i])
    return selected + [pool[i] for i in order[:k]]


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_next: float) -> Tensor:
    # x̂_0 = (x_t - sqrt(1 - Γ_t) ε) / sqrt(Γ_t)
    x0 = (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
    # x_{t'} = sqrt(Γ_{t'}) x̂_0 + sqrt(1 - Γ_{t'}) ε
    return math.sqrt(alpha_bar_next) * x0 + math.sqrt(1 - alpha_bar_next) * eps


def memory_guidance(seed: int, w: float) -> float:
    from attnbook.mechanisms.head_perturbation_guidance import cosine_alpha_bar, ddim_sample, guided_eps
    from attnbook.tasks.template_images import nearest_prototype, prototypes

    memory = prototypes()[0].reshape(-1, 64).double()  # (54, 64) the stored images μ_r
    gamma = cosine_alpha_bar(100)  # (101,) Γ_t

    def eps_of(x, g, weights):
        # ε = (x_t - sqrt(Γ_t) Σ_r A_r μ_r) / sqrt(1 - Γ_t)
        return (x - g.sqrt() * (weights @ memory)) / (1 - g).sqrt()

    def eps_fn(images, t):
        x, g = images.reshape(-1, 64), gamma[t[0]]
        # A_r = softmax_r(-‖x_t - sqrt(Γ_t) μ_r‖² / (2 (1 - Γ_t)))
        weights = torch.softmax(-((x[:, None] - g.sqrt() * memory) ** 2).sum(-1) / (2 * (1 - g)), dim=-1)
        uniform = torch.full_like(weights, 1 / len(memory))
        return guided_eps(eps_of(x, g, weights), eps_of(x, g, uniform), w).reshape(images.shape)

    x_T = torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    samples = ddim_sample(eps_fn, x_T, gamma, 2, clip=1.0)
    return nearest_prototype(samples)[0].mean().item()
