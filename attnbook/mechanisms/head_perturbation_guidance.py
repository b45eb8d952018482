r"""Chapter 16 · Head perturbation guidance: SoftPAG on selected heads, and the HeadHunter search.

From chapter 00's notation (S_h = Q_h K_h^T / sqrt(d), A_h = softmax(S_h) over the keys,
out = Σ_h A_h V_h W_O^h + b_O), one thing changes, and only in a second, "weak" forward pass:

1. **Identity attention (PAG).** Perturbed-attention guidance replaces A_h by the identity I for
   every head of chosen layers: each token attends only to itself, so the head returns O_h = V_h.
   With N queries that are the last N of M keys (a cache), I_ij = 1 where j = p_i = i + M - N.
2. **Head level.** Only the heads (l, h) of a selection S are perturbed; the others keep A_h.
3. **SoftPAG.** A selected head's weights move part of the way to the identity,
       A^soft_h = (1 - u_h) A_h + u_h I,     u_h ∈ [0, 1],
   so O^soft_h = (1 - u_h) A_h V_h + u_h V_h. Rows stay distributions (a convex mix of two),
   and the output is affine in u_h; u_h = 1 is PAG's identity, u_h = 0 leaves the head alone.
4. **Guidance.** The denoiser's prediction ε and the perturbed one ε̃ give
       ε̂ = ε + w (ε - ε̃),
   a step *away* from the weak model. (1 + w) ε - w ε̃ is the same expression rearranged.
5. **HeadHunter.** A greedy search for S: score every candidate head c ∉ S by an objective
   f(S ∪ {c}) (measured on samples drawn with fixed seeds), add the k best, repeat.

How it plugs in: the mix acts on the weights after the softmax and before V, which is
:class:`~attnbook.attention.MultiHeadAttention`'s ``weights_transform`` point. :class:`HeadPerturbation`
is that transform, with one u per head (all zero: the layer is unchanged, exactly). The context
manager :func:`perturbed` sets the u of a selection {(layer, head): u} for the weak pass only and
restores them afterwards; :func:`guided_prediction` runs both passes. The search
(:func:`headhunter_step`) and the sampler (:func:`ddim_sample`) are not attention: they stand
alone, as plain functions of a scoring callable and of a denoiser.

The book's reading (the paper leaves these open): ties in HeadHunter's ranking go to the
candidate listed first, and when fewer than k candidates remain all of them are added; the
sampler is deterministic DDIM (η = 0) on a cosine schedule.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..attention import scaled_dot_product_attention
from ..masks import query_positions
from ..validate import check_qkv, require_int, require_same_dtype_device, require_tensor

__all__ = [
    "identity_weights",
    "soft_identity",
    "softpag_attention",
    "HeadPerturbation",
    "perturbation_layers",
    "perturbed",
    "layer_selection",
    "guided_eps",
    "guided_prediction",
    "headhunter_step",
    "headhunter",
    "cosine_alpha_bar",
    "ddim_sample",
]


def _fraction(value: object, name: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _strengths(u: object, H: int, like: Tensor) -> Tensor:
    """u as an (H,) tensor in like's dtype and device: a number (every head) or H numbers in [0, 1]."""
    if isinstance(u, numbers.Real) and not isinstance(u, bool):
        u = torch.full((H,), _fraction(u, "u"), dtype=like.dtype, device=like.device)
    u = require_tensor(u, "u", ndim=1, floating=True, shape=f"(H={H},)")
    if u.shape[0] != H:
        raise ValueError(f"u must have shape (H={H},), one strength per head, got {tuple(u.shape)}")
    if u.device.type != "meta" and ((u < 0).any() or (u > 1).any() or u.isnan().any()):
        raise ValueError(f"u must lie in [0, 1], got {u.tolist()}")
    return u.to(dtype=like.dtype, device=like.device)


def identity_weights(N: int, M: int, *, device=None, dtype=torch.float32) -> Tensor:
    """The identity attention: query i puts all its weight on its own key p_i = i + M - N.

    Returns:
        (N, M) with I_ij = 1 where j = p_i and 0 elsewhere (the N × N identity when N = M).
    """
    N, M = require_int(N, "N", minimum=1), require_int(M, "M", minimum=1)
    if N > M:
        raise ValueError(f"the queries must be among the keys (N <= M), got N={N}, M={M}")
    # I_ij = [j = p_i], p_i = i + M - N
    return (query_positions(N, M, device=device)[:, None] == torch.arange(M, device=device)).to(dtype)


def soft_identity(weights: Tensor, u: Tensor | float) -> Tensor:
    """SoftPAG's weights: each head's attention mixed toward the identity.

    Args:
        weights: (B, H, N, M) post-softmax attention, N <= M (queries are the last N keys).
        u: (H,) strengths in [0, 1], or one number for every head.
    Returns:
        (B, H, N, M) (1 - u_h) A_h + u_h I, same dtype and device as ``weights``.
    """
    weights = require_tensor(weights, "weights", ndim=4, floating=True, shape="(B, H, N, M)")
    _, H, N, M = weights.shape
    u = _strengths(u, H, weights)[:, None, None]  # (H, 1, 1)
    eye = identity_weights(N, M, device=weights.device, dtype=weights.dtype)  # (N, M)
    # A^soft_h = (1 - u_h) A_h + u_h I
    return (1 - u) * weights + u * eye  # (B, H, N, M)


