"""Chapter 17 checks: Object-level attention.

Each @task grades one function of exercises/ch17_object_level_attention.py on fresh random inputs against an
independent reference written here: the Gaussian kernel entry by entry, tokens and pointer logits with
explicit loops in float64, the edit distance by memoised recursion. The common mistakes live in the
companion module ``ch17_object_level_attention_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, task
from ..expect import expect_close, expect_number, expect_tensor, fresh_generator

# ------------------------------------------------------------------------------------------------
# fit_gaussian_pe: (n_pos, dim, sigma, steps, lr): C > R, C = R, an odd width, two sigmas.
FIT_CASES = ((8, 12, 1.5, 300, 0.05), (5, 5, 1.0, 300, 0.05), (6, 9, 2.0, 300, 0.05))


def _kernel(R: int, sigma: float) -> torch.Tensor:
    """K_ab = exp(-(a - b)² / (2σ²)), one entry at a time (float64)."""
    K = torch.empty(R, R, dtype=torch.float64)
    for a in range(R):
        for b in range(R):
            K[a, b] = math.exp(-((a - b) ** 2) / (2 * sigma**2))
    return K


@task("ch17.fit_gaussian_pe", points=2)
def check_fit_gaussian_pe(fn):
    """cos(W_a, W_b) ≈ exp(-(a-b)²/(2σ²)), equal row norms, deterministic under the seed."""
    gen, _ = fresh_generator()
    for R, C, sigma, steps, lr in FIT_CASES:
        with case():
            seed = int(torch.randint(1000, (), generator=gen))
            what = f"fit_gaussian_pe(n_pos={R}, dim={C}, sigma={sigma}, steps={steps}, lr={lr}, seed={seed})"
            W = expect_tensor(fn(R, C, sigma, steps, lr, seed), shape=(R, C), dtype=None, what=what)
            if not W.is_floating_point():
                raise CheckFailed(f"{what} returned dtype {W.dtype}; return a floating table")
            W = W.detach().double()
            unit = W / W.norm(dim=-1, keepdim=True)
            expect_close(
                unit @ unit.T,
                _kernel(R, sigma),
                what=f"the cosine similarities of {what}",
                atol=0.02,
                rtol=0.0,
                hint="minimise the mean of (cos(W_a, W_b) - exp(-(a-b)²/(2σ²)))² over all pairs with Adam",
            )
            norms = W.norm(dim=-1)
            spread = ((norms - norms.mean()).abs() / norms.mean()).max().item()
            if spread > 0.05:
                raise CheckFailed(
                    f"{what}: a row norm differs from the mean norm by {spread:.1%} (allowed 5%)",
                    hint="add the penalty mean_a (|W_a| - mean |W|)² to the loss",
                )
            again = fn(R, C, sigma, steps, lr, seed)
            if not torch.equal(torch.as_tensor(again).detach().double(), W):
                raise CheckFailed(
                    f"{what} returned a different table when called again with the same seed",
                    hint="draw the initial table from torch.Generator().manual_seed(seed)",
                )


# ------------------------------------------------------------------------------------------------
# object_tokens: (B, N, Da, R, dp, dtype)
TOKEN_CASES = ((2, 5, 3, 4, 6, torch.float64), (1, 1, 2, 3, 1, torch.float32), (3, 7, 5, 6, 4, torch.float32))


@task("ch17.object_tokens", points=1)
def check_object_tokens(fn):
    """e_i = [a_i ; pe[r_i] ; pe[c_i]], one token at a time."""
    gen, _ = fresh_generator()
    for B, N, Da, R, dp, dtype in TOKEN_CASES:
        with case():
            app = torch.randn(B, N, Da, generator=gen, dtype=torch.float64).to(dtype)
            pe = torch.randn(R, dp, generator=gen, dtype=torch.float64).to(dtype)
            rc = torch.randint(R, (B, N, 2), generator=gen)
            rc[..., 1] = (rc[..., 0] + 1 + torch.randint(R - 1, (B, N), generator=gen)) % R  # row != column
            expected = torch.empty(B, N, Da + 2 * dp, dtype=dtype)
            for b in range(B):
                for i in range(N):
                    expected[b, i] = torch.cat([app[b, i], pe[rc[b, i, 0]], pe[rc[b, i, 1]]])
            expect_close(
                fn(app.clone(), rc.clone(), pe.clone()),
                expected,
                what=f"object_tokens(app {tuple(app.shape)}, rc {tuple(rc.shape)}, pe {tuple(pe.shape)})",
                hint="concatenate along the last axis: appearance, then pe[row], then pe[column]",
            )


# ------------------------------------------------------------------------------------------------
# pointer_logits: (B, N, T, D, C, dk, dtype, padded)
POINTER_CASES = (
    (2, 5, 3, 6, 2, 4, torch.float64, True),
    (1, 1, 1, 3, 1, 5, torch.float32, False),
    (3, 7, 4, 5, 3, 3, torch.float32, True),
    (2, 4, 2, 8, 2, 8, torch.float64, False),
)


def _pointer_reference(enc, dec, We, Wd, readout, pad):
    """Σ_c r_c (d_t W_d^c)·(m_i W_e^c)/sqrt(dk), -inf on padding, 0 for stop; explicit loops (float64)."""
    B, N, _ = enc.shape
    T, C, dk = dec.shape[1], We.shape[0], We.shape[-1]
    out = torch.zeros(B, T, N + 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            for i in range(N):
                if pad is not None and pad[b, i]:
                    out[b, t, i] = float("-inf")
                    continue
                for c in range(C):
                    k = enc[b, i].double() @ We[c].double()
                    q = dec[b, t].double() @ Wd[c].double()
                    out[b, t, i] += readout[c].double() * (q @ k) / math.sqrt(dk)
    return out.to(enc.dtype)


def pointer_inputs(gen, B, N, T, D, C, dk, dtype, padded):
    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    enc, dec, We, Wd = randn(B, N, D), randn(B, T, D), randn(C, D, dk), randn(C, D, dk)
    readout = randn(C)
    if C > 1:
        readout[0] = -readout[0].abs() - 0.3  # one negative head weight
    pad = None
    if padded:
        pad = torch.zeros(B, N, dtype=torch.bool)
        pad[:, N - 2 :] = True
        pad[0, N - 2] = False  # scenes with different numbers of objects
    return enc, dec, We, Wd, readout, pad


def _expect_logits(got, expected, *, what):
    """Logits that may hold -inf: the -inf entries must match, then the finite ones must be close."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(expected.shape):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise CheckFailed(f"{what}: expected a tensor of shape {tuple(expected.shape)}, got {shape}")
    hidden = torch.isneginf(expected)
    got_hidden = torch.isneginf(got.detach())
    if not torch.equal(got_hidden, hidden):
        raise CheckFailed(
            f"{what}: {(got_hidden != hidden).sum().item()} entries differ in being -inf "
            f"(expected -inf exactly at the {hidden.sum().item()} padded object entries)",
            hint="fill the logits of padded objects with -inf (masked_fill), never the stop column",
        )
    expect_close(
        got.masked_fill(got_hidden, 0.0),
        expected.masked_fill(hidden, 0.0),
        what=what,
        hint="logit[b, t, i] = Σ_c readout[c] (dec[b,t] Wd[c])·(enc[b,i] We[c]) / sqrt(dk); "
        "-inf where pad; a column of zeros (stop) at index N",
    )


