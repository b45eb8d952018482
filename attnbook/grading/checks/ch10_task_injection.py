"""Chapter 10 checks: Task injection into heads.

Each @task grades one function of exercises/ch10_task_injection.py on fresh random inputs against an
independent reference. Each @mistake declares a common wrong answer once, with the hint a
learner gets when their answer matches it; tests/exercises/test_ch10_task_injection.py checks that
every declared mistake fails its task and gets its own hint.

The references are written here, independently of attnbook.mechanisms.task_injection: explicit
loops over prompts, layers and heads, in float64.
"""

import torch

from ...attention import Intermediates
from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tensor, fresh_generator

# (M, L, H, N, d, D, dtype): M = 1, one layer, right-padded prompts of different lengths, both dtypes
EMBEDDING_CASES = (
    (3, 2, 3, 6, 4, 12, torch.float64),
    (1, 1, 2, 5, 3, 6, torch.float32),
    (5, 3, 4, 7, 2, 8, torch.float32),
)
# (B, H, N, d, dtype): H = d first (a per-coordinate α broadcasts silently), N = 1, float16 last
INJECT_CASES = (
    (2, 4, 5, 4, torch.float64),
    (3, 3, 6, 5, torch.float32),
    (1, 2, 1, 3, torch.float64),
    (4, 5, 7, 6, torch.float16),
)


def _records(g, M, L, H, N, d, D, dtype):
    """L records of a batch of M prompts: heads (M, H, N, d), contributions = heads W_O^h (M, H, N, D)."""
    records = []
    for _ in range(L):
        heads = torch.randn(M, H, N, d, generator=g, dtype=dtype)
        w_o = torch.randn(H, d, D, generator=g, dtype=dtype) / d**0.5
        contributions = torch.einsum("mhnd,hde->mhne", heads, w_o)
        scores = torch.randn(M, H, N, N, generator=g, dtype=dtype)
        qkv = [torch.randn(M, H, N, d, generator=g, dtype=dtype) for _ in range(3)]
        records.append(Intermediates(*qkv, scores, scores.softmax(-1), heads, None, contributions))
    return records


def _lengths(g, M, N):
    """Right-padded prompt lengths in 1 ... N with at least one prompt shorter than N (when M > 1)."""
    lengths = torch.randint(1, N + 1, (M,), generator=g)
    lengths[0] = N
    if M > 1:
        lengths[-1] = max(1, N - 2)
    return lengths


@task("ch10.task_embedding", points=2)
def check_task_embedding(fn):
    """t^l_h = mean over the M prompts of z^l_{T_m,h} (heads, at the last real token): (L, H, d)."""
    g, _ = fresh_generator()
    for M, L, H, N, d, D, dtype in EMBEDDING_CASES:
        records = _records(g, M, L, H, N, d, D, dtype)
        last_idx = _lengths(g, M, N) - 1
        what = f"task_embedding({describe({'M': M, 'L': L, 'H': H, 'N': N, 'd': d, 'dtype': dtype})})"
        with case():
            answer = fn(records, last_idx.clone())
            expected = torch.zeros(L, H, d, dtype=torch.float64)
            for layer, record in enumerate(records):
                for head in range(H):
                    for m in range(M):
                        expected[layer, head] += record.heads[m, head, last_idx[m]].double() / M
            expect_close(answer, expected.to(dtype), what=what)


def _inject_reference(z, t, alpha, last_idx):
    out = z.double().clone()
    for b in range(z.shape[0]):
        for h in range(z.shape[1]):
            T, a = int(last_idx[b]), float(alpha[h])
            out[b, h, T] = (1 - a) * z[b, h, T].double() + a * t[h].double()
    return out.to(z.dtype)


@task("ch10.soft_inject", points=2)
def check_soft_inject(fn):
    """z̃ = (1 − α_h) z + α_h t_h at T = last_idx[b] only, one α per head; a new tensor in z's dtype."""
    g, _ = fresh_generator()
    for B, H, N, d, dtype in INJECT_CASES:
        z = torch.randn(B, H, N, d, generator=g).to(dtype)
        t = torch.randn(H, d, generator=g).to(dtype)
        alpha = torch.rand(H, generator=g).to(dtype)
        last_idx = torch.randint(0, N, (B,), generator=g)
        last_idx[-1] = max(0, N - 3)  # a right-padded prompt: its last real token is not at −1
        what = f"soft_inject({describe({'B': B, 'H': H, 'N': N, 'd': d, 'dtype': dtype})})"
        with case():
            z_before = z.clone()
            answer = fn(z, t, alpha, last_idx.clone())
            if not torch.equal(z, z_before):
                raise CheckFailed(f"{what} changed its input z in place; return a new tensor")
            expect_tensor(answer, shape=(B, H, N, d), dtype=dtype, what=what)
            expect_close(answer, _inject_reference(z, t, alpha, last_idx), what=what)


def _stack(records, field="heads"):
    return torch.stack([getattr(r, field) for r in records], dim=1)  # (M, L, H, N, ·)


@mistake("ch10.task_embedding", "take each prompt's last REAL token z[T_m] (not the mean over all positions)")
def task_embedding_over_all_positions(records, last_idx):
    return _stack(records).mean(dim=(0, 3))


@mistake("ch10.task_embedding", "right padding: the last real token is at last_idx[m], not at position −1")
def task_embedding_at_minus_one(records, last_idx):
    return _stack(records)[:, :, :, -1].mean(dim=0)


@mistake(
    "ch10.task_embedding",
    "the head activation is the input to W_O (record.heads, width d), not the output after W_O "
    "(record.contributions)",
)
def task_embedding_after_w_o(records, last_idx):
    stacked = _stack(records, "contributions")  # (M, L, H, N, D)
    return stacked[torch.arange(len(last_idx)), :, :, last_idx].mean(dim=0)


def _wrong_inject(
    z, t, alpha, last_idx, *, minus_one=False, per_coordinate=False, everywhere=False, swap=False
):
    a = alpha if per_coordinate else alpha[:, None]  # (d,) by mistake, or (H, 1)
    out = z.clone()
    rows = torch.arange(z.shape[0])
    T = torch.full_like(last_idx, -1) if minus_one else last_idx
    zt = z[rows, :, T]  # (B, H, d)
    mixed = a * zt + (1 - a) * t if swap else (1 - a) * zt + a * t
    if everywhere:
        return (1 - a[:, None]) * z + a[:, None] * t[:, None]
    out[rows, :, T] = mixed
    return out


@mistake("ch10.soft_inject", "right padding: edit position last_idx[b] of each prompt, not position −1")
def soft_inject_at_minus_one(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, minus_one=True)


@mistake(
    "ch10.soft_inject",
    "alpha has one weight per HEAD: reshape it to (H, 1, 1) so it broadcasts over positions and "
    "the d coordinates, not along the last axis",
)
def soft_inject_alpha_over_coordinates(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, per_coordinate=True)


@mistake("ch10.soft_inject", "inject at the last prompt token only; every other position keeps its z")
def soft_inject_everywhere(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, everywhere=True)


@mistake("ch10.soft_inject", "α weighs the task embedding: (1 − α) z + α t (α = 1 replaces z by t)")
def soft_inject_swapped(z, t, alpha, last_idx):
    return _wrong_inject(z, t, alpha, last_idx, swap=True)
