"""The common mistakes of chapter 08's exercises, declared for the checks of ``ch08_multi_branch_pooling``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The STKIM mistakes draw their random numbers as the exercise suggests
(torch.rand(..., generator=generator), then argsort), so a learner who draws the same way and
makes the same mistake gets the same answer.
"""

from __future__ import annotations

import math

import torch

from ..core import mistake

# --- ch08.multi_branch_attention ----------------------------------------------------------------


def _pool(h, keys, W, *, softmax_dim=1, scale=1.0, slide_from_mean_logits=False):
    logits = scale * (keys @ W.T).T  # (K, N)
    a = torch.softmax(logits, dim=softmax_dim)
    f = a @ h
    slide_a = torch.softmax(logits.mean(0), dim=0) if slide_from_mean_logits else a.mean(0)
    return a, f, slide_a @ h


def _keys(h, V, U):
    return torch.tanh(h @ V.T) * torch.sigmoid(h @ U.T)


@mistake(
    "ch08.multi_branch_attention",
    "softmax over the branches (dim 0); each branch's attention is a softmax over the N instances",
)
def pool_softmax_over_branches(h, V, U, W):
    return _pool(h, _keys(h, V, U), W, softmax_dim=0)


@mistake(
    "ch08.multi_branch_attention",
    "the slide attention is softmax(mean of the logits); ACMIL averages the branches' attention, "
    "ā = mean_k softmax(A_k)",
)
def pool_slide_from_mean_logits(h, V, U, W):
    return _pool(h, _keys(h, V, U), W, slide_from_mean_logits=True)


@mistake("ch08.multi_branch_attention", "the keys lack the gate: κ = tanh(V h) ⊙ sigmoid(U h), not tanh(V h)")
def pool_without_gate(h, V, U, W):
    return _pool(h, torch.tanh(h @ V.T), W)


@mistake("ch08.multi_branch_attention", "tanh and sigmoid swapped: tanh goes on V h, the sigmoid gate on U h")
def pool_swapped_gate(h, V, U, W):
    return _pool(h, torch.sigmoid(h @ V.T) * torch.tanh(h @ U.T), W)


@mistake(
    "ch08.multi_branch_attention",
    "logits divided by sqrt(D); gated attention pooling uses the raw logits w^T κ (scale 1)",
)
def pool_scaled_by_sqrt_d(h, V, U, W):
    return _pool(h, _keys(h, V, U), W, scale=1 / math.sqrt(V.shape[0]))


# --- ch08.stkim_mask -----------------------------------------------------------------------------


def _hide(logits, chosen):
    return logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).scatter(1, chosen, True), float("-inf")
    )


def _draw(K, top, generator, device):
    return torch.argsort(torch.rand(K, top, generator=generator, device=device), dim=1)


