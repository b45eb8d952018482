"""Chapter 15 solutions: aggregating cross-attention, occlusion saliency and their correlation."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attnbook.mechanisms.attention_vs_saliency_experiment import mixing_toy


def aggregate_ca(
    ca: Tensor, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Tensor:
    L, H = ca.shape[:2]
    layers = range(L) if layers is None else layers
    heads = range(H) if heads is None else heads
    # CA^(𝓗) = (1/|𝓗|) Σ_{(l,h) ∈ 𝓗} CA^(l,h)
    chosen = [ca[ell, h] for ell in layers for h in heads]
    return torch.stack(chosen).mean(0)  # (N, M)


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    per_frame = sm.amax(-1) if freq == "max" else sm.mean(-1)  # (N, n_frame)
    pool = F.adaptive_max_pool1d if time == "max" else F.adaptive_avg_pool1d
    return pool(per_frame[:, None, :], t_out)[:, 0, :]  # (N, M)


def occlusion_saliency(f: Callable[[Tensor], Tensor], x: Tensor, masks: Tensor) -> Tensor:
    with torch.no_grad():
        p = f(x[None])[0]  # (N, V)
        q = f(torch.where(masks, torch.zeros_like(x), x))  # (n_occ, N, V)
    # KL_{r,i} = KL(ŷ_i ‖ ŷ_i^(r))
    s = (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)  # (n_occ, N)
    occ = masks.to(x.dtype)  # (n_occ, n_frame, n_freq)
    # SM_{i,tν} = Σ_r KL_{r,i} O_{r,tν} / Σ_r O_{r,tν}
    return torch.einsum("mi,mtf->itf", s, occ) / occ.sum(0).clamp(min=1)


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    if valid is not None:
        a, b = a[valid], b[valid]
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    if a.numel() < 2 or a.min() == a.max() or b.min() == b.max():
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def mixing_gap(alpha: float, seed: int) -> float:
    toy = mixing_toy(alpha)
    M, F_ = toy.x.shape
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(200, M, 1, generator=g) < 0.5).expand(-1, -1, F_)  # one draw for both maps
    c = toy.encode(toy.x[None])[0]  # (M, n_freq)
    ca = toy.cross_attention(c[None])[0]  # (N, M)
    sm_x = occlusion_saliency(lambda xb: toy.decode(toy.encode(xb)), toy.x, masks).amax(-1)  # (N, M)
    sm_c = occlusion_saliency(toy.decode, c, masks).amax(-1)  # (N, M)
    return pearson_flat(ca, sm_c) - pearson_flat(ca, sm_x)
