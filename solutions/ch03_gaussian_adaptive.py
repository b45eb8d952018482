"""Chapter 03 solutions: Gaussian adaptive attention (GAAM)."""

import torch
from torch import Tensor


def gaam_weights(x: Tensor, delta: Tensor, c: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    n = x.shape[axis]
    # m and the UNBIASED variance along the axis; one element: variance 0 (torch.var gives NaN)
    mean = x.mean(dim=axis, keepdim=True)
    var = x.var(dim=axis, keepdim=True) if n > 1 else torch.zeros_like(mean)
    scale = torch.sqrt(var + eps)
    # ℓ = Σ_g -((x - (m + δ_g)) / s)² / (2 c_g²): the offset joins the mean before dividing by s
    logits = torch.zeros_like(x)
    for d, cg in zip(delta, c):
        logits = logits - ((x - (mean + d)) / scale) ** 2 / (2 * cg**2)
    # product of pdfs / its sum == softmax of the summed log-densities (the constants cancel)
    return torch.softmax(logits, dim=axis)


def multi_head_gaam(x: Tensor, deltas: Tensor, cs: Tensor, axis: int = 1, eps: float = 1e-8) -> Tensor:
    n, H = x.shape[axis], deltas.shape[0]
    size = n // H
    pieces = []
    for h in range(H):
        length = size if h < H - 1 else n - h * size  # the last head takes the remainder
        chunk = x.narrow(axis, h * size, length)
        pieces.append(chunk * gaam_weights(chunk, deltas[h], cs[h], axis=axis, eps=eps))  # gating: x ⊙ a
    return torch.cat(pieces, dim=axis)


def collapse_product(delta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    # precisions add: 1 / c_eff² = Σ_g 1 / c_g²
    c_eff_sq = 1 / (1 / c**2).sum()
    # the precision-weighted mean of the offsets
    delta_eff = c_eff_sq * (delta / c**2).sum()
    return delta_eff, torch.sqrt(c_eff_sq)


def importance_factor(A: Tensor) -> Tensor:
    mean = A.mean(dim=0)  # (n, C)
    span = mean.max() - mean.min()
    if span == 0:
        return torch.zeros_like(mean)
    return (mean - mean.min()) / span


def gain_sweep_share(gain: float, seed: int = 0) -> float:
    from attnbook.tasks.drifting_layers import drifting_layers

    data = drifting_layers(1000, torch.Generator().manual_seed(seed), offset=0.0, gain=1.0)
    x = gain * data.x  # (B, M, D): the whole sample made louder or quieter
    H, M = 4, x.shape[1]
    b, sigma = torch.tensor([0.9]), torch.tensor([0.2])
    size = M // H
    # each head's weights on its own chunk of the layer axis
    lengths = [size] * (H - 1) + [M - (H - 1) * size]
    a = torch.cat([gaam_weights(chunk, b, sigma) for chunk in x.split(lengths, dim=1)], dim=1)
    informative = (data.role == 1)[:, :, None]  # (B, M, 1)
    # share of a head's weight on the informative layers, averaged over samples and features
    return ((a * informative).sum(1) / H).mean().item()
