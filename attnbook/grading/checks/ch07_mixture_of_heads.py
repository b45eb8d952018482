"""Chapter 07 checks: Mixture of heads.

Each @task grades one function of exercises/ch07_mixture_of_heads.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch07_mixture_of_heads.py checks that
every declared mistake fails its task and gets its own hint.

The reference is written here, independently of attnbook.mechanisms.mixture_of_heads: one token
at a time in float64, with torch.topk on that token's routed probabilities.
"""

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tensor, fresh_generator

# (B, N, D, h_s, E, k, dtype): N = 1, no shared heads, more shared heads than k, k = E, both dtypes
CASES = (
    (1, 1, 4, 0, 3, 1, torch.float64),
    (2, 5, 7, 3, 4, 1, torch.float32),
    (3, 4, 6, 2, 5, 3, torch.float64),
    (2, 3, 5, 1, 3, 3, torch.float32),
)


def _reference(x, w_r, w_s, w_h, k):
    """g = [α₁ h_s softmax(W_s x), α₂ k p / Σ_top-k p on the top-k], one token at a time (float64)."""
    B, N, _ = x.shape
    h_s = 0 if w_s is None else w_s.shape[0]
    out = torch.zeros(B, N, h_s + w_r.shape[0], dtype=torch.float64)
    for b in range(B):
        for t in range(N):
            xt = x[b, t].double()
            p = torch.softmax(w_r.double() @ xt, dim=0)  # (E,) over the routed heads
            values, index = torch.topk(p, k)
            routed = torch.zeros_like(p)
            routed[index] = k * values / values.sum()
            if w_s is None:
                out[b, t] = routed
                continue
            alpha = 2 * torch.softmax(w_h.double() @ xt, dim=0)  # (2,)
            shared = h_s * torch.softmax(w_s.double() @ xt, dim=0)  # (h_s,)
            out[b, t] = torch.cat([alpha[0] * shared, alpha[1] * routed])
    return out.to(x.dtype)


@task("ch07.moh_gates", points=2)
def check_moh_gates(fn):
    """Shared gates always on, top-k routed gates renormalised, balanced by α; (B, N, h_s + E)."""
    g, _ = fresh_generator()
    for B, N, D, h_s, E, k, dtype in CASES:
        x = torch.randn(B, N, D, generator=g, dtype=dtype)
        w_r = torch.randn(E, D, generator=g, dtype=dtype)
        w_s = torch.randn(h_s, D, generator=g, dtype=dtype) if h_s else None
        w_h = torch.randn(2, D, generator=g, dtype=dtype) if h_s else None
        what = f"moh_gates({describe({'B': B, 'N': N, 'D': D, 'h_s': h_s, 'E': E, 'k': k, 'dtype': dtype})})"
        with case():
            x_before = x.clone()
            answer = fn(x, w_r, w_s, w_h, k)
            if not torch.equal(x, x_before):
                raise CheckFailed(f"{what} changed its input x in place")
            expect_tensor(answer, shape=(B, N, h_s + E), dtype=dtype, what=what)
            expect_close(answer, _reference(x, w_r, w_s, w_h, k), what=what)


def _wrong_gates(x, w_r, w_s, w_h, k, *, renormalise=True, token_softmax=False, shared_top_k=False):
    dim = -2 if token_softmax else -1
    p = torch.softmax(x @ w_r.T, dim=dim)  # (B, N, E)
    keep = torch.zeros_like(p).scatter_(-1, p.topk(k, dim=-1).indices, 1.0)
    routed = p * keep
    routed = k * routed / routed.sum(-1, keepdim=True) if renormalise else k * routed
    if w_s is None:
        return routed
    h_s = w_s.shape[0]
    s = torch.softmax(x @ w_s.T, dim=-1)  # (B, N, h_s)
    if shared_top_k:
        s = s * torch.zeros_like(s).scatter_(-1, s.topk(min(k, h_s), dim=-1).indices, 1.0)
    alpha = 2 * torch.softmax(x @ w_h.T, dim=-1)
    return torch.cat([alpha[..., :1] * h_s * s, alpha[..., 1:] * routed], dim=-1)


@mistake("ch07.moh_gates", "renormalise the kept router probabilities over the k selected heads before ×k")
def moh_gates_without_renormalisation(x, w_r, w_s, w_h, k):
    return _wrong_gates(x, w_r, w_s, w_h, k, renormalise=False)


@mistake("ch07.moh_gates", "the shared heads are always on: only the routed heads go through the top-k")
def moh_gates_top_k_over_shared(x, w_r, w_s, w_h, k):
    return _wrong_gates(x, w_r, w_s, w_h, k, shared_top_k=True)


@mistake("ch07.moh_gates", "the router's softmax runs over the heads (the last axis), not over the tokens")
def moh_gates_softmax_over_tokens(x, w_r, w_s, w_h, k):
    return _wrong_gates(x, w_r, w_s, w_h, k, token_softmax=True)
