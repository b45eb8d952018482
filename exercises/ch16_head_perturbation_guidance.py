"""Chapter 16 exercises: Head perturbation guidance.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 16

or, in a notebook, ``check("ch16.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.head_perturbation_guidance (it solves these).
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
        k: how many heads to add, k >= 1.

    Returns:
        a new list: ``selected`` followed by the chosen candidates.
    """
    raise NotImplementedError("ch16.headhunter_step")


def ddim_step(x_t: Tensor, eps: Tensor, alpha_bar_t: float, alpha_bar_next: float) -> Tensor:
    """★ (10 min) One deterministic DDIM step (η = 0) from time t to an earlier time t'.

    Estimate the clean image x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), then return
    x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'}) ε.

    Args:
        x_t: (...) the noisy sample, float32 or float64.
        eps: (...) the (guided) noise prediction at x_t, same shape and dtype.
        alpha_bar_t: ᾱ_t in (0, 1]; alpha_bar_next: ᾱ_{t'} >= ᾱ_t (1 at t' = 0).

    Returns:
        (...) x_{t'} in x_t's dtype.
    """
    raise NotImplementedError("ch16.ddim_step")
