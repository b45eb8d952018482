"""Chapter 05 checks: Relative convolutional attention (RCMHA).

Each @task grades one function of exercises/ch05_relative_convolutional.py on fresh random inputs
against an independent reference written here (explicit loops in float64, one token, one head,
one (query, key) pair at a time; not attnbook.mechanisms.relative_convolutional). The common wrong
answers are declared in the companion module ch05_relative_convolutional_mistakes.py.
"""

import functools
import math

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, expect_number, fresh_generator, one_thread

# (B, H, N, d, kernel, dtype): N = 1, N < kernel, odd d, kernel 1 and 5, both dtypes
CONV_CASES = (
    (1, 1, 1, 4, 3, torch.float64),
    (2, 3, 2, 5, 3, torch.float32),
    (2, 2, 7, 6, 3, torch.float64),
    (1, 2, 6, 3, 1, torch.float32),
    (1, 3, 8, 3, 5, torch.float64),
)

# (B, H, N, M, d, P, dtype): N = 5 queries over 3 memory + 5 current keys, N = M, N = 1
SCORE_CASES = (
    (1, 2, 5, 8, 4, 9, torch.float64),
    (2, 3, 4, 4, 5, 6, torch.float32),
    (1, 1, 1, 3, 3, 4, torch.float64),
    (2, 2, 3, 7, 6, 7, torch.float32),
)


def _conv_reference(x, w, b):
    """q~_{t,c} = sum_tau w_{c,tau} q_{t-tau,c} + b_c, token by token in float64 (zeros before t = 0)."""
    x64, w64, b64 = x.double(), w.double(), b.double()
    out = torch.zeros_like(x64)
    for t in range(x.shape[-2]):
        for tau in range(w.shape[1]):
            if t - tau >= 0:
                out[..., t, :] += w64[:, tau] * x64[..., t - tau, :]
        out[..., t, :] += b64
    return out.to(x.dtype)


@task("ch05.causal_dwconv", points=1)
def check_causal_dwconv(fn):
    """A causal depth-wise convolution along the sequence, taps shared by the heads."""
    g, _ = fresh_generator()
    for B, H, N, d, kernel, dtype in CONV_CASES:
        x = torch.randn(B, H, N, d, generator=g, dtype=dtype)
        w = torch.randn(d, kernel, generator=g, dtype=dtype)
        b = torch.randn(d, generator=g, dtype=dtype)
        what = f"causal_dwconv({describe({'x': x, 'w': w, 'dtype': dtype})})"
        with case():
            x_before = x.clone()
            answer = fn(x, w, b)
            if not torch.equal(x, x_before):
                raise CheckFailed(f"{what} changed its input x in place")
            expect_close(answer, _conv_reference(x, w, b), what=what)


def _scores_reference(q, k, r, beta, u, sign=1, u_on_positions=False):
    """((q_i + u_h) . k_j + q_i . r_{h,P+j-p_i} + beta_{h,P+j-p_i}) / sqrt(d), one entry at a time."""
    q, k, r, beta, u = (t.double() for t in (q, k, r, beta, u))
    B, H, N, d = q.shape
    M, P = k.shape[-2], r.shape[1] // 2
    out = torch.empty(B, H, N, M, dtype=torch.float64)
    for h in range(H):
        for i in range(N):
            p_i = i + M - N  # the query's position among the keys
            for j in range(M):
                row = P + sign * (j - p_i)  # key minus query position (sign = -1: the mistake)
                q_pos = q[:, h, i] + u[h] if u_on_positions else q[:, h, i]
                content = ((q[:, h, i] + u[h]) * k[:, h, j]).sum(-1)
                positional = (q_pos * r[h, row]).sum(-1) + beta[h, row]
                out[:, h, i, j] = (content + positional) / math.sqrt(d)
    return out


def _score_inputs(g, B, H, N, M, d, P, dtype):
    q = torch.randn(B, H, N, d, generator=g, dtype=dtype)
    k = torch.randn(B, H, M, d, generator=g, dtype=dtype)
    r = torch.randn(H, 2 * P, d, generator=g, dtype=dtype)
    beta = torch.randn(H, 2 * P, generator=g, dtype=dtype)
    u = torch.randn(H, d, generator=g, dtype=dtype)
    return q, k, r, beta, u


