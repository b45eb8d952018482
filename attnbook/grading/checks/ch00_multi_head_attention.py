"""Checks for chapter 00's exercises (multi-head attention from scratch), and their common mistakes.

References are independent of the learner's code and of attnbook's own attention:
torch.nn.functional.scaled_dot_product_attention, torch.nn.MultiheadAttention, explicit loops.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ...models import ModelConfig, TinyTransformer
from ...tasks.two_key_recall import two_key_recall
from ...train import train
from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_tuple, fresh_generator
from ..process import forbid

# (B, N, M, d, dtype, leading head axis?): N = 1, N ≠ M, non-powers of two, both dtypes.
SDPA_CASES = [
    (2, 5, 5, 8, torch.float64, False),
    (1, 1, 7, 4, torch.float32, False),
    (3, 6, 11, 12, torch.float64, True),
    (2, 13, 9, 16, torch.float32, True),
    (1, 3, 1, 5, torch.float64, False),
]


def _random_mask(shape, gen) -> torch.Tensor:
    """A boolean (N, M) mask with at least one visible key per query and some hidden ones."""
    N, M = shape
    mask = torch.rand(N, M, generator=gen) < 0.6
    mask[torch.arange(N), torch.randint(M, (N,), generator=gen)] = True
    return mask


def _scores(q, k, mask, scale):
    """q k^T · scale with hidden keys at -inf."""
    s = q @ k.transpose(-2, -1) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def _extreme_qk(gen):
    """Queries and keys whose scores reach about 1e3: exp(score) overflows in both dtypes."""
    q = 40.0 * torch.randn(2, 4, 16, generator=gen, dtype=torch.float64)
    k = 40.0 * torch.randn(2, 6, 16, generator=gen, dtype=torch.float64)
    return q, k


@task("ch00.scaled_dot_product_attention", points=3)
def check_scaled_dot_product_attention(fn):
    """softmax(q k^T / sqrt(d) + mask) v, returning (out, weights), written by hand."""
    gen, _ = fresh_generator()
    cases = []
    for B, N, M, d, dtype, with_heads in SDPA_CASES:
        lead = (B, 2) if with_heads else (B,)
        q = torch.randn(*lead, N, d, generator=gen, dtype=dtype)
        k = torch.randn(*lead, M, d, generator=gen, dtype=dtype)
        v = torch.randn(*lead, M, d + 3, generator=gen, dtype=dtype)
        cases += [(q, k, v, None), (q, k, v, _random_mask((N, M), gen))]
    # last: scores of order 1e3, where exp(score) overflows unless the row max is subtracted first
    q, k = _extreme_qk(gen)
    cases.append((q, k, torch.randn(2, 6, 5, generator=gen, dtype=torch.float64), None))
    for q, k, v, mask in cases:
        with case():
            # the lesson is the softmax itself: torch's fused SDPA may not stand in for it
            with forbid(F.scaled_dot_product_attention, reason="compute softmax(q k^T / sqrt(d)) v yourself"):
                returned = fn(q.clone(), k.clone(), v.clone(), mask)
            out, weights = expect_tuple(returned, ("out", "weights"))
            ref_w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1])), dim=-1)
            expect_close(weights, ref_w, what="weights", hint=_weights_hint(weights, mask))
            ref_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            expect_close(out, ref_out, what="out", hint="out = weights @ v")


def _weights_hint(weights, mask) -> str:
    """A hint for wrong weights that says what is wrong with them, not only that they differ."""
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point():
        return "return the weights as a float tensor (..., N, M)"
    if not torch.isfinite(weights).all():
        return "the weights hold NaN or inf: a score overflowed in exp() or 0 · inf appeared"
    if mask is not None and weights.shape[-2:] == mask.shape and (weights[..., ~mask] != 0).any():
        return "hidden keys must get exactly 0 weight: fill their scores with -inf before the softmax"
    if not torch.allclose(weights.sum(-1), torch.ones((), dtype=weights.dtype), atol=1e-4):
        return "each query's weights over the M keys must sum to 1 (softmax over the last axis)"
    return "the rows sum to 1 but are not softmax(q k^T / sqrt(d)): check the scores and their scale"


def _sdpa(q, k, v, mask, *, scale=None, dim=-1):
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1]) if scale is None else scale), dim=dim)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "softmax over the query axis (dim=-2) instead of the key axis (dim=-1)",
)
def sdpa_softmax_over_queries(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, dim=-2)


@mistake("ch00.scaled_dot_product_attention", "scores not divided by sqrt(d)")
def sdpa_no_scale(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1.0)


@mistake("ch00.scaled_dot_product_attention", "scores divided by d instead of sqrt(d)")
def sdpa_divided_by_d(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / q.shape[-1])


@mistake(
    "ch00.scaled_dot_product_attention",
    "scores divided by the square root of the model width D = H·d (here 4d); inside one head "
    "the scale is 1/sqrt(d), d = q.shape[-1]",
)
def sdpa_scaled_by_sqrt_model_width(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / math.sqrt(4 * q.shape[-1]))


@mistake("ch00.scaled_dot_product_attention", "mask applied after the softmax (rows no longer sum to 1)")
def sdpa_mask_after_softmax(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, None, 1 / math.sqrt(q.shape[-1])), dim=-1)
    w = w if mask is None else w * mask
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "the mask was added as (~mask) * -inf, and 0 · (-inf) is NaN on every visible key; "
    "use scores.masked_fill(~mask, float('-inf'))",
)
def sdpa_nan_from_inf_times_zero(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + (~mask) * float("-inf")
    w = torch.softmax(s, dim=-1)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "scores divided by sqrt(d_v), the width of the VALUES; the scale uses the query/key width "
    "d = q.shape[-1]",
)
def sdpa_scaled_by_value_width(q, k, v, mask=None):
    return _sdpa(q, k, v, mask, scale=1 / math.sqrt(v.shape[-1]))


@mistake(
    "ch00.scaled_dot_product_attention",
    "softmax written as exp(s) / Σ exp(s) without subtracting the row max: for scores near 1e3, exp "
    "overflows to inf and inf / inf is NaN; subtract scores.amax(-1, keepdim=True) first",
)
def sdpa_naive_softmax(q, k, v, mask=None):
    e = _scores(q, k, mask, 1 / math.sqrt(q.shape[-1])).exp()
    w = e / e.sum(dim=-1, keepdim=True)
    return w @ v, w


@mistake(
    "ch00.scaled_dot_product_attention",
    "F.scaled_dot_product_attention does the exercise for you (and returns no weights); "
    "write the scores, the masked softmax and weights @ v yourself",
)
def sdpa_calls_torch(q, k, v, mask=None):
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out, torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1])), dim=-1)


@mistake(
    "ch00.scaled_dot_product_attention",
    "k and v were cut to the first N keys, as if M = N; with M ≠ N every query attends to all M keys",
)
def sdpa_assumes_square(q, k, v, mask=None):
    N = q.shape[-2]
    return _sdpa(q, k[..., :N, :], v[..., :N, :], None if mask is None else mask[:, :N])


# ---------------------------------------------------------------------------------------------
@task("ch00.split_heads", points=1)
def check_split_heads(fn):
    """(B, N, D) -> (B, H, N, d): head h owns columns h*d ... (h+1)*d - 1."""
    gen, _ = fresh_generator()
    for B, N, H, d in [(2, 5, 4, 3), (1, 1, 2, 8), (3, 7, 3, 5), (2, 4, 1, 6)]:
        with case():
            x = torch.randn(B, N, H * d, generator=gen, dtype=torch.float64)
            # reference: explicit slicing, one head at a time
            ref = torch.stack([x[:, :, h * d : (h + 1) * d] for h in range(H)], dim=1)  # (B, H, N, d)
            expect_close(fn(x.clone(), H), ref, what=f"split_heads for {describe({'x': x, 'H': H})}")


@mistake("ch00.split_heads", "x.view(B, H, N, d) without a transpose mixes tokens and heads")
def split_view_without_transpose(x, H):
    B, N, D = x.shape
    return x.reshape(B, H, N, D // H)


@mistake("ch00.split_heads", "columns dealt to heads round-robin (view as (B, N, d, H))")
def split_round_robin(x, H):
    B, N, D = x.shape
    return x.reshape(B, N, D // H, H).permute(0, 3, 1, 2)


@task("ch00.merge_heads", points=1)
def check_merge_heads(fn):
    """(B, H, N, d) -> (B, N, H*d): concatenate the heads along the feature axis."""
    gen, _ = fresh_generator()
    for B, H, N, d in [(2, 4, 5, 3), (1, 2, 1, 8), (3, 3, 7, 5), (1, 1, 4, 6)]:
        with case():
            x = torch.randn(B, H, N, d, generator=gen, dtype=torch.float32)
            ref = torch.cat([x[:, h] for h in range(H)], dim=-1)  # (B, N, H*d)
            expect_close(fn(x.clone()), ref, what=f"merge_heads for {describe({'x': x})}")


@mistake("ch00.merge_heads", "x.reshape(B, N, H*d) without moving the head axis first")
def merge_reshape_without_transpose(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


@mistake("ch00.merge_heads", "heads concatenated in reverse order")
def merge_reversed_heads(x):
    return torch.cat([x[:, h] for h in reversed(range(x.shape[1]))], dim=-1)


# ---------------------------------------------------------------------------------------------
def _torch_mha(params, H, x, mask):
    """torch.nn.MultiheadAttention with the learner's weights (our W acts on the right: x @ W)."""
    D = x.shape[-1]
    m = torch.nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(x.dtype)
    with torch.no_grad():
        m.in_proj_weight.copy_(torch.cat([params["w_q"].T, params["w_k"].T, params["w_v"].T]))
        m.out_proj.weight.copy_(params["w_o"].T)
    attn_mask = None if mask is None else ~mask  # torch: True = hidden
    out, _ = m(x, x, x, attn_mask=attn_mask, need_weights=False)
    return out.detach()


