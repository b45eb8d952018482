r"""Head importance and attention-distance profiles: reading a trained model's heads.

Derivation (chapter 11). Chapter 00 wrote multi-head attention as a sum over heads,

    MHA(X) = Σ_h A_h V_h W_O^h + b_O,     A_h = softmax(Q_h K_h^T / sqrt(d)),

so each head writes its own additive term. Put a gate g_{lh} on head h of layer l,

    MHA_m(X) = Σ_h g_{lh} A_h V_h W_O^h + b_O,

g = 1 is the unchanged model; g_{lh} = 0 removes the head, exactly as zeroing its d rows of W_O
(the h-th block of W_O as a D×D matrix acting on the right). The gate multiplies the head's
OUTPUT: it never enters the softmax, so the weights A_h stay what they were. Three lenses
(the paper's body was not available: every formula below is the book's reading):

- ablation:  Imp^abl_{lh} = Metric(g = 1) - Metric(g = 1 - e_{lh})   (accuracy, or minus the loss)
- Taylor (Michel et al. 2019):  Imp^tay_{lh} = E_x |∂L_x/∂g_{lh}| at g = 1
      = E_x |Σ_i ⟨(A_h V_h W_O^h)_i, ∂L_x/∂y_i⟩|   (the sum over tokens i inside the absolute value;
      the absolute value per example x, before the mean over examples)
- distance profiles: on a G×G patch grid (token 0 the CLS token when there is one, dropped as a
  query and as a key, each row renormalised over the patches), with dist(i, j) the Chebyshev
  max(|Δr|, |Δc|) or Euclidean distance between patches,
      ring mass   mass_h(t) = E_{x,i} Σ_{j: dist(i,j)=t} A_h[i, j]             (sums to 1 over t)
      pair mean   pair_h(t) = Σ_{x,i} Σ_{j: dist(i,j)=t} A_h[i, j] / (B · #{(i, j): dist(i,j) = t})
      MAD_h = E_{x,i} Σ_j A_h[i, j] ‖p_i - p_j‖                          (Euclidean, in patches)
  and the query-recentred map of one row, on a (2G-1)×(2G-1) canvas with the query at the centre.

The gate is a ``head_gate`` of :class:`~attnbook.attention.MultiHeadAttention` (:class:`HeadMask`),
so a model with gates is ``TinyTransformer(config, attn=...)``; the profiles and the recentring
are analyses of attention weights, plain functions of tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention, scaled_dot_product_attention, split_heads
from ..models import ModelConfig, TinyTransformer
from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "masked_mha",
    "HeadMask",
    "head_masked_transformer",
    "set_head_masks",
    "ablation_importance",
    "taylor_importance",
    "distance_bins",
    "distance_profile",
    "mean_attention_distance",
    "recenter",
    "PatchEmbedding",
]

METRICS = ("chebyshev", "euclidean")
NORMALIZE = ("mass", "mean")


def masked_mha(
    x: Tensor, w_qkv: Tensor, w_o: Tensor, n_heads: int, head_mask: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Self-attention with a gate on each head's output: Σ_h g_h A_h V_h W_O^h (no biases).

    Args:
        x: tokens (B, N, D), float.
        w_qkv: (3D, D) packed [W_Q; W_K; W_V] as ``nn.MultiheadAttention.in_proj_weight``
            (q = x w_q^T); head h owns rows h·d ... (h+1)·d - 1 of each block.
        w_o: (D, D) as ``out_proj.weight`` (out = z w_o^T); head h owns its columns h·d ... (h+1)·d - 1.
        n_heads: H, dividing D.
        head_mask: (H,) gates g_h (any real numbers; 1 keeps a head, 0 removes it).

    Returns:
        out (B, N, D) and the weights A (B, H, N, N), which the gates do not change.
    """
    require_tensor(x, "x", ndim=3, floating=True, shape="(B, N, D)")
    D = x.shape[-1]
    H = require_int(n_heads, "n_heads", minimum=1)
    if D % H:
        raise ValueError(f"model width D={D} must be divisible by n_heads={H}")
    require_tensor(w_qkv, "w_qkv", ndim=2, floating=True, shape=f"(3D={3 * D}, D={D})")
    require_tensor(w_o, "w_o", ndim=2, floating=True, shape=f"(D={D}, D={D})")
    require_tensor(head_mask, "head_mask", ndim=1, floating=True, shape=f"(H={H},)")
    if w_qkv.shape != (3 * D, D) or w_o.shape != (D, D) or head_mask.shape != (H,):
        raise ValueError(
            f"expected w_qkv (3D={3 * D}, D={D}), w_o (D, D), head_mask (H={H},); got "
            f"{tuple(w_qkv.shape)}, {tuple(w_o.shape)}, {tuple(head_mask.shape)}"
        )
    require_same_dtype_device(x=x, w_qkv=w_qkv, w_o=w_o, head_mask=head_mask)
    w_q, w_k, w_v = w_qkv.chunk(3, dim=0)  # each (D, D)
    # Q_h, K_h, V_h = X W^h, split into heads
    q, k, v = (split_heads(x @ w.T, H) for w in (w_q, w_k, w_v))  # (B, H, N, d)
    # z_h = A_h V_h, A_h = softmax(Q_h K_h^T / sqrt(d))
    z, weights = scaled_dot_product_attention(q, k, v)  # (B, H, N, d), (B, H, N, N)
    # out = Σ_h g_h z_h W_O^h, W_O^h = the h-th block of d rows of w_o^T
    w_o_heads = w_o.T.reshape(H, D // H, D)  # (H, d, D)
    out = torch.einsum("h,bhnd,hde->bne", head_mask, z, w_o_heads)  # (B, N, D)
    return out, weights


class HeadMask(nn.Module):
    """A ``head_gate`` holding the gates g_h of one layer: x (B, N, D) -> gates (B, N, H).

    ``mask`` is (H,) (one gate per head, shared by every example) or (B, H) (one per example,
    which :func:`taylor_importance` uses to get per-example gradients in one backward pass). It
    is a buffer, not a parameter: training never changes it. It starts at ones (the unchanged layer).
    """

    def __init__(self, H: int):
        super().__init__()
        self.H = require_int(H, "H", minimum=1)
        self.register_buffer("mask", torch.ones(self.H))

    def forward(self, x: Tensor) -> Tensor:
        B, N = x.shape[0], x.shape[1]
        m = self.mask.to(x.dtype)
        if m.ndim == 1:
            m = m[None]  # (1, H)
        if m.shape[0] not in (1, B):
            raise ValueError(f"a per-example head mask must have shape (B={B}, H), got {tuple(m.shape)}")
        # g_{b,i,h} = g_{b,h} for every query token i
        return m[:, None, :].expand(B, N, self.H)  # (B, N, H)


class PatchEmbedding(nn.Module):
    """A ViT's tokens: a learned CLS token, then a linear map of each patch's pixels.

    ``forward(batch)`` takes anything with a ``patches`` attribute (B, G², p²) (e.g.
    :class:`~attnbook.tasks.ShapePatches`) or the (B, G², p²) tensor itself; returns (B, G² + 1, D),
    the CLS token at index 0. Positions come from the model's ``max_len`` embedding.
    """

    def __init__(self, patch_dim: int, D: int):
        super().__init__()
        self.proj = nn.Linear(require_int(patch_dim, "patch_dim", minimum=1), require_int(D, "D", minimum=1))
        self.cls = nn.Parameter(torch.zeros(1, 1, D))

    def forward(self, batch) -> Tensor:
        patches = batch if isinstance(batch, Tensor) else batch.patches  # (B, G², p²)
        x = self.proj(patches)  # (B, G², D)
        return torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)  # (B, G² + 1, D)


