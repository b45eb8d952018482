"""The common mistakes of chapter 05's exercises, declared for the checks of ``ch05_relative_convolutional``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core import mistake
from .ch05_relative_convolutional import RECIPE, _scores_reference


@mistake(
    "ch05.causal_dwconv",
    "pad only on the left (k - 1 zeros before the first token): symmetric padding lets token t see t + 1",
)
def causal_dwconv_symmetric_padding(x, w, b):
    B, H, N, d = x.shape
    kernel = w.shape[1]
    seq = x.reshape(B * H, N, d).transpose(1, 2)
    # 'same' padding: the centre tap on the current token, half the taps on later tokens
    out = F.conv1d(seq, w.flip(-1)[:, None, :], b, groups=d, padding=(kernel - 1) // 2)
    return out[..., :N].transpose(1, 2).reshape(B, H, N, d)


@mistake(
    "ch05.relative_scores",
    "index the tables by the KEY minus the QUERY position (row P + j - p_i, p_i = i + M - N), not p_i - j",
)
def relative_scores_query_minus_key(q, k, r, beta, u):
    return _scores_reference(q, k, r, beta, u, sign=-1).to(q.dtype)


@mistake(
    "ch05.relative_scores",
    "u_h biases the content term (q_i + u_h) . k_j only; the positional term is q_i . r + beta, without u",
)
def relative_scores_u_on_positions(q, k, r, beta, u):
    return _scores_reference(q, k, r, beta, u, u_on_positions=True).to(q.dtype)


@mistake(
    "ch05.causal_dwconv",
    "depth-wise means one set of taps PER CHANNEL: w[c, tau] for channel c, not channel 0's taps for all",
)
def causal_dwconv_taps_shared_by_channels(x, w, b):
    kernel = w.shape[1]
    out = b.expand_as(x).clone()
    for tau in range(kernel):
        # x_{t - tau}: shift the sequence down by tau, zeros before the start
        shifted = F.pad(x, (0, 0, tau, 0))[..., : x.shape[-2], :]
        out = out + w[0, tau] * shifted
    return out


@mistake(
    "ch05.rel_shift",
    "row i must start N - 1 - i columns later (pad ONE zero column on the right, flatten, skip N - 1 "
    "elements); a shift one column off aligns every key with the neighbouring offset",
)
def rel_shift_off_by_one(x, M):
    N = x.shape[-2]
    lead = x.shape[:-2]
    flat = F.pad(x, (0, 1)).reshape(*lead, N * (M + N))
    skew = flat[..., N : N + N * (M + N - 1)]
    if skew.shape[-1] < N * (M + N - 1):  # the last row runs off the end: pad with a zero
        skew = F.pad(skew, (0, N * (M + N - 1) - skew.shape[-1]))
    return skew.reshape(*lead, N, M + N - 1)[..., :M]


@mistake(
    "ch05.length_drop",
    "the drop is accuracy BEFORE minus accuracy BEYOND the training length (positions < N minus >= N): "
    "a model that gets worse beyond N has a positive drop",
)
def length_drop_reversed(variant, seed):
    from ...mechanisms.relative_convolutional import train_stream
    from ...tasks.markov_period import markov_period

    N = RECIPE["N"]
    model = train_stream(variant, seed, **RECIPE)
    test = markov_period(400, 2 * N, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        correct = (model(test.tokens).argmax(-1) == test.targets).float()
    return correct[:, N:].mean().item() - correct[:, :N].mean().item()
