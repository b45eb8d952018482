"""Chapter 07 checks: Mixture of heads.

Each @task grades one function of exercises/ch07_mixture_of_heads.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch07_mixture_of_heads.py checks that
every declared mistake fails its task and gets its own hint.

The reference is written here, independently of attnbook.mechanisms.mixture_of_heads: one token
at a time in float64, with torch.topk on that token's routed probabilities.
"""

import functools

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_number, expect_tensor, fresh_generator, one_thread

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


# ---------------------------------------------------------------------------------------------
# ch07.load_balance_loss: L_bal = H_rt · Σ_j P_j f_j


def _balance_reference(probs, selected):
    p, f = probs.double(), selected.double()
    T, E = p.shape
    return E * sum(p[:, j].mean() * f[:, j].mean() for j in range(E))


def _balance_inputs(gen, T, E, k, dtype):
    logits = 2 * torch.randn(T, E, generator=gen, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    top = probs.topk(k, dim=-1).indices
    return probs, torch.zeros(T, E, dtype=torch.bool).scatter_(-1, top, True)


@task("ch07.load_balance_loss", points=1)
def check_load_balance_loss(fn):
    """L_bal = H_rt Σ_j P_j f_j: uniform routing gives n_top, collapsed routing H_rt; gradient via p."""
    g, _ = fresh_generator()
    T, E, k = 12, 6, 2
    with case():
        uniform = torch.full((T, E), 1 / E, dtype=torch.float64)
        spread = torch.zeros(T, E, dtype=torch.bool)
        for t in range(T):  # a different pair of heads per token: every head equally loaded
            spread[t, [t % E, (t + 1) % E]] = True
        expect_close(
            fn(uniform, spread),
            torch.tensor(float(k), dtype=torch.float64),
            what="load_balance_loss(uniform p, balanced selection)",
            check_dtype=False,
        )
    with case():
        collapsed = torch.zeros(T, E, dtype=torch.float64)
        collapsed[:, :k] = 1 / k
        same = torch.zeros(T, E, dtype=torch.bool)
        same[:, :k] = True
        expect_close(
            fn(collapsed, same),
            torch.tensor(float(E), dtype=torch.float64),
            what="load_balance_loss(every token on the same k heads)",
            check_dtype=False,
        )
    for T, E, k, dtype in ((7, 4, 1, torch.float32), (20, 6, 3, torch.float64)):
        with case():
            probs, selected = _balance_inputs(g, T, E, k, dtype)
            probs = probs.requires_grad_()
            what = f"load_balance_loss({describe({'T': T, 'E': E, 'k': k, 'dtype': dtype})})"
            answer = fn(probs, selected)
            expect_tensor(answer, shape=(), dtype=dtype, what=what)
            expect_close(answer, _balance_reference(probs.detach(), selected).to(dtype), what=what)
            if not answer.requires_grad:
                raise CheckFailed(
                    f"{what} has no gradient: the router learns from L_bal through p", hint=BALANCE_PROBS_HINT
                )
            (grad,) = torch.autograd.grad(answer, probs)
            # dL/dp_tj = E · f_j / T
            expect_close(
                grad,
                (E * selected.to(dtype).mean(0) / T).expand(T, E),
                what=f"the gradient of {what} with respect to probs",
                hint=BALANCE_PROBS_HINT,
            )


BALANCE_PROBS_HINT = (
    "ḡ_h averages the router probabilities g̃ (the differentiable part), not the 0/1 selection"
)


# ---------------------------------------------------------------------------------------------
# ch07.gated_heads: Σ_h g_ih O_h W_O^h + b_O, causal


def _gated_reference(x, w_q, w_k, w_v, w_o, b_o, gates):
    """One head at a time in float64: O_h = softmax(Q_h K_h^T / sqrt(d) + causal) V_h, then the sum."""
    dtype, x = x.dtype, x.double()
    B, N, D = x.shape
    H = gates.shape[-1]
    d = D // H
    out = b_o.double().expand(B, N, D).clone()
    hidden = torch.ones(N, N, dtype=torch.bool).triu(1)
    for h in range(H):
        rows = slice(h * d, (h + 1) * d)
        q, k, v = (x @ w[rows].double().T for w in (w_q, w_k, w_v))  # (B, N, d)
        s = (q @ k.transpose(1, 2) / d**0.5).masked_fill(hidden, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v  # (B, N, d)
        out = out + gates[..., h : h + 1].double() * (o @ w_o[:, rows].double().T)
    return out.to(dtype)


GATED_CASES = ((1, 1, 4, 2, torch.float64), (2, 6, 12, 4, torch.float32), (3, 5, 15, 5, torch.float64))


def _gated_inputs(gen, B, N, D, H, dtype, sparse=True):
    x = torch.randn(B, N, D, generator=gen, dtype=dtype)
    w_q, w_k, w_v, w_o = (torch.randn(D, D, generator=gen, dtype=dtype) / D**0.5 for _ in range(4))
    b_o = torch.randn(D, generator=gen, dtype=dtype)
    gates = 2 * torch.rand(B, N, H, generator=gen, dtype=dtype)
    if sparse:
        gates = gates * (torch.rand(B, N, H, generator=gen) < 0.5)
    return x, w_q, w_k, w_v, w_o, b_o, gates


@task("ch07.gated_heads", points=3)
def check_gated_heads(fn):
    """Causal MHA in the sum-over-heads form, head h's term at query i scaled by g_ih; (B, N, D)."""
    g, _ = fresh_generator()
    for B, N, D, H, dtype in GATED_CASES:
        args = _gated_inputs(g, B, N, D, H, dtype)
        what = f"gated_heads({describe({'B': B, 'N': N, 'D': D, 'H': H, 'dtype': dtype})})"
        with case():
            answer = fn(*(a.clone() for a in args))
            expect_tensor(answer, shape=(B, N, D), dtype=dtype, what=what)
            expect_close(answer, _gated_reference(*args), what=what)
    with case():  # all gates 1: plain causal multi-head attention
        x, w_q, w_k, w_v, w_o, b_o, gates = _gated_inputs(g, 2, 4, 8, 2, torch.float64)
        ones = torch.ones_like(gates)
        expect_close(
            fn(x, w_q, w_k, w_v, w_o, b_o, ones),
            _gated_reference(x, w_q, w_k, w_v, w_o, b_o, ones),
            what="gated_heads with every gate 1 (plain causal MHA)",
        )


# ---------------------------------------------------------------------------------------------
# ch07.head_load: fraction of the tokens of each type that activate each head


@task("ch07.head_load", points=1)
def check_head_load(fn):
    """(n_types, H): for each type, the fraction of its tokens whose gate on each head is non-zero."""
    g, _ = fresh_generator()
    for B, N, H, n_types, dtype in ((1, 6, 3, 2, torch.float32), (4, 9, 8, 4, torch.float64)):
        gates = torch.rand(B, N, H, generator=g, dtype=dtype) * (torch.rand(B, N, H, generator=g) < 0.4)
        types = torch.arange(B * N).reshape(B, N) % n_types  # every type present
        types = types.flatten()[torch.randperm(B * N, generator=g)].reshape(B, N)
        expected = torch.stack([(gates[types == t] != 0).double().mean(0) for t in range(n_types)])
        what = f"head_load({describe({'B': B, 'N': N, 'H': H, 'n_types': n_types})})"
        with case():
            answer = fn(gates, types, n_types)
            expect_tensor(answer, shape=(n_types, H), dtype=dtype, what=what)
            expect_close(answer, expected.to(dtype), what=what)


# ---------------------------------------------------------------------------------------------
# The experiment: the chapter's recipe, scaled down to about a second per model.
RECIPE = dict(N=12, n_sym=8, D=32, H=8, steps=60, batch_size=32, lr=1e-2)
REFERENCE_SEEDS = (0, 1, 2)
LEARNER_SEED = 7
EXPERIMENT_ARMS = ((2, 2), (0, 1))  # (h_s, k): MoH-50 % and one routed head of eight


@functools.cache
def _reference_accuracies(h_s: int, k: int) -> tuple[float, ...]:
    """The recipe's test accuracy over REFERENCE_SEEDS (cached: it trains models)."""
    from ...mechanisms.mixture_of_heads import train_typed_copy, typed_copy_accuracy
    from ...tasks.typed_copy import typed_copy

    test = typed_copy(500, RECIPE["N"], RECIPE["n_sym"], torch.Generator().manual_seed(1000))
    with torch.random.fork_rng(devices=[]):
        return tuple(
            typed_copy_accuracy(train_typed_copy(s, h_s=h_s, k=k, **RECIPE)[0], test)["accuracy"]
            for s in REFERENCE_SEEDS
        )


@task("ch07.moh_accuracy", points=2, time_limit=60.0)
def check_moh_accuracy(fn):
    """The learner's measured accuracy for two (h_s, k) lies in the range the reference runs give."""
    with one_thread():
        for h_s, k in EXPERIMENT_ARMS:
            with case():
                accs = torch.tensor(_reference_accuracies(h_s, k), dtype=torch.float64)
                mean, std = accs.mean().item(), accs.std().item()
                half = max(4 * std, 0.05)  # mean ± 4 std over the seeds, at least ± 0.05
                got = expect_number(fn(h_s, k, LEARNER_SEED), "moh_accuracy")
                if not mean - half <= got <= mean + half:
                    raise CheckFailed(
                        f"moh_accuracy(h_s={h_s}, k={k}, seed={LEARNER_SEED}) = {got:.3f}, but the "
                        f"reference runs give {mean:.3f} ± {std:.3f} over seeds {REFERENCE_SEEDS} "
                        f"(accepted: {mean - half:.3f} ... {mean + half:.3f})",
                        hint="follow the recipe in the docstring (λ = 0.01 on L_bal, h_s and k passed on) "
                        "and "
                        "return the accuracy over the positions that have a source (targets != -100)",
                    )
