"""The common mistakes of chapter 07's later exercises, declared for the checks of ``ch07_mixture_of_heads``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module. (The
mistakes of ``ch07.moh_gates`` are declared next to its check.)
"""

from __future__ import annotations

import torch

from ..core import mistake
from .ch07_mixture_of_heads import BALANCE_PROBS_HINT, _gated_reference


@mistake("ch07.load_balance_loss", BALANCE_PROBS_HINT)
def load_balance_from_the_selection_only(probs, selected):
    f = selected.to(probs.dtype)
    return probs.shape[-1] * (f.mean(0) * f.mean(0)).sum() + 0 * probs.sum()


@mistake(
    "ch07.load_balance_loss",
    "L_bal = H_rt · Σ_j P_j f_j: without the factor H_rt, uniform routing gives n_top / H_rt, not n_top",
)
def load_balance_without_the_factor(probs, selected):
    return (probs.mean(0) * selected.to(probs.dtype).mean(0)).sum()


@mistake(
    "ch07.gated_heads",
    "g_ih scales head h's output at the query i (after the attention), not its values V_h at the keys j",
)
def gated_heads_on_the_values(x, w_q, w_k, w_v, w_o, b_o, gates):
    B, N, D = x.shape
    H = gates.shape[-1]
    d = D // H
    # gate the value rows of each head at the key positions: v_jh · g_jh
    w_v_gated = w_v.reshape(H, d, D)
    x64 = x.double()
    v = torch.einsum("bnd,hed->bnhe", x64, w_v_gated.double()) * gates.double()[..., None]  # (B, N, H, d)
    hidden = torch.ones(N, N, dtype=torch.bool).triu(1)
    out = b_o.double().expand(B, N, D).clone()
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        q, k = (x64 @ w[rows].double().T for w in (w_q, w_k))
        s = (q @ k.transpose(1, 2) / d**0.5).masked_fill(hidden, float("-inf"))
        out = out + (torch.softmax(s, dim=-1) @ v[:, :, h]) @ w_o[:, rows].double().T
    return out.to(x.dtype)


@mistake("ch07.gated_heads", "the bias b_O is added once, after the sum over heads; it carries no gate")
def gated_heads_gating_the_bias(x, w_q, w_k, w_v, w_o, b_o, gates):
    ungated = _gated_reference(x, w_q, w_k, w_v, w_o, torch.zeros_like(b_o), gates)
    return ungated + gates.mean(-1, keepdim=True) * b_o


@mistake("ch07.head_load", "count the tokens whose gate is non-zero (g ≠ 0), do not average the gate values")
def head_load_of_gate_values(gates, types, n_types):
    return torch.stack([gates[types == t].mean(0) for t in range(n_types)])
