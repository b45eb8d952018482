"""Chapter 05 · Relative convolutional attention (RCMHA 2023).

Start from causal multi-head attention, S_h = Q_h K_h^T / sqrt(d), and change two things.

1. A causal depth-wise convolution along the sequence after each of the Q, K, V projections:

       q~_{t,c} = sum_{tau=0}^{k-1} w_{c,tau} q_{t-tau,c} + b_c        (k = 3 taps)

   Tap tau = 0 weighs the current token, tau = 1 the previous one, and so on; tokens before
   the start count as zeros, so no output sees a later token. The book follows the official
   code: one set of taps per channel c of a head, SHARED by all heads (Primer's MDHA has
   separate taps per head and channel).

2. Transformer-XL-style relative scores (learned tables, as in the official code):

       S_h[i, j] = ((q~_i + u_h) . k~_j + q~_i . r_{h, j - p_i} + beta_{h, j - p_i}) / sqrt(d)

   with p_i = i + M - N the position of query i among the M keys, so the offset j - p_i is
   KEY minus QUERY position (<= 0 for every key a causal query sees). The tables hold 2P
   offsets: offset delta sits at row P + delta.

In the book's notation (book/notation.md) the taps are W_conv over w positions, r_h(j - p_i) is the
relative key vector k^rel_h(p_i - j), beta_h(j - p_i) the relative bias b_h(p_i - j) and u_h the query
bias b^q_h; the code keeps the official code's names and its key-minus-query row index P + j - p_i.

The positional term q~_i . r_{j - p_i} is computed for every (query, offset) pair with one
matrix product, then moved into (query, key) place by the shift trick (:func:`rel_shift`).

In the core: the convolution of q and k is a ``qk_transform``, that of v a ``value_transform``,
and the u and positional terms a ``score_mod`` added to q~ . k~ / sqrt(d), which the core
computes itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnbook.attention import MultiHeadAttention
from attnbook.validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "VARIANTS",
    "stream_model",
    "train_stream",
    "stream_accuracy",
    "causal_dwconv",
    "rel_shift",
    "relative_position_term",
    "relative_scores",
    "CausalDepthwiseConv",
    "RelativePositionScores",
    "rcmha",
]


def causal_dwconv(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """Causal depth-wise convolution along the sequence, taps shared by all heads.

    Args:
        x: (B, H, N, d) queries, keys or values of each head.
        w: (d, k) taps per channel; w[:, 0] weighs the current token, w[:, tau] the token tau back.
        b: (d,) bias per channel, or None.
    Returns:
        (B, H, N, d), same dtype and device as x; output t depends only on tokens <= t.
    """
    require_tensor(x, "x", ndim=4, floating=True, shape="(B, H, N, d)")
    require_tensor(w, "w", ndim=2, floating=True, shape="(d, k)")
    if b is not None:
        require_tensor(b, "b", ndim=1, floating=True, shape="(d,)")
    require_same_dtype_device(x=x, w=w, b=b)
    B, H, N, d = x.shape
    if w.shape[0] != d or (b is not None and b.shape[0] != d):
        raise ValueError(f"w must be (d={d}, k) and b (d={d},), got w {tuple(w.shape)}")
    kernel = w.shape[1]
    seq = x.reshape(B * H, N, d).transpose(1, 2)  # (B*H, d, N): heads share the taps
    # zeros before the first token only: left padding of k - 1 (no look-ahead)
    seq = F.pad(seq, (kernel - 1, 0))  # (B*H, d, N + k - 1)
    # conv1d correlates: out_t = sum_s w'_s x_{t + s - (k-1)}, so w'_s = w_{k-1-s} (flip the taps)
    # q~_{t,c} = sum_tau w_{c,tau} q_{t-tau,c} + b_c
    out = F.conv1d(seq, w.flip(-1)[:, None, :], b, groups=d)  # (B*H, d, N)
    return out.transpose(1, 2).reshape(B, H, N, d)


def rel_shift(x: Tensor, M: int) -> Tensor:
    """The shift trick: move per-offset scores into per-key place.

    Args:
        x: (..., N, M + N - 1) scores by offset; column c holds offset delta = c - (M - 1).
        M: the number of keys; the N queries are the last N of the M positions.
    Returns:
        (..., N, M) with out[..., i, j] = x[..., i, j - p_i + M - 1], p_i = i + M - N.
    """
    require_tensor(x, "x", min_ndim=2, shape="(..., N, M + N - 1)")
    M = require_int(M, "M", minimum=1)
    N, L = x.shape[-2:]
    if L != M + N - 1 or N > M:
        raise ValueError(f"x must have shape (..., N <= M, M + N - 1) with M={M}, got {tuple(x.shape)}")
    lead = x.shape[:-2]
    # one zero column on the right: rows of width M + N, flattened
    flat = F.pad(x, (0, 1)).reshape(*lead, N * (M + N))  # (..., N (M + N))
    # re-read with rows of width M + N - 1 from element N - 1: row i starts N - 1 - i later in x's row i
    # out[i, j] = x[i, j + N - 1 - i], i.e. offset j + N - 1 - i - (M - 1) = j - p_i
    skew = flat[..., N - 1 : N - 1 + N * (M + N - 1)].reshape(*lead, N, M + N - 1)
    return skew[..., :M]  # (..., N, M)


def _check_tables(q, k, r, beta, u):
    require_tensor(q, "q", ndim=4, floating=True, shape="(B, H, N, d)")
    require_tensor(k, "k", ndim=4, floating=True, shape="(B, H, M, d)")
    require_tensor(r, "r", ndim=3, floating=True, shape="(H, 2P, d)")
    require_tensor(beta, "beta", ndim=2, floating=True, shape="(H, 2P)")
    require_tensor(u, "u", ndim=2, floating=True, shape="(H, d)")
    require_same_dtype_device(q=q, k=k, r=r, beta=beta, u=u)
    B, H, N, d = q.shape
    M = k.shape[-2]
    if k.shape[:2] != (B, H) or k.shape[-1] != d:
        raise ValueError(f"k must have shape (B={B}, H={H}, M, d={d}), got {tuple(k.shape)}")
    two_p = r.shape[1]
    if r.shape != (H, two_p, d) or beta.shape != (H, two_p) or u.shape != (H, d) or two_p % 2:
        raise ValueError(
            f"r, beta, u must be (H={H}, 2P, d={d}), (H, 2P), (H, d), got "
            f"{tuple(r.shape)}, {tuple(beta.shape)}, {tuple(u.shape)}"
        )
    if N > M or M > two_p // 2:
        raise ValueError(f"need N <= M <= P: N={N}, M={M}, P={two_p // 2} (the tables hold offsets -P..P-1)")
    return N, M, d, two_p // 2


def relative_position_term(q: Tensor, k: Tensor, r: Tensor, beta: Tensor, u: Tensor) -> Tensor:
    """What RCMHA adds to q.k / sqrt(d): (u_h . k_j + q_i . r_{h, j-p_i} + beta_{h, j-p_i}) / sqrt(d).

    Args:
        q: (B, H, N, d) queries (after the convolution); the last N of the M positions.
        k: (B, H, M, d) keys (after the convolution).
        r: (H, 2P, d) a vector per head and offset; offset delta at row P + delta.
        beta: (H, 2P) a scalar per head and offset.
        u: (H, d) a content bias per head (added to the queries of the content term only).
    Returns:
        (B, H, N, M) in q's dtype.
    """
    N, M, d, P = _check_tables(q, k, r, beta, u)
    # offsets delta = -(M-1) .. N-1, at rows P + delta of the tables
    r_off = r[:, P - M + 1 : P + N]  # (H, M + N - 1, d)
    beta_off = beta[:, P - M + 1 : P + N]  # (H, M + N - 1)
    # q_i . r_{h,delta} + beta_{h,delta} for every offset, then into key place (delta = j - p_i)
    by_offset = torch.einsum("bhnd,hcd->bhnc", q, r_off) + beta_off[None, :, None, :]  # (B, H, N, M+N-1)
    positional = rel_shift(by_offset, M)  # (B, H, N, M)
    # u_h . k_j: the same for every query
    content_bias = torch.einsum("hd,bhmd->bhm", u, k)[:, :, None, :]  # (B, H, 1, M)
    return (content_bias + positional) / math.sqrt(d)


def relative_scores(q: Tensor, k: Tensor, r: Tensor, beta: Tensor, u: Tensor) -> Tensor:
    """RCMHA's scores ((q_i + u_h) . k_j + q_i . r_{h, j-p_i} + beta_{h, j-p_i}) / sqrt(d), unmasked.

    Shapes as in :func:`relative_position_term`; returns (B, H, N, M).
    """
    _check_tables(q, k, r, beta, u)
    # q_i . k_j / sqrt(d) plus the relative term
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + relative_position_term(q, k, r, beta, u)


def _conv_parameters(d: int, kernel: int) -> tuple[nn.Parameter, nn.Parameter]:
    # nn.Conv1d(d, d, k, groups=d)'s default: uniform(-1/sqrt(k), 1/sqrt(k)) for taps and bias
    bound = 1.0 / math.sqrt(kernel)
    w = nn.Parameter(torch.empty(d, kernel).uniform_(-bound, bound))
    b = nn.Parameter(torch.empty(d).uniform_(-bound, bound))
    return w, b


class CausalDepthwiseConv(nn.Module):
    """RCMHA's convolutions: a qk_transform (q and k) with a ``values`` value_transform.

    Args:
        d: channels per head.
        kernel: taps (3 in the paper).
    """

    def __init__(self, d: int, kernel: int = 3):
        super().__init__()
        d, kernel = require_int(d, "d", minimum=1), require_int(kernel, "kernel", minimum=1)
        self.w_q, self.b_q = _conv_parameters(d, kernel)  # (d, k), (d,)
        self.w_k, self.b_k = _conv_parameters(d, kernel)
        self.w_v, self.b_v = _conv_parameters(d, kernel)

    def forward(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        """q (B, H, N, d), k (B, H, M, d) -> convolved (q, k); self-attention only (N = M)."""
        if q.shape[-2] != k.shape[-2]:
            raise ValueError("RCMHA's convolutions run on self-attention: q and k need the same length")
        return causal_dwconv(q, self.w_q, self.b_q), causal_dwconv(k, self.w_k, self.b_k)

    def values(self, v: Tensor) -> Tensor:
        """v (B, H, M, d) -> convolved v (B, H, M, d)."""
        return causal_dwconv(v, self.w_v, self.b_v)


class RelativePositionScores(nn.Module):
    """A score_mod adding u_h . k_j + q_i . r_{h, j-p_i} + beta_{h, j-p_i} (over sqrt(d)).

    Args:
        H: heads.  d: channels per head.  P: the tables hold offsets -P..P-1 (keys M <= P).
    The tables start at zero (as in the official code): the layer starts as content-only attention.
    """

    def __init__(self, H: int, d: int, P: int = 256):
        super().__init__()
        H, d = require_int(H, "H", minimum=1), require_int(d, "d", minimum=1)
        P = require_int(P, "P", minimum=1)
        self.r = nn.Parameter(torch.zeros(H, 2 * P, d))
        self.beta = nn.Parameter(torch.zeros(H, 2 * P))
        self.u = nn.Parameter(torch.zeros(H, d))

    def forward(self, scores: Tensor, q: Tensor, k: Tensor) -> Tensor:
        """scores (B, H, N, M) = q.k / sqrt(d) -> RCMHA's scores (B, H, N, M)."""
        return scores + relative_position_term(q, k, self.r, self.beta, self.u)