def head_masked_transformer(config: ModelConfig, embed: nn.Module | None = None) -> TinyTransformer:
    """TinyTransformer whose every attention layer carries a :class:`HeadMask` (all ones)."""
    return TinyTransformer(
        config, attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H, head_gate=HeadMask(cfg.H)), embed=embed
    )


def _gates(model: nn.Module) -> list[HeadMask]:
    gates = [m for m in model.modules() if isinstance(m, HeadMask)]
    if not gates:
        raise ValueError("the model has no HeadMask gates: build it with head_masked_transformer")
    return gates


def set_head_masks(model: nn.Module, masks: Tensor | None) -> None:
    """Set every layer's gates: masks (L, H) or per example (B, L, H); None resets them to ones."""
    gates = _gates(model)
    L, H = len(gates), gates[0].H
    if masks is None:
        for g in gates:
            g.mask = torch.ones(H, dtype=g.mask.dtype, device=g.mask.device)
        return
    require_tensor(masks, "masks", ndim=(2, 3), floating=True, shape=f"(L={L}, H={H}) or (B, L={L}, H={H})")
    if masks.shape[-2:] != (L, H):
        raise ValueError(f"masks must have shape (L={L}, H={H}) or (B, L, H), got {tuple(masks.shape)}")
    for layer, g in enumerate(gates):
        g.mask = masks[..., layer, :]  # (H,) or (B, H)


