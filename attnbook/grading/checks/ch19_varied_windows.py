"""Chapter 19 checks: Varied windows.

Each @task grades one function of exercises/ch19_varied_windows.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch19_varied_windows.py checks that
every declared mistake fails its task and gets its own hint.

SCAFFOLD: attention_weights is an example of the form; replace it with the chapter's exercises.
"""

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator

# (B, N, M, d, dtype): N = 1, N != M, non-powers of two, both dtypes
CASES = ((1, 1, 1, 4, torch.float64), (2, 3, 5, 8, torch.float32), (3, 7, 4, 6, torch.float64))


@task("ch19.attention_weights", points=1)
def check_attention_weights(fn):
    """softmax(q k^T / sqrt(d)) over the keys, any leading dims, N != M."""
    g, _ = fresh_generator()
    for B, N, M, d, dtype in CASES:
        q = torch.randn(B, N, d, generator=g, dtype=dtype)
        k = torch.randn(B, M, d, generator=g, dtype=dtype)
        what = f"attention_weights({describe({'q': q, 'k': k, 'dtype': dtype})})"
        with case():  # a sub-check: the task earns its points in proportion to the cases passed
            q_before = q.clone()
            answer = fn(q, k)
            if not torch.equal(q, q_before):
                raise CheckFailed(f"{what} changed its input q in place")
            # the reference: exp of the scaled scores (minus the row maximum), normalised over the keys
            scores = torch.einsum("bnd,bmd->bnm", q, k) / math.sqrt(d)
            expected = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
            expected = expected / expected.sum(dim=-1, keepdim=True)
            expect_close(answer, expected, what=what)


@mistake("ch19.attention_weights", "normalise over the keys (the last axis): each query's weights sum to one")
def attention_weights_over_queries(q, k):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)
