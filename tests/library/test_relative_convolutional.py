"""Library tests for chapter 05: attnbook/mechanisms/relative_convolutional.py (RCMHA)."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnbook.chapters import by_number
from attnbook.mechanisms import relative_convolutional as mechanism
from attnbook.mechanisms.relative_convolutional import (
    causal_dwconv,
    rcmha,
    rel_shift,
    relative_position_term,
    relative_scores,
)

CHAPTER = by_number("05")
f64 = dict(dtype=torch.float64)


def test_the_public_names_are_documented():
    if not mechanism.__all__ and CHAPTER.status == "draft":
        pytest.skip("chapter 05 is a draft: its mechanism exports nothing yet")
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _conv_loop(x, w, b):
    """q~_{t,c} = sum_tau w_{c,tau} q_{t-tau,c} + b_c, token by token (zeros before the start)."""
    out = torch.zeros_like(x)
    for t in range(x.shape[-2]):
        for tau in range(w.shape[1]):
            if t - tau >= 0:
                out[..., t, :] += w[:, tau] * x[..., t - tau, :]
        out[..., t, :] += b
    return out


@pytest.mark.parametrize("N, d, kernel", [(7, 5, 3), (2, 3, 3), (1, 4, 3), (6, 6, 1), (5, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_causal_dwconv_equals_the_tap_sum_and_conv1d(N, d, kernel, dtype):
    g = torch.Generator().manual_seed(N * 10 + d)
    x = torch.randn(2, 3, N, d, generator=g, dtype=dtype)
    w, b = torch.randn(d, kernel, generator=g, dtype=dtype), torch.randn(d, generator=g, dtype=dtype)
    out = causal_dwconv(x, w, b)
    tol = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, _conv_loop(x, w, b), **tol)
    # the official code's form: nn.Conv1d(d, d, k, groups=d, padding=k-1), last k-1 outputs dropped
    conv = torch.nn.Conv1d(d, d, kernel, groups=d, padding=kernel - 1).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(w.flip(-1)[:, None, :])
        conv.bias.copy_(b)
        ref = conv(x.reshape(6, N, d).transpose(1, 2))[..., :N].transpose(1, 2).reshape(2, 3, N, d)
    torch.testing.assert_close(out, ref, **tol)
    assert out.dtype == dtype


def test_kernel_one_is_a_per_channel_scale_and_taps_100_the_identity():
    x = torch.randn(1, 2, 5, 4, **f64)
    w = torch.tensor([2.0, -1.0, 0.5, 3.0], **f64)
    torch.testing.assert_close(causal_dwconv(x, w[:, None]), x * w)
    identity = torch.tensor([1.0, 0.0, 0.0], **f64).expand(4, 3)
    assert torch.equal(causal_dwconv(x, identity, torch.zeros(4, **f64)), x)


def test_causal_dwconv_does_not_see_the_future():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 8, 3, generator=g, **f64)
    w, b = torch.randn(3, 3, generator=g, **f64), torch.randn(3, generator=g, **f64)
    y = x.clone()
    y[..., 5, :] += 1.0
    a, c = causal_dwconv(x, w, b), causal_dwconv(y, w, b)
    assert torch.equal(a[..., :5, :], c[..., :5, :])
    assert not torch.allclose(a[..., 5:, :], c[..., 5:, :])


def _shift_gather(x, M):
    """out[i, j] = x[i, column of offset j - p_i], column c holding offset c - (M - 1)."""
    N = x.shape[-2]
    out = torch.empty(*x.shape[:-1], M, dtype=x.dtype)
    for i in range(N):
        p_i = i + M - N
        for j in range(M):
            out[..., i, j] = x[..., i, (j - p_i) + M - 1]
    return out


@pytest.mark.parametrize("N, M", [(5, 8), (5, 5), (1, 1), (1, 4), (3, 7)])
def test_rel_shift_equals_an_explicit_gather(N, M):
    x = torch.randn(2, 3, N, M + N - 1, **f64)
    assert torch.equal(rel_shift(x, M), _shift_gather(x, M))


def _tables(H, d, P, g, dtype=torch.float64):
    r = torch.randn(H, 2 * P, d, generator=g, dtype=dtype)
    beta = torch.randn(H, 2 * P, generator=g, dtype=dtype)
    u = torch.randn(H, d, generator=g, dtype=dtype)
    return r, beta, u


def _scores_loop(q, k, r, beta, u):
    """((q_i + u_h) . k_j + q_i . r_{h,P+j-p_i} + beta_{h,P+j-p_i}) / sqrt(d), one entry at a time."""
    B, H, N, d = q.shape
    M, P = k.shape[-2], r.shape[1] // 2
    out = torch.empty(B, H, N, M, dtype=q.dtype)
    for h in range(H):
        for i in range(N):
            p_i = i + M - N
            for j in range(M):
                row = P + j - p_i  # key position minus query position
                out[:, h, i, j] = (
                    ((q[:, h, i] + u[h]) * k[:, h, j]).sum(-1)
                    + (q[:, h, i] * r[h, row]).sum(-1)
                    + beta[h, row]
                ) / math.sqrt(d)
    return out


@pytest.mark.parametrize("N, M", [(5, 8), (5, 5), (1, 3), (4, 7)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relative_scores_equal_the_loop_reference(N, M, dtype):
    """N = 5 queries over M = 3 memory + 5 current keys (8), among others."""
    g = torch.Generator().manual_seed(N + 7 * M)
    H, d, P = 3, 5, 9
    q = torch.randn(2, H, N, d, generator=g, dtype=dtype)
    k = torch.randn(2, H, M, d, generator=g, dtype=dtype)
    r, beta, u = _tables(H, d, P, g, dtype)
    out = relative_scores(q, k, r, beta, u)
    tol = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, _scores_loop(q, k, r, beta, u), **tol)
    # the score_mod's part is everything except q.k / sqrt(d)
    torch.testing.assert_close(
        relative_position_term(q, k, r, beta, u), out - q @ k.transpose(-2, -1) / math.sqrt(d), **tol
    )


def _identity_rcmha(D, H, P=16, dtype=torch.float64):
    layer = rcmha(D, H, P=P).to(dtype)
    conv = layer.qk_transform
    with torch.no_grad():
        for w, b in ((conv.w_q, conv.b_q), (conv.w_k, conv.b_k), (conv.w_v, conv.b_v)):
            w.zero_()
            w[:, 0] = 1.0  # taps (1, 0, 0)
            b.zero_()
    return layer


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_taps_100_and_zero_tables_equal_causal_sdpa(dtype):
    torch.manual_seed(0)
    D, H, N = 12, 3, 7
    layer = _identity_rcmha(D, H, dtype=dtype)
    assert all(not p.detach().any() for p in layer.score_mod.parameters())  # r = beta = u = 0 at init
    x = torch.randn(2, N, D, dtype=dtype)
    out = layer(x, causal=True)

    def heads(t):
        return t.reshape(2, N, H, D // H).transpose(1, 2)

    q, k, v = heads(layer.w_q(x)), heads(layer.w_k(x)), heads(layer.w_v(x))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, N, D)
    ref = layer.w_o(ref)
    tol = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, **tol)


def test_a_trained_looking_layer_is_causal():
    """Random taps and tables: perturbing token t+1 leaves outputs <= t unchanged."""
    torch.manual_seed(1)
    layer = rcmha(8, 2, P=16).double()
    with torch.no_grad():
        for p in layer.score_mod.parameters():
            p.normal_()
    x = torch.randn(2, 9, 8, **f64)
    t = 4
    y = x.clone()
    y[:, t + 1] += torch.randn(8, **f64)
    a, b = layer(x, causal=True), layer(y, causal=True)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-12, rtol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_the_layer_trains_its_taps_and_tables():
    layer = rcmha(8, 2, P=8)
    names = {n for n, _ in layer.named_parameters()}
    assert {"qk_transform.w_v", "score_mod.r", "score_mod.beta", "score_mod.u"} <= names
    layer(torch.randn(1, 5, 8), causal=True).sum().backward()
    assert layer.qk_transform.w_v.grad is not None and layer.score_mod.r.grad is not None


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="w"):
        causal_dwconv(x, torch.randn(3, 3))
    with pytest.raises(TypeError, match="dtype"):
        causal_dwconv(x, torch.randn(4, 3, **f64))
    with pytest.raises(ValueError, match="x"):
        causal_dwconv(torch.randn(5, 4), torch.randn(4, 3))
    with pytest.raises(TypeError, match="M"):
        rel_shift(torch.randn(3, 5), 3.0)
    with pytest.raises(ValueError, match="M"):
        rel_shift(torch.randn(3, 5), 4)
    g = torch.Generator().manual_seed(0)
    r, beta, u = _tables(2, 4, 3, g, torch.float32)
    q = torch.randn(1, 2, 2, 4)
    with pytest.raises(ValueError, match="P"):  # 5 keys but offsets only down to -3
        relative_scores(q, torch.randn(1, 2, 5, 4), r, beta, u)
    with pytest.raises(ValueError, match="k"):
        relative_scores(q, torch.randn(1, 2, 3, 5), r, beta, u)
    with pytest.raises(TypeError, match="beta"):
        relative_scores(q, torch.randn(1, 2, 3, 4), r, beta.long(), u)


def test_the_variants_plug_the_pieces_into_the_core():
    plain = rcmha(8, 2, conv=False, relative=False)
    assert plain.qk_transform is None and plain.score_mod is None and plain.value_transform is None
    conv_only, relative_only = rcmha(8, 2, relative=False), rcmha(8, 2, conv=False)
    assert conv_only.score_mod is None and conv_only.value_transform is not None
    assert relative_only.qk_transform is None and relative_only.score_mod is not None


def test_markov_period_streams_repeat_and_flag_the_repeats():
    from attnbook.tasks import markov_period

    b = markov_period(50, 40, 8, 12, torch.Generator().manual_seed(0))
    assert b.tokens.shape == b.targets.shape == b.kind.shape == (50, 40)
    symbols = b.tokens % 8
    # the target at t is the next symbol; the token's bit says the next symbol is a repeat
    assert torch.equal(symbols[:, 1:], b.targets[:, :-1])
    assert torch.equal(b.tokens // 8, b.kind)
    i, t = torch.nonzero(b.kind, as_tuple=True)
    assert len(t) > 0 and (t >= 11).all()
    # a repeat target equals the symbol 11 tokens back from t (12 back from the target's position)
    assert torch.equal(b.targets[i, t], symbols[i, t - 11])
    # every 12th position from a phase per stream
    for row in range(50):
        pos = torch.nonzero(b.kind[row]).flatten()
        assert ((pos[1:] - pos[:-1]) == 12).all()