def ablation_importance(model: nn.Module, metric: Callable[[nn.Module], float]) -> Tensor:
    r"""Imp^abl_{lh} = metric(g = 1) - metric(g = 1 - e_{lh}): what removing one head costs.

    Args:
        model: a model with :class:`HeadMask` gates (see :func:`head_masked_transformer`).
        metric: ``metric(model) -> float``, higher is better (accuracy, or minus the loss).

    Returns:
        (L, H) float64 on the CPU; the model's gates are reset to ones afterwards.
    """
    gates = _gates(model)
    L, H = len(gates), gates[0].H
    device = gates[0].mask.device
    set_head_masks(model, None)
    full = float(metric(model))
    importance = torch.zeros(L, H, dtype=torch.float64)
    try:
        for layer in range(L):
            for h in range(H):
                # g = 1 - e_{lh}
                masks = torch.ones(L, H, device=device)
                masks[layer, h] = 0.0
                set_head_masks(model, masks)
                importance[layer, h] = full - float(metric(model))
    finally:
        set_head_masks(model, None)
    return importance


def taylor_importance(model: nn.Module, inputs, loss_fn: Callable[[Tensor], Tensor]) -> Tensor:
    r"""Imp^tay_{lh} = mean_x |∂L_x/∂g_{lh}| at g = 1, in one backward pass.

    Each example x gets its own gates g_{x,lh} = 1; since L_x depends on its own gates only,
    the gradient of Σ_x L_x with respect to them is ∂L_x/∂g_{lh} for every x at once.

    Args:
        model: a model with :class:`HeadMask` gates, called as ``model(inputs)``.
        inputs: the model's input batch (B, ...).
        loss_fn: ``loss_fn(outputs) -> (B,)`` per-example losses.

    Returns:
        (L, H) in the model's dtype, on its device; gradients of the weights are left untouched.
    """
    gates = _gates(model)
    L, H = len(gates), gates[0].H
    ref = gates[0].mask
    B = len(inputs)
    masks = torch.ones(B, L, H, dtype=next(model.parameters()).dtype, device=ref.device, requires_grad=True)
    set_head_masks(model, masks)
    try:
        losses = loss_fn(model(inputs))
        require_tensor(losses, "loss_fn(outputs)", ndim=1, floating=True, shape=f"(B={B},)")
        if losses.shape != (B,):
            raise ValueError(f"loss_fn must return per-example losses (B={B},), got {tuple(losses.shape)}")
        # ∂(Σ_x L_x)/∂g_{x,lh} = ∂L_x/∂g_{lh}
        (grad,) = torch.autograd.grad(losses.sum(), masks)  # (B, L, H)
    finally:
        set_head_masks(model, None)
    # E_x |∂L_x/∂g|: the absolute value per example, then the mean
    return grad.abs().mean(dim=0)  # (L, H)


def _grid_coords(grid: int, device) -> Tensor:
    """(G², 2) float64 (row, column) of each patch, row-major."""
    r = torch.arange(grid, device=device, dtype=torch.float64)
    return torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)  # (G², 2)


def _pair_distances(grid: int, metric: str, device) -> Tensor:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    p = _grid_coords(grid, device)
    diff = (p[:, None, :] - p[None, :, :]).abs()  # (G², G², 2)
    # Chebyshev max(|Δr|, |Δc|) or Euclidean sqrt(Δr² + Δc²)
    return diff.amax(-1) if metric == "chebyshev" else diff.pow(2).sum(-1).sqrt()  # (G², G²)


def distance_bins(grid: int, metric: str = "chebyshev", device=None) -> Tensor:
    """The distinct values of dist over all pairs of patches of a G×G grid, increasing, (n_bins,) float64."""
    grid = require_int(grid, "grid", minimum=1)
    # round to merge float noise of sqrt; exact integers a² + b² decide the Euclidean bins
    return torch.unique(_pair_distances(grid, metric, device).round(decimals=9))


