"""Chapter 16 exercises: Head perturbation guidance.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 16

or, in a notebook, ``check("ch16.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.head_perturbation_guidance (it solves these),
except in ``memory_guidance``, which may use its ``cosine_alpha_bar``, ``ddim_sample`` and
``guided_eps`` (see that function's docstring).
"""

from collections.abc import Callable, Hashable, Sequence

from torch import Tensor


def softpag_attention(q: Tensor, k: Tensor, v: Tensor, u: Tensor) -> Tensor:
    """★★ (15 min) Self-attention with each head's weights mixed toward the identity (SoftPAG).

    For head h: A_h = softmax(q_h k_h^T / sqrt(d)) over the keys, then
    A^soft_h = (1 - u_h) A_h + u_h I and the output is A^soft_h v_h. So u_h = 0 is plain
    attention and u_h = 1 returns v_h (each token attends only to itself).

    Args:
        q, k, v: (B, H, N, d) queries, keys and values of self-attention, float32 or float64.
        u: (H,) strengths in [0, 1], same dtype, one per head.

    Returns:
        (B, H, N, d) in q's dtype. Do not change the inputs in place.
    """
    raise NotImplementedError("ch16.softpag_attention")


def guided_eps(eps: Tensor, eps_pert: Tensor, w: float) -> Tensor:
    """★ (5 min) Perturbation guidance: push the prediction away from the perturbed one.

    Args:
        eps: (...) the denoiser's noise prediction ε, float32 or float64.
        eps_pert: (...) the prediction ε̃ of the pass with perturbed heads, same shape and dtype.
        w: the guidance scale; w = 0 means no guidance (the answer is eps).

    Returns:
        (...) ε̂ = ε + w (ε - ε̃), in eps's dtype.
    """
    raise NotImplementedError("ch16.guided_eps")


def headhunter_step(
    candidates: Sequence[Hashable], selected: Sequence[Hashable], evaluate: Callable[[list], float], k: int
) -> list:
    """★★ (15 min) One greedy HeadHunter iteration.

    Score every candidate c that is not already in ``selected`` by ``evaluate(list(selected) + [c])``
    (higher is better), rank them by score (equal scores: the candidate listed first in
    ``candidates`` ranks first) and append the top k in rank order. When fewer than k
    candidates are left, append all of them.

    Args:
        candidates: the heads to choose from, e.g. (layer, head) pairs, in a fixed order.
        selected: the heads already chosen.
        evaluate: maps a list of heads to the objective (a float).
        k: how many heads to add, k >= 1 (the book's n_top).

    Returns:
        a new list: ``selected`` followed by the chosen candidates.
    """
    raise NotImplementedError("ch16.headhunter_step")


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_next: float) -> Tensor:
    """★ (10 min) One deterministic DDIM step (η = 0) from time t to an earlier time t'.

    Estimate the clean image x̂_0 = (x_t - sqrt(1 - Γ_t) ε) / sqrt(Γ_t), then return
    x_{t'} = sqrt(Γ_{t'}) x̂_0 + sqrt(1 - Γ_{t'}) ε.

    Args:
        x_t: (...) the noisy sample, float32 or float64.
        eps: (...) the (guided) noise prediction at x_t, same shape and dtype.
        alpha_bar_t: Γ_t in (0, 1]; alpha_bar_next: Γ_{t'} >= Γ_t (1 at t' = 0).

    Returns:
        (...) x_{t'} in x_t's dtype.
    """
    raise NotImplementedError("ch16.ddim_step")


def memory_guidance(seed: int, w: float) -> float:
    """★★★ (25 min) Experiment: guide the exact denoiser of a small image memory, measure the samples.

    The data are the 54 prototype images of ``attnbook.tasks.template_images.prototypes()`` (6
    templates at 9 shifts, 8 × 8 pixels). For data that are a finite set of images μ_r, the best
    noise prediction is known in closed form and is one attention head: the noisy image is the
    query, the stored images (scaled by sqrt(Γ_t)) are the keys, the stored images are the values,
        A_r = softmax_r(-‖x_t - sqrt(Γ_t) μ_r‖² / (2 (1 - Γ_t))),  x̂_0 = Σ_r A_r μ_r,
        ε = (x_t - sqrt(Γ_t) x̂_0) / sqrt(1 - Γ_t).
    The weak model replaces A by uniform weights 1/54 (its x̂_0 is the mean image). Sample with
    guidance ε + w (ε - ε̃) and return how far the samples land from the data.

    Recipe (the grader runs it on its own seeds and checks your mean over 3 seeds at w = 0, 1 and
    4 against the range it measures):
      - Γ_t: ``cosine_alpha_bar(100)`` (T = 100, float64);
      - x_T: ``torch.randn(64, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)``;
      - ``ddim_sample(eps_fn, x_T, Γ, steps=2, clip=1.0)``, where eps_fn(x, t) returns the guided ε
        (t is a (64,) tensor holding one time step);
      - the result: ``nearest_prototype(samples)[0].mean().item()``.
    You may use ``cosine_alpha_bar``, ``ddim_sample`` and ``guided_eps`` from
    attnbook.mechanisms.head_perturbation_guidance here, and ``prototypes``, ``nearest_prototype``
    from attnbook.tasks.template_images. Try w = 0, 1, 2, 4: where is the distance smallest?

    Returns:
        the mean squared distance (per pixel) of the 64 samples to their nearest prototype, a float.
    """
    raise NotImplementedError("ch16.memory_guidance")
