"""attnbook.attention against torch's own attention, plus invariances and bad-input errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    padding_mask,
    scaled_dot_product_attention,
    split_heads,
    stable_softmax,
)

f64 = dict(dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    N=st.integers(1, 9),
    M=st.integers(1, 9),
    d=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_sdpa_matches_torch_with_boolean_mask(B, N, M, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, 2, n, d, generator=g, **f64) for n in (N, M, M))
    mask = torch.rand(N, M, generator=g) < 0.7
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(
        ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-10, rtol=1e-10
    )
    assert weights.shape == (B, 2, N, M)
    # rows with a visible key sum to 1; fully hidden rows are zero, as in torch
    row_sums = weights.sum(-1)
    visible = mask.any(-1)
    torch.testing.assert_close(row_sums[..., visible], torch.ones_like(row_sums[..., visible]))
    assert (weights[..., ~visible, :] == 0).all()


def test_sdpa_additive_mask_causal_and_cross_attention():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 8, generator=g, **f64)
    k, v = torch.randn(2, 3, 7, 8, generator=g, **f64), torch.randn(2, 3, 7, 4, generator=g, **f64)
    additive = torch.randn(5, 7, generator=g, **f64)
    ours, _ = scaled_dot_product_attention(q, k, v, additive)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=additive))
    ours, _ = scaled_dot_product_attention(q, k, v, causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(5, 7)))
    square, _ = scaled_dot_product_attention(q, q, q, causal=True)
    torch.testing.assert_close(square, F.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_mha_from_torch_equals_torch_to_1e10():
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(24, 4, batch_first=True).double()
    ours = MultiHeadAttention.from_torch(m)
    x, ctx = torch.randn(3, 6, 24, **f64), torch.randn(3, 9, 24, **f64)
    for query, kv in ((x, x), (x, ctx)):
        ref, ref_w = m(query, kv, kv, average_attn_weights=False)
        out, w = ours(query, kv if kv is not x else None, return_weights=True)
        assert (out - ref).abs().max() < 1e-10 and (w - ref_w).abs().max() < 1e-10
    lengths = torch.tensor([9, 4, 1])
    keep = padding_mask(lengths, 9)
    ref, _ = m(x, ctx, ctx, key_padding_mask=~keep)
    assert (ours(x, ctx, key_padding_mask=keep) - ref).abs().max() < 1e-10
    ref, _ = m(x, x, x, attn_mask=~causal_mask(6))
    assert (ours(x, causal=True) - ref).abs().max() < 1e-10


def test_sum_over_heads_equals_concat_form_and_head_contributions():
    torch.manual_seed(1)
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 5, 12, **f64)
    q, k, v = (split_heads(w(x), 3) for w in (mha.w_q, mha.w_k, mha.w_v))
    heads, _ = scaled_dot_product_attention(q, k, v)
    concat = mha.w_o(merge_heads(heads))
    torch.testing.assert_close(mha(x), concat)
    torch.testing.assert_close(mha.head_contributions(x).sum(1) + mha.w_o.bias, concat)


def test_permutation_properties_and_single_head():
    torch.manual_seed(2)
    mha = MultiHeadAttention(8, 2).double()
    x, ctx = torch.randn(1, 4, 8, **f64), torch.randn(1, 6, 8, **f64)
    perm = torch.randperm(6)
    torch.testing.assert_close(mha(x, ctx), mha(x, ctx[:, perm]))  # keys/values: invariant
    qperm = torch.randperm(4)
    torch.testing.assert_close(mha(x[:, qperm], ctx), mha(x, ctx)[:, qperm])  # queries: equivariant
    one = MultiHeadAttention(8, 1).double()
    q, k, v = one.w_q(x), one.w_k(x), one.w_v(x)
    single = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    torch.testing.assert_close(one(x), one.w_o(single))


def test_split_merge_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 6.0).reshape(2, 3, 6)
    s = split_heads(x, 3)
    assert s.shape == (2, 3, 3, 2)
    torch.testing.assert_close(s[:, 1], x[:, :, 2:4])
    torch.testing.assert_close(merge_heads(s), x)


def test_causal_mask_queries_at_the_end():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_stable_softmax_is_stable_and_handles_hidden_rows():
    s = torch.tensor([[1000.0, 1001.0], [float("-inf"), float("-inf")]])
    out = stable_softmax(s)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.softmax(s[0], -1))
    assert (out[1] == 0).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: MultiHeadAttention(10, 3), "divisible"),
        (lambda: split_heads(torch.zeros(1, 2, 10), 4), "divisible"),
        (
            lambda: scaled_dot_product_attention(
                torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)
            ),
            "last",
        ),
        (
            lambda: scaled_dot_product_attention(
                torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), torch.zeros(3, 3, 4)
            ),
            "leading",
        ),
        (
            lambda: scaled_dot_product_attention(
                torch.zeros(1, 3, 4), torch.zeros(1, 5, 4), torch.zeros(1, 6, 4)
            ),
            "same number",
        ),
        (
            lambda: scaled_dot_product_attention(
                torch.zeros(1, 3, 4),
                torch.zeros(1, 5, 4),
                torch.zeros(1, 5, 4),
                torch.ones(5, 3, dtype=torch.bool),
            ),
            "mask of shape",
        ),
        (lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 7)), "x must have shape"),
        (
            lambda: MultiHeadAttention(8, 2)(
                torch.zeros(1, 3, 8), key_padding_mask=torch.ones(1, 4, dtype=torch.bool)
            ),
            "key_padding_mask",
        ),
        (lambda: causal_mask(4, 2), "M >= N"),
        (lambda: padding_mask([3, 9], 5), "lengths"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _qkv(dtype=torch.float32, N=4, M=4):
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(1, 2, n, 8, generator=g, dtype=dtype) for n in (N, M, M))


@pytest.mark.parametrize(
    "call, error, message",
    [
        # a 0/1 integer mask added to the scores would let a causal mask see the future
        (lambda: scaled_dot_product_attention(*_qkv(), causal_mask(4).long()), TypeError, "integer 0/1 mask"),
        (
            lambda: scaled_dot_product_attention(*_qkv(), causal_mask(4).to(torch.uint8)),
            TypeError,
            "integer 0/1 mask",
        ),
        (
            lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 4, 8), mask=causal_mask(4).int()),
            TypeError,
            "integer",
        ),
        (lambda: causal_mask(3.5), TypeError, "N must be an integer"),
        (lambda: causal_mask(3, 4.0), TypeError, "M must be an integer"),
        (lambda: causal_mask(True), TypeError, "N must be an integer"),
        (lambda: causal_mask(0), ValueError, "N must be >= 1"),
        (
            lambda: scaled_dot_product_attention(*_qkv(), scale=-1),
            ValueError,
            "scale must be a finite number > 0",
        ),
        (lambda: scaled_dot_product_attention(*_qkv(), scale=0.0), ValueError, "scale"),
        (lambda: scaled_dot_product_attention(*_qkv(), scale=float("nan")), ValueError, "scale"),
        (lambda: scaled_dot_product_attention(*_qkv(N=5, M=3), causal=True), ValueError, "M >= N"),
        (lambda: scaled_dot_product_attention(_qkv()[0].double(), *_qkv()[1:]), TypeError, "one dtype"),
        (
            lambda: scaled_dot_product_attention(
                torch.zeros(1, 3, 4, dtype=torch.long), torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)
            ),
            TypeError,
            "floating dtype",
        ),
        (
            lambda: scaled_dot_product_attention([[1.0]], torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)),
            TypeError,
            "torch.Tensor",
        ),
        (
            lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8, dtype=torch.float64)),
            TypeError,
            "float64 but the layer",
        ),
        (
            lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8), torch.zeros(1, 3, 8, dtype=torch.float64)),
            TypeError,
            "context is torch.float64",
        ),
        (
            lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8), key_padding_mask=torch.ones(1, 3)),
            TypeError,
            "boolean",
        ),
        (lambda: MultiHeadAttention(8, 2.0), TypeError, "H must be an integer"),
        (lambda: MultiHeadAttention(8, 2, score_mod="bias"), TypeError, "score_mod must be callable"),
        (
            lambda: MultiHeadAttention(8, 2, score_mod=lambda s, q, k: s[..., :1])(torch.zeros(1, 3, 8)),
            ValueError,
            "score_mod must return",
        ),
        (
            lambda: MultiHeadAttention(8, 2, head_gate=lambda x: torch.ones(1, 3))(torch.zeros(1, 3, 8)),
            ValueError,
            "head_gate must return gates of shape",
        ),
        (
            lambda: MultiHeadAttention(8, 2, head_transform=lambda z: z[:, :1])(torch.zeros(1, 3, 8)),
            ValueError,
            "head_transform must return a tensor of shape",
        ),
    ],
)
def test_bad_input_gets_an_attnbook_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_additive_float_mask_still_accepted_and_equals_boolean():
    q, k, v = _qkv(torch.float64)
    allowed = causal_mask(4)
    additive = torch.zeros(4, 4, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, additive)[0], scaled_dot_product_attention(q, k, v, allowed)[0]
    )


def _layer(**points):
    torch.manual_seed(0)
    return MultiHeadAttention(12, 3, **points).double()


X = torch.randn(2, 5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_intermediates_add_up_to_the_output():
    layer = _layer()
    out, inter = layer(X, causal=True, return_intermediates=True)
    torch.testing.assert_close(inter.contributions.sum(1) + layer.w_o.bias, out)
    torch.testing.assert_close(stable_softmax(inter.scores), inter.weights)
    assert torch.isinf(inter.scores[..., 0, 1:]).all()  # the causal mask is in the pre-softmax scores
    torch.testing.assert_close(inter.heads, inter.weights @ inter.v)
    assert inter.gates is None and inter.q.shape == (2, 3, 5, 4)


def test_score_mod_bias_equals_an_additive_mask():
    bias = torch.randn(5, 5, dtype=torch.float64)
    with_mod = _layer(score_mod=lambda s, q, k: s + bias)(X)
    torch.testing.assert_close(with_mod, _layer()(X, mask=bias))


def test_mask_mod_window_equals_passing_the_mask():
    from attnbook.masks import window_mask

    windowed = _layer(mask_mod=lambda N, M, device: window_mask(N, M, left=1, device=device))
    torch.testing.assert_close(windowed(X), _layer()(X, mask=window_mask(5, left=1)))


def test_head_gate_weights_each_head_term():
    gates = torch.rand(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    plain = _layer()
    _, inter = plain(X, return_intermediates=True)
    gated, g_inter = _layer(head_gate=lambda x: gates)(X, return_intermediates=True)
    expected = (inter.contributions * gates.permute(0, 2, 1)[..., None]).sum(1) + plain.w_o.bias
    torch.testing.assert_close(gated, expected)
    assert g_inter.gates is gates
    # a gate of 0 removes the head: its term is exactly zero
    zero_head = gates.clone()
    zero_head[..., 1] = 0
    _, z_inter = _layer(head_gate=lambda x: zero_head)(X, return_intermediates=True)
    assert (z_inter.contributions[:, 1] == 0).all()


def test_weights_transform_edits_the_weights_before_the_values():
    plain = _layer()
    _, inter = plain(X, causal=True, return_intermediates=True)

    def to_first_key(A):  # A (B, H, N, M): move half of every row's mass onto key 0
        moved = 0.5 * A
        moved[..., 0] += 0.5
        return moved

    out, e_inter = _layer(weights_transform=to_first_key)(X, causal=True, return_intermediates=True)
    expected_weights = to_first_key(inter.weights.clone())
    torch.testing.assert_close(e_inter.weights, expected_weights)
    torch.testing.assert_close(e_inter.heads, expected_weights @ inter.v)  # A' V
    torch.testing.assert_close(e_inter.scores, inter.scores)  # the scores are before the softmax
    torch.testing.assert_close(e_inter.contributions.sum(1) + plain.w_o.bias, out)
    with pytest.raises(ValueError, match="weights_transform must return weights of shape"):
        _layer(weights_transform=lambda A: A[..., :1])(X)


def test_head_transform_edits_one_head_at_one_position_before_w_o():
    plain = _layer()
    _, inter = plain(X, causal=True, return_intermediates=True)
    steer = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def replace_last(z):  # z (B, H, N, d): head 2 at the last position becomes `steer`
        z = z.clone()
        z[:, 2, -1] = steer
        return z

    edited = _layer(head_transform=replace_last)
    out, e_inter = edited(X, causal=True, return_intermediates=True)
    # out_T = Σ_h z_h W_O^h + b_O, with z_2 at T replaced: an explicit matrix product
    w_o_2 = plain.w_o.weight.T[8:12]  # rows of W_O for head 2, (d, D)
    expected = plain(X, causal=True).clone()
    expected[:, -1] += (steer - inter.heads[:, 2, -1]) @ w_o_2
    torch.testing.assert_close(out, expected)
    assert torch.equal(out[:, :-1], plain(X, causal=True)[:, :-1])  # other positions untouched
    assert torch.equal(e_inter.heads[:, 2, -1], steer.expand(2, 4))
    torch.testing.assert_close(e_inter.contributions.sum(1) + plain.w_o.bias, out)


def test_qk_transform_gets_positions_with_queries_at_the_end():
    seen = {}

    def record(q, k, pos_q, pos_k):
        seen.update(pos_q=pos_q.tolist(), pos_k=pos_k.tolist())
        return 2 * q, k  # doubling q doubles every score

    context = torch.randn(2, 7, 12, dtype=torch.float64)
    out = _layer(qk_transform=record)(X, context)
    assert seen == {"pos_q": [2, 3, 4, 5, 6], "pos_k": list(range(7))}
    sharper = _layer(score_mod=lambda s, q, k: 2 * s)(X, context)
    torch.testing.assert_close(out, sharper)


def test_value_transform_and_module_parameters_train():
    scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    class ScaleValues(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = scale

        def forward(self, v):
            return self.scale * v

    layer = _layer(value_transform=ScaleValues())
    assert any(p is scale for p in layer.parameters())  # a module extension point registers
    plain = _layer()
    torch.testing.assert_close(layer(X) - layer.w_o.bias, 2 * (plain(X) - plain.w_o.bias))
