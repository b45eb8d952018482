"""Chapter 15 solutions: aggregating cross-attention, occlusion saliency and their correlation."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def aggregate_ca(
    ca: Tensor, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Tensor:
    L, H = ca.shape[:2]
    layers = range(L) if layers is None else layers
    heads = range(H) if heads is None else heads
    # CA^(S) = (1/|S|) Σ_{(ℓ,h) ∈ S} CA^(ℓ,h)
    chosen = [ca[ell, h] for ell in layers for h in heads]
    return torch.stack(chosen).mean(0)  # (I, T')


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    per_frame = sm.amax(-1) if freq == "max" else sm.mean(-1)  # (I, T)
    pool = F.adaptive_max_pool1d if time == "max" else F.adaptive_avg_pool1d
    return pool(per_frame[:, None, :], t_out)[:, 0, :]  # (I, t_out)


def occlusion_saliency(f: Callable[[Tensor], Tensor], x: Tensor, masks: Tensor) -> Tensor:
    with torch.no_grad():
        p = f(x[None])[0]  # (I, V)
        q = f(torch.where(masks, torch.zeros_like(x), x))  # (M, I, V)
    # s_{m,i} = KL(p_i ‖ q_{m,i})
    s = (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)  # (M, I)
    occ = masks.to(x.dtype)  # (M, T, F)
    # SM_{i,c} = Σ_m s_{m,i} o_{m,c} / Σ_m o_{m,c}
    return torch.einsum("mi,mtf->itf", s, occ) / occ.sum(0).clamp(min=1)


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    if valid is not None:
        a, b = a[valid], b[valid]
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    if a.numel() < 2 or a.min() == a.max() or b.min() == b.max():
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))
