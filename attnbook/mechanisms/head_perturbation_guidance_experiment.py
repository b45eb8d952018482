r"""Chapter 16's miniature: a tiny DiT-style denoiser of 8 × 8 template images, guided by its heads.

The recipe of the chapter's experiment, kept apart from the mechanism
(:mod:`attnbook.mechanisms.head_perturbation_guidance`):

- :class:`TinyDenoiser`, ε_θ(x_t, t): the image cut into 16 patches of 2 × 2 pixels (one token
  each), a learned position and time embedding added to every token, a
  :class:`~attnbook.models.TinyTransformer` (no causal mask) whose attention layers carry a
  :class:`~attnbook.mechanisms.head_perturbation_guidance.HeadPerturbation`, and a readout back
  to the patches' pixels;
- :func:`train_denoiser`: DDPM's ε-prediction loss on :func:`~attnbook.tasks.template_images`
  with a cosine schedule, seeded;
- :func:`sample_images`: deterministic DDIM from fixed noise seeds (common random numbers, so two
  selections are compared on the same starting points), with guidance ε + w (ε - ε̃);
- :func:`sample_quality`: the mean squared distance of the samples to the nearest noiseless
  prototype of the data (lower is better) and the number of templates the samples cover;
- :func:`compare_guidance`: the controlled comparison. On one set of noise seeds (the search
  set) it picks the best layer for layer-level PAG and runs HeadHunter on the same objective;
  on another set (held out) it scores no guidance, that layer, the selected heads, and SoftPAG's
  u on those heads, all at one w.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..models import ModelConfig, TinyTransformer
from ..tasks.template_images import nearest_prototype, template_images
from ..validate import require_int, require_tensor
from .head_perturbation_guidance import (
    HeadPerturbation,
    cosine_alpha_bar,
    ddim_sample,
    guided_prediction,
    headhunter,
    layer_selection,
)

__all__ = [
    "T_STEPS",
    "patchify",
    "unpatchify",
    "TinyDenoiser",
    "train_denoiser",
    "sample_images",
    "sample_quality",
    "compare_guidance",
]

T_STEPS = 100  # the diffusion's number of time steps T


def patchify(x: Tensor) -> Tensor:
    """(B, 8, 8) -> (B, 16, 4): 2 × 2 patches, row-major, each patch's pixels row-major."""
    require_tensor(x, "x", ndim=3, floating=True, shape="(B, 8, 8)")
    B = x.shape[0]
    # (B, 4, 2, 4, 2) -> (B, 4, 4, 2, 2) -> (B, 16, 4)
    return x.reshape(B, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(B, 16, 4)


def unpatchify(p: Tensor) -> Tensor:
    """(B, 16, 4) -> (B, 8, 8): the inverse of :func:`patchify`."""
    require_tensor(p, "p", ndim=3, floating=True, shape="(B, 16, 4)")
    B = p.shape[0]
    return p.reshape(B, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(B, 8, 8)


class _PatchTimeEmbedding(nn.Module):
    """(x (B, 8, 8), t (B,)) -> (B, 16, D): patch projection + position + time embeddings."""

    def __init__(self, D: int, T: int):
        super().__init__()
        self.proj = nn.Linear(4, D)
        self.pos = nn.Parameter(0.02 * torch.randn(16, D))
        self.time = nn.Embedding(T + 1, D)

    def forward(self, inputs: tuple[Tensor, Tensor]) -> Tensor:
        x, t = inputs
        # x_0 = patch W_in + p_pos + e_time(t)
        return self.proj(patchify(x)) + self.pos + self.time(t)[:, None]  # (B, 16, D)


class TinyDenoiser(nn.Module):
    """ε_θ(x_t, t) for 8 × 8 images: a TinyTransformer over 16 patch tokens, heads perturbable.

    Args:
        D, H, layers, mlp_ratio: the transformer's sizes.
        T: the number of diffusion time steps (the time embedding's size).
    """

    def __init__(self, D: int = 32, H: int = 4, layers: int = 3, mlp_ratio: int = 2, T: int = T_STEPS):
        super().__init__()
        config = ModelConfig(D=D, H=H, layers=layers, n_out=4, mlp_ratio=mlp_ratio, causal=False)
        self.net = TinyTransformer(
            config,
            attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H, weights_transform=HeadPerturbation(cfg.H)),
            embed=_PatchTimeEmbedding(D, T),
        )
        self.H, self.layers = H, layers

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, 8, 8) noisy images, t (B,) long time steps -> (B, 8, 8) predicted noise."""
        return unpatchify(self.net((x, t)))


def train_denoiser(
    seed: int, *, steps: int = 800, batch_size: int = 64, lr: float = 2e-3, T: int = T_STEPS, **sizes
) -> TinyDenoiser:
    """Train a :class:`TinyDenoiser` by ε-prediction: E ‖ε_θ(sqrt(Γ_t) x_0 + sqrt(1 - Γ_t) ε, t) - ε‖².

    ``seed`` fixes the initial weights, the images, the times and the noise. Returns it in eval mode.
    """
    seed, steps = require_int(seed, "seed", minimum=0), require_int(steps, "steps", minimum=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = TinyDenoiser(T=T, **sizes)
    alpha_bar = cosine_alpha_bar(T, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x0 = template_images(batch_size, generator=g).images  # (B, 8, 8)
        t = torch.randint(1, T + 1, (batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = alpha_bar[t][:, None, None]
        # x_t = sqrt(Γ_t) x_0 + sqrt(1 - Γ_t) ε
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = ((model(x_t, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def sample_images(
    model: TinyDenoiser,
    selection: Mapping[tuple[int, int], float] | None = None,
    w: float = 0.0,
    *,
    n: int = 64,
    seed: int = 0,
    steps: int = 20,
) -> Tensor:
    """n images (n, 8, 8) by DDIM from the noise of ``seed``, guided away from ``selection``'s heads.

    Clamps x̂_0 to [-1, 1] (the data's range) at every step.
    """
    n = require_int(n, "n", minimum=1)
    alpha_bar = cosine_alpha_bar(model.net.embed.time.num_embeddings - 1, dtype=torch.float32)
    x_T = torch.randn(n, 8, 8, generator=torch.Generator().manual_seed(seed))
    selection = dict(selection or {})
    eps_fn = lambda x, t: guided_prediction(model, x, t, selection, w)  # noqa: E731
    return ddim_sample(eps_fn, x_T, alpha_bar, steps, clip=1.0)


def sample_quality(images: Tensor) -> tuple[float, int]:
    """(mean distance to the nearest prototype (lower is better), number of templates covered)."""
    distance, classes = nearest_prototype(images)
    return distance.mean().item(), len(set(classes.tolist()))


def compare_guidance(
    model: TinyDenoiser,
    w: float = 2.0,
    *,
    k: int = 1,
    iterations: int = 3,
    n_search: int = 64,
    n_eval: int = 128,
    steps: int = 20,
    search_seed: int = 0,
    eval_seed: int = 1,
    us: tuple[float, ...] = (0.25, 0.5, 0.75),
) -> dict[str, object]:
    """No guidance vs the best layer (PAG) vs HeadHunter's heads (u = 1) vs SoftPAG, at one w.

    Returns:
        a dict: ``layer`` (the best layer on the search seeds), ``heads`` (HeadHunter's selection,
        in the order added), and on the held-out seeds the distances ``none``, ``pag``, ``headhunter``
        (lower is better), ``soft`` (one per u in ``us``) and ``covered`` (templates covered, same keys).
    """

    def distance(selection, n, seed):
        return sample_quality(sample_images(model, selection, w, n=n, seed=seed, steps=steps))

    layer_scores = [
        distance(layer_selection(l, model.H), n_search, search_seed)[0] for l in range(model.layers)
    ]
    layer = min(range(model.layers), key=lambda l: layer_scores[l])
    candidates = [(l, h) for l in range(model.layers) for h in range(model.H)]
    # HeadHunter maximises its objective: minus the distance on the search seeds
    heads = headhunter(
        candidates, lambda S: -distance({c: 1.0 for c in S}, n_search, search_seed)[0], k, iterations
    )
    held_out = {
        "none": distance({}, n_eval, eval_seed),
        "pag": distance(layer_selection(layer, model.H), n_eval, eval_seed),
        "headhunter": distance({c: 1.0 for c in heads}, n_eval, eval_seed),
    }
    soft = [distance({c: u for c in heads}, n_eval, eval_seed)[0] for u in us]
    return {
        "layer": layer,
        "heads": heads,
        **{name: d for name, (d, _) in held_out.items()},
        "soft": soft,
        "covered": {name: c for name, (_, c) in held_out.items()},
    }
