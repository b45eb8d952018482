"""The common mistakes of chapter 17's exercises, declared for the checks of ``ch17_object_level_attention``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..core import mistake


def _fit(
    n_pos, dim, sigma, steps, lr, seed, *, kernel="gaussian", norm_penalty=True, generator=True, raw_dot=False
):
    idx = torch.arange(n_pos, dtype=torch.float64)
    diff = idx[:, None] - idx[None, :]
    if kernel == "gaussian":
        target = torch.exp(-(diff**2) / (2 * sigma**2))
    elif kernel == "no_two":
        target = torch.exp(-(diff**2) / sigma**2)
    else:  # laplacian
        target = torch.exp(-diff.abs() / sigma)
    gen = torch.Generator().manual_seed(seed) if generator else None
    W = torch.randn(n_pos, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        unit = W if raw_dot else F.normalize(W, dim=-1)
        loss = ((unit @ unit.T - target) ** 2).sum()
        if norm_penalty:
            norms = W.norm(dim=-1)
            loss = loss + ((norms - norms.mean()) ** 2).mean()
        (loss / max(n_pos * (n_pos - 1), 1)).backward()
        opt.step()
    return W.detach()


@mistake(
    "ch17.fit_gaussian_pe", "the kernel is exp(-(a-b)²/σ²); the Gaussian of width σ is exp(-(a-b)²/(2σ²))"
)
def fit_kernel_without_two(n_pos, dim, sigma, steps, lr, seed):
    return _fit(n_pos, dim, sigma, steps, lr, seed, kernel="no_two")


@mistake(
    "ch17.fit_gaussian_pe",
    "the target is exp(-|a-b|/σ) (a Laplacian kernel); the similarity follows exp(-(a-b)²/(2σ²))",
)
def fit_laplacian_kernel(n_pos, dim, sigma, steps, lr, seed):
    return _fit(n_pos, dim, sigma, steps, lr, seed, kernel="laplacian")


@mistake(
    "ch17.fit_gaussian_pe",
    "the norm penalty is missing: cosines ignore the row norms, so nothing equalises them; add "
    "mean_a (|W_a| - mean |W|)² to the loss",
)
def fit_without_norm_penalty(n_pos, dim, sigma, steps, lr, seed):
    return _fit(n_pos, dim, sigma, steps, lr, seed, norm_penalty=False)


@mistake(
    "ch17.fit_gaussian_pe",
    "the initial table ignores the seed (global random state); draw it with "
    "torch.Generator().manual_seed(seed) so the same seed gives the same table",
)
def fit_ignores_seed(n_pos, dim, sigma, steps, lr, seed):
    return _fit(n_pos, dim, sigma, steps, lr, seed, generator=False)


@mistake(
    "ch17.fit_gaussian_pe",
    "raw dot products W_a·W_b were matched to the kernel instead of cosine similarities: the rows must "
    "then shrink from norm ≈ sqrt(C) to 1 before the angles fit, and within the given steps they do not; "
    "normalise the rows before the Gram matrix",
)
def fit_raw_dot_products(n_pos, dim, sigma, steps, lr, seed):
    return _fit(n_pos, dim, sigma, steps, lr, seed, raw_dot=True)


@mistake("ch17.object_tokens", "the position comes first; the token is [appearance ; row ; column]")
def tokens_position_first(app, rc, pe):
    return torch.cat([pe[rc[..., 0]], pe[rc[..., 1]], app], dim=-1)


@mistake("ch17.object_tokens", "row and column swapped: rc[..., 0] is the row, read first, then rc[..., 1]")
def tokens_column_first(app, rc, pe):
    return torch.cat([app, pe[rc[..., 1]], pe[rc[..., 0]]], dim=-1)


def _pointer(
    enc, dec, We, Wd, readout, pad, *, softmax_first=False, scale=True, stop_first=False, pad_value=None
):
    k = torch.einsum("bnd,cde->bcne", enc.double(), We.double())
    q = torch.einsum("btd,cde->bcte", dec.double(), Wd.double())
    scores = q @ k.transpose(-2, -1)  # (B, C, T, N)
    if scale:
        scores = scores / math.sqrt(We.shape[-1])
    if softmax_first:
        scores = torch.softmax(scores, dim=-1)
    logits = torch.einsum("bctn,c->btn", scores, readout.double())
    if pad is not None:
        fill = float("-inf") if pad_value is None else pad_value
        logits = logits.masked_fill(pad[:, None, :], fill)
    zeros = logits.new_zeros(*logits.shape[:2], 1)
    out = torch.cat([zeros, logits] if stop_first else [logits, zeros], dim=-1)
    return out.to(enc.dtype)


@mistake(
    "ch17.pointer_logits",
    "each head's scores were softmaxed over the objects before the readout combined the heads; combine "
    "the raw scores (the readout acts on logits) and leave the softmax over N + 1 to the caller",
)
def pointer_softmax_before_readout(enc, dec, We, Wd, readout, pad=None):
    return _pointer(enc, dec, We, Wd, readout, pad, softmax_first=True)


@mistake("ch17.pointer_logits", "the scores are not divided by sqrt(dk)")
def pointer_unscaled(enc, dec, We, Wd, readout, pad=None):
    return _pointer(enc, dec, We, Wd, readout, pad, scale=False)


@mistake("ch17.pointer_logits", "the stop column is put first; it is the last column, index N")
def pointer_stop_first(enc, dec, We, Wd, readout, pad=None):
    return _pointer(enc, dec, We, Wd, readout, pad, stop_first=True)


@mistake(
    "ch17.pointer_logits",
    "padded objects get logit 0, which keeps probability after the softmax; fill them with -inf",
)
def pointer_pad_zero(enc, dec, We, Wd, readout, pad=None):
    return _pointer(enc, dec, We, Wd, readout, pad, pad_value=0.0)


def _edit(a, b, sub_cost=1):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + sub_cost * (x != y))
    return row[-1]


@mistake("ch17.normalized_levenshtein", "divided by len(a) + len(b); normalise by the longer length")
def levenshtein_sum_of_lengths(a, b):
    return _edit(a, b) / (len(a) + len(b)) if a or b else 0.0


@mistake("ch17.normalized_levenshtein", "divided by len(a); normalise by max(len(a), len(b))")
def levenshtein_first_length(a, b):
    return _edit(a, b) / max(len(a), 1) if a or b else 0.0


@mistake(
    "ch17.normalized_levenshtein",
    "a substitution counted as a deletion plus an insertion (cost 2); it costs 1",
)
def levenshtein_indel_only(a, b):
    return _edit(a, b, sub_cost=2) / max(len(a), len(b)) if a or b else 0.0


@mistake("ch17.normalized_levenshtein", "the raw edit distance, not divided by max(len(a), len(b))")
def levenshtein_unnormalised(a, b):
    return float(_edit(a, b))