def rcmha(
    D: int,
    H: int,
    *,
    P: int = 256,
    kernel: int = 3,
    bias: bool = True,
    conv: bool = True,
    relative: bool = True,
) -> MultiHeadAttention:
    """An RCMHA layer: MultiHeadAttention with the convolutions and the relative scores plugged in.

    ``conv=False`` leaves out the convolutions (relative attention only, "RMHA"); ``relative=False``
    leaves out the relative scores (convolutions only, "MDHA" with shared taps); both False is plain
    MultiHeadAttention. Call it with ``causal=True``. x (B, N, D) -> (B, N, D).
    """
    D, H = require_int(D, "D", minimum=1), require_int(H, "H", minimum=1)
    if D % H:
        raise ValueError(f"D={D} must be a multiple of H={H}")
    convolution = CausalDepthwiseConv(D // H, kernel) if conv else None
    return MultiHeadAttention(
        D,
        H,
        bias,
        qk_transform=convolution,
        score_mod=RelativePositionScores(H, D // H, P) if relative else None,
        value_transform=convolution.values if conv else None,
    )


# ---------------------------------------------------------------------------------------------
# The chapter's miniature: four variants of one tiny language model on a Markov + period stream.
VARIANTS = {"MHA": (False, False), "conv": (True, False), "relative": (False, True), "RCMHA": (True, True)}


def stream_model(variant: str, *, N: int, n_symbols: int = 8, D: int = 32, H: int = 4, layers: int = 1):
    """A TinyTransformer for :func:`attnbook.tasks.markov_period` streams with one attention variant.

    ``variant``: "MHA" (learned absolute positions for up to 2N tokens, plain attention), "conv"
    (convolutions only, no positions), "relative" (relative scores only) or "RCMHA" (both).
    """
    from attnbook.models import ModelConfig, TinyTransformer

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    conv, relative = VARIANTS[variant]
    config = ModelConfig(
        D=D,
        H=H,
        layers=layers,
        vocab=2 * n_symbols,
        n_out=n_symbols,
        max_len=2 * N if variant == "MHA" else 0,
        mlp_ratio=2,
    )
    return TinyTransformer(config, attn=lambda c: rcmha(c.D, c.H, P=2 * N, conv=conv, relative=relative))


def train_stream(
    variant: str,
    seed: int,
    *,
    N: int = 24,
    n_symbols: int = 8,
    period: int = 12,
    steps: int = 120,
    batch_size: int = 32,
    lr: float = 1e-2,
    D: int = 32,
    H: int = 4,
):
    """Seed, build :func:`stream_model` and train it on next-symbol prediction; returns the model."""
    from attnbook.tasks.markov_period import markov_period
    from attnbook.train import train

    torch.manual_seed(seed)
    model = stream_model(variant, N=N, n_symbols=n_symbols, D=D, H=H)
    train(
        model,
        lambda step, g: markov_period(batch_size, N, n_symbols, period, g),
        lambda m, b: F.cross_entropy(m(b.tokens).flatten(0, 1), b.targets.flatten()),
        steps=steps,
        lr=lr,
        seed=seed,
        progress=False,
    )
    return model


def stream_accuracy(model: nn.Module, batch) -> dict[str, float]:
    """Next-symbol accuracy of ``model`` on a markov_period batch: all targets, repeats, Markov steps."""
    with torch.no_grad():
        correct = (model(batch.tokens).argmax(-1) == batch.targets).float()  # (B, N)
    return {
        "all": correct.mean().item(),
        "repeat": correct[batch.kind == 1].mean().item(),
        "markov": correct[batch.kind == 0].mean().item(),
    }
