"""The common mistakes of chapter 11's exercises, declared for the checks of ``ch11_head_importance``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake
from .ch11_head_importance import (
    _delta,
    _gate_modules,
    _gated_reference,
    profile_reference,
    recenter_reference,
)


def _heads(x, w_qkv, n_heads):
    D = x.shape[-1]
    d = D // n_heads
    q, k, v = (x @ w.T for w in w_qkv.chunk(3))
    split = [t.view(*t.shape[:-1], n_heads, d).transpose(-3, -2) for t in (q, k, v)]  # (B, H, N, d)
    scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(d)  # (B, H, N, N)
    return scores, split[2], d


def _combine(z, w_o, n_heads, d):
    w = w_o.T.reshape(n_heads, d, -1)  # (H, d, D)
    return torch.einsum("bhnd,hde->bne", z, w)


@mistake(
    "ch11.masked_mha",
    "the head mask multiplies the logits before the softmax: a head with g = 0 then attends "
    "uniformly (it writes the mean of V) instead of writing nothing; gate the head's output A_h V_h",
)
def mha_masks_the_logits(x, w_qkv, w_o, n_heads, head_mask):
    scores, v, d = _heads(x, w_qkv, n_heads)
    weights = torch.softmax(scores * head_mask[:, None, None], dim=-1)
    return _combine(weights @ v, w_o, n_heads, d), torch.softmax(scores, dim=-1)


@mistake(
    "ch11.masked_mha",
    "the returned weights are multiplied by the gates; the gate acts on the head's output, "
    "and A_h = softmax(Q_h K_h^T / sqrt(d)) stays a distribution over the keys",
)
def mha_gates_the_weights(x, w_qkv, w_o, n_heads, head_mask):
    out, weights = _gated_reference(x, w_qkv, w_o, n_heads, head_mask)
    return out.to(x.dtype), (weights * head_mask.double()[:, None, None]).to(x.dtype)


@mistake(
    "ch11.masked_mha",
    "the gate g_h scales the h-th block of output features after W_O; it scales head h's "
    "output z_h before W_O, where head h owns rows h·d ... (h+1)·d - 1 of W_O",
)
def mha_gates_after_w_o(x, w_qkv, w_o, n_heads, head_mask):
    out, weights = _gated_reference(x, w_qkv, w_o, n_heads, torch.ones_like(head_mask))
    d = x.shape[-1] // n_heads
    return (out * head_mask.double().repeat_interleave(d)).to(x.dtype), weights.to(x.dtype)


@mistake(
    "ch11.masked_mha",
    "the mask is read as keep/drop (m != 0); a gate is a real number that scales its head's output",
)
def mha_binary_mask(x, w_qkv, w_o, n_heads, head_mask):
    out, weights = _gated_reference(x, w_qkv, w_o, n_heads, (head_mask != 0).to(head_mask.dtype))
    return out.to(x.dtype), weights.to(x.dtype)


@mistake(
    "ch11.distance_profile",
    "the CLS column is dropped but the rows are not renormalised, so the rings keep only "
    "1 - A[i, CLS] of the mass; divide each patch row by its sum over the patches",
)
def profile_not_renormalised(attn, grid, has_cls, metric, normalize):
    a = attn[..., 1:, 1:] if has_cls else attn  # CLS dropped, the rows not renormalised
    return profile_reference(a, grid, False, metric, normalize).to(attn.dtype)


@mistake(
    "ch11.distance_profile",
    "the CLS column is kept as the first key (keys read from column 0), shifting every patch by "
    "one; drop column 0 with the CLS row: the patches are columns 1 ... G²",
)
def profile_keeps_the_cls_column(attn, grid, has_cls, metric, normalize):
    if not has_cls:
        return profile_reference(attn, grid, has_cls, metric, normalize).to(attn.dtype)
    a = attn.double()[..., 1:, :-1]  # queries without CLS, but keys 0 ... G² - 1
    return profile_reference(a, grid, False, metric, normalize).to(attn.dtype)


@mistake(
    "ch11.distance_profile",
    "the per-pair mean was returned when the ring mass was asked for: normalize='mass' sums the "
    "weights on each ring (the masses sum to 1), without dividing by the ring's size",
)
def profile_mean_for_mass(attn, grid, has_cls, metric, normalize):
    return profile_reference(attn, grid, has_cls, metric, "mean").to(attn.dtype)


@mistake(
    "ch11.distance_profile",
    "the ring mass was returned when the per-pair mean was asked for: normalize='mean' divides "
    "each ring's total by its number of (query, key) pairs",
)
def profile_mass_for_mean(attn, grid, has_cls, metric, normalize):
    return profile_reference(attn, grid, has_cls, metric, "mass").to(attn.dtype)


@mistake(
    "ch11.distance_profile",
    "the mean over queries of (ring mass / ring size); normalize='mean' pools the pairs: a ring's "
    "total weight over its number of pairs, so rings that only some queries have are not over-weighted",
)
def profile_mean_per_query(attn, grid, has_cls, metric, normalize):
    if normalize == "mass":
        return profile_reference(attn, grid, has_cls, metric, normalize).to(attn.dtype)
    a = attn.double()
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    P = grid * grid
    bins = sorted({round(_delta(i, j, grid, metric), 9) for i in range(P) for j in range(P)})
    total = torch.zeros(a.shape[1], len(bins), dtype=torch.float64)
    queries = torch.zeros(len(bins), dtype=torch.float64)
    for i in range(P):
        ring = [[j for j in range(P) if round(_delta(i, j, grid, metric), 9) == b] for b in bins]
        for k, js in enumerate(ring):
            if js:
                total[:, k] += a[:, :, i, js].sum(-1).mean(0) / len(js)
                queries[k] += 1
    return (total / queries).to(attn.dtype)


@mistake(
    "ch11.distance_profile",
    "Manhattan distance |Δr| + |Δc| instead of Chebyshev rings max(|Δr|, |Δc|)",
)
def profile_manhattan(attn, grid, has_cls, metric, normalize):
    if metric != "chebyshev":
        return profile_reference(attn, grid, has_cls, metric, normalize).to(attn.dtype)
    a = attn.double()
    if has_cls:
        a = a[..., 1:, 1:]
        a = a / a.sum(-1, keepdim=True)
    P = grid * grid
    dist = [[abs(i // grid - j // grid) + abs(i % grid - j % grid) for j in range(P)] for i in range(P)]
    bins = sorted({v for row in dist for v in row})
    total = torch.zeros(a.shape[1], len(bins), dtype=torch.float64)
    count = torch.zeros(len(bins), dtype=torch.float64)
    for i in range(P):
        for j in range(P):
            total[:, bins.index(dist[i][j])] += a[:, :, i, j].sum(0)
            count[bins.index(dist[i][j])] += 1
    B = a.shape[0]
    out = total / (B * P) if normalize == "mass" else total / (B * count)
    return out.to(attn.dtype)


def _per_example_gate_grads(model, inputs, loss_fn):
    """∂L_x/∂g_{lh} for every example x: (B, L, H), by autograd through per-example gates."""
    gates = _gate_modules(model)
    B, L, H = len(inputs), len(gates), gates[0].H
    masks = torch.ones(B, L, H, dtype=next(model.parameters()).dtype, requires_grad=True)
    for layer, gate in enumerate(gates):
        gate.mask = masks[:, layer]
    try:
        (grad,) = torch.autograd.grad(loss_fn(model(inputs)).sum(), masks)
    finally:
        for gate in gates:
            gate.mask = torch.ones(H, dtype=masks.dtype)
    return grad


@mistake(
    "ch11.taylor_importance",
    "the signed gradient E_x ∂L_x/∂g: a head whose removal raises the loss for some examples and "
    "lowers it for others scores near 0; take the absolute value |∂L_x/∂g| per example, then the mean",
)
def taylor_signed(model, inputs, loss_fn):
    return _per_example_gate_grads(model, inputs, loss_fn).mean(0)


@mistake(
    "ch11.taylor_importance",
    "the absolute value of the batch gradient |E_x ∂L_x/∂g| (what a single backward of the mean loss "
    "gives, as in common pruning scripts): opposite signs of different examples cancel first; take "
    "|∂L_x/∂g| per example, with one gate per example, then the mean",
)
def taylor_abs_of_batch_gradient(model, inputs, loss_fn):
    return _per_example_gate_grads(model, inputs, loss_fn).mean(0).abs()


@mistake(
    "ch11.taylor_importance",
    "the per-example scores are summed over the examples; the importance is the mean E_x |∂L_x/∂g|",
)
def taylor_summed_over_examples(model, inputs, loss_fn):
    return _per_example_gate_grads(model, inputs, loss_fn).abs().sum(0)


@mistake(
    "ch11.taylor_importance",
    "the absolute value is taken per token, Σ_i |⟨(A_h V_h W_O^h)_i, ∂L_x/∂y_i⟩|: one gate g_{lh} "
    "scales every token's output, so ∂L_x/∂g sums the tokens' terms INSIDE the absolute value",
)
def taylor_abs_per_token(model, inputs, loss_fn):
    gates = _gate_modules(model)
    B, N = len(inputs), inputs.shape[1]
    dtype = next(model.parameters()).dtype
    per_token = [torch.ones(B, N, g.H, dtype=dtype, requires_grad=True) for g in gates]
    hooks = [g.register_forward_hook(lambda mod, args, out, t=t: t) for g, t in zip(gates, per_token)]
    try:
        grads = torch.autograd.grad(loss_fn(model(inputs)).sum(), per_token)  # each (B, N, H)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([g.abs().sum(1).mean(0) for g in grads])  # (L, H)


@mistake(
    "ch11.recenter",
    "rows and columns are swapped (patch j read at row j % G, column j // G); patches are row-major: "
    "patch j sits at row j // G, column j % G",
)
def recenter_transposed(row, grid, i):
    G = grid
    return recenter_reference(row.reshape(G, G).T.reshape(-1), G, (i % G) * G + i // G)


@mistake(
    "ch11.recenter",
    "the offsets have the wrong sign (canvas[G - 1 - (r_j - r_i), ...]): the map is mirrored through "
    "the query; a key below and right of the query goes below and right of the centre",
)
def recenter_mirrored(row, grid, i):
    return recenter_reference(row, grid, i).flip(0, 1)
