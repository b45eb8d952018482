r"""Chapter 15's experiment: how well does a toy transcriber's cross-attention match its saliency?

Recipe: train :class:`~attnbook.mechanisms.attention_vs_saliency.SpeechTranscriber` on
:func:`~attnbook.tasks.spoken_symbols.spoken_symbols` with teacher forcing; then, on held-out
utterances, force-decode the reference transcript and compare, per utterance,

* CA^(𝓗) for every single head, every layer's mean and the mean of all heads, with
* SM^X ("X"): occlusion saliency of the spectrogram with the paper's kind of masks (random
  2 × 4 blocks, π_occ = 0.5, KL score), reduced to the M encoder frames by frequency max then
  time max over the adaptive windows;
* SM^C ("C"): occlusion saliency of the encoder frames (whole frames, π_occ = 0.5);
* SM^X on frame pairs ("X_frames"): the controlled version of SM^X, with the SAME draw of masks
  as SM^C: where SM^C hides encoder frame j, it hides input frames 2j and 2j + 1 (every bin);
  read at frame 2j. It differs from SM^C only in where the occlusion happens, before or after
  the encoder (whose convolution reads frames 2j - 1 ... 2j + 1 for encoder frame j);
* the gradient saliency |∂ log ŷ_i(y_i)/∂X| of the forced tokens, reduced as SM^X,

by Pearson's corr over the (N, M) cells, averaged over utterances ("X_rank", "C_rank": Spearman's
corr_S against SM^X and SM^C). Everything is seeded.

:func:`mixing_toy` is a fixed, untrained encoder-decoder small enough to grade in milliseconds:
an encoder that only mixes each frame with its two neighbours, C = W_mix X with
W_mix = (1 - α) I_M + α W_nb (it acts on the left: it mixes frames, the rows, not features), and
one cross-attention head that reads C. :func:`mixing_gap` measures corr(CA, SM^C) - corr(CA, SM^X)
on it with one draw of whole-frame masks for both maps: 0 at α = 0 (C = X) and growing with α.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tasks.spoken_symbols import spoken_symbols
from ..validate import require_int
from .attention_vs_saliency import (
    SpeechTranscriber,
    aggregate_ca,
    gradient_saliency,
    occlusion_saliency,
    pearson_flat,
    random_block_masks,
    reduce_saliency,
    spearman_flat,
)

__all__ = [
    "train_transcriber",
    "aggregations",
    "saliency_correlations",
    "MixingToy",
    "mixing_toy",
    "mixing_gap",
]

N_FREQ = 16


def train_transcriber(
    seed: int,
    *,
    enc_layers: int = 2,
    steps: int = 800,
    batch: int = 32,
    lr: float = 3e-3,
    D: int = 64,
    H: int = 4,
    dec_layers: int = 2,
) -> SpeechTranscriber:
    """Train a transcriber for ``steps`` AdamW steps on fresh batches; returns it in eval mode."""
    seed, steps = require_int(seed, "seed"), require_int(steps, "steps", minimum=1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vocab = spoken_symbols(1, generator=torch.Generator()).vocab
    model = SpeechTranscriber(N_FREQ, vocab, D=D, H=H, enc_layers=enc_layers, dec_layers=dec_layers)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        b = spoken_symbols(batch, n_freq=N_FREQ, generator=g)
        logits = model(b.x, b.tokens[:, :-1], b.frame_valid)  # (B, I, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), b.targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def aggregations(L: int, H: int) -> dict[str, tuple[list[int] | None, list[int] | None]]:
    """The sets 𝓗 compared: every head "l<l>h<h>", every layer "layer<l>", and "all"."""
    out = {f"l{ell}h{h}": ([ell], [h]) for ell in range(L) for h in range(H)}
    out.update({f"layer{ell}": ([ell], None) for ell in range(L)})
    out["all"] = (None, None)
    return out


KINDS = ("X", "X_frames", "C", "grad", "X_rank", "C_rank")


def saliency_correlations(
    model: SpeechTranscriber, *, n_utterances: int = 20, n_masks: int = 300, seed: int = 1000
) -> dict[str, dict[str, float]]:
    """Mean corr between CA^(𝓗) and each saliency map, over held-out utterances.

    Args:
        n_masks: n_occ, the masks per saliency map.
    Returns:
        {kind: {aggregation name: mean corr}} for the kinds of :data:`KINDS` (see the module
        docstring), plus {"accuracy": {"utterance": fraction of utterances decoded exactly under
        teacher forcing}}.
    """
    n_utterances = require_int(n_utterances, "n_utterances", minimum=1)
    n_masks = require_int(n_masks, "n_masks", minimum=1)
    g = torch.Generator().manual_seed(seed)
    b = spoken_symbols(n_utterances, n_freq=N_FREQ, generator=g)
    with torch.no_grad():
        logits = model(b.x, b.tokens[:, :-1], b.frame_valid)
    exact = ((logits.argmax(-1) == b.targets) | (b.targets < 0)).all(-1).double().mean().item()
    L, H = len(model.decoder), model.decoder[0].cross.H
    names = aggregations(L, H)
    corr: dict[str, dict[str, list[float]]] = {k: {n: [] for n in names} for k in KINDS}
    for u in range(n_utterances):
        n_frame, N = int(b.frame_valid[u].sum()), int((b.targets[u] >= 0).sum())
        x, tokens = b.x[u, :n_frame], b.tokens[u : u + 1, :N]  # the utterance without padding

        def f(xb, tokens=tokens):
            return torch.softmax(model(xb, tokens.expand(len(xb), -1)), -1)  # (B, N, vocab)

        with torch.no_grad():
            _, ca = model(x[None], tokens, return_cross=True)
            c = model.encode(x[None])[0]  # (M, D)
        ca = ca[0]  # (L, H, N, M)
        M = ca.shape[-1]

        def fc(cb, tokens=tokens):
            return torch.softmax(model.decode(cb, tokens.expand(len(cb), -1)), -1)

        masks_x = random_block_masks(n_masks, n_frame, N_FREQ, pi_occ=0.5, block=(2, 4), generator=g)
        # one draw of whole encoder frames, shared by SM^C and the frame-pair SM^X
        frames = torch.rand(n_masks, M, generator=g) < 0.5  # (n_occ, M)
        masks_c = frames[:, :, None].expand(-1, -1, c.shape[1])  # (n_occ, M, D)
        pairs = frames.repeat_interleave(2, dim=1)[:, :n_frame, None].expand(-1, -1, N_FREQ)
        maps = {
            "X": reduce_saliency(occlusion_saliency(f, x, masks_x, batch_size=100), M),
            # input frames 2j and 2j + 1 carry one value: read it at frame 2j
            "X_frames": occlusion_saliency(f, x, pairs, batch_size=100).amax(-1)[:, ::2],
            "C": occlusion_saliency(fc, c, masks_c, batch_size=100).amax(-1),
            "grad": reduce_saliency(gradient_saliency(f, x, b.targets[u, :N]), M),
        }
        for name, (layers, heads) in names.items():
            agg = aggregate_ca(ca, layers, heads)
            for kind, sm in maps.items():
                corr[kind][name].append(pearson_flat(agg, sm))
            corr["X_rank"][name].append(spearman_flat(agg, maps["X"]))
            corr["C_rank"][name].append(spearman_flat(agg, maps["C"]))
    out = {k: {n: float(torch.tensor(v).nanmean()) for n, v in d.items()} for k, d in corr.items()}
    out["accuracy"] = {"utterance": exact}
    return out


@dataclass
class MixingToy:
    """A fixed encoder-decoder with context mixing of strength α (see :func:`mixing_toy`).

    The encoder keeps the frame count (no stride): n_frame = M.

    Attributes:
        x: (M, n_freq) float64 input X.
        encode: (B, M, n_freq) -> (B, M, n_freq), C = W_mix X.
        decode: (B, M, n_freq) encoder frames -> (B, N, V) output distributions (forced decoding).
        cross_attention: (B, M, n_freq) encoder frames -> (B, N, M) the head's weights CA.
        mix: (M, M) W_mix = (1 - α) I_M + α W_nb, with W_nb the mean of a frame's two neighbours.
    """

    x: Tensor
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    cross_attention: Callable[[Tensor], Tensor]
    mix: Tensor


def mixing_toy(alpha: float, *, T: int = 12, F_: int = 6, I: int = 4, V: int = 6, seed: int = 0) -> MixingToy:
    """The untrained context-mixing toy: random weights from ``seed``, mixing strength ``alpha`` in [0, 1].

    Args:
        T, F_, I, V: the frames M, the features n_freq, the tokens N and the vocabulary.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    T, F_, I, V = (require_int(v, n, minimum=2) for v, n in ((T, "T"), (F_, "F_"), (I, "I"), (V, "V")))
    g = torch.Generator().manual_seed(require_int(seed, "seed"))
    x, w_k, w_v = (torch.randn(r, F_, generator=g, dtype=torch.float64) for r in (T, F_, F_))
    w_out = torch.randn(F_, V, generator=g, dtype=torch.float64)
    q = 1.5 * torch.randn(I, F_, generator=g, dtype=torch.float64)  # (N, n_freq): the decoder's queries
    ones = torch.ones(T - 1, dtype=torch.float64)
    neighbours = torch.diag(ones, 1) + torch.diag(ones, -1)
    neighbours = neighbours / neighbours.sum(1, keepdim=True)  # W_nb: mean of the frames j - 1 and j + 1
    # W_mix = (1 - α) I_M + α W_nb
    mix = (1 - alpha) * torch.eye(T, dtype=torch.float64) + alpha * neighbours

    def encode(xb: Tensor) -> Tensor:
        return mix @ xb  # (B, M, n_freq)

    def cross_attention(hb: Tensor) -> Tensor:
        # CA = softmax(Q (C W_K)^T / sqrt(n_freq))
        return torch.softmax(q @ (hb @ w_k).transpose(-1, -2) / F_**0.5, -1)  # (B, N, M)

    def decode(hb: Tensor) -> Tensor:
        # ŷ_i = softmax((CA C W_V)_i W_out)
        return torch.softmax(cross_attention(hb) @ hb @ w_v @ w_out, -1)  # (B, N, V)

    return MixingToy(x, encode, decode, cross_attention, mix)


