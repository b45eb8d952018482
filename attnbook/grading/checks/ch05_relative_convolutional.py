"""Chapter 05 checks: Relative convolutional attention (RCMHA).

Each @task grades one function of exercises/ch05_relative_convolutional.py on fresh random inputs
against an independent reference written here (explicit loops in float64, one token, one head,
one (query, key) pair at a time; not attnbook.mechanisms.relative_convolutional). Each @mistake
declares a common wrong answer once, with the hint a learner gets when their answer matches it.
"""

import math

import torch
import torch.nn.functional as F

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator

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


@mistake(
    "ch05.causal_dwconv",
    "pad only on the left (k - 1 zeros before the first token): symmetric padding lets token t see t + 1",
)
def causal_dwconv_symmetric_padding(x, w, b):
    B, H, N, d = x.shape
    kernel = w.shape[1]
    seq = x.reshape(B * H, N, d).transpose(1, 2)
    # 'same' padding: the centre tap on the current token, half the taps on later tokens
    out = F.conv1d(seq, w.flip(-1)[:, None, :], b, groups=d, padding=(kernel - 1) // 2)
    return out[..., :N].transpose(1, 2).reshape(B, H, N, d)


@mistake(
    "ch05.relative_scores",
    "index the tables by the KEY minus the QUERY position (row P + j - p_i, p_i = i + M - N), not p_i - j",
)
def relative_scores_query_minus_key(q, k, r, beta, u):
    return _scores_reference(q, k, r, beta, u, sign=-1).to(q.dtype)


@mistake(
    "ch05.relative_scores",
    "u_h biases the content term (q_i + u_h) . k_j only; the positional term is q_i . r + beta, without u",
)
def relative_scores_u_on_positions(q, k, r, beta, u):
    return _scores_reference(q, k, r, beta, u, u_on_positions=True).to(q.dtype)
