r"""Chapter 15's experiment: how well does a toy transcriber's cross-attention match its saliency?

Recipe: train :class:`~attnbook.mechanisms.attention_vs_saliency.SpeechTranscriber` on
:func:`~attnbook.tasks.spoken_symbols.spoken_symbols` with teacher forcing; then, on held-out
utterances, force-decode the reference transcript and compare, per utterance,

* CA^{(S)} for every single head, every layer's mean and the mean of all heads, with
* SM^X: occlusion saliency of the spectrogram (random 2 × 4 blocks, p = 0.5, KL score),
  reduced to the encoder's T' frames by frequency max then time max;
* SM^H: occlusion saliency of the encoder frames (whole frames, p = 0.5);
* the gradient saliency |∂ log p_i(y_i)/∂X|, reduced the same way as SM^X,

by Pearson ρ over the (I, T') cells, averaged over utterances. Everything is seeded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
)

__all__ = ["train_transcriber", "aggregations", "saliency_correlations"]

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
    """The sets S compared: every head "l<ℓ>h<h>", every layer "layer<ℓ>", and "all"."""
    out = {f"l{ell}h{h}": ([ell], [h]) for ell in range(L) for h in range(H)}
    out.update({f"layer{ell}": ([ell], None) for ell in range(L)})
    out["all"] = (None, None)
    return out


def saliency_correlations(
    model: SpeechTranscriber, *, n_utterances: int = 20, n_masks: int = 300, seed: int = 1000
) -> dict[str, dict[str, float]]:
    """Mean Pearson ρ between CA^(S) and each saliency, over held-out utterances.

    Returns:
        {"X" | "H" | "grad": {aggregation name: mean ρ}} plus {"accuracy": {"utterance": fraction
        of utterances decoded exactly under teacher forcing}}.
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
    rho: dict[str, dict[str, list[float]]] = {k: {n: [] for n in names} for k in ("X", "H", "grad")}
    for u in range(n_utterances):
        T, I = int(b.frame_valid[u].sum()), int((b.targets[u] >= 0).sum())
        x, tokens = b.x[u, :T], b.tokens[u : u + 1, :I]  # the utterance without padding

        def f(xb, tokens=tokens):
            return torch.softmax(model(xb, tokens.expand(len(xb), -1)), -1)  # (B, I, vocab)

        with torch.no_grad():
            _, ca = model(x[None], tokens, return_cross=True)
            h = model.encode(x[None])[0]  # (T', D)
        ca = ca[0]  # (L, H, I, T')
        Tp = ca.shape[-1]

        def fh(hb, tokens=tokens):
            return torch.softmax(model.decode(hb, tokens.expand(len(hb), -1)), -1)

        masks_x = random_block_masks(n_masks, T, N_FREQ, p=0.5, block=(2, 4), generator=g)
        frames = (torch.rand(n_masks, Tp, 1, generator=g) < 0.5).expand(-1, -1, h.shape[1])
        maps = {
            "X": reduce_saliency(occlusion_saliency(f, x, masks_x, batch_size=100), Tp),
            "H": occlusion_saliency(fh, h, frames, batch_size=100).amax(-1),
            "grad": reduce_saliency(gradient_saliency(f, x), Tp),
        }
        for name, (layers, heads) in names.items():
            agg = aggregate_ca(ca, layers, heads)
            for kind, sm in maps.items():
                rho[kind][name].append(pearson_flat(agg, sm))
    out = {k: {n: float(torch.tensor(v).nanmean()) for n, v in d.items()} for k, d in rho.items()}
    out["accuracy"] = {"utterance": exact}
    return out
