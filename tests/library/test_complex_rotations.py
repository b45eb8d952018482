"""attnbook.mechanisms.complex_rotations: RoPE and Euler-rotation anchors, equivalences, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import causal_mask, merge_heads, split_heads
from attnbook.mechanisms.complex_rotations import (
    adaptive_rotation_attention,
    complex_rotation_scores,
    euler_rotate,
    euler_transform,
    merge_pairs,
    rope,
    rope_frequencies,
    rotary_attention,
    rotary_transformer,
    split_pairs,
)
from attnbook.mechanisms.complex_rotations_experiment import lookup_accuracy, train_lookup
from attnbook.tasks.mixed_lookup import IGNORE, mixed_lookup

f64 = dict(dtype=torch.float64)


def _inputs(seed, shape=(2, 3, 6, 8)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, **f64)
    return g, x, rope_frequencies(shape[-1], dtype=torch.float64)


def _rotation_matrix_rope(x, pos, theta):
    """RoPE as the block-diagonal rotation matrix R_m of the RoFormer paper, applied row by row."""
    d = x.shape[-1]
    out = torch.empty_like(x)
    for m in range(x.shape[-2]):
        R = torch.zeros(d, d, **f64)
        for j in range(d // 2):
            a = float(pos[m]) * float(theta[j])
            R[2 * j : 2 * j + 2, 2 * j : 2 * j + 2] = torch.tensor(
                [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], **f64
            )
        out[..., m, :] = x[..., m, :] @ R.T
    return out


def test_frequencies():
    theta = rope_frequencies(8, dtype=torch.float64)
    torch.testing.assert_close(theta, torch.tensor([1.0, 0.1, 0.01, 0.001], **f64))
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(7)


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_pairs_round_trip(pairing):
    _, x, _ = _inputs(0)
    r, p = split_pairs(x, pairing)
    assert r.shape == p.shape == (2, 3, 6, 4)
    torch.testing.assert_close(merge_pairs(r, p, pairing), x)


def test_rope_is_the_rotation_matrix():
    _, x, theta = _inputs(1)
    pos = torch.tensor([0, 3, 1, 7, 7, 12])
    torch.testing.assert_close(rope(x, pos, theta), _rotation_matrix_rope(x, pos, theta), atol=1e-12, rtol=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.integers(-50, 50))
def test_rope_scores_depend_on_relative_position_only(seed, shift):
    _, x, theta = _inputs(seed)
    k = x.flip(-2)
    pos = torch.arange(6)
    s = rope(x, pos, theta) @ rope(k, pos, theta).transpose(-1, -2)
    s_shift = rope(x, pos + shift, theta) @ rope(k, pos + shift, theta).transpose(-1, -2)
    torch.testing.assert_close(s, s_shift, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("pairing", ["interleaved", "half"])
def test_rope_limit_and_identity(pairing):
    """γ = 1, b = 0 is RoPE (same pairing); θ = 0 as well is the identity (plain attention)."""
    _, x, theta = _inputs(2)
    pos = torch.arange(6)
    torch.testing.assert_close(
        euler_rotate(x, pos, theta, pairing=pairing), rope(x, pos, theta, pairing), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(euler_rotate(x, pos, theta * 0, pairing=pairing), x, atol=1e-9, rtol=0)
    # float32: the anchors at 1e-5
    x32 = x.float()
    torch.testing.assert_close(
        euler_rotate(x32, pos, theta.float()), rope(x32, pos, theta.float()), atol=1e-5, rtol=0
    )


def test_pairing_conventions_differ():
    _, x, theta = _inputs(3)
    pos = torch.arange(6)
    assert not torch.allclose(rope(x, pos, theta, "interleaved"), rope(x, pos, theta, "half"))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.floats(-2, 2), bias=st.floats(-3, 3))
def test_norm_preservation(seed, gamma, bias):
    _, x, theta = _inputs(seed)
    out = euler_rotate(x, torch.arange(6), theta, gamma, bias)
    rho, _ = euler_transform(x)
    rho_out, _ = euler_transform(out)
    torch.testing.assert_close(rho_out, rho, atol=1e-9, rtol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), shift=st.integers(-40, 40))
def test_per_token_equals_pairwise_and_shift_invariance(seed, shift):
    """Factorisation: rotate each token, then dot products == the explicit pairwise cos formula."""
    g, x, theta = _inputs(seed, (2, 3, 5, 8))
    k = torch.randn(x.shape, generator=g, **f64)
    gamma = 2 * torch.rand(3, 1, 4, generator=g, **f64)
    bias = torch.randn(3, 1, 4, generator=g, **f64)
    pos = torch.arange(5)
    per_token = (
        euler_rotate(x, pos, theta, gamma, bias)
        @ euler_rotate(k, pos, theta, gamma).transpose(-1, -2)
        / math.sqrt(8)
    )
    pairwise = complex_rotation_scores(x, k, pos, pos, theta, gamma, bias)
    torch.testing.assert_close(per_token, pairwise, atol=1e-9, rtol=1e-9)
    shifted = complex_rotation_scores(x, k, pos + shift, pos + shift, theta, gamma, bias)
    torch.testing.assert_close(shifted, pairwise, atol=1e-9, rtol=1e-9)


def test_pairwise_formula_double_loop():
    """complex_rotation_scores against a literal double loop over (m, n) and the pairs j."""
    g, q, theta = _inputs(4, (5, 6))
    k = torch.randn(5, 6, generator=g, **f64)
    gamma, bias = torch.tensor([0.5, 1.5, 2.0], **f64), torch.tensor([0.3, -0.2, 1.0], **f64)
    pos = torch.tensor([2, 3, 5, 8, 13])
    ref = torch.zeros(5, 5, **f64)
    for m in range(5):
        for n in range(5):
            for j in range(3):
                zq, zk = complex(q[m, 2 * j], q[m, 2 * j + 1]), complex(k[n, 2 * j], k[n, 2 * j + 1])
                a = (
                    float(gamma[j]) * (math.atan2(zq.imag, zq.real) - math.atan2(zk.imag, zk.real))
                    + float(bias[j])
                    + (int(pos[m]) - int(pos[n])) * float(theta[j])
                )
                ref[m, n] += abs(zq) * abs(zk) * math.cos(a)
    torch.testing.assert_close(
        complex_rotation_scores(q, k, pos, pos, theta, gamma, bias), ref / math.sqrt(6), atol=1e-9, rtol=1e-9
    )


def test_bias_on_both_sides_cancels_and_gamma_zero_drops_phase():
    g, q, theta = _inputs(5)
    k = torch.randn(q.shape, generator=g, **f64)
    pos = torch.arange(6)
    b = torch.randn(4, generator=g, **f64)
    both = euler_rotate(q, pos, theta, 0.7, b) @ euler_rotate(k, pos, theta, 0.7, b).transpose(-1, -2)
    none = euler_rotate(q, pos, theta, 0.7) @ euler_rotate(k, pos, theta, 0.7).transpose(-1, -2)
    torch.testing.assert_close(both, none, atol=1e-9, rtol=1e-9)
    # γ = 0: only the magnitudes of the pairs matter; negating q (phase + π) changes nothing
    s0 = complex_rotation_scores(q, k, pos, pos, theta, 0.0, b)
    torch.testing.assert_close(
        complex_rotation_scores(-q, k, pos, pos, theta, 0.0, b), s0, atol=1e-9, rtol=1e-9
    )


def test_branch_cut_discontinuity_for_non_integer_gamma():
    """Crossing the negative real axis: γψ jumps by 2πγ, a full turn only for integer γ."""
    eps = 1e-6
    above = torch.tensor([[-1.0, eps]], **f64)  # ψ ≈ +π
    below = torch.tensor([[-1.0, -eps]], **f64)  # ψ ≈ -π
    pos, theta = torch.zeros(1), torch.ones(1, **f64)
    for gamma, continuous in ((0.5, False), (1.5, False), (1.0, True), (2.0, True)):
        jump = (euler_rotate(above, pos, theta, gamma) - euler_rotate(below, pos, theta, gamma)).norm().item()
        assert (jump < 1e-4) == continuous, (gamma, jump)


def test_float16_upcast_and_finite_gradient_at_zero():
    g, x, theta = _inputs(6)
    x = x.half()
    x[..., 2, 0:2] = 0
    x.requires_grad_(True)
    out = euler_rotate(x, torch.arange(6), theta.half(), torch.full((3, 1, 4), 1.5), 0.2)
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bad_inputs():
    _, x, theta = _inputs(7)
    pos = torch.arange(6)
    with pytest.raises(ValueError, match="even"):
        euler_rotate(torch.randn(2, 6, 5), pos, torch.ones(2))
    with pytest.raises(ValueError, match="pos"):
        euler_rotate(x, torch.arange(5), theta)
    with pytest.raises(ValueError, match="theta"):
        rope(x, pos, theta[:3])
    with pytest.raises(ValueError, match="gamma"):
        euler_rotate(x, pos, theta, torch.ones(5, 1, 4))
    with pytest.raises(ValueError, match="pairing"):
        split_pairs(x, "odd")
    with pytest.raises(ValueError, match="mode"):
        rotary_attention(16, 2, "alibi")
    with pytest.raises(ValueError, match="even width"):
        rotary_attention(12, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        rotary_attention(16, 2)(torch.randn(2, 5, 8))
    with pytest.raises(TypeError, match="torch.float64 but the layer.s weights are torch.float32"):
        rotary_attention(16, 2)(torch.randn(2, 5, 16, **f64))


def test_attention_matches_pairwise_scores_with_causal_mask():
    g, q, theta = _inputs(8, (2, 3, 7, 8))
    k, v = torch.randn(q.shape, generator=g, **f64), torch.randn(q.shape, generator=g, **f64)
    gamma, bias = 2 * torch.rand(3, 1, 4, generator=g, **f64), torch.randn(3, 1, 4, generator=g, **f64)
    pos = torch.arange(7)
    out, w = adaptive_rotation_attention(q, k, v, pos, theta, gamma, bias, causal=True)
    s = complex_rotation_scores(q, k, pos, pos, theta, gamma, bias).masked_fill(
        ~causal_mask(7), float("-inf")
    )
    torch.testing.assert_close(w, torch.softmax(s, -1), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v, atol=1e-10, rtol=1e-10)


def test_modules_start_as_rope_and_shapes():
    x = torch.randn(2, 9, 16, **f64)
    layers = {}
    for mode in ("nope", "rope", "shared", "per_head"):
        torch.manual_seed(0)
        layers[mode] = rotary_attention(16, 2, mode, angle_scale=10.0).double()
    out_rope, w = layers["rope"](x, causal=True, return_weights=True)
    assert out_rope.shape == (2, 9, 16) and w.shape == (2, 2, 9, 9)
    assert torch.allclose(w.triu(1), torch.zeros_like(w))
    for mode in ("shared", "per_head"):
        torch.testing.assert_close(layers[mode](x, causal=True), out_rope, atol=1e-9, rtol=0)
    rotations = {mode: layer.qk_transform for mode, layer in layers.items()}
    assert rotations["per_head"].gamma.shape == (2, 1, 4) and rotations["shared"].gamma.shape == (1, 1, 4)
    assert rotations["rope"].gamma is None
    assert not torch.allclose(layers["nope"](x, causal=True), out_rope)
    # NoPE is permutation-equivariant without a mask; RoPE is not
    perm = torch.randperm(9)
    nope = layers["nope"]
    torch.testing.assert_close(nope(x[:, perm]), nope(x)[:, perm])
    assert not torch.allclose(layers["rope"](x[:, perm]), layers["rope"](x)[:, perm])


def test_rotary_layer_equals_rotating_by_hand():
    """The qk_transform plugged into MultiHeadAttention = rotate q, k per head, then plain attention."""
    torch.manual_seed(1)
    layer = rotary_attention(16, 2, "per_head", angle_scale=10.0).double()
    with torch.no_grad():
        layer.qk_transform.gamma_u.normal_()
        layer.qk_transform.bias_w.normal_()
    x = torch.randn(3, 7, 16, **f64)
    t = layer.qk_transform
    q, k, v = (split_heads(w(x), 2) for w in (layer.w_q, layer.w_k, layer.w_v))
    pos = torch.arange(7)
    heads, _ = adaptive_rotation_attention(q, k, v, pos, t.theta.double(), t.gamma, t.bias, causal=True)
    torch.testing.assert_close(layer(x, causal=True), layer.w_o(merge_heads(heads)), atol=1e-10, rtol=1e-10)


def test_rotary_transformer_returns_each_layers_weights():
    model = rotary_transformer(vocab=12, n_out=5, D=16, H=2, layers=2, mode="per_head")
    logits, records = model(torch.randint(12, (3, 10)), return_intermediates=True)
    assert logits.shape == (3, 10, 5) and len(records) == 2 and records[0].weights.shape == (3, 2, 10, 10)
    assert torch.allclose(records[1].weights.triu(1), torch.zeros(()))  # causal


def test_mixed_lookup_targets():
    S, N = 6, 20
    b = mixed_lookup(50, N, S, offset=3, generator=torch.Generator().manual_seed(0))
    symbols, is_flag, kind_bit = b.tokens % S, (b.tokens // S) % 2, b.tokens // (2 * S)
    assert b.tokens.max() < 4 * S and (is_flag.sum(1) == 1).all()
    assert (is_flag.argmax(1) == b.flag).all() and (b.flag < N // 2).all()
    for i in range(50):
        f = int(b.flag[i])
        for t in range(N):
            if kind_bit[i, t] == 0:
                expected = int(symbols[i, t - 3]) if t >= 3 else IGNORE
            else:
                expected = int(symbols[i, f]) if t > f else IGNORE
            assert int(b.targets[i, t]) == expected
            assert int(b.kind[i, t]) == (-1 if expected == IGNORE else int(kind_bit[i, t]))
    again = mixed_lookup(50, N, S, offset=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.tokens, b.tokens)
    with pytest.raises(ValueError, match="offset"):
        mixed_lookup(2, 5, 4, offset=5)


def test_train_lookup_is_seeded_and_lookup_accuracy_counts_only_questions():
    """Same seed, same model; another seed, another model; accuracies per question kind."""
    kw = dict(N=8, n_sym=4, D=8, H=2, steps=3, batch_size=4)
    (a, ha), (b, hb), (c, _) = (train_lookup("per_head", s, **kw) for s in (0, 0, 1))
    assert ha.loss == hb.loss and len(ha.loss) == 3
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    batch = mixed_lookup(16, 8, 4, generator=torch.Generator().manual_seed(0))

    truth = batch.targets.clamp(min=0).clone()  # (B, N): the answers, 0 where there is no question

    class Oracle(torch.nn.Module):  # logits that put all their mass on the true answer
        def forward(self, tokens):
            return torch.nn.functional.one_hot(truth, 4).float()

    assert lookup_accuracy(Oracle(), batch) == {"positional": 1.0, "content": 1.0}
    batch.targets[batch.kind == 0] = (
        batch.targets[batch.kind == 0] + 1
    ) % 4  # every positional answer now wrong
    acc = lookup_accuracy(Oracle(), batch)
    assert acc["content"] == 1.0 and acc["positional"] == 0.0
