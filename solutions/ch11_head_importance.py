"""Chapter 11 solutions: Head importance."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbook.mechanisms.head_importance import PatchEmbedding, head_masked_transformer, set_head_masks
from attnbook.models import ModelConfig
from attnbook.tasks import shape_patches
from attnbook.train import train


def masked_mha(
    x: Tensor, w_qkv: Tensor, w_o: Tensor, n_heads: int, head_mask: Tensor
) -> tuple[Tensor, Tensor]:
    B, N, D = x.shape
    H, d = n_heads, D // n_heads
    # Q, K, V split into heads: (B, N, D) -> (B, H, N, d)
    q, k, v = ((x @ w.T).view(B, N, H, d).transpose(1, 2) for w in w_qkv.chunk(3, dim=0))
    # A_h = softmax(Q_h K_h^T / sqrt(d)) over the keys
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)  # (B, H, N, N)
    # z_h = g_h A_h V_h: the gate scales the head's output, never its weights
    z = (weights @ v) * head_mask[:, None, None]  # (B, H, N, d)
    # out = concat_h(z_h) W_O = Σ_h z_h W_O^h
    out = z.transpose(1, 2).reshape(B, N, D) @ w_o.T  # (B, N, D)
    return out, weights


def distance_profile(attn: Tensor, grid: int, has_cls: bool, metric: str, normalize: str) -> Tensor:
    B, H, N, _ = attn.shape
    P = grid * grid
    if N != P + (1 if has_cls else 0) or attn.shape[-1] != N:
        raise ValueError(f"attn has {N} tokens; grid={grid} needs {P + (1 if has_cls else 0)}")
    a = attn
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    idx = torch.arange(P, device=attn.device)
    rows, cols = (idx // grid).double(), (idx % grid).double()
    dr = (rows[:, None] - rows[None, :]).abs()
    dc = (cols[:, None] - cols[None, :]).abs()
    if metric == "chebyshev":
        dist = torch.maximum(dr, dc)
    elif metric == "euclidean":
        dist = torch.sqrt(dr**2 + dc**2)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    # ring id of each pair (i, j): its index among the distinct distances
    bins, ring = torch.unique(dist.round(decimals=9), return_inverse=True)  # (n_bins,), (P, P)
    one_hot = torch.nn.functional.one_hot(ring, len(bins)).to(a.dtype)  # (P, P, n_bins)
    total = torch.einsum("bhij,ijk->hk", a, one_hot)  # (H, n_bins)
    if normalize == "mass":
        return total / (B * P)
    if normalize == "mean":
        return total / (B * one_hot.sum(dim=(0, 1)))
    raise ValueError(f"unknown normalize {normalize!r}")


def recenter(row: Tensor, grid: int, i: int) -> Tensor:
    G = grid
    r_i, c_i = divmod(i, G)
    canvas = row.new_zeros(2 * G - 1, 2 * G - 1)
    # patch (r_j, c_j) -> (G - 1 + r_j - r_i, G - 1 + c_j - c_i): the whole grid, shifted
    canvas[G - 1 - r_i : 2 * G - 1 - r_i, G - 1 - c_i : 2 * G - 1 - c_i] = row.reshape(G, G)
    return canvas


def taylor_importance(model: nn.Module, inputs, loss_fn) -> Tensor:
    gates = [block.attn.head_gate for block in model.blocks]
    B, L, H = len(inputs), len(gates), gates[0].H
    dtype = next(model.parameters()).dtype
    # one gate per example, layer and head: g_{x,lh} = 1
    masks = torch.ones(B, L, H, dtype=dtype, requires_grad=True)
    for layer, gate in enumerate(gates):
        gate.mask = masks[:, layer]  # (B, H)
    try:
        # ∂(Σ_x L_x)/∂g_{x,lh} = ∂L_x/∂g_{lh}; autograd.grad leaves the weights' .grad alone
        (grad,) = torch.autograd.grad(loss_fn(model(inputs)).sum(), masks)  # (B, L, H)
    finally:
        for gate in gates:
            gate.mask = torch.ones(H, dtype=dtype)
    # E_x |∂L_x/∂g_{lh}|
    return grad.abs().mean(0)  # (L, H)


def _accuracy(model: nn.Module, test) -> float:
    with torch.no_grad():
        return (model(test)[:, 0].argmax(-1) == test.target).float().mean().item()


def pruning_experiment(seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    config = ModelConfig(D=16, H=4, layers=2, n_out=4, max_len=17, mlp_ratio=2, causal=False)
    model = head_masked_transformer(config, embed=PatchEmbedding(4, 16))
    train(
        model,
        lambda step, g: shape_patches(64, size=8, patch=2, length=5, generator=g),
        lambda m, b: F.cross_entropy(m(b)[:, 0], b.target),
        steps=60,
        lr=3e-3,
        seed=seed,
        progress=False,
    )
    test = shape_patches(256, size=8, patch=2, length=5, generator=torch.Generator().manual_seed(999))
    scores = taylor_importance(
        model, test, lambda logits: F.cross_entropy(logits[:, 0], test.target, reduction="none")
    ).flatten()  # (L·H,)
    order = scores.argsort()  # lowest score first
    results = [_accuracy(model, test)]
    for pruned in (order[:4], order[-4:]):
        masks = torch.ones(8)
        masks[pruned] = 0.0
        set_head_masks(model, masks.view(2, 4))
        results.append(_accuracy(model, test))
        set_head_masks(model, None)
    return tuple(results)
