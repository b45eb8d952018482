r"""Mixture of heads (MoH): a router gives each head a per-token weight and keeps the top-k.

Derivation (chapter 07). Chapter 00 wrote multi-head attention as a sum over heads,

    MHA(X)_t = Σ_{i=1}^{H} H^i_t W_O^i + b_O,     H^i = softmax(Q_i K_i^T / sqrt(d)) V_i,

so each head is an additive "expert". MoH (Jin et al. 2024) weights each head per token,

    MoH(X)_t = Σ_i g_{t,i} H^i_t W_O^i + b_O,     g_{t,i} = 0 for a head token t did not select,

with a two-stage router on the token x_t. The first h_s heads are *shared* (always on), the
other E = H - h_s are *routed* (the top k of them per token):

    shared:   g_{t,i} = h_s · α₁ · softmax(W_s x_t)_i                       i < h_s
    routed:   p_t = softmax(W_r x_t) over the E routed heads (not over the tokens),
              g_{t,h_s+j} = k · α₂ · p_{t,j} / Σ_{j' ∈ top-k(p_t)} p_{t,j'}     j ∈ top-k(p_t), else 0
    balance:  [α₁, α₂] = 2 · softmax(W_h x_t)

The constants k, h_s and 2 follow the reference code (the paper's equations omit them; this is
the book's reading): with a zero router every active head gets weight exactly 1, so a zero
router with k = E is ordinary multi-head attention. With h_s = 0 the reference has no shared
heads and no balance step, g = the routed gates; this module does the same.

Top-k ties (a zero router gives equal p) go to the lowest head index (a stable sort).

Load balance (training only), with P_j = mean_t p_{t,j} and f_j = the fraction of tokens that
selected routed head j:  L_b = E · Σ_j P_j f_j  (the code's E² · mean_j P_j f_j). Uniform
routing gives L_b = k; all tokens on the same k heads with p uniform on them gives L_b = E.

The gates plug into :class:`~attnbook.attention.MultiHeadAttention` as its ``head_gate``.
All heads are still computed, so this saves no time; a speed-up needs a kernel that skips the
inactive (token, head) pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention
from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "moh_routing",
    "moh_gates",
    "load_balance_loss",
    "MoHGate",
    "RandomHeadGate",
    "mixture_of_heads_attention",
    "moh_transformer",
    "train_typed_copy",
    "typed_copy_accuracy",
]


def _check_router(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: object) -> int:
    require_tensor(x, "x", ndim=3, floating=True, shape="(B, N, D)")
    D = x.shape[-1]
    require_tensor(w_r, "w_r", ndim=2, floating=True, shape=f"(E, D={D})")
    if w_r.shape[1] != D or w_r.shape[0] < 1:
        raise ValueError(f"w_r must have shape (E >= 1, D={D}), got {tuple(w_r.shape)}")
    E = w_r.shape[0]
    k = require_int(k, "k", minimum=1)
    if k > E:
        raise ValueError(f"k must be at most the number of routed heads E={E}, got k={k}")
    if (w_s is None) != (w_h is None):
        raise ValueError("w_s and w_h come together: both None (no shared heads) or both given")
    if w_s is not None:
        require_tensor(w_s, "w_s", ndim=2, floating=True, shape=f"(h_s, D={D})")
        require_tensor(w_h, "w_h", ndim=2, floating=True, shape=f"(2, D={D})")
        if w_s.shape[1] != D or w_s.shape[0] < 1:
            raise ValueError(f"w_s must have shape (h_s >= 1, D={D}), got {tuple(w_s.shape)}")
        if w_h.shape != (2, D):
            raise ValueError(f"w_h must have shape (2, D={D}), got {tuple(w_h.shape)}")
    require_same_dtype_device(x=x, w_r=w_r, w_s=w_s, w_h=w_h)
    return k


def moh_routing(
    x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The MoH gates of every head, with the router probabilities and the selection.

    Args:
        x: tokens (B, N, D), float.
        w_r: routed-head router (E, D); E = number of routed heads.
        w_s: shared-head router (h_s, D), or None when there are no shared heads (h_s = 0).
        w_h: head-type balance (2, D), or None exactly when ``w_s`` is None.
        k: routed heads kept per token, 1 <= k <= E.

    Returns:
        gates (B, N, h_s + E): shared heads first; exactly h_s + k non-zero per token
        (ties to the lowest index), x's dtype and device.
        probs (B, N, E): p = softmax(W_r x) over the routed heads (differentiable).
        selected (B, N, E): bool, True for the top-k routed heads of each token.
    """
    k = _check_router(x, w_r, w_s, w_h, k)
    # p_t = softmax(W_r x_t), over the heads (the last axis), never over the tokens
    probs = torch.softmax(x @ w_r.T, dim=-1)  # (B, N, E)
    # top-k of p_t; a stable descending sort sends ties to the lowest head index
    top = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]  # (B, N, k)
    selected = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, top, True)  # (B, N, E)
    kept = probs * selected  # (B, N, E)
    # g_r = k · p / Σ_{selected} p   (renormalised over the k selected heads)
    routed = k * kept / kept.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    if w_s is None:
        return routed, probs, selected
    h_s = w_s.shape[0]
    # g_s = h_s · softmax(W_s x_t), over the shared heads
    shared = h_s * torch.softmax(x @ w_s.T, dim=-1)  # (B, N, h_s)
    # [α₁, α₂] = 2 · softmax(W_h x_t)
    alpha = 2 * torch.softmax(x @ w_h.T, dim=-1)  # (B, N, 2)
    # g = [α₁ g_s, α₂ g_r]
    gates = torch.cat([alpha[..., :1] * shared, alpha[..., 1:] * routed], dim=-1)  # (B, N, h_s + E)
    return gates, probs, selected


