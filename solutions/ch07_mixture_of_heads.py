"""Chapter 07 solutions: Mixture of heads."""

import torch
from torch import Tensor


def moh_gates(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int) -> Tensor:
    # p = softmax(W_r x) over the routed heads
    p = torch.softmax(x @ w_r.T, dim=-1)  # (B, N, E)
    keep = torch.zeros_like(p).scatter_(-1, p.topk(k, dim=-1).indices, 1.0)  # (B, N, E) 0/1
    # g_r = k · p / Σ_top-k p on the kept heads
    routed = k * p * keep / (p * keep).sum(-1, keepdim=True)
    if w_s is None:
        return routed
    # g_s = h_s · softmax(W_s x); [α₁, α₂] = 2 · softmax(W_h x)
    shared = w_s.shape[0] * torch.softmax(x @ w_s.T, dim=-1)  # (B, N, h_s)
    alpha = 2 * torch.softmax(x @ w_h.T, dim=-1)  # (B, N, 2)
    return torch.cat([alpha[..., :1] * shared, alpha[..., 1:] * routed], dim=-1)


def load_balance_loss(probs: Tensor, selected: Tensor) -> Tensor:
    E = probs.shape[-1]
    # L_bal = H_rt · Σ_h ḡ_h load_h, ḡ_h = mean_i g̃_ih (differentiable), load_h = mean_i [h selected]
    return E * (probs.mean(0) * selected.to(probs.dtype).mean(0)).sum()


def gated_heads(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, b_o: Tensor, gates: Tensor
) -> Tensor:
    B, N, D = x.shape
    H = gates.shape[-1]
    d = D // H
    # Q_h, K_h, V_h: (B, H, N, d)
    q, k, v = ((x @ w.T).reshape(B, N, H, d).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / d**0.5  # (B, H, N, N)
    hidden = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
    heads = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1) @ v  # (B, H, N, d)
    # g_ih · O_h[i]: the gate scales head h's output at query i
    heads = heads * gates.transpose(1, 2)[..., None]
    # Σ_h g_ih O_h W_O^h + b_O  (concatenating the heads and one product with W_O sums over h)
    return heads.transpose(1, 2).reshape(B, N, D) @ w_o.T + b_o


def head_load(gates: Tensor, types: Tensor, n_types: int) -> Tensor:
    active = (gates != 0).to(gates.dtype)  # (B, N, H)
    return torch.stack([active[types == t].mean(0) for t in range(n_types)])  # (n_types, H)


def moh_accuracy(h_s: int, k: int, seed: int) -> float:
    from attnbook.mechanisms.mixture_of_heads import train_typed_copy, typed_copy_accuracy
    from attnbook.tasks import typed_copy

    model, _ = train_typed_copy(
        seed, h_s=h_s, k=k, N=12, n_sym=8, D=32, H=8, steps=60, batch_size=32, lr=1e-2
    )
    test = typed_copy(500, 12, 8, torch.Generator().manual_seed(1000))
    return typed_copy_accuracy(model, test)["accuracy"]