@task("ch00.multi_head_attention", points=3)
def check_multi_head_attention(fn):
    """Σ_h softmax(Q_h K_h^T / sqrt(d) + mask) V_h W_O^h with params w_q, w_k, w_v, w_o (D, D)."""
    gen, _ = fresh_generator()
    for B, N, D, H, dtype, masked in [
        (2, 5, 12, 3, torch.float64, False),
        (1, 1, 8, 2, torch.float32, False),
        (3, 7, 20, 4, torch.float64, True),
        (2, 6, 6, 1, torch.float32, True),
    ]:
        with case():
            x = torch.randn(B, N, D, generator=gen, dtype=dtype)
            params = {
                n: torch.randn(D, D, generator=gen, dtype=dtype) / math.sqrt(D)
                for n in ("w_q", "w_k", "w_v", "w_o")
            }
            mask = _random_mask((N, N), gen) if masked else None
            given = {n: p.clone() for n, p in params.items()}
            expect_close(
                fn(x.clone(), given, H, mask),
                _torch_mha(params, H, x, mask),
                what="output",
                hint="split Q, K, V into H heads of width d = D / H, attend per head, "
                "then Σ_h head_h @ W_O^h",
            )


def _mha_heads(x, params, H, mask, *, width=None, scrambled=False):
    """The H heads' outputs [(B, N, d)] of a from-scratch MHA; keywords make the mistakes."""
    B, N, D = x.shape
    d = D // H
    heads = []
    for name in ("w_q", "w_k", "w_v"):
        y = x @ params[name]
        # scrambled: a reshape to (B, H, N, d) with no transpose
        heads.append(y.reshape(B, H, N, d) if scrambled else y.reshape(B, N, H, d).transpose(1, 2))
    q, k, v = heads
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(d if width is None else width)), dim=-1)
    return w @ v  # (B, H, N, d)


