"""Every mask convention against an explicit double loop over (query, key) positions."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.masks import (
    apply_mask,
    block_mask,
    causal_mask,
    combine_masks,
    dilated_mask,
    padding_mask,
    query_positions,
    window_mask,
)


def _loop(N, M, rule):
    """Reference: query i sits at position p = i + M - N; rule(p, j) says if it may see key j."""
    return torch.tensor([[rule(i + M - N, j) for j in range(M)] for i in range(N)], dtype=torch.bool)


sizes = st.integers(1, 9).flatmap(lambda N: st.tuples(st.just(N), st.integers(N, 12)))


@settings(max_examples=40, deadline=None)
@given(sizes, st.integers(0, 4), st.integers(0, 3), st.integers(1, 3), st.integers(1, 5))
def test_positional_masks_match_loops(nm, left, right, dilation, block):
    N, M = nm
    assert query_positions(N, M).tolist() == [i + M - N for i in range(N)]
    assert torch.equal(causal_mask(N, M), _loop(N, M, lambda p, j: j <= p))
    assert torch.equal(
        window_mask(N, M, left=left, right=right), _loop(N, M, lambda p, j: p - left <= j <= p + right)
    )
    expected = _loop(N, M, lambda p, j: (j - p) % dilation == 0 and -left <= (j - p) // dilation <= right)
    assert torch.equal(dilated_mask(N, M, left=left, right=right, dilation=dilation), expected)
    assert torch.equal(block_mask(N, M, block=block), _loop(N, M, lambda p, j: p // block == j // block))
    assert torch.equal(
        block_mask(N, M, block=block, causal=True),
        _loop(N, M, lambda p, j: p // block == j // block and j <= p),
    )


def test_window_of_full_width_is_causal():
    assert torch.equal(window_mask(6, left=5), causal_mask(6))
    assert torch.equal(dilated_mask(6, left=5, dilation=1), causal_mask(6))


def test_padding_mask():
    assert padding_mask([2, 0, 3], 3).tolist() == [
        [True, True, False],
        [False, False, False],
        [True, True, True],
    ]
    with pytest.raises(TypeError, match="integers"):
        padding_mask(torch.tensor([1.5]), 3)


def test_combine_and_apply():
    causal, window = causal_mask(4), window_mask(4, left=1)
    assert torch.equal(combine_masks(causal, None, window), causal & window)
    assert combine_masks(None, None) is None
    bias = torch.randn(4, 4)
    mixed = combine_masks(causal, bias)
    assert mixed.dtype == torch.float32 and torch.isinf(mixed[~causal]).all()
    torch.testing.assert_close(mixed[causal], bias[causal])
    s = torch.randn(2, 4, 4)
    torch.testing.assert_close(apply_mask(s, mixed), apply_mask(apply_mask(s, causal), bias))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: causal_mask(2.5), TypeError, "N must be an integer"),
        (lambda: window_mask(4, left=-1), ValueError, "left must be >= 0"),
        (lambda: dilated_mask(4, left=1, dilation=0), ValueError, "dilation must be >= 1"),
        (lambda: block_mask(4, block=1.5), TypeError, "block must be an integer"),
        (lambda: causal_mask(5, 3), ValueError, "M >= N"),
        (
            lambda: apply_mask(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.int64)),
            TypeError,
            "integer 0/1 mask",
        ),
        (
            lambda: apply_mask(torch.zeros(2, 3), torch.ones(3, 2, dtype=torch.bool)),
            ValueError,
            "does not broadcast",
        ),
        (lambda: combine_masks(causal_mask(3), causal_mask(4)), ValueError, "broadcast|shape"),
    ],
)
def test_bad_masks(call, error, message):
    with pytest.raises(error, match=message):
        call()
