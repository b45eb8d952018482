r"""Chapter 15 · Attention versus saliency: how much of an explanation is cross-attention?

Nothing in the attention changes here: the chapter measures it. In chapter 00's notation a
decoder layer l of a speech-to-text model attends from its N token states to the M encoder
frames C = Enc(X) (the ``context=`` of :class:`~attnbook.attention.MultiHeadAttention`):

    CA^{(l,h)} = softmax_j(τ Q_{lh} K_{lh}^T) ∈ R^{N×M},   K_{lh} = C W_K^{lh},

which ``return_intermediates=True`` returns as ``Intermediates.weights``. The protocol compares
it with a saliency map, a measured answer to "which input cells does token i depend on":

1. **Aggregation** over a set 𝓗 of (layer, head) pairs:
   CA^{(𝓗)} = (1/|𝓗|) Σ_{(l,h)∈𝓗} CA^{(l,h)}.
2. **Occlusion saliency** (RISE / SPES style) under forced decoding of a fixed transcript y:
   draw n_occ binary masks O_r (True = hidden), set the hidden cells to a fill value, score each
   token by KL(ŷ_i(X) ‖ ŷ_i^{(r)}), and average the scores over the masks that hide the cell:
   SM_{i,tν} = Σ_r KL_{r,i} O_{r,tν} / Σ_r O_{r,tν}.  On the spectrogram X (n_frame × n_freq)
   this is SM^X ∈ R^{N×n_frame×n_freq}; on the encoder frames C (hiding whole frames) it is
   SM^C ∈ R^{N×M}, which leaves out what the encoder does before the attention.
3. **Reduction** of SM^X to the attention's grid: over frequency, then pooled in time to M.
4. **Comparison**: Pearson's corr (and Spearman's corr_S) between the flattened maps, over
   valid cells only.

Gradient saliency |∂ log ŷ_i(y_i) / ∂X| is given for contrast (one backward pass per token).

The book's reading: the paper builds SPES masks from SLIC superpixels of the spectrogram; the toy
uses rectangular blocks (:func:`random_block_masks`), a fill value of 0 (silence), and reduces
frequency before time ("2-D max pooling" with both reductions ``max`` does not depend on the
order; with a mean in one of them it does). The paper writes H for the encoder output, I for the
tokens, T and T' for the frames and ρ for Pearson's correlation; the book writes C, N,
n_frame and M, and corr. :class:`SpeechTranscriber` is the toy's encoder-decoder; the chapter's
experiment is :mod:`attnbook.mechanisms.attention_vs_saliency_experiment`.
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
    """The mean cross-attention map CA^(𝓗) over the set 𝓗 = layers × heads of (layer, head) pairs.

    Args:
        ca: (L, H, N, M) per-layer, per-head cross-attention weights (rows sum to 1).
        layers, heads: the chosen indices (negative from the end); None takes all.
    Returns:
        (N, M) in ca's dtype; rows still sum to 1 (a mean of distributions).
    """
    require_tensor(ca, "ca", ndim=4, floating=True, shape="(L, H, N, M)")
    L, H = ca.shape[:2]
    rows = torch.tensor(_indices(layers, L, "layers"), device=ca.device)
    cols = torch.tensor(_indices(heads, H, "heads"), device=ca.device)
    # CA^(𝓗) = (1/|𝓗|) Σ_{(l,h) ∈ 𝓗} CA^(l,h)
    return ca.index_select(0, rows).index_select(1, cols).mean(dim=(0, 1))  # (N, M)


_POOL = {"max": F.adaptive_max_pool1d, "mean": F.adaptive_avg_pool1d}


def reduce_saliency(sm: Tensor, t_out: int, freq: str = "max", time: str = "max") -> Tensor:
    """Reduce a spectrogram saliency map to the attention's time grid: frequency first, then time.

    Time window j covers input frames floor(j n_frame / M) ... ceil((j+1) n_frame / M) - 1 (as
    adaptive pooling does), so no frame is dropped when M does not divide n_frame.

    Args:
        sm: (N, n_frame, n_freq) saliency per token, input frame and frequency bin.
        t_out: the number M of encoder frames, 1 <= M <= n_frame.
        freq, time: "max" or "mean", the reduction over each axis.
    Returns:
        (N, M) in sm's dtype.
    """
    require_tensor(sm, "sm", ndim=3, floating=True, shape="(N, n_frame, n_freq)")
    t_out = require_int(t_out, "t_out", minimum=1)
    if t_out > sm.shape[1]:
        raise ValueError(f"t_out must be <= n_frame = {sm.shape[1]}, got {t_out}")
    for name, how in (("freq", freq), ("time", time)):
        if how not in _POOL:
            raise ValueError(f"{name} must be 'max' or 'mean', got {how!r}")
    # per frame: max_ν SM_{i,tν}  (or mean_ν)
    per_frame = sm.amax(dim=-1) if freq == "max" else sm.mean(dim=-1)  # (N, n_frame)
    # pool(SM)_{ij} = max (or mean) of the per-frame values over the frames t of window j
    return _POOL[time](per_frame[:, None, :], t_out)[:, 0, :]  # (N, M)


def random_block_masks(
    n_occ: int,
    n_frame: int,
    n_freq: int,
    *,
    pi_occ: float = 0.5,
    block: tuple[int, int] = (2, 4),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """n_occ random occlusion masks O_r made of blocks of (frames × bins) = ``block`` cells.

    The blocks tile the grid from (0, 0) (the last row and column of blocks may be cut short);
    each block is hidden, all its cells together, independently with probability π_occ = ``pi_occ``.

    Returns:
        (n_occ, n_frame, n_freq) bool, True = hidden (the toy's stand-in for SLIC superpixels).
    """
    n_occ, n_frame, n_freq = (
        require_int(v, n, minimum=1) for v, n in ((n_occ, "n_occ"), (n_frame, "n_frame"), (n_freq, "n_freq"))
    )
    bt, bf = (require_int(b, "block", minimum=1) for b in block)
    if isinstance(pi_occ, bool) or not isinstance(pi_occ, numbers.Real) or not 0 < pi_occ < 1:
        raise ValueError(f"pi_occ must be a probability in (0, 1), got {pi_occ!r}")
    gt, gf = -(-n_frame // bt), -(-n_freq // bf)  # ceil: blocks covering the grid
    coarse = torch.rand(n_occ, gt, gf, generator=generator) < pi_occ  # (n_occ, gt, gf)
    fine = coarse.repeat_interleave(bt, dim=1).repeat_interleave(bf, dim=2)[:, :n_frame, :n_freq]
    return fine.to(device) if device is not None else fine  # (n_occ, n_frame, n_freq)


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
        f: f(x_batch (B, n_frame, n_freq)) -> (B, N, V) the distributions ŷ_i of the N tokens
            under forced decoding of a fixed transcript (rows sum to 1; V the vocabulary);
            called without gradients.
        x: (n_frame, n_freq) the input: a spectrogram, or the encoder frames C (M, D).
        masks: (n_occ, n_frame, n_freq) bool, the masks O_r, True = hidden (set to ``fill``).
        score: "kl" (KL(ŷ_i(x) ‖ ŷ_i^(r)), the SPES score) or "drop" (ŷ_i(x)[y_i] - ŷ_i^(r)[y_i]
            with y_i = argmax ŷ_i(x): only the decoded token's probability).
        batch_size: masks per call of f.
    Returns:
        (N, n_frame, n_freq) in x's dtype: SM_{i,tν} = Σ_r KL_{r,i} O_{r,tν} / Σ_r O_{r,tν};
        0 where no mask hides the cell.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    require_tensor(x, "x", ndim=2, floating=True, shape="(n_frame, n_freq)")
    require_tensor(masks, "masks", ndim=3, shape=f"(n_occ, {x.shape[0]}, {x.shape[1]})")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be boolean (True = occluded), got {masks.dtype}")
    if masks.shape[1:] != x.shape:
        raise ValueError(
            f"masks must have shape (n_occ, {x.shape[0]}, {x.shape[1]}), got {tuple(masks.shape)}"
        )
    if score not in ("kl", "drop"):
        raise ValueError(f"score must be 'kl' or 'drop', got {score!r}")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    masks = masks.to(x.device)
    with torch.no_grad():
        p = f(x[None])  # (1, N, V)
        if not isinstance(p, Tensor) or p.ndim != 3 or p.shape[0] != 1:
            raise ValueError("f must return per-token distributions of shape (B, N, V)")
        p = p[0].to(x.dtype)  # (N, V)
        y = p.argmax(-1)  # (N,)
        scores = []
        for start in range(0, masks.shape[0], batch_size):
            o = masks[start : start + batch_size]  # (b, n_frame, n_freq)
            # x with the hidden cells set to the fill value; ŷ^(r) = f(that)
            q = f(torch.where(o, torch.full_like(x, fill), x)).to(x.dtype)  # (b, N, V)
            if score == "kl":
                scores.append(_kl(p, q))  # (b, N)
            else:
                scores.append(
                    p.gather(-1, y[:, None])[:, 0] - q.gather(-1, y.expand(len(q), -1)[..., None])[..., 0]
                )
        s = torch.cat(scores)  # (n_occ, N)
    occ = masks.to(x.dtype)  # (n_occ, n_frame, n_freq)
    hidden = occ.sum(0)  # (n_frame, n_freq): how many masks hide each cell
    # SM_{i,tν} = Σ_r KL_{r,i} O_{r,tν} / Σ_r O_{r,tν}
    total = torch.einsum("mi,mtf->itf", s, occ)  # (N, n_frame, n_freq)
    return total / hidden.clamp(min=1)  # (N, n_frame, n_freq)


def gradient_saliency(f: Callable[[Tensor], Tensor], x: Tensor, targets: Tensor | None = None) -> Tensor:
    """|∂ log ŷ_i(y_i) / ∂x| per token: the gradient contrast.

    Args:
        f: as in :func:`occlusion_saliency`, differentiable.
        x: (n_frame, n_freq) the input.
        targets: (N,) int, the forced transcript's tokens y_i; None takes the decoded ones,
            y_i = argmax ŷ_i(x).
    Returns:
        (N, n_frame, n_freq) in x's dtype.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    require_tensor(x, "x", ndim=2, floating=True, shape="(n_frame, n_freq)")
    if targets is not None:
        require_tensor(targets, "targets", ndim=1, shape="(N,)")
        if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
            raise TypeError(f"targets must hold integer token ids, got {targets.dtype}")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        p = f(x[None])[0]  # (N, V)
        if targets is not None and targets.shape[0] != p.shape[0]:
            raise ValueError(f"targets must have shape ({p.shape[0]},), got {tuple(targets.shape)}")
        y = p.argmax(-1) if targets is None else targets.to(p.device)  # (N,)
        # log ŷ_i(y_i) for the token of every position
        logp = p.gather(-1, y[:, None]).log()[:, 0]  # (N,)
        rows = [torch.autograd.grad(logp[i], x, retain_graph=True)[0].abs() for i in range(len(logp))]
    return torch.stack(rows)  # (N, n_frame, n_freq)


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
    # corr = Σ a'b' / sqrt(Σ a'² Σ b'²), on the centred values
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def pearson_flat(a: Tensor, b: Tensor, valid: Tensor | None = None) -> float:
    """Pearson's corr of two maps, flattened, over the cells where ``valid`` is True.

    Args:
        a, b: maps of one shape, e.g. (N, M) cross-attention and saliency.
        valid: bool of that shape (False on padding), or None for every cell.
    Returns:
        corr in [-1, 1] as a Python float (computed in float64); NaN when either map is constant
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
    """Spearman's corr_S (Pearson's corr on average ranks) with :func:`pearson_flat`'s arguments."""
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
        # cross-attention: queries from the decoder, keys and values from the encoder output C
        a, inter = self.cross(
            self.norms[1](y), context=h, key_padding_mask=h_valid, return_intermediates=True
        )
        y = y + a
        return y + self.mlp(self.norms[2](y)), inter.weights  # (B, N, D), (B, H, N, M)