def _merge(heads):
    B, H, N, d = heads.shape
    return heads.transpose(1, 2).reshape(B, N, H * d)


@mistake("ch00.multi_head_attention", "scores divided by sqrt(D) instead of sqrt(d) = sqrt(D / H)")
def mha_sqrt_model_width(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask, width=x.shape[-1])) @ params["w_o"]


@mistake("ch00.multi_head_attention", "the output projection W_O is missing")
def mha_forgets_w_o(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask))


@mistake("ch00.multi_head_attention", "heads concatenated in the wrong order before W_O")
def mha_heads_in_wrong_order(x, params, H, mask=None):
    return _merge(_mha_heads(x, params, H, mask).flip(1)) @ params["w_o"]


@mistake(
    "ch00.multi_head_attention",
    "Q, K, V were split with a reshape to (B, H, N, d) and merged with a reshape to (B, N, D), with no "
    "transpose: tokens and heads get mixed; view as (B, N, H, d), then transpose(1, 2)",
)
def mha_scrambled_split(x, params, H, mask=None):
    B, N, D = x.shape
    return _mha_heads(x, params, H, mask, scrambled=True).reshape(B, N, D) @ params["w_o"]


# ---------------------------------------------------------------------------------------------
@task("ch00.causal_mask", points=2)
def check_causal_mask(fn):
    """Boolean (N, M) mask, True where query i (at position i + M - N) may see key j."""
    for N, M in [(1, 1), (4, 4), (5, 5), (3, 7), (1, 6), (6, 9)]:
        with case():
            ref = torch.tensor([[j <= i + (M - N) for j in range(M)] for i in range(N)])
            got = fn(N, M) if M != N else fn(N)
            expect_close(got, ref, what=f"causal_mask(N={N}{', M=' + str(M) if M != N else ''})")


