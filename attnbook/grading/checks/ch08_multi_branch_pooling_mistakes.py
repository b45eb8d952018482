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


def _pool(X, keys, Q, *, softmax_dim=1, scale=1.0, slide_from_mean_scores=False):
    S = scale * (keys @ Q.T).T  # (H, M)
    A = torch.softmax(S, dim=softmax_dim)
    f = A @ X
    slide_A = torch.softmax(S.mean(0), dim=0) if slide_from_mean_scores else A.mean(0)
    return A, f, slide_A @ X


def _keys(X, W_tanh, W_gate):
    return torch.tanh(X @ W_tanh.T) * torch.sigmoid(X @ W_gate.T)


@mistake(
    "ch08.multi_branch_attention",
    "softmax over the branches (dim 0); each branch's attention is a softmax over the M instances",
)
def pool_softmax_over_branches(X, W_tanh, W_gate, Q):
    return _pool(X, _keys(X, W_tanh, W_gate), Q, softmax_dim=0)


@mistake(
    "ch08.multi_branch_attention",
    "the slide attention is softmax(mean of the scores); ACMIL averages the branches' attention, "
    "Ā = mean_h softmax(S_h)",
)
def pool_slide_from_mean_scores(X, W_tanh, W_gate, Q):
    return _pool(X, _keys(X, W_tanh, W_gate), Q, slide_from_mean_scores=True)


@mistake(
    "ch08.multi_branch_attention",
    "the keys lack the gate: k_j = tanh(W_tanh x_j) ⊙ sigmoid(W_gate x_j), not tanh(W_tanh x_j)",
)
def pool_without_gate(X, W_tanh, W_gate, Q):
    return _pool(X, torch.tanh(X @ W_tanh.T), Q)


@mistake(
    "ch08.multi_branch_attention",
    "tanh and sigmoid swapped: tanh goes on W_tanh x_j, the sigmoid gate on W_gate x_j",
)
def pool_swapped_gate(X, W_tanh, W_gate, Q):
    return _pool(X, torch.sigmoid(X @ W_tanh.T) * torch.tanh(X @ W_gate.T), Q)


@mistake(
    "ch08.multi_branch_attention",
    "scores divided by sqrt(d); gated attention pooling uses the raw scores q_h^T k_j (τ = 1)",
)
def pool_scaled_by_sqrt_d(X, W_tanh, W_gate, Q):
    return _pool(X, _keys(X, W_tanh, W_gate), Q, scale=1 / math.sqrt(W_tanh.shape[0]))


# --- ch08.stkim_mask -----------------------------------------------------------------------------


def _hide(logits, chosen):
    return logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).scatter(1, chosen, True), float("-inf")
    )


def _draw(H, top, generator, device):
    return torch.argsort(torch.rand(H, top, generator=generator, device=device), dim=1)