class SpeechTranscriber(nn.Module):
    r"""A tiny encoder-decoder: strided conv front end, self-attention encoder, cross-attending decoder.

    X (B, n_frame, n_freq) -> conv (kernel 3, stride 2: encoder frame j reads input frames
    2j-1, 2j, 2j+1) -> (B, M = ceil(n_frame/2), D) -> ``enc_layers`` blocks (non-causal
    self-attention: the encoder's context mixing; 0 leaves only the conv) -> C;
    tokens (B, N) -> ``dec_layers`` decoder layers (causal self-attention, cross-attention to C)
    -> logits (B, N, vocab).
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
        """(B, n_frame) valid input frames -> (B, M) valid encoder frames (frame j is centred on 2j)."""
        return None if frame_valid is None else frame_valid[:, ::2]

    def encode(self, x: Tensor, frame_valid: Tensor | None = None) -> Tensor:
        """x (B, n_frame, n_freq) -> C (B, M, D)."""
        require_tensor(x, "x", ndim=3, floating=True, shape="(B, n_frame, n_freq)")
        h = self.front(x.transpose(1, 2)).transpose(1, 2)  # (B, M, D)
        h = h + self.frame_pos[: h.shape[1]]
        valid = self.frames_valid(frame_valid)
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, M)
        for block in self.encoder:
            h = block(h, mask=mask)
        return self.enc_norm(h)

    def decode(
        self, h: Tensor, tokens: Tensor, h_valid: Tensor | None = None, return_cross: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """C (B, M, D), tokens (B, N) -> logits (B, N, vocab) [, CA (B, L, H, N, M)]."""
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
        """x (B, n_frame, n_freq), tokens (B, N) -> logits (B, N, vocab) [, CA (B, L, H, N, M)]."""
        h = self.encode(x, frame_valid)
        return self.decode(h, tokens, self.frames_valid(frame_valid), return_cross)