def _ones(N, M):
    return torch.ones(N, N if M is None else M, dtype=torch.bool)


@mistake("ch00.causal_mask", "the diagonal is hidden (a query must see its own position)")
def causal_off_by_one(N, M=None):
    M = N if M is None else M
    return _ones(N, M).tril(M - N - 1)


@mistake(
    "ch00.causal_mask", "the queries are aligned to the START of the keys; they are the LAST N positions"
)
def causal_queries_at_start(N, M=None):
    return _ones(N, M).tril(0)


@mistake("ch00.causal_mask", "True marks the hidden (future) keys; here True means 'may attend'")
def causal_true_means_hidden(N, M=None):
    M = N if M is None else M
    return ~_ones(N, M).tril(M - N)


@mistake(
    "ch00.causal_mask",
    "a 0/1 float mask: return a boolean mask (dtype torch.bool), True where a query may attend",
)
def causal_float_mask(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M).tril(M - N)


# ---------------------------------------------------------------------------------------------
# The experiment exercise: one head against four at equal D on two-key recall (see the chapter).
N_PAIRS, N_KEYS, N_VALUES, WIDTH, STEPS, LR, BATCH = 6, 12, 6, 24, 100, 1e-2, 64
REFERENCE_SEEDS = (0, 1, 2)


class _TwoKeyTokens(nn.Module):
    """Pair tokens key_emb(k) + value_emb(v), then the query token first(a) + second(b)."""

    def __init__(self):
        super().__init__()
        self.key_emb = nn.Embedding(N_KEYS, WIDTH)
        self.value_emb = nn.Embedding(N_VALUES, WIDTH)
        self.first = nn.Embedding(N_KEYS, WIDTH)
        self.second = nn.Embedding(N_KEYS, WIDTH)

    def forward(self, b):
        pairs = self.key_emb(b.keys) + self.value_emb(b.values)  # (B, n_pairs, D)
        query = self.first(b.query[:, 0]) + self.second(b.query[:, 1])  # (B, D)
        return torch.cat([pairs, query[:, None]], dim=1)  # (B, n_pairs + 1, D)


def _reference_heads_experiment(H: int, seed: int) -> float:
    torch.manual_seed(seed)
    config = ModelConfig(D=WIDTH, H=H, layers=1, n_out=N_VALUES**2, mlp_ratio=0, norm=False, causal=False)
    model = TinyTransformer(config, embed=_TwoKeyTokens())
    train(
        model,
        lambda step, g: two_key_recall(BATCH, N_PAIRS, N_KEYS, N_VALUES, g),
        lambda m, b: F.cross_entropy(m(b)[:, -1], b.target),
        steps=STEPS,
        lr=LR,
        seed=seed,
        progress=False,
    )
    test = two_key_recall(1000, N_PAIRS, N_KEYS, N_VALUES, torch.Generator().manual_seed(123))
    with torch.no_grad():
        return (model(test)[:, -1].argmax(-1) == test.target).float().mean().item()