def mixing_gap(alpha: float, seed: int, *, n_masks: int = 200) -> float:
    """corr(CA, SM^C) - corr(CA, SM^X) on :func:`mixing_toy` (alpha), masks from ``seed``.

    One draw of n_occ = ``n_masks`` whole-frame masks, ``torch.rand(n_masks, M, 1, generator=g) < 0.5``
    with ``g = torch.Generator().manual_seed(seed)``, expanded over the features, hides frames of
    X (run through the encoder and the decoder) and of C (the decoder alone) alike; both maps are
    reduced by a max over the features.
    """
    toy = mixing_toy(alpha)
    n_masks = require_int(n_masks, "n_masks", minimum=2)
    T, F_ = toy.x.shape
    g = torch.Generator().manual_seed(require_int(seed, "seed"))
    masks = (torch.rand(n_masks, T, 1, generator=g) < 0.5).expand(-1, -1, F_)  # (n_occ, M, n_freq)
    c = toy.encode(toy.x[None])[0]  # (M, n_freq)
    ca = toy.cross_attention(c[None])[0]  # (N, M)
    sm_x = occlusion_saliency(lambda xb: toy.decode(toy.encode(xb)), toy.x, masks).amax(-1)  # (N, M)
    sm_c = occlusion_saliency(toy.decode, c, masks).amax(-1)  # (N, M)
    return pearson_flat(ca, sm_c) - pearson_flat(ca, sm_x)