@task("ch17.pointer_logits", points=3)
def check_pointer_logits(fn):
    """Next-object logits over N objects plus a stop logit fixed at 0."""
    gen, _ = fresh_generator()
    for B, N, T, D, C, dk, dtype, padded in POINTER_CASES:
        with case():
            args = pointer_inputs(gen, B, N, T, D, C, dk, dtype, padded)
            got = fn(*(a.clone() if a is not None else None for a in args))
            _expect_logits(
                got,
                _pointer_reference(*args),
                what=f"pointer_logits(B={B}, N={N}, T={T}, D={D}, C={C}, dk={dk}, "
                f"{str(dtype).replace('torch.', '')}, pad={'yes' if padded else 'None'})",
            )
    with case():  # permutation equivariance: shuffled objects shuffle the object columns
        enc, dec, We, Wd, readout, _ = pointer_inputs(gen, 2, 6, 3, 5, 2, 4, torch.float64, False)
        perm = torch.randperm(6, generator=gen)
        base = torch.as_tensor(fn(enc, dec, We, Wd, readout, None))
        shuffled = fn(enc[:, perm], dec, We, Wd, readout, None)
        expect_close(
            shuffled,
            torch.cat([base[..., :6][..., perm], base[..., 6:]], dim=-1),
            what="pointer_logits with the objects shuffled (must shuffle the object columns alike)",
            hint="each object's logit depends on that object only; the stop column stays last",
        )


# ------------------------------------------------------------------------------------------------
LEVENSHTEIN_CASES = (
    ([], []),
    ([], [3, 1]),
    ([4], []),
    ([1, 2, 3], [1, 2, 3]),
    ([1, 2, 3, 4], [2, 3, 4, 5]),
    ([5, 1, 5, 2], [1, 5, 2]),
    ([1, 2], [3, 4, 5, 6, 7]),
    ([7, 8, 9], [9, 8, 7]),
)


def _levenshtein(a: tuple, b: tuple) -> int:
    @functools.cache
    def d(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return (len(a) - i) + (len(b) - j)
        if a[i] == b[j]:
            return d(i + 1, j + 1)
        return 1 + min(d(i + 1, j), d(i, j + 1), d(i + 1, j + 1))

    return d(0, 0)


@task("ch17.normalized_levenshtein", points=1)
def check_normalized_levenshtein(fn):
    """Edit distance (insert, delete, substitute: cost 1) divided by the longer length; 0 for two empties."""
    gen, _ = fresh_generator()
    cases = list(LEVENSHTEIN_CASES)
    for _ in range(4):
        n, m = (int(torch.randint(1, 9, (), generator=gen)) for _ in range(2))
        cases.append(
            (
                torch.randint(5, (n,), generator=gen).tolist(),
                torch.randint(5, (m,), generator=gen).tolist(),
            )
        )
    for a, b in cases:
        with case():
            longest = max(len(a), len(b))
            expected = _levenshtein(tuple(a), tuple(b)) / longest if longest else 0.0
            what = f"normalized_levenshtein({a}, {b})"
            got = expect_number(fn(list(a), list(b)), what)
            if abs(got - expected) > 1e-9:
                raise CheckFailed(
                    f"{what} = {got:.4g}, expected {expected:.4g}",
                    hint="the fewest insertions, deletions and substitutions (each cost 1), divided by "
                    "max(len(a), len(b)); 0.0 when both are empty",
                )