def moh_gates(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int) -> Tensor:
    """The gates (B, N, h_s + E) of :func:`moh_routing` alone (see there for the arguments)."""
    return moh_routing(x, w_r, w_s, w_h, k)[0]


def load_balance_loss(probs: Tensor, selected: Tensor) -> Tensor:
    r"""L_b = E · Σ_j P_j f_j, with P_j = mean_t p_{t,j} and f_j = mean_t [j selected by t].

    Args:
        probs: router probabilities (..., E), each row summing to 1; the gradient flows here.
        selected: bool (..., E), the top-k selection of each token (no gradient).

    Returns:
        a scalar in probs' dtype: k for uniform routing, E when every token picks the same k
        heads with p uniform on them.
    """
    require_tensor(probs, "probs", min_ndim=1, floating=True, shape="(..., E)")
    require_tensor(selected, "selected", min_ndim=1, shape="(..., E)")
    if selected.dtype != torch.bool:
        raise TypeError(f"selected must be a boolean tensor (True = head selected), got {selected.dtype}")
    if selected.shape != probs.shape:
        raise ValueError(
            f"probs and selected must have one shape, got {tuple(probs.shape)} and {tuple(selected.shape)}"
        )
    E = probs.shape[-1]
    p = probs.reshape(-1, E)  # (T, E)
    f = selected.reshape(-1, E).to(probs.dtype)  # (T, E)
    # L_b = E · Σ_j mean_t(p_tj) · mean_t(f_tj)
    return E * (p.mean(dim=0) * f.mean(dim=0)).sum()


class MoHGate(nn.Module):
    """A ``head_gate`` for :class:`MultiHeadAttention`: x (B, N, D) -> gates (B, N, H).

    The router starts at zero, so the layer starts as multi-head attention restricted to the
    h_s shared and the first k routed heads (all of them when k = H - h_s). After each call
    ``self.balance_loss`` holds L_b of that call (add β · L_b, β = 0.01, to the training loss).
    """

    def __init__(self, D: int, H: int, h_s: int, k: int):
        super().__init__()
        D, H = require_int(D, "D", minimum=1), require_int(H, "H", minimum=1)
        h_s = require_int(h_s, "h_s", minimum=0)
        if h_s >= H:
            raise ValueError(f"h_s must leave at least one routed head: h_s < H={H}, got {h_s}")
        k = require_int(k, "k", minimum=1)
        if k > H - h_s:
            raise ValueError(f"k must be at most H - h_s = {H - h_s}, got {k}")
        self.h_s, self.k = h_s, k
        self.w_r = nn.Parameter(torch.zeros(H - h_s, D))
        self.w_s = nn.Parameter(torch.zeros(h_s, D)) if h_s else None
        self.w_h = nn.Parameter(torch.zeros(2, D)) if h_s else None
        self.balance_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        gates, probs, selected = moh_routing(x, self.w_r, self.w_s, self.w_h, self.k)
        self.balance_loss = load_balance_loss(probs, selected)
        return gates  # (B, N, H)


def mixture_of_heads_attention(D: int, H: int, h_s: int, k: int, bias: bool = True) -> MultiHeadAttention:
    """Multi-head attention whose heads are gated per token by a zero-initialised :class:`MoHGate`."""
    return MultiHeadAttention(D, H, bias=bias, head_gate=MoHGate(D, H, h_s, k))