@mistake(
    "ch08.stkim_mask",
    "hidden instances drawn among all M; draw them among each branch's n_top largest scores only",
)
def stkim_outside_top_n(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    n_drop = int(min(n_top, M) * p)
    return _hide(logits, _draw(H, M, generator, logits.device)[:, :n_drop])


@mistake(
    "ch08.stkim_mask",
    "one mask for all branches; each branch draws its own subset of its own top n_top",
)
def stkim_one_mask_for_all_branches(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    top = min(n_top, M)
    n_drop = int(top * p)
    candidates = torch.topk(logits.mean(0), top).indices  # (top,)
    chosen = candidates[_draw(1, top, generator, logits.device)[0, :n_drop]]
    return _hide(logits, chosen.expand(H, n_drop))


@mistake("ch08.stkim_mask", "masking in evaluation; with training=False return the scores unchanged")
def stkim_masks_in_eval(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    top = min(n_top, M)
    candidates = torch.topk(logits, top, dim=1).indices
    return _hide(logits, candidates.gather(1, _draw(H, top, generator, logits.device)[:, : int(top * p)]))


@mistake(
    "ch08.stkim_mask",
    "each candidate hidden with probability p; hide exactly n_drop = ⌊min(n_top, M)·p⌋ of them per branch",
)
def stkim_bernoulli(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    top = min(n_top, M)
    candidates = torch.topk(logits, top, dim=1).indices
    drop = torch.rand(H, top, generator=generator, device=logits.device) < p
    hidden = torch.zeros_like(logits, dtype=torch.bool).scatter(1, candidates, drop)
    return logits.masked_fill(hidden, float("-inf"))


@mistake(
    "ch08.stkim_mask",
    "the n_drop largest scores hidden every time; the n_drop hidden instances are drawn at random among "
    "the top n_top",
)
def stkim_hides_the_largest(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    n_drop = int(min(n_top, M) * p)
    return _hide(logits, torch.topk(logits, n_drop, dim=1).indices)


@mistake(
    "ch08.stkim_mask",
    "n_drop = ⌊n_top·p⌋ on a bag smaller than n_top; use ⌊min(n_top, M)·p⌋",
)
def stkim_without_min(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    top = min(n_top, M)
    n_drop = min(int(n_top * p), top)
    candidates = torch.topk(logits, top, dim=1).indices
    return _hide(logits, candidates.gather(1, _draw(H, top, generator, logits.device)[:, :n_drop]))


@mistake(
    "ch08.stkim_mask",
    "attention weights returned with the hidden ones set to 0; return the SCORES with -inf there, "
    "so that the softmax renormalises the kept weights",
)
def stkim_zeroes_probabilities(logits, n_top, p, generator, training=True):
    H, M = logits.shape
    if not training:
        return logits
    top = min(n_top, M)
    candidates = torch.topk(logits, top, dim=1).indices
    chosen = candidates.gather(1, _draw(H, top, generator, logits.device)[:, : int(top * p)])
    return torch.softmax(logits, dim=1).scatter(1, chosen, 0.0)


# --- ch08.diversity_loss -------------------------------------------------------------------------


def _cosines(a):
    unit = a / a.norm(dim=1, keepdim=True)
    return unit @ unit.T


@mistake(
    "ch08.diversity_loss",
    "the diagonal cos(A_h, A_h) = 1 averaged in; average over the H(H-1)/2 pairs h < h' only",
)
def diversity_with_self_pairs(a):
    return _cosines(a).mean()


@mistake("ch08.diversity_loss", "dot products A_h·A_h' without dividing by |A_h| |A_h'| (a cosine)")
def diversity_without_norms(a):
    H = a.shape[0]
    h, h2 = torch.triu_indices(H, H, offset=1)
    return (a @ a.T)[h, h2].mean() if H > 1 else a.sum() * 0


@mistake("ch08.diversity_loss", "the cosines summed over the pairs; take their mean")
def diversity_summed(a):
    H = a.shape[0]
    h, h2 = torch.triu_indices(H, H, offset=1)
    return _cosines(a)[h, h2].sum()


@mistake(
    "ch08.diversity_loss",
    "NaN for H = 1: a mean over no pairs; with one branch the term is 0",
)
def diversity_nan_for_one_branch(a):
    H = a.shape[0]
    h, h2 = torch.triu_indices(H, H, offset=1)
    return _cosines(a)[h, h2].mean()


# --- ch08.acmil_loss -----------------------------------------------------------------------------


def _ce(logits, y):
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        torch.full((logits.reshape(-1, logits.shape[-1]).shape[0],), y, dtype=torch.long),
        reduction="none",
    )


def _div(a):
    H = a.shape[0]
    h, h2 = torch.triu_indices(H, H, offset=1)
    return _cosines(a)[h, h2].mean() if H > 1 else a.sum() * 0


@mistake(
    "ch08.acmil_loss",
    "ℒ_branch kept for H = 1; the reference script drops it with one branch (the loss is CE(slide, y) alone)",
)
def loss_branch_term_for_one_branch(branch_logits, slide_logits, a, y):
    return _ce(slide_logits, y)[0] + _ce(branch_logits, y).mean() + _div(a)


@mistake("ch08.acmil_loss", "the branch cross-entropies summed; ℒ_branch is their mean over the H branches")
def loss_branch_summed(branch_logits, slide_logits, a, y):
    H = branch_logits.shape[0]
    extra = _ce(branch_logits, y).sum() + _div(a) if H > 1 else 0
    return _ce(slide_logits, y)[0] + extra


@mistake("ch08.acmil_loss", "the diversity term left out; ℒ = ℒ_div + ℒ_branch + ℒ_slide")
def loss_without_diversity(branch_logits, slide_logits, a, y):
    H = branch_logits.shape[0]
    return _ce(slide_logits, y)[0] + (_ce(branch_logits, y).mean() if H > 1 else 0)


@mistake("ch08.acmil_loss", "the slide term left out; the slide classifier is trained by CE(slide_logits, y)")
def loss_without_slide(branch_logits, slide_logits, a, y):
    H = branch_logits.shape[0]
    return _ce(branch_logits, y).mean() + _div(a) if H > 1 else _ce(branch_logits, y).mean()
