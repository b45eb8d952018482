"""The common mistakes of chapter 13's exercises, declared for the checks of ``ch13_attention_sinks``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import torch

from ..core import mistake


def _rms(h, eps):
    return h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)


@mistake(
    "ch13.sink_mask",
    "you thresholded the raw activations |h_d|; a sink is found on NORMALISED activations: "
    "divide h by sqrt(mean(h²) + eps) over D first, so that the test does not depend on the scale",
)
def sink_mask_raw(h, dims, tau, eps=1e-6):
    return h.float()[..., dims].abs().amax(-1) > tau


@mistake("ch13.sink_mask", "the threshold is strict: a token is a sink when MA > χ_MA, not MA >= χ_MA")
def sink_mask_not_strict(h, dims, tau, eps=1e-6):
    return _rms(h.double(), eps)[..., dims].abs().amax(-1) >= tau


@mistake(
    "ch13.sink_mask",
    "you took the maximum over every dimension; MA looks only at the sink dimensions `dims`",
)
def sink_mask_all_dims(h, dims, tau, eps=1e-6):
    return _rms(h.double(), eps).abs().amax(-1) > tau


@mistake(
    "ch13.sink_mask",
    "you computed the norm in float16, where mean(h²) overflows to inf; upcast h to float32 first",
)
def sink_mask_in_float16(h, dims, tau, eps=1e-6):
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))[..., dims].abs().amax(-1) > tau


def _centric(A, img, sink, rho, summ, *, share_of_row=False, text_sinks=False, need_visual=True):
    in_img = torch.zeros(A.shape[-1], dtype=torch.bool)
    in_img[img] = True
    counted = sink if text_sinks else sink & in_img
    nu = (A.double() * in_img).sum(-1)
    mass = (A.double() * counted[:, None, None, :]).sum(-1)
    share = mass if share_of_row else torch.where(nu > 0, mass / nu.clamp_min(1e-300), torch.zeros_like(nu))
    out = (nu >= summ) & (share <= rho)
    return out & (sink & in_img).any(-1)[:, None, None] if need_visual else out


@mistake(
    "ch13.image_centric",
    "the visual-sink share SR is relative to the image's mass VR = Σ_{j∈I} A_qj, not to the whole row: "
    "divide the visual sinks' mass by VR",
)
def image_centric_share_of_row(A, img, sink, rho, summ):
    return _centric(A, img, sink, rho, summ, share_of_row=True)


@mistake(
    "ch13.image_centric",
    "only the sinks INSIDE the image span count in the share r; text sinks (BOS) are not visual sinks",
)
def image_centric_counts_text_sinks(A, img, sink, rho, summ):
    return _centric(A, img, sink, rho, summ, text_sinks=True)


@mistake(
    "ch13.image_centric",
    "a sequence with no visual sink selects no head at all (as the official code does): "
    "return all False for it",
)
def image_centric_without_visual_sinks(A, img, sink, rho, summ):
    return _centric(A, img, sink, rho, summ, need_visual=False)


def _redistribute(
    A, sink, img, sel, p, *, resoftmax=False, uniform=False, with_sinks=False, text_budget=True
):
    A64 = A.double()
    M = A.shape[-1]
    in_img = torch.zeros(M, dtype=torch.bool)
    in_img[img] = True
    s = sink[:, None, None, :]
    ns = (in_img & ~sink)[:, None, None, :]
    targets = in_img[None, None, None, :].expand_as(s) if with_sinks else ns
    donors = s & in_img if not text_budget else s
    budget = (1 - p) * (A64 * donors).sum(-1, keepdim=True)
    weight = targets.double() if uniform else A64 * targets
    total = weight.sum(-1, keepdim=True)
    m_ns = (A64 * ns).sum(-1, keepdim=True)
    share = torch.where(total > 0, weight / total.clamp_min(1e-300), torch.zeros_like(weight))
    edited = torch.where(s, p * A64, A64) + budget * share
    if resoftmax:
        edited = torch.softmax(edited, -1)
    out = torch.where(sel[..., None] & (m_ns > 0), edited, A64)
    return out.to(A.dtype)


@mistake(
    "ch13.redistribute",
    "do not apply softmax again: A is already a distribution, and the edit keeps each row's sum; "
    "softmax of probabilities flattens the row",
)
def redistribute_resoftmax(A, sink, img, sel, p):
    return _redistribute(A, sink, img, sel, p, resoftmax=True)


@mistake(
    "ch13.redistribute",
    "you spread the budget uniformly; give each non-sink image token a share proportional to its own "
    "attention, budget·A_qj / Σ_{j'∈I∖sinks} A_qj'",
)
def redistribute_uniform(A, sink, img, sel, p):
    return _redistribute(A, sink, img, sel, p, uniform=True)


@mistake(
    "ch13.redistribute",
    "the visual sinks take no part of the budget: the proportional weights run over the NON-sink image "
    "tokens only",
)
def redistribute_includes_visual_sinks(A, sink, img, sel, p):
    return _redistribute(A, sink, img, sel, p, with_sinks=True)


@mistake(
    "ch13.redistribute",
    "the budget (1 - p)·Σ A_qj runs over ALL sinks, text sinks (BOS) included: "
    "their weight is scaled by p too, and what they lose goes to the image",
)
def redistribute_forgets_text_budget(A, sink, img, sel, p):
    return _redistribute(A, sink, img, sel, p, text_budget=False)


def _var_heads(q, k, v, h, dims, tau, img, rho, summ, p, *, every_row=False, causal=True):
    N = q.shape[-2]
    sink = _rms(h.double(), 1e-6)[..., dims].abs().amax(-1) > tau
    scores = q.double() @ k.double().transpose(-2, -1) / q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
    A = torch.softmax(scores, -1)
    sel = _centric(A, img, sink, rho, summ)
    if not every_row:
        sel = sel & (torch.arange(N) >= img.stop)
    return (_redistribute(A, sink, img, sel, p) @ v.double()).to(q.dtype)


@mistake(
    "ch13.var_heads",
    "VAR edits only the query rows of the text AFTER the image (positions i >= img.stop); "
    "the rows of BOS and of the image tokens themselves keep their weights",
)
def var_heads_every_row(q, k, v, h, dims, tau, img, rho=0.5, summ=0.2, p=0.6):
    return _var_heads(q, k, v, h, dims, tau, img, rho, summ, p, every_row=True)


@mistake(
    "ch13.var_heads",
    "the layer is causal: hide the keys j > i (softmax over q k^T / sqrt(d) with -inf above the diagonal) "
    "before measuring and redistributing",
)
def var_heads_not_causal(q, k, v, h, dims, tau, img, rho=0.5, summ=0.2, p=0.6):
    return _var_heads(q, k, v, h, dims, tau, img, rho, summ, p, causal=False)