class RandomHeadGate(nn.Module):
    """The control: h_s shared heads always on, k routed heads drawn at random for every token.

    The draw ignores the token (its content and its type) and nothing in it is learned; every
    active head gets weight 1. Draws come from the gate's own generator, seeded at construction,
    so a run repeats exactly. ``balance_loss`` is None (there is no router to balance).
    """

    def __init__(self, H: int, h_s: int, k: int, seed: int = 0):
        super().__init__()
        self.H, self.h_s = require_int(H, "H", minimum=1), require_int(h_s, "h_s", minimum=0)
        self.k = require_int(k, "k", minimum=1)
        if self.h_s + self.k > self.H:
            raise ValueError(f"h_s + k must be at most H={H}, got {h_s} + {k}")
        self.generator = torch.Generator().manual_seed(seed)
        self.balance_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        E = self.H - self.h_s
        # k distinct routed heads per token, uniformly at random
        top = torch.rand(B, N, E, generator=self.generator).argsort(dim=-1)[..., : self.k]  # (B, N, k)
        routed = torch.zeros(B, N, E).scatter_(-1, top, 1.0)
        return torch.cat([torch.ones(B, N, self.h_s), routed], dim=-1).to(x)  # (B, N, H)


def moh_transformer(
    vocab: int,
    n_out: int,
    N: int,
    *,
    D: int = 32,
    H: int = 8,
    h_s: int | None = None,
    k: int | None = None,
    random_routing: bool = False,
    seed: int = 0,
    mlp_ratio: int = 2,
):
    """One causal layer of TinyTransformer (learned positions, MLP) with MHA, MoH or random routing.

    ``h_s = k = None`` gives plain multi-head attention; otherwise the layer's ``head_gate`` is a
    zero-initialised :class:`MoHGate` (h_s shared, top-k routed), or :class:`RandomHeadGate` with
    ``random_routing`` (seeded by ``seed``).
    """
    from ..models import ModelConfig, TinyTransformer

    config = ModelConfig(D=D, H=H, layers=1, vocab=vocab, n_out=n_out, max_len=N, mlp_ratio=mlp_ratio)
    if h_s is None:
        return TinyTransformer(config)
    gate = (lambda: RandomHeadGate(H, h_s, k, seed)) if random_routing else (lambda: MoHGate(D, H, h_s, k))
    return TinyTransformer(config, attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H, head_gate=gate()))


def train_typed_copy(
    seed: int,
    *,
    h_s: int | None = None,
    k: int | None = None,
    random_routing: bool = False,
    N: int = 12,
    n_sym: int = 16,
    D: int = 32,
    H: int = 8,
    steps: int = 120,
    batch_size: int = 32,
    lr: float = 2e-2,
    lam: float = 0.01,
):
    r"""Train :func:`moh_transformer` on typed copies: cross-entropy + λ · L_bal; the chapter's recipe.

    ``seed`` fixes the initial weights, the training batches and the random routing. Returns
    (model, history), the history from :func:`attnbook.train.train`.
    """
    import torch.nn.functional as F

    from ..tasks.typed_copy import IGNORE, typed_copy
    from ..train import train

    def loss_fn(model, batch):
        logits = model(batch.tokens)  # (B, N, n_sym)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)
        balance = getattr(model.blocks[0].attn.head_gate, "balance_loss", None)
        # L = L_task + λ · L_bal  (MoH only)
        return loss if balance is None else loss + lam * balance

    torch.manual_seed(seed)
    model = moh_transformer(
        4 * n_sym, n_sym, N, D=D, H=H, h_s=h_s, k=k, random_routing=random_routing, seed=seed
    )
    history = train(
        model,
        lambda step, g: typed_copy(batch_size, N, n_sym, g),
        loss_fn,
        steps=steps,
        lr=lr,
        seed=seed,
        progress=False,
    )
    return model, history


@torch.no_grad()
def typed_copy_accuracy(model: nn.Module, batch) -> dict[str, Tensor | float]:
    """Accuracy of ``model`` on a typed-copy batch, with what its attention layer routed.

    Returns {"accuracy": float (positions with a source), "per_type": (4,) accuracy per type,
    "load": (4, H) fraction of the tokens of each type whose gate on each head is non-zero
    (all ones without a head gate), "balance": L_bal of the batch or nan}.
    """
    from ..tasks.typed_copy import IGNORE

    model.eval()
    logits, (record,) = model(batch.tokens, return_intermediates=True)
    correct = (logits.argmax(-1) == batch.targets).float()  # (B, N)
    has = batch.targets != IGNORE
    per_type = torch.stack([correct[has & (batch.types == t)].mean() for t in range(4)])
    H = record.heads.shape[1]
    active = (record.gates != 0).float() if record.gates is not None else torch.ones(*batch.tokens.shape, H)
    load = torch.stack([active[batch.types == t].mean(0) for t in range(4)])  # (4, H)
    balance = getattr(model.blocks[0].attn.head_gate, "balance_loss", None)
    return {
        "accuracy": correct[has].mean().item(),
        "per_type": per_type,
        "load": load,
        "balance": float("nan") if balance is None else balance.item(),
    }