def softpag_attention(
    q: Tensor, k: Tensor, v: Tensor, u: Tensor | float, mask: Tensor | None = None, *, causal: bool = False
) -> tuple[Tensor, Tensor]:
    """Attention with each head's weights mixed toward the identity (SoftPAG).

    Args:
        q: (B, H, N, d) queries; k: (B, H, M, d) keys; v: (B, H, M, d_v) values; N <= M.
        u: (H,) strengths in [0, 1] (or one number); u_h = 0 is plain attention, u_h = 1 gives V.
        mask, causal: as in :func:`attnbook.attention.scaled_dot_product_attention`.
    Returns:
        out (B, H, N, d_v) = (1 - u_h) A_h V_h + u_h V_{h, p_i}, and the mixed weights (B, H, N, M).
    """
    check_qkv(q, k, v)
    require_tensor(q, "q", ndim=4, shape="(B, H, N, d)")
    _, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal)  # (B, H, N, M)
    mixed = soft_identity(weights, u)  # (B, H, N, M)
    # O^soft_h = A^soft_h V_h
    return mixed @ v, mixed


class HeadPerturbation(nn.Module):
    """A ``weights_transform`` that mixes selected heads toward the identity.

    Holds u (H,), a buffer of strengths in [0, 1], all zero at first: then the weights pass
    through untouched (the layer is exactly plain attention). :func:`perturbed` sets u for one pass.
    """

    def __init__(self, H: int):
        super().__init__()
        self.H = require_int(H, "H", minimum=1)
        self.register_buffer("u", torch.zeros(self.H))

    def forward(self, weights: Tensor) -> Tensor:
        """weights (B, H, N, M) -> (B, H, N, M); unchanged while every u_h is 0."""
        if not bool(self.u.any()):
            return weights
        return soft_identity(weights, self.u)


