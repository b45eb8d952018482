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
@given(B=st.integers(1, 3), N=st.integers(1, 9), M=st.integers(1, 9), d=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_sdpa_matches_torch_with_boolean_mask(B, N, M, d, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, 2, n, d, generator=g, **f64) for n in (N, M, M))
    mask = torch.rand(N, M, generator=g) < 0.7
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-10, rtol=1e-10)
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
        (lambda: scaled_dot_product_attention(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)), "last"),
        (lambda: scaled_dot_product_attention(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), torch.zeros(3, 3, 4)), "leading"),
        (lambda: scaled_dot_product_attention(torch.zeros(1, 3, 4), torch.zeros(1, 5, 4), torch.zeros(1, 6, 4)), "same number"),
        (lambda: scaled_dot_product_attention(torch.zeros(1, 3, 4), torch.zeros(1, 5, 4), torch.zeros(1, 5, 4),
                                              torch.ones(5, 3, dtype=torch.bool)), "mask of shape"),
        (lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 7)), "x must have shape"),
        (lambda: MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8), key_padding_mask=torch.ones(1, 4, dtype=torch.bool)), "key_padding_mask"),
        (lambda: causal_mask(4, 2), "M >= N"),
        (lambda: padding_mask([3, 9], 5), "lengths"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
