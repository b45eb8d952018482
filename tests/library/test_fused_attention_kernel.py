"""attnbook.mechanisms.fused_attention_kernel: the online softmax, tiles, backward and traffic counts."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.masks import causal_mask
from attnbook.mechanisms.fused_attention_kernel import (
    TILE_FULL,
    TILE_MASKED,
    TILE_SKIPPED,
    Traffic,
    attention_backward,
    attention_flops,
    blocked_attention,
    causal_tile_schedule,
    fused_attention_traffic,
    naive_attention_traffic,
    online_softmax_update,
)

f64 = dict(dtype=torch.float64)


def _visible(N, M, causal):
    """(N, M) True where query i (at position i + M - N) may see key j; all True without causal.

    Built with torch's tril, independently of attnbook.masks.
    """
    return torch.ones(N, M, dtype=torch.bool).tril(M - N) if causal else torch.ones(N, M, dtype=torch.bool)


def _reference(q, k, v, causal=False):
    N, M = q.shape[-2], k.shape[-2]
    mask = _visible(N, M, causal)
    s = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.logsumexp(s, -1)


@settings(max_examples=30, deadline=None)
@given(
    N=st.integers(1, 20),
    M=st.integers(1, 20),
    d=st.integers(1, 8),
    dv=st.integers(1, 6),
    bm=st.integers(1, 9),
    bn=st.integers(1, 9),
    causal=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_blocked_equals_softmax_attention(N, M, d, dv, bm, bn, causal, seed):
    if causal:  # the queries are the last N of M positions: causal needs M >= N
        N, M = min(N, M), max(N, M)
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 2, N, d, generator=g, **f64), torch.randn(2, 2, M, d, generator=g, **f64)
    v = torch.randn(2, 2, M, dv, generator=g, **f64)
    out, lse = blocked_attention(q, k, v, bm, bn, causal=causal)
    ref_out, ref_lse = _reference(q, k, v, causal)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("fn", ["blocked_attention", "attention_backward", "causal_tile_schedule"])
def test_causal_with_more_queries_than_keys_raises_like_causal_mask(fn):
    """N > M under causal: the same ValueError as attnbook.masks.causal_mask, not zero rows."""
    with pytest.raises(ValueError) as expected:
        causal_mask(5, 3)
    q, k = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 3, 4)
    call = {
        "blocked_attention": lambda: blocked_attention(q, k, k, 2, 2, causal=True),
        "attention_backward": lambda: attention_backward(q, k, k, q, q, torch.zeros(1, 1, 5), causal=True),
        "causal_tile_schedule": lambda: causal_tile_schedule(5, 3, 2, 2),
    }[fn]
    with pytest.raises(ValueError) as got:
        call()
    assert str(got.value) == str(expected.value)


def test_online_update_one_block_at_a_time_is_softmax():
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(3, 10, generator=g, **f64) * 5, torch.randn(10, 4, generator=g, **f64)
    m, l, acc = torch.full((3,), float("-inf"), **f64), torch.zeros(3, **f64), torch.zeros(3, 4, **f64)
    for j in range(0, 10, 3):
        m, l, acc = online_softmax_update(m, l, acc, s[:, j : j + 3], v[j : j + 3])
    torch.testing.assert_close(acc / l[:, None], torch.softmax(s, -1) @ v)
    torch.testing.assert_close(m + l.log(), torch.logsumexp(s, -1))


def test_online_update_does_not_overflow_and_handles_hidden_rows():
    s = torch.tensor([[1000.0, 999.0], [float("-inf"), float("-inf")]])
    m, l, acc = online_softmax_update(
        torch.full((2,), float("-inf")), torch.zeros(2), torch.zeros(2, 1), s, torch.ones(2, 1)
    )
    assert torch.isfinite(l).all() and torch.isfinite(acc).all()
    assert l[1] == 0 and acc[1, 0] == 0 and torch.isneginf(m[1])
    assert abs(l[0].item() - (1 + math.exp(-1))) < 1e-6


@pytest.mark.parametrize(
    "N,M,bm,bn,causal",
    [
        (N, M, bm, bn, causal)
        for causal in (False, True)
        for N, M, bm, bn in [(7, 7, 3, 2), (5, 11, 4, 4), (1, 6, 2, 3), (9, 9, 16, 16)]
    ]
    + [(12, 5, 4, 2, False)],
)
def test_backward_matches_autograd_full_and_blocked(N, M, bm, bn, causal):
    g = torch.Generator().manual_seed(N * M)
    q, k, v = (torch.randn(2, 3, n, 5, generator=g, **f64) for n in (N, M, M))
    do = torch.randn(2, 3, N, 5, generator=g, **f64)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o = F.scaled_dot_product_attention(*leaves, attn_mask=_visible(N, M, causal))
    o.backward(do)
    _, lse = blocked_attention(q, k, v, bm, bn, causal=causal)
    for kw in ({}, {"block_m": bm, "block_n": bn}):
        grads = attention_backward(q, k, v, o.detach(), do, lse, causal=causal, **kw)
        for got, leaf in zip(grads, leaves):
            torch.testing.assert_close(got, leaf.grad, atol=1e-10, rtol=1e-8)


def test_tile_schedule_matches_the_mask():
    N, M, bm, bn = 37, 45, 8, 16
    sched = causal_tile_schedule(N, M, bm, bn)
    mask = _visible(N, M, True)
    for ti, i0 in enumerate(range(0, N, bm)):
        for tj, j0 in enumerate(range(0, M, bn)):
            tile = mask[i0 : i0 + bm, j0 : j0 + bn]
            expected = TILE_SKIPPED if not tile.any() else TILE_FULL if tile.all() else TILE_MASKED
            assert sched[ti, tj] == expected, (ti, tj)
    assert (causal_tile_schedule(N, M, bm, bn, causal=False) == TILE_FULL).all()
    # square, equal blocks: the diagonal is masked, the upper triangle skipped
    square = causal_tile_schedule(64, 64, 16, 16)
    assert torch.equal(square.diagonal(), torch.full((4,), TILE_MASKED))
    assert (square.triu(1) == 0).all() and (square.tril(-1)[square.tril(-1) > 0] == TILE_FULL).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,M,d,bm,bn", [(37, 37, 8, 16, 16), (20, 45, 4, 8, 16), (64, 64, 16, 32, 16)])
def test_counted_traffic_equals_the_formula(N, M, d, bm, bn, causal):
    q, k, v = torch.randn(1, 1, N, d), torch.randn(1, 1, M, d), torch.randn(1, 1, M, d)
    fwd, bwd = {}, {}
    out, lse = blocked_attention(q, k, v, bm, bn, causal=causal, traffic=fwd)
    attention_backward(
        q, k, v, out, torch.randn_like(out), lse, causal=causal, block_m=bm, block_n=bn, traffic=bwd
    )
    formula = fused_attention_traffic(N, d, M, block_m=bm, block_n=bn, causal=causal)
    assert Traffic(fwd["reads"], fwd["writes"]) == formula
    both = fused_attention_traffic(N, d, M, block_m=bm, block_n=bn, causal=causal, backward=True)
    assert Traffic(fwd["reads"] + bwd["reads"], fwd["writes"] + bwd["writes"]) == both


def test_traffic_anchors():
    N, d = 4096, 64
    naive = naive_attention_traffic(N, d)
    assert naive == Traffic(reads=2 * N * N + 3 * N * d, writes=2 * N * N + N * d)
    assert naive_attention_traffic(N, d, backward=True).total - naive.total == 7 * N * N + 8 * N * d
    # with blocks as large as the sequence the fused kernel reads everything exactly once
    assert fused_attention_traffic(N, d, block_m=N, block_n=N) == fused_attention_traffic(
        N, d, cache_reuse=True
    )
    assert fused_attention_traffic(N, d, cache_reuse=True) == Traffic(reads=3 * N * d, writes=N * d + N)
    # quadratic vs linear: doubling N quadruples the naive traffic, doubles the compulsory one
    assert naive_attention_traffic(2 * N, d).total / naive.total > 3.9
    assert (
        fused_attention_traffic(2 * N, d, cache_reuse=True).total
        == 2 * fused_attention_traffic(N, d, cache_reuse=True).total
    )
    # causal computes about half the tiles
    ratio = fused_attention_traffic(N, d, causal=True).reads / fused_attention_traffic(N, d).reads
    assert 0.45 < ratio < 0.6
    assert attention_flops(N, d) == 4 * N * N * d
    assert attention_flops(N, d, causal=True, mode="fwd+bwd") == 0.5 * 3.5 * 4 * N * N * d


def test_bad_input_errors():
    """attnbook.validate's messages and types: TypeError for a wrong kind or dtype, ValueError for a shape."""
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="q must have shape \\(B, H, N, d\\)"):
        blocked_attention(q[0], q, q)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        blocked_attention(q, q.tolist(), q)
    with pytest.raises(ValueError, match="q and k must share their last"):
        blocked_attention(q, torch.randn(1, 1, 4, 6), torch.randn(1, 1, 4, 6))
    with pytest.raises(TypeError, match="must share one dtype"):
        blocked_attention(q, q.double(), q)
    with pytest.raises(TypeError, match="floating dtype"):
        attention_backward(q.long(), q.long(), q.long(), q, q, torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        blocked_attention(q, q, q, scale=-1.0)
    with pytest.raises(TypeError, match="block_n must be an integer"):
        blocked_attention(q, q, q, 2, 2.5)
    with pytest.raises(ValueError, match="v_block must be"):
        online_softmax_update(
            torch.zeros(3), torch.zeros(3), torch.zeros(3, 2), torch.zeros(3, 4), torch.zeros(5, 2)
        )
    with pytest.raises(ValueError, match="lse \\(B, H, N\\)"):
        attention_backward(q, q, q, q, q, torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="block_m must be >= 1"):
        fused_attention_traffic(16, 8, block_m=0)
    with pytest.raises(TypeError, match="N must be an integer"):
        naive_attention_traffic(3.5, 8)
    with pytest.raises(ValueError, match="mode must be one of"):
        attention_flops(16, 8, mode="both")


def test_peak_memory_counts_live_storages():
    """peak_memory: a storage counts once however many views share it, and only while it lives."""
    from attnbook.mechanisms.fused_attention_memory import peak_memory

    x = torch.zeros(100)  # made before the call: not counted

    def one_buffer_and_views():
        y = x + 1  # 400 bytes
        return y[:50].view(5, 10).t() + 0  # three views of y (no memory), then 200 bytes more

    def two_in_turn():
        a = torch.ones(1000)  # 4000 bytes
        del a  # freed: the next 4000 reuse the budget
        return torch.ones(1000).sum()  # 4000, then the 4-byte sum while they are alive

    assert peak_memory(one_buffer_and_views)[1] == 600
    assert peak_memory(two_in_turn)[1] == 4004
    assert peak_memory(lambda: x.view(10, 10))[1] == 400  # a view of an input: its storage counts


def test_peak_memory_scales_as_n_squared_and_n():
    """Naive attention holds the (N, N) scores and weights; key-blocked attention (N, block) tiles."""
    from attnbook.mechanisms.fused_attention_memory import loglog_slope, naive_attention, peak_memory

    Ns, naive, blocked = [64, 128, 256], [], []
    for N in Ns:
        q, k, v = (torch.randn(1, 1, N, 16) for _ in range(3))
        out, peak = peak_memory(naive_attention, q, k, v)
        naive.append(peak)
        assert peak >= 2 * N * N * 4  # S and A together, float32
        ref, peak = peak_memory(blocked_attention, q, k, v, N, 16)  # all queries, 16 keys per block
        blocked.append(peak)
        torch.testing.assert_close(ref[0], out[0], atol=1e-5, rtol=1e-5)
    assert abs(loglog_slope(Ns, naive) - 2) < 0.15 and abs(loglog_slope(Ns, blocked) - 1) < 0.05
    assert loglog_slope([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)


def test_blocked_attention_extreme_rows():
    """Rows whose scores all sit near -1800 or +1800 (e^s under/overflows): finite and exact."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 8, generator=g, **f64) for n in (6, 10, 10))
    for offset in (-1800.0, 1800.0):
        k_shift = k.clone()
        k_shift[..., 0] = offset * math.sqrt(8) / 60
        q_shift = q.clone()
        q_shift[..., ::2, 0] = 60.0  # every other row: scores near the offset
        out, lse = blocked_attention(q_shift, k_shift, v, 4, 3)
        s = q_shift @ k_shift.transpose(-2, -1) / math.sqrt(8)
        torch.testing.assert_close(lse, torch.logsumexp(s, -1))
        torch.testing.assert_close(out, torch.softmax(s, -1) @ v)
