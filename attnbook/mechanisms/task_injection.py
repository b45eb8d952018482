r"""Soft injection of task embeddings into head activations (SITE, Park & Rhee 2025).

Derivation (chapter 10). Chapter 00 wrote multi-head attention as a sum over heads,

    MHA(X)_t = Σ_h z_{t,h} W_O^h + b_O,     z_{t,h} = softmax(q_{t,h} K_h^T / sqrt(d)) V_h ∈ R^d,

so the *head activation* z_{t,h} is head h's slice of the input to W_O (after the attention,
before the output projection; ``Intermediates.heads`` of the core, (B, H, N, d)). SITE changes
one thing, at one position, in a frozen model:

    task embedding   t^l_h = (1/M) Σ_m z^l_{T_m,h}(prompt_m)       M few-shot prompts, T_m = last prompt token
    soft selection   α^l_h = sigmoid(a^l_h),  a = 0 at the start (α = 0.5)
    injection        z̃^l_{T,h} = (1 − α^l_h) z^l_{T,h} + α^l_h t^l_h    at the last prompt token T only,
                     in every layer l and head h; every other position keeps its z.

α (L, H) is learned on zero-shot prompts with the model frozen (Adam, cross-entropy of the first
answer token); it is a soft version of choosing which heads to patch. Later tokens see the edit
only through the keys and values of position T (a KV cache holds exactly those).

**Where it plugs in.** The core's ``head_transform(z) -> z`` extension point sees the head
outputs z (B, H, N, d) after the attention and before W_O, so the injection is one function of
z: :class:`SoftInjection` sets it on each block's attention while active (and restores what was
there), and the layer's output becomes Σ_h z̃_h W_O^h + b_O with no other change. Where z̃ = z
(every position but T, or α = 0) the output is unchanged bit for bit.

Right padding: T = (number of real tokens) − 1 per prompt, never position −1.

The reference code keeps "the best α by validation loss" but never updates its best loss, so
it returns the α of the last validation (the final one); :func:`optimize_alpha` keeps the α
with the lowest validation loss, as the paper describes (the book's reading).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..attention import Intermediates, MultiHeadAttention
from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "last_token_index",
    "head_activations",
    "task_embedding",
    "soft_inject",
    "SoftHeadSelection",
    "SoftInjection",
    "optimize_alpha",
]


def last_token_index(key_padding_mask: Tensor) -> Tensor:
    """T per prompt: the index of the last real token of right-padded prompts.

    Args:
        key_padding_mask: bool (B, N), True for real tokens, each row True...True False...False
            with at least one real token.

    Returns:
        (B,) int64 on the mask's device: T_b = Σ_j mask_bj − 1.
    """
    require_tensor(key_padding_mask, "key_padding_mask", ndim=2, shape="(B, N)")
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be boolean (True = real token), got {key_padding_mask.dtype}")
    lengths = key_padding_mask.sum(dim=1)  # (B,)
    N = key_padding_mask.shape[1]
    right = torch.arange(N, device=key_padding_mask.device) < lengths[:, None]  # (B, N)
    if not torch.equal(right, key_padding_mask) or (lengths == 0).any():
        raise ValueError(
            "key_padding_mask must be right-padded (real tokens first) with one real token or more"
        )
    # T = length − 1
    return lengths - 1


def head_activations(records: Sequence[Intermediates]) -> Tensor:
    """Stack the head activations z of every layer: (B, L, H, N, d) from L records.

    Args:
        records: one :class:`~attnbook.attention.Intermediates` per layer, first layer first
            (``TinyTransformer(..., return_intermediates=True)``); each ``heads`` is (B, H, N, d),
            the per-head input to W_O (not ``contributions``, which are after W_O).
    """
    if (
        not isinstance(records, Sequence)
        or not records
        or not all(isinstance(r, Intermediates) for r in records)
    ):
        raise TypeError("records must be a non-empty list of Intermediates, one per layer")
    return torch.stack([r.heads for r in records], dim=1)  # (B, L, H, N, d)


def _check_last_idx(last_idx: Tensor, B: int, N: int, name: str = "last_idx") -> None:
    require_tensor(last_idx, name, ndim=1, shape=f"(B={B},)")
    if last_idx.is_floating_point() or last_idx.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer positions, got {last_idx.dtype}")
    if last_idx.shape[0] != B:
        raise ValueError(f"{name} must have shape (B={B},), got {tuple(last_idx.shape)}")
    if last_idx.device.type != "meta" and ((last_idx < 0) | (last_idx >= N)).any():
        raise ValueError(f"{name} must hold positions in 0 ... {N - 1} (no negative indexing)")


def task_embedding(heads: Tensor, last_idx: Tensor) -> Tensor:
    r"""t^l_h = (1/M) Σ_m z^l_{T_m,h}: the mean last-token head activation over M prompts.

    Args:
        heads: (M, L, H, N, d) head activations of M (right-padded) few-shot prompts.
        last_idx: (M,) integer T_m, the last real token of each prompt.

    Returns:
        (L, H, d) in heads' dtype and device.
    """
    require_tensor(heads, "heads", ndim=5, floating=True, shape="(M, L, H, N, d)")
    M, L, H, N, d = heads.shape
    _check_last_idx(last_idx, M, N)
    # z^l_{T_m,h}: gather position T_m of prompt m
    index = last_idx.to(heads.device).view(M, 1, 1, 1, 1).expand(M, L, H, 1, d)
    last = heads.gather(3, index).squeeze(3)  # (M, L, H, d)
    # t = mean over the M prompts
    return last.mean(dim=0)  # (L, H, d)


def soft_inject(z: Tensor, t: Tensor, alpha: Tensor, last_idx: Tensor) -> Tensor:
    r"""z̃_{T,h} = (1 − α_h) z_{T,h} + α_h t_h at T = last_idx[b] only; a new tensor.

    Args:
        z: (B, H, N, d) head activations of one layer (``Intermediates.heads``).
        t: (H, d) the layer's task embedding, or (B, H, d) one per prompt.
        alpha: (H,) mixing weights in [0, 1] (one per head, shared by the d coordinates).
        last_idx: (B,) integer T_b, the last real prompt token of each row.

    Returns:
        (B, H, N, d) in z's dtype and device; equal to z (bit for bit) at every position ≠ T_b.
        Differentiable in z, t and alpha.
    """
    require_tensor(z, "z", ndim=4, floating=True, shape="(B, H, N, d)")
    B, H, N, d = z.shape
    require_tensor(t, "t", ndim=(2, 3), floating=True, shape=f"(H={H}, d={d}) or (B={B}, H={H}, d={d})")
    if t.shape[-2:] != (H, d) or (t.ndim == 3 and t.shape[0] != B):
        raise ValueError(f"t must have shape (H={H}, d={d}) or (B={B}, H={H}, d={d}), got {tuple(t.shape)}")
    require_tensor(alpha, "alpha", ndim=1, floating=True, shape=f"(H={H},)")
    if alpha.shape[0] != H:
        raise ValueError(f"alpha must have shape (H={H},), got {tuple(alpha.shape)}")
    require_same_dtype_device(t=t, alpha=alpha)
    if t.device != z.device:
        raise ValueError(f"t is on {t.device} but z is on {z.device}")
    _check_last_idx(last_idx, B, N)
    t = t.to(z.dtype).expand(B, H, d)[:, :, None, :]  # (B, H, 1, d)
    a = alpha.to(z.dtype)[None, :, None, None]  # (1, H, 1, 1): one weight per head, not per coordinate
    # the one position edited: n == T_b
    at = torch.arange(N, device=z.device)[None, :] == last_idx.to(z.device)[:, None]  # (B, N)
    # z̃ = (1 − α) z + α t at T, z elsewhere
    return torch.where(at[:, None, :, None], (1 - a) * z + a * t, z)  # (B, H, N, d)


class SoftHeadSelection(nn.Module):
    """The learned α = sigmoid(a), a (L, H) starting at 0 (α = 0.5 everywhere)."""

    def __init__(self, L: int, H: int):
        super().__init__()
        L, H = require_int(L, "L", minimum=1), require_int(H, "H", minimum=1)
        self.logits = nn.Parameter(torch.zeros(L, H))

    def forward(self) -> Tensor:
        """α (L, H) in (0, 1)."""
        # α = sigmoid(a)
        return torch.sigmoid(self.logits)


class SoftInjection:
    r"""Inject t with weights α into a :class:`~attnbook.models.TinyTransformer` while active.

        with SoftInjection(model, t, alpha, last_idx):
            logits = model(tokens)            # every layer l: z̃^l_T = (1 − α^l) z^l_T + α^l t^l

    Args:
        model: a TinyTransformer whose blocks' ``attn`` are :class:`MultiHeadAttention`.
        t: (L, H, d) task embedding, or (B, L, H, d) one per prompt.
        alpha: (L, H) mixing weights (differentiable: gradients reach α, not the model).
        last_idx: (B,) integer T_b of each prompt of the batch the model will see.

    While active, each block's attention gets ``head_transform`` = :func:`soft_inject` with its
    layer's t^l and α^l; on exit the previous ``head_transform`` (usually None) comes back.
    """

    def __init__(self, model: nn.Module, t: Tensor, alpha: Tensor, last_idx: Tensor):
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(isinstance(b.attn, MultiHeadAttention) for b in blocks):
            raise TypeError("model must be a TinyTransformer whose attention layers are MultiHeadAttention")
        L, H, d = len(blocks), blocks[0].attn.H, blocks[0].attn.d
        require_tensor(t, "t", ndim=(3, 4), floating=True, shape=f"(L={L}, H={H}, d={d}) or (B, L, H, d)")
        if t.shape[-3:] != (L, H, d):
            raise ValueError(f"t must have shape (L={L}, H={H}, d={d}) or (B, L, H, d), got {tuple(t.shape)}")
        require_tensor(alpha, "alpha", ndim=2, floating=True, shape=f"(L={L}, H={H})")
        if alpha.shape != (L, H):
            raise ValueError(f"alpha must have shape (L={L}, H={H}), got {tuple(alpha.shape)}")
        require_tensor(last_idx, "last_idx", ndim=1, shape="(B,)")
        self.blocks, self.t, self.alpha, self.last_idx = blocks, t, alpha, last_idx
        self.saved: list = []

    def _transform(self, layer: int) -> Callable[[Tensor], Tensor]:
        t = self.t[layer] if self.t.ndim == 3 else self.t[:, layer]  # (H, d) or (B, H, d)

        def inject(z: Tensor) -> Tensor:  # z (B, H, N, d), the per-head input to W_O
            # z̃_{T,h} = (1 − α_h) z_{T,h} + α_h t_h at the last prompt token only
            return soft_inject(z, t, self.alpha[layer], self.last_idx)  # (B, H, N, d)

        return inject

    def __enter__(self) -> SoftInjection:
        if self.saved:
            raise RuntimeError("this SoftInjection is already active")
        self.saved = [b.attn.head_transform for b in self.blocks]
        for i, b in enumerate(self.blocks):
            b.attn.head_transform = self._transform(i)
        return self

    def __exit__(self, *exc) -> None:
        for b, previous in zip(self.blocks, self.saved):
            b.attn.head_transform = previous
        self.saved = []


def optimize_alpha(
    loss_fn: Callable[[Tensor, object], Tensor],
    shape: tuple[int, int],
    batches: Iterable,
    *,
    lr: float = 0.2,
    val_loss_fn: Callable[[Tensor], float] | None = None,
    eval_every: int = 50,
    device: torch.device | str | None = None,
) -> tuple[Tensor, list[float]]:
    r"""Learn α = sigmoid(a) (a = 0 at the start) with Adam; only a receives gradients.

    Args:
        loss_fn: ``loss_fn(alpha, batch) -> scalar``, e.g. the cross-entropy of the first answer
            token of zero-shot prompts run under :class:`SoftInjection`; the model stays frozen.
        shape: (L, H).
        batches: one batch per step (the reference: 400 steps of batch 1).
        lr: Adam's learning rate (0.2 in the reference: large by design).
        val_loss_fn: ``val_loss_fn(alpha) -> float`` evaluated every ``eval_every`` steps; the α
            with the lowest value is returned. Without it, the final α.
        eval_every: steps between validations.
        device: where a lives.

    Returns:
        α (L, H) in (0, 1), detached, float32, and the training losses of every step.
    """
    L, H = (require_int(s, n, minimum=1) for s, n in zip(shape, ("L", "H"), strict=True))
    eval_every = require_int(eval_every, "eval_every", minimum=1)
    logits = torch.zeros(L, H, device=device, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    best, best_loss, history = None, float("inf"), []
    for step, batch in enumerate(batches, start=1):
        # α = sigmoid(a)
        loss = loss_fn(torch.sigmoid(logits), batch)
        # ∂loss/∂a only: the model's parameters get no gradient
        (grad,) = torch.autograd.grad(loss, [logits])
        logits.grad = grad
        opt.step()
        history.append(float(loss.detach()))
        if val_loss_fn is not None and step % eval_every == 0:
            with torch.no_grad():
                value = float(val_loss_fn(torch.sigmoid(logits)))
            if value < best_loss:
                best, best_loss = logits.detach().clone(), value
    final = logits.detach() if best is None else best
    return torch.sigmoid(final), history