@functools.cache
def _reference_accuracies(H: int) -> tuple[float, ...]:
    """The reference experiment's test accuracy over REFERENCE_SEEDS (deterministic, computed once)."""
    with torch.random.fork_rng(devices=[]):
        return tuple(_reference_heads_experiment(H, s) for s in REFERENCE_SEEDS)


def _accuracy(value, what: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise CheckFailed(f"{what}: return the test accuracy as a float, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise CheckFailed(f"{what}: an accuracy lies in [0, 1] (a fraction, not percent), got {value:.4g}")
    return float(value)


@task("ch00.heads_experiment", points=3, time_limit=90.0)
def check_heads_experiment(fn):
    """Test accuracy of the 1-layer two-key recall model with H heads, in the reference's range."""
    with _one_thread():
        _check_heads_experiment(fn)


@contextlib.contextmanager
def _one_thread():
    """Train on one thread: models this small are as fast on one, and far faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_heads_experiment(fn):
    gen, _ = fresh_generator()
    seed = int(torch.randint(10, 1000, (1,), generator=gen))
    four, one = _reference_accuracies(4), _reference_accuracies(1)
    # The range the reference spans over its seeds, widened by its spread. Four heads are
    # reliable (0.89 to 1.0 over 8 seeds); a single head is not (0.17 to 0.70 over 8 seeds: it
    # sometimes finds an unequal split of its weight between the two keys), so its margin is wider.
    low4 = min(four) - max(0.1, 2 * (max(four) - min(four)))
    high1 = max(one) + max(0.25, 3 * (max(one) - min(one)))
    got = {}
    with case():
        acc4 = got[4] = _accuracy(fn(4, seed), "heads_experiment(H=4)")
        if acc4 < low4:
            raise CheckFailed(
                f"heads_experiment(4, seed={seed}) = {acc4:.3f}; the reference reaches "
                f"{min(four):.3f} to {max(four):.3f} over seeds {REFERENCE_SEEDS}, so expect >= {low4:.3f}",
                hint="train the whole model (embeddings included) for the given steps and learning rate, "
                "and read the logits at the LAST position (the query token)",
            )
    with case():
        acc1 = _accuracy(fn(1, seed), "heads_experiment(H=1)")
        if not (1 / N_VALUES**2 <= acc1 <= high1):
            raise CheckFailed(
                f"heads_experiment(1, seed={seed}) = {acc1:.3f}; the reference's single head reaches "
                f"{min(one):.3f} to {max(one):.3f} over seeds {REFERENCE_SEEDS}, so expect "
                f"{1 / N_VALUES**2:.3f} (chance) to {high1:.3f}",
                hint="ModelConfig(..., H=H): the number of heads is the only thing that changes",
            )
        if 4 in got and got[4] - acc1 < 0.1:
            raise CheckFailed(
                f"with seed={seed}, 4 heads reach {got[4]:.3f} and 1 head {acc1:.3f}: "
                f"the reference's 4 heads beat its single head by {min(four) - max(one):.2f} or more",
                hint="ModelConfig(..., H=H): the number of heads is the only thing that changes",
            )


# The two mistakes below answer from the cached reference runs (seed 0) rather than training again,
# which keeps the generated tests fast; what each returns is what the mistake produces.
@mistake(
    "ch00.heads_experiment",
    "the accuracy was returned in percent; return the fraction of correct test answers, in [0, 1]",
)
def heads_experiment_in_percent(H, seed):
    return 100 * _reference_accuracies(H)[0]


@mistake(
    "ch00.heads_experiment",
    "the model always gets 4 heads (H is ignored): build it with ModelConfig(..., H=H)",
)
def heads_experiment_ignores_H(H, seed):
    return _reference_accuracies(4)[0]