@task("ch05.relative_scores", points=1)
def check_relative_scores(fn):
    """Transformer-XL-style relative scores, the queries being the last N of M positions."""
    g, _ = fresh_generator()
    for B, H, N, M, d, P, dtype in SCORE_CASES:
        q, k, r, beta, u = _score_inputs(g, B, H, N, M, d, P, dtype)
        what = f"relative_scores({describe({'q': q, 'k': k, 'P': P, 'dtype': dtype})})"
        with case():
            q_before = q.clone()
            answer = fn(q, k, r, beta, u)
            if not torch.equal(q, q_before):
                raise CheckFailed(f"{what} changed its input q in place")
            expect_close(answer, _scores_reference(q, k, r, beta, u).to(dtype), what=what)


# (B, H, N, M): the shift trick on random per-offset scores, N = M, N = 1, N < M
SHIFT_CASES = ((1, 1, 5, 8), (2, 3, 4, 4), (1, 2, 1, 3), (2, 1, 3, 7), (1, 1, 6, 6))


def _shift_reference(x, M):
    """out[..., i, j] = x[..., i, (j - p_i) + M - 1], p_i = i + M - N: an explicit gather, entry by entry."""
    N = x.shape[-2]
    out = torch.empty(*x.shape[:-1], M, dtype=x.dtype)
    for i in range(N):
        p_i = i + M - N
        for j in range(M):
            out[..., i, j] = x[..., i, (j - p_i) + M - 1]
    return out


@task("ch05.rel_shift", points=1)
def check_rel_shift(fn):
    """The shift trick: per-offset scores (..., N, M + N - 1) into per-key place (..., N, M)."""
    g, _ = fresh_generator()
    for B, H, N, M in SHIFT_CASES:
        x = torch.randn(B, H, N, M + N - 1, generator=g, dtype=torch.float64)
        what = f"rel_shift(x of shape {tuple(x.shape)}, M={M})"
        with case():
            x_before = x.clone()
            answer = fn(x, M)
            if not torch.equal(x, x_before):
                raise CheckFailed(f"{what} changed its input x in place")
            expect_close(answer, _shift_reference(x, M), what=what, atol=0.0, rtol=0.0)


# ---------------------------------------------------------------------------------------------
# The experiment: the chapter's miniature scaled down to about a second per model.
RECIPE = dict(N=16, steps=60, D=16, H=2, lr=2e-2)
TEST_SIZE = 400
REFERENCE_SEEDS = (0, 1, 2)


def reference_length_drop(variant: str, seed: int) -> float:
    """Accuracy on positions < N minus positions >= N of 2N-token test streams, after training on N."""
    from ...mechanisms.relative_convolutional import train_stream
    from ...tasks.markov_period import markov_period

    N = RECIPE["N"]
    model = train_stream(variant, seed, **RECIPE)
    test = markov_period(TEST_SIZE, 2 * N, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        correct = (model(test.tokens).argmax(-1) == test.targets).float()  # (B, 2N)
    return correct[:, :N].mean().item() - correct[:, N:].mean().item()


@functools.cache
def _reference_drops(variant: str) -> tuple[float, ...]:
    """The reference's drop over REFERENCE_SEEDS (cached: it trains models)."""
    with torch.random.fork_rng(devices=[]):
        return tuple(reference_length_drop(variant, s) for s in REFERENCE_SEEDS)


def _accepted_range(variant: str) -> tuple[float, float, float, float]:
    drops = torch.tensor(_reference_drops(variant), dtype=torch.float64)
    mean, std = drops.mean().item(), drops.std().item()
    half = max(4 * std, 0.08)  # mean ± 4 std over the seeds, at least ± 0.08 (3 seeds underestimate it)
    return mean - half, mean + half, mean, std


@task("ch05.length_drop", points=3, time_limit=60.0)
def check_length_drop(fn):
    """The learner's measured drop beyond the training length lies in the reference's range."""
    gen, _ = fresh_generator()
    seed = int(torch.randint(10, 1000, (1,), generator=gen))
    with one_thread():
        for variant in ("MHA", "relative"):
            with case():
                low, high, mean, std = _accepted_range(variant)
                got = expect_number(fn(variant, seed), "length_drop")
                if not low <= got <= high:
                    raise CheckFailed(
                        f"length_drop({variant!r}, seed={seed}) = {got:.3f}, but the reference runs "
                        f"give {mean:.3f} ± {std:.3f} over seeds {REFERENCE_SEEDS} "
                        f"(accepted: {low:.3f} ... {high:.3f})",
                        hint="follow the recipe in the docstring: train on N-token streams, test on 2N-token "
                        "streams, and return accuracy(positions < N) - accuracy(positions >= N)",
                    )