def _patch_weights(attn: Tensor, grid: int, has_cls: bool) -> Tensor:
    require_tensor(attn, "attn", ndim=4, floating=True, shape="(B, H, N, N)")
    grid = require_int(grid, "grid", minimum=1)
    N = grid * grid + (1 if has_cls else 0)
    if attn.shape[-2:] != (N, N):
        raise ValueError(
            f"attn must be (B, H, N, N) with N = grid² {'+ 1 (CLS) ' if has_cls else ''}= {N} "
            f"for grid={grid}, got {tuple(attn.shape)}"
        )
    if not has_cls:
        return attn
    # drop the CLS query row and key column, renormalise each row over the patches
    a = attn[..., 1:, 1:]  # (B, H, G², G²)
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


def distance_profile(
    attn: Tensor, grid: int, has_cls: bool = True, metric: str = "chebyshev", normalize: str = "mass"
) -> Tensor:
    r"""Attention strength by query-key distance on the patch grid, per head.

    Args:
        attn: weights (B, H, N, N); N = G² + 1 with a CLS token at index 0, else G².
        grid: G (patches row-major: patch j at row j // G, column j % G).
        has_cls: token 0 is CLS: dropped as a query and as a key, rows renormalised over patches.
        metric: "chebyshev" (rings max(|Δr|, |Δc|)) or "euclidean".
        normalize: "mass" (mass(t): mean over x, i of the mass on ring t; sums to 1) or "mean"
            (pair(t): the average weight of one (query, key) pair at distance t).

    Returns:
        (H, n_bins) in attn's dtype and device; bins as :func:`distance_bins`.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    a = _patch_weights(attn, grid, has_cls)  # (B, H, P, P), P = G²
    bins = distance_bins(grid, metric, device=a.device)  # (n_bins,)
    dist = _pair_distances(grid, metric, a.device)  # (P, P)
    # one-hot ring membership of each pair: R[i, j, k] = [dist(i, j) = bin k]
    ring = (dist[..., None] - bins).abs().lt(1e-6).to(a.dtype)  # (P, P, n_bins)
    # Σ_{x,i} Σ_{j ∈ ring k} A[i, j]
    total = torch.einsum("bhij,ijk->hk", a, ring)  # (H, n_bins)
    B, P = a.shape[0], a.shape[-1]
    if normalize == "mass":
        # mass(t) = E_{x,i} Σ_{j: dist(i,j)=t} A[i, j]
        return total / (B * P)
    # pair(t) = total / (B · #pairs at dist)
    return total / (B * ring.sum(dim=(0, 1)))


def mean_attention_distance(attn: Tensor, grid: int, has_cls: bool = True) -> Tensor:
    r"""MAD_h = E_{x,i} Σ_j A_h[i, j] ‖p_i - p_j‖ (Euclidean, in patches): (B, H, N, N) -> (H,)."""
    a = _patch_weights(attn, grid, has_cls)  # (B, H, P, P)
    dist = _pair_distances(grid, "euclidean", a.device).to(a.dtype)  # (P, P)
    return (a * dist).sum(-1).mean(dim=(0, 2))  # (H,)


def recenter(row: Tensor, grid: int, i: int) -> Tensor:
    r"""One query's attention row over the patches, moved onto a canvas centred on the query.

    canvas[G - 1 + r_j - r_i, G - 1 + c_j - c_i] = row[j]; the other cells are 0.

    Args:
        row: (G²,) weights of query patch i over the patches (CLS already dropped).
        grid: G.
        i: the query's patch index, 0 <= i < G².

    Returns:
        (2G - 1, 2G - 1) in row's dtype and device; the query's own weight at the centre.
    """
    require_tensor(row, "row", ndim=1, floating=True, shape="(G²,)")
    G = require_int(grid, "grid", minimum=1)
    if row.shape[0] != G * G:
        raise ValueError(f"row must have G² = {G * G} entries for grid={G}, got {row.shape[0]}")
    i = require_int(i, "i", minimum=0)
    if i >= G * G:
        raise ValueError(f"i must be a patch index below G² = {G * G}, got {i}")
    r_i, c_i = divmod(i, G)
    canvas = row.new_zeros(2 * G - 1, 2 * G - 1)
    # the grid, shifted so that patch i lands on the centre (G - 1, G - 1)
    canvas[G - 1 - r_i : 2 * G - 1 - r_i, G - 1 - c_i : 2 * G - 1 - c_i] = row.reshape(G, G)
    return canvas
