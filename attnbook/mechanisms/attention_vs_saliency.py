r"""Chapter 15 · Attention versus saliency: how much of an explanation is cross-attention?

Nothing in the attention changes here: the chapter measures it. In chapter 00's notation a
decoder layer ℓ of a speech-to-text model attends from its I token states to the T' encoder
frames H = Enc(X) (the ``context=`` of :class:`~attnbook.attention.MultiHeadAttention`):

    CA^{(ℓ,h)} = softmax(Q^{(ℓ,h)} K^{(ℓ,h)T} / sqrt(d)) ∈ R^{I×T'},   K, V from H,

which ``return_intermediates=True`` returns as ``Intermediates.weights``. The protocol compares
it with a saliency map, a measured answer to "which input cells does token i depend on":

1. **Aggregation** over a set S = layers × heads:  CA^{(S)} = (1/|S|) Σ_{(ℓ,h)∈S} CA^{(ℓ,h)}.
2. **Occlusion saliency** (RISE / SPES style) under forced decoding of a fixed hypothesis y:
   draw M binary masks o_m (True = occluded), replace the occluded cells by a fill value, score
   each token by s_{m,i} = KL(p_i(X) ‖ p_i(X ⊙ o_m)), and average the scores over the masks that
   occlude the cell:  SM_{i,c} = Σ_m s_{m,i} o_{m,c} / Σ_m o_{m,c}.  On the spectrogram X this is
   SM^X ∈ R^{I×T×F}; on the encoder frames H (occluding whole frames) it is SM^H ∈ R^{I×T'},
   which leaves out the encoder's context mixing.
3. **Reduction** of SM^X to the attention's grid: over frequency, then pooled in time to T'.
4. **Comparison**: Pearson ρ (and Spearman) between the flattened maps, over valid cells only.

Gradient saliency |∂ log p_i(y_i) / ∂X| is given for contrast (one backward pass per token).

The book's reading: the paper builds SPES masks from SLIC superpixels of the spectrogram; the toy
uses rectangular blocks (:func:`random_block_masks`), a fill value of 0 (silence), and reduces
frequency before time ("2-D max pooling" with both reductions ``max`` does not depend on the
order; with a mean in one of them it does). :class:`SpeechTranscriber` is the toy's
encoder-decoder; the chapter's experiment is :mod:`attnbook.mechanisms.attention_vs_saliency_experiment`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..models import Block, ModelConfig
from ..validate import require_int, require_tensor

__all__ = [
    "aggregate_ca",
    "reduce_saliency",
    "random_block_masks",
    "occlusion_saliency",
    "gradient_saliency",
    "pearson_flat",
    "spearman_flat",
    "SpeechTranscriber",
]


def _indices(chosen: Sequence[int] | None, n: int, name: str) -> list[int]:
    """Validated indices into an axis of size n (negative ones count from the end)."""
    if chosen is None:
        return list(range(n))
    if isinstance(chosen, numbers.Integral) or not isinstance(chosen, Sequence):
        raise TypeError(f"{name} must be a sequence of ints or None, got {type(chosen).__name__}")
    out = [require_int(i, name) for i in chosen]
    if not out:
        raise ValueError(f"{name} must not be empty")
    if any(i < -n or i >= n for i in out):
        raise ValueError(f"{name} must lie in [-{n}, {n}), got {list(chosen)}")
    out = [i % n for i in out]
    if len(set(out)) != len(out):
        raise ValueError(f"{name} lists an index twice: {list(chosen)}")
    return out


def aggregate_ca(
    ca: Tensor, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> Tensor:
    """The mean cross-attention map over S = layers × heads.

    Args:
        ca: (L, H, I, T') per-layer, per-head cross-attention weights (rows sum to 1).
        layers, heads: the chosen indices (negative from the end); None takes all.
    Returns:
        (I, T') in ca's dtype; rows still sum to 1 (a mean of distributions).
    """
    require_tensor(ca, "ca", ndim=4, floating=True, shape="(L, H, I, T')")
    L, H = ca.shape[:2]
    rows = torch.tensor(_indices(layers, L, "layers"), device=ca.device)
    cols = torch.tensor(_indices(heads, H, "heads"), device=ca.device)
    # CA^(S) = (1/|S|) Σ_{(ℓ,h) ∈ S} CA^(ℓ,h)
    return ca.index_select(0, rows).index_select(1, cols).mean(dim=(0, 1))  # (I, T')


_POOL = {"max": F.adaptive_max_pool1d, "mean": F.adaptive_avg_pool1d}


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    """Reduce a spectrogram saliency map to the attention's time grid: frequency first, then time.

    Time window j covers frames floor(j T / t_out) ... ceil((j+1) T / t_out) - 1 (as adaptive
    pooling does), so no frame is dropped when T is not a multiple of t_out.

    Args:
        sm: (I, T, F) saliency per token, time frame and frequency bin.
        t_out: the number of output frames T', 1 <= T' <= T.
        freq, time: "max" or "mean", the reduction over each axis.
    Returns:
        (I, t_out) in sm's dtype.
    """
    require_tensor(sm, "sm", ndim=3, floating=True, shape="(I, T, F)")
    t_out = require_int(t_out, "t_out", minimum=1)
    if t_out > sm.shape[1]:
        raise ValueError(f"t_out must be <= T = {sm.shape[1]}, got {t_out}")
    for name, how in (("freq", freq), ("time", time)):
        if how not in _POOL:
            raise ValueError(f"{name} must be 'max' or 'mean', got {how!r}")
    # s_{i,t} = max_f SM_{i,t,f}  (or mean_f)
    per_frame = sm.amax(dim=-1) if freq == "max" else sm.mean(dim=-1)  # (I, T)
    # r_{i,j} = max (or mean) of s_{i,t} over the frames t of window j
    return _POOL[time](per_frame[:, None, :], t_out)[:, 0, :]  # (I, t_out)


def random_block_masks(
    M: int,
    T: int,
    F_: int,
    *,
    p: float = 0.5,
    block: tuple[int, int] = (2, 4),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """M random occlusion masks made of (bt × bf) blocks, each block occluded with probability p.

    Returns:
        (M, T, F_) bool, True = occluded (the toy's stand-in for SLIC superpixel segments).
    """
    M, T, F_ = (require_int(v, n, minimum=1) for v, n in ((M, "M"), (T, "T"), (F_, "F_")))
    bt, bf = (require_int(b, "block", minimum=1) for b in block)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p < 1:
        raise ValueError(f"p must be a probability in (0, 1), got {p!r}")
    gt, gf = -(-T // bt), -(-F_ // bf)  # ceil: blocks covering the grid
    coarse = torch.rand(M, gt, gf, generator=generator) < p  # (M, gt, gf)
    fine = coarse.repeat_interleave(bt, dim=1).repeat_interleave(bf, dim=2)[:, :T, :F_]
    return fine.to(device) if device is not None else fine  # (M, T, F_)


def _kl(p: Tensor, q: Tensor) -> Tensor:
    # KL(p ‖ q) = Σ_v p_v (log p_v - log q_v), with 0 log 0 = 0
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def occlusion_saliency(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    masks: Tensor,
    *,
    score: str = "kl",
    fill: float = 0.0,
    batch_size: int = 64,
) -> Tensor:
    """RISE-style occlusion saliency of every output token of a forced-decoding model.

    Args:
        f: f(x_batch (B, T, F)) -> (B, I, V) per-token output distributions under forced
            decoding of a fixed hypothesis (rows sum to 1); called without gradients.
        x: (T, F) the input (a spectrogram, or encoder frames with F = D).
        masks: (M, T, F) bool, True = occluded (set to ``fill``).
        score: "kl" (KL(p_i(x) ‖ p_i(x_m)), the SPES score) or "drop" (p_i(x)[y_i] - p_i(x_m)[y_i]
            with y_i = argmax p_i(x): only the decoded token's probability).
        batch_size: masks per call of f.
    Returns:
        (I, T, F) in x's dtype: SM_{i,c} = Σ_m s_{m,i} o_{m,c} / Σ_m o_{m,c}; 0 where no mask
        occludes the cell.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    require_tensor(x, "x", ndim=2, floating=True, shape="(T, F)")
    require_tensor(masks, "masks", ndim=3, shape=f"(M, T={x.shape[0]}, F={x.shape[1]})")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be boolean (True = occluded), got {masks.dtype}")
    if masks.shape[1:] != x.shape:
        raise ValueError(f"masks must have shape (M, {x.shape[0]}, {x.shape[1]}), got {tuple(masks.shape)}")
    if score not in ("kl", "drop"):
        raise ValueError(f"score must be 'kl' or 'drop', got {score!r}")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    masks = masks.to(x.device)
    with torch.no_grad():
        p = f(x[None])  # (1, I, V)
        if not isinstance(p, Tensor) or p.ndim != 3 or p.shape[0] != 1:
            raise ValueError("f must return per-token distributions of shape (B, I, V)")
        p = p[0].to(x.dtype)  # (I, V)
        y = p.argmax(-1)  # (I,)
        scores = []
        for start in range(0, masks.shape[0], batch_size):
            o = masks[start : start + batch_size]  # (m, T, F)
            # x_m = x with the occluded cells set to the fill value
            q = f(torch.where(o, torch.full_like(x, fill), x)).to(x.dtype)  # (m, I, V)
            if score == "kl":
                scores.append(_kl(p, q))  # (m, I)
            else:
                scores.append(
                    p.gather(-1, y[:, None])[:, 0] - q.gather(-1, y.expand(len(q), -1)[..., None])[..., 0]
                )
        s = torch.cat(scores)  # (M, I)
    occ = masks.to(x.dtype)  # (M, T, F)
    n = occ.sum(0)  # (T, F): how many masks occlude each cell
    # SM_{i,c} = Σ_m s_{m,i} o_{m,c} / Σ_m o_{m,c}
    total = torch.einsum("mi,mtf->itf", s, occ)  # (I, T, F)
    return total / n.clamp(min=1)  # (I, T, F)


def gradient_saliency(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """|∂ log p_i(y_i) / ∂x| per token, with y_i = argmax p_i(x): the gradient contrast.

    Args:
        f: as in :func:`occlusion_saliency`, differentiable.
        x: (T, F) the input.
    Returns:
        (I, T, F) in x's dtype.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    require_tensor(x, "x", ndim=2, floating=True, shape="(T, F)")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        p = f(x[None])[0]  # (I, V)
        # log p_i(y_i) for the decoded token of every position
        logp = p.gather(-1, p.argmax(-1, keepdim=True)).log()[:, 0]  # (I,)
        rows = [torch.autograd.grad(logp[i], x, retain_graph=True)[0].abs() for i in range(len(logp))]
    return torch.stack(rows)  # (I, T, F)


def _flat_pair(a: Tensor, b: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    require_tensor(a, "a", floating=True)
    require_tensor(b, "b", floating=True)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if valid is not None:
        require_tensor(valid, "valid")
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be boolean (True = compare this cell), got {valid.dtype}")
        if valid.shape != a.shape:
            raise ValueError(f"valid must have shape {tuple(a.shape)}, got {tuple(valid.shape)}")
        a, b = a[valid], b[valid]
    return a.reshape(-1).double(), b.reshape(-1).double()


def _pearson(a: Tensor, b: Tensor) -> float:
    # a constant map (or fewer than two cells) has no correlation: NaN, not a division by zero
    if a.numel() < 2 or bool(a.min() == a.max()) or bool(b.min() == b.max()):
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    # ρ = Σ a'b' / sqrt(Σ a'² Σ b'²), on the centred values
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """Pearson correlation of two maps, flattened, over the cells where ``valid`` is True.

    Args:
        a, b: maps of one shape, e.g. (I, T') cross-attention and saliency.
        valid: bool of that shape (False on padding), or None for every cell.
    Returns:
        ρ in [-1, 1] as a Python float (computed in float64); NaN when either map is constant
        on the valid cells or fewer than two cells are valid.
    """
    return _pearson(*_flat_pair(a, b, valid))


def _ranks(v: Tensor) -> Tensor:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
    # a group of c ties ending at rank e gets rank e - (c - 1) / 2
    average = counts.cumsum(0).to(v.dtype) - (counts.to(v.dtype) - 1) / 2
    return average[inverse]


def spearman_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """Spearman correlation (Pearson on average ranks) with :func:`pearson_flat`'s arguments."""
    a, b = _flat_pair(a, b, valid)
    return _pearson(_ranks(a), _ranks(b))


class _DecoderLayer(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the encoder frames, MLP."""

    def __init__(self, D: int, H: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(3))
        self.self_attn = MultiHeadAttention(D, H)
        self.cross = MultiHeadAttention(D, H)
        self.mlp = nn.Sequential(nn.Linear(D, 4 * D), nn.GELU(), nn.Linear(4 * D, D))

    def forward(self, y: Tensor, h: Tensor, h_valid: Tensor | None) -> tuple[Tensor, Tensor]:
        y = y + self.self_attn(self.norms[0](y), causal=True)
        # cross-attention: queries from the decoder, keys and values from the encoder output H
        a, inter = self.cross(
            self.norms[1](y), context=h, key_padding_mask=h_valid, return_intermediates=True
        )
        y = y + a
        return y + self.mlp(self.norms[2](y)), inter.weights  # (B, I, D), (B, H, I, T')


class SpeechTranscriber(nn.Module):
    r"""A tiny encoder-decoder: strided conv front end, self-attention encoder, cross-attending decoder.

    X (B, T, F) -> conv (kernel 3, stride 2) -> H_0 (B, T' = ceil(T/2), D) -> ``enc_layers`` blocks
    (non-causal self-attention: the encoder's context mixing; 0 leaves only the conv) -> H;
    tokens (B, I) -> ``dec_layers`` decoder layers (causal self-attention, cross-attention to H) ->
    logits (B, I, vocab).
    """

    def __init__(
        self,
        n_freq: int,
        vocab: int,
        *,
        D: int = 64,
        H: int = 4,
        enc_layers: int = 2,
        dec_layers: int = 2,
        max_frames: int = 64,
        max_tokens: int = 16,
    ):
        super().__init__()
        enc_layers = require_int(enc_layers, "enc_layers", minimum=0)
        dec_layers = require_int(dec_layers, "dec_layers", minimum=1)
        self.front = nn.Conv1d(n_freq, D, kernel_size=3, stride=2, padding=1)
        self.frame_pos = nn.Parameter(0.02 * torch.randn(max_frames, D))
        config = ModelConfig(D=D, H=H, n_out=D, causal=False)
        self.encoder = nn.ModuleList(Block(config, MultiHeadAttention(D, H)) for _ in range(enc_layers))
        self.enc_norm = nn.LayerNorm(D)
        self.embed = nn.Embedding(vocab, D)
        self.token_pos = nn.Parameter(0.02 * torch.randn(max_tokens, D))
        self.decoder = nn.ModuleList(_DecoderLayer(D, H) for _ in range(dec_layers))
        self.out_norm = nn.LayerNorm(D)
        self.readout = nn.Linear(D, vocab)

    @staticmethod
    def frames_valid(frame_valid: Tensor | None) -> Tensor | None:
        """(B, T) valid input frames -> (B, T') valid encoder frames (frame t' is centred on 2t')."""
        return None if frame_valid is None else frame_valid[:, ::2]

    def encode(self, x: Tensor, frame_valid: Tensor | None = None) -> Tensor:
        """x (B, T, F) -> H (B, T', D)."""
        require_tensor(x, "x", ndim=3, floating=True, shape="(B, T, F)")
        h = self.front(x.transpose(1, 2)).transpose(1, 2)  # (B, T', D)
        h = h + self.frame_pos[: h.shape[1]]
        valid = self.frames_valid(frame_valid)
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, T')
        for block in self.encoder:
            h = block(h, mask=mask)
        return self.enc_norm(h)

    def decode(
        self, h: Tensor, tokens: Tensor, h_valid: Tensor | None = None, return_cross: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """H (B, T', D), tokens (B, I) -> logits (B, I, vocab) [, CA (B, L, H, I, T')]."""
        y = self.embed(tokens) + self.token_pos[: tokens.shape[1]]
        maps = []
        for layer in self.decoder:
            y, weights = layer(y, h, h_valid)
            maps.append(weights)
        logits = self.readout(self.out_norm(y))
        return (logits, torch.stack(maps, dim=1)) if return_cross else logits

    def forward(
        self, x: Tensor, tokens: Tensor, frame_valid: Tensor | None = None, return_cross: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, F), tokens (B, I) -> logits (B, I, vocab) [, CA (B, L, H, I, T')]."""
        h = self.encode(x, frame_valid)
        return self.decode(h, tokens, self.frames_valid(frame_valid), return_cross)