@mistake(
    "ch08.stkim_mask",
    "hidden instances drawn among all N; draw them among each branch's K_top largest logits only",
)
def stkim_outside_top_k(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    n = int(min(k_top, N) * p)
    return _hide(logits, _draw(K, N, generator, logits.device)[:, :n])


@mistake(
    "ch08.stkim_mask",
    "one mask for all branches; each branch draws its own subset of its own top K_top",
)
def stkim_one_mask_for_all_branches(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    top = min(k_top, N)
    n = int(top * p)
    candidates = torch.topk(logits.mean(0), top).indices  # (top,)
    chosen = candidates[_draw(1, top, generator, logits.device)[0, :n]]
    return _hide(logits, chosen.expand(K, n))


@mistake("ch08.stkim_mask", "masking in evaluation; with training=False return the logits unchanged")
def stkim_masks_in_eval(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    top = min(k_top, N)
    candidates = torch.topk(logits, top, dim=1).indices
    return _hide(logits, candidates.gather(1, _draw(K, top, generator, logits.device)[:, : int(top * p)]))


@mistake(
    "ch08.stkim_mask",
    "each candidate hidden with probability p; hide exactly ⌊min(K_top, N)·p⌋ of them per branch",
)
def stkim_bernoulli(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    top = min(k_top, N)
    candidates = torch.topk(logits, top, dim=1).indices
    drop = torch.rand(K, top, generator=generator, device=logits.device) < p
    hidden = torch.zeros_like(logits, dtype=torch.bool).scatter(1, candidates, drop)
    return logits.masked_fill(hidden, float("-inf"))


@mistake(
    "ch08.stkim_mask",
    "the n largest logits hidden every time; the n hidden instances are drawn at random among the top K_top",
)
def stkim_hides_the_largest(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    n = int(min(k_top, N) * p)
    return _hide(logits, torch.topk(logits, n, dim=1).indices)


@mistake(
    "ch08.stkim_mask",
    "n = ⌊K_top·p⌋ on a bag smaller than K_top; use ⌊min(K_top, N)·p⌋",
)
def stkim_without_min(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    top = min(k_top, N)
    n = min(int(k_top * p), top)
    candidates = torch.topk(logits, top, dim=1).indices
    return _hide(logits, candidates.gather(1, _draw(K, top, generator, logits.device)[:, :n]))


@mistake(
    "ch08.stkim_mask",
    "attention weights returned with the hidden ones set to 0; return the LOGITS with -inf there, "
    "so that the softmax renormalises the kept weights",
)
def stkim_zeroes_probabilities(logits, k_top, p, generator, training=True):
    K, N = logits.shape
    if not training:
        return logits
    top = min(k_top, N)
    candidates = torch.topk(logits, top, dim=1).indices
    chosen = candidates.gather(1, _draw(K, top, generator, logits.device)[:, : int(top * p)])
    return torch.softmax(logits, dim=1).scatter(1, chosen, 0.0)


# --- ch08.diversity_loss -------------------------------------------------------------------------


def _cosines(a):
    unit = a / a.norm(dim=1, keepdim=True)
    return unit @ unit.T


@mistake(
    "ch08.diversity_loss",
    "the diagonal cos(a_k, a_k) = 1 averaged in; average over the K(K-1)/2 pairs j < k only",
)
def diversity_with_self_pairs(a):
    return _cosines(a).mean()


@mistake("ch08.diversity_loss", "dot products a_j·a_k without dividing by |a_j| |a_k| (a cosine)")
def diversity_without_norms(a):
    K = a.shape[0]
    j, k = torch.triu_indices(K, K, offset=1)
    return (a @ a.T)[j, k].mean() if K > 1 else a.sum() * 0


@mistake("ch08.diversity_loss", "the cosines summed over the pairs; take their mean")
def diversity_summed(a):
    K = a.shape[0]
    j, k = torch.triu_indices(K, K, offset=1)
    return _cosines(a)[j, k].sum()


@mistake(
    "ch08.diversity_loss",
    "NaN for K = 1: a mean over no pairs; with one branch the term is 0",
)
def diversity_nan_for_one_branch(a):
    K = a.shape[0]
    j, k = torch.triu_indices(K, K, offset=1)
    return _cosines(a)[j, k].mean()


# --- ch08.acmil_loss -----------------------------------------------------------------------------


def _ce(logits, y):
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        torch.full((logits.reshape(-1, logits.shape[-1]).shape[0],), y, dtype=torch.long),
        reduction="none",
    )


def _div(a):
    K = a.shape[0]
    j, k = torch.triu_indices(K, K, offset=1)
    return _cosines(a)[j, k].mean() if K > 1 else a.sum() * 0


@mistake(
    "ch08.acmil_loss",
    "ℒ_branch kept for K = 1; the reference script drops it with one branch (the loss is CE(slide, y) alone)",
)
def loss_branch_term_for_one_branch(branch_logits, slide_logits, a, y):
    return _ce(slide_logits, y)[0] + _ce(branch_logits, y).mean() + _div(a)


@mistake("ch08.acmil_loss", "the branch cross-entropies summed; ℒ_branch is their mean over the K branches")
def loss_branch_summed(branch_logits, slide_logits, a, y):
    K = branch_logits.shape[0]
    extra = _ce(branch_logits, y).sum() + _div(a) if K > 1 else 0
    return _ce(slide_logits, y)[0] + extra


@mistake("ch08.acmil_loss", "the diversity term left out; ℒ = ℒ_div + ℒ_branch + ℒ_slide")
def loss_without_diversity(branch_logits, slide_logits, a, y):
    K = branch_logits.shape[0]
    return _ce(slide_logits, y)[0] + (_ce(branch_logits, y).mean() if K > 1 else 0)


@mistake("ch08.acmil_loss", "the slide term left out; the slide classifier is trained by CE(slide_logits, y)")
def loss_without_slide(branch_logits, slide_logits, a, y):
    K = branch_logits.shape[0]
    return _ce(branch_logits, y).mean() + _div(a) if K > 1 else _ce(branch_logits, y).mean()