def perturbation_layers(model: nn.Module) -> list[HeadPerturbation]:
    """The :class:`HeadPerturbation` transforms of a model, in registration order (layer 0 first)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [m for m in model.modules() if isinstance(m, HeadPerturbation)]


@contextlib.contextmanager
def perturbed(model: nn.Module, selection: Mapping[tuple[int, int], float]) -> Iterator[nn.Module]:
    """Within the block, head h of layer l is mixed toward the identity with strength u.

    Args:
        model: a module whose attention layers use :class:`HeadPerturbation` as weights_transform.
        selection: {(layer, head): u}; an empty selection perturbs nothing.
    Restores every layer's previous strengths on exit, also after an error.
    """
    layers = perturbation_layers(model)
    if not isinstance(selection, Mapping):
        raise TypeError(f"selection must be a mapping {{(layer, head): u}}, got {type(selection).__name__}")
    if not layers and selection:
        raise ValueError("model has no HeadPerturbation layers to perturb")
    saved = [m.u.clone() for m in layers]
    try:
        for key, u in selection.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise TypeError(f"selection keys must be (layer, head) pairs, got {key!r}")
            layer, head = require_int(key[0], "layer", minimum=0), require_int(key[1], "head", minimum=0)
            if layer >= len(layers) or head >= layers[layer].H:
                raise ValueError(f"no head {(layer, head)}: the model has {len(layers)} layers of heads")
            layers[layer].u[head] = _fraction(u, f"u of head {(layer, head)}")
        yield model
    finally:
        for m, u in zip(layers, saved):
            m.u.copy_(u)


def layer_selection(layer: int, H: int, u: float = 1.0) -> dict[tuple[int, int], float]:
    """Every head of one layer with strength u: u = 1 is layer-level PAG."""
    layer, H, u = require_int(layer, "layer", minimum=0), require_int(H, "H", minimum=1), _fraction(u, "u")
    return {(layer, h): u for h in range(H)}


def guided_eps(eps: Tensor, eps_pert: Tensor, w: float) -> Tensor:
    """Perturbation guidance: a step away from the weak (perturbed) prediction.

    Args:
        eps: (...) the denoiser's prediction; eps_pert: (...) the perturbed pass's, same shape.
        w: the guidance scale (w = 0: no guidance).
    Returns:
        (...) ε + w (ε - ε̃), in eps's dtype.
    """
    require_tensor(eps, "eps", floating=True)
    require_tensor(eps_pert, "eps_pert", floating=True)
    require_same_dtype_device(eps=eps, eps_pert=eps_pert)
    if eps.shape != eps_pert.shape:
        raise ValueError(
            f"eps and eps_pert must have one shape, got {tuple(eps.shape)}, {tuple(eps_pert.shape)}"
        )
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
        raise TypeError(f"w must be a finite number, got {w!r}")
    # ε̂ = ε + w (ε - ε̃)
    return eps + w * (eps - eps_pert)


def guided_prediction(
    model: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    selection: Mapping[tuple[int, int], float],
    w: float,
) -> Tensor:
    """ε̂(x_t) from two passes of ``model(x, t)``: plain, then with ``selection`` perturbed.

    With w = 0 or an empty selection the second pass is skipped and ε is returned as is.
    """
    eps = model(x, t)
    if w == 0 or not selection:
        return eps
    with perturbed(model, selection):
        eps_pert = model(x, t)
    return guided_eps(eps, eps_pert, w)


def headhunter_step(
    candidates: Sequence[Hashable],
    selected: Sequence[Hashable],
    evaluate: Callable[[list], float],
    k: int,
) -> list:
    """One greedy HeadHunter iteration: add the k candidates whose addition scores best.

    Each candidate c not in ``selected`` is scored once by ``evaluate(selected + [c])`` (higher
    is better). They are ranked by score, ties going to the candidate listed first, and the top k
    are appended in rank order (all of them when fewer than k remain).

    Returns:
        a new list: ``selected`` followed by the chosen candidates.
    """
    k = require_int(k, "k", minimum=1)
    selected = list(selected)
    pool = [c for c in candidates if c not in selected]
    scores = [float(evaluate(selected + [c])) for c in pool]
    # rank by score (descending); Python's sort is stable, so equal scores keep the listed order
    order = sorted(range(len(pool)), key=lambda i: -scores[i])
    return selected + [pool[i] for i in order[:k]]


def headhunter(
    candidates: Sequence[Hashable], evaluate: Callable[[list], float], k: int = 1, iterations: int = 3
) -> list:
    """``iterations`` greedy steps of :func:`headhunter_step` from the empty selection."""
    iterations = require_int(iterations, "iterations", minimum=0)
    selected: list = []
    for _ in range(iterations):
        selected = headhunter_step(candidates, selected, evaluate, k)
    return selected


def cosine_alpha_bar(T: int, s: float = 0.008, *, dtype=torch.float64) -> Tensor:
    """Γ_t of the cosine schedule at t = 0 … T, clipped to keep Γ_T > 0.

    Returns:
        (T + 1,) decreasing from Γ_0 = 1, with Γ_t = cos²((t/T + s)/(1 + s) · π/2) / cos²(s/(1+s) · π/2).
    """
    T = require_int(T, "T", minimum=1)
    t = torch.arange(T + 1, dtype=torch.float64, device="cpu") / T
    # Γ_t = f(t) / f(0),  f(t) = cos²((t + s)/(1 + s) · π/2)
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (f / f[0]).clamp(min=1e-4).to(dtype)


def ddim_sample(
    eps_fn: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    alpha_bar: Tensor,
    steps: int,
    *,
    clip: float | None = None,
) -> Tensor:
    """Deterministic DDIM (η = 0) from x_T down to x_0 in ``steps`` evenly spaced steps.

    Args:
        eps_fn: eps_fn(x, t) -> (B, ...) the (guided) noise prediction; t is a (B,) long tensor.
        x_T: (B, ...) the starting noise.
        alpha_bar: (T + 1,) Γ_t, Γ_0 = 1 (e.g. :func:`cosine_alpha_bar`).
        steps: the number of denoising steps, 1 <= steps <= T.
        clip: when given, x̂_0 is clamped to [-clip, clip] (the data's range) at every step;
            near t = T, where sqrt(Γ_t) is small, this keeps an imperfect ε from blowing x̂_0 up.
    Returns:
        (B, ...) x_0 in x_T's dtype.
    """
    require_tensor(x_T, "x_T", min_ndim=1, floating=True, shape="(B, ...)")
    require_tensor(alpha_bar, "alpha_bar", ndim=1, floating=True, shape="(T + 1,)")
    T = alpha_bar.shape[0] - 1
    steps = require_int(steps, "steps", minimum=1)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real) or clip <= 0):
        raise ValueError(f"clip must be None or a number > 0, got {clip!r}")
    if steps > T:
        raise ValueError(f"steps must be <= T={T}, got {steps}")
    times = (
        torch.linspace(T, 0, steps + 1, device="cpu").round().long().tolist()
    )  # T = t_0 > t_1 > ... > t_steps = 0
    ab = alpha_bar.to(device=x_T.device, dtype=x_T.dtype)
    x = x_T
    for t, t_next in zip(times[:-1], times[1:]):
        eps = eps_fn(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        # x̂_0 = (x_t - sqrt(1 - Γ_t) ε) / sqrt(Γ_t)
        x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            # the ε consistent with the clamped x̂_0: ε = (x_t - sqrt(Γ_t) x̂_0) / sqrt(1 - Γ_t)
            eps = (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
        # x_{t'} = sqrt(Γ_{t'}) x̂_0 + sqrt(1 - Γ_{t'}) ε
        x = ab[t_next].sqrt() * x0 + (1 - ab[t_next]).sqrt() * eps
    return x
