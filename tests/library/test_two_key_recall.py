"""The two-key recall task of chapter 00: seeded, consistent, and it rejects impossible sizes."""

import pytest
import torch

from attnbook.tasks import two_key_recall


def test_two_key_recall_is_seeded_and_consistent():
    a = two_key_recall(256, 6, 12, 5, torch.Generator().manual_seed(3))
    b = two_key_recall(256, 6, 12, 5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    assert a.keys.shape == a.values.shape == (256, 6) and a.query.shape == a.position.shape == (256, 2)
    # keys distinct within a sequence; the two queried pairs are different pairs
    assert (a.keys.sort(-1).values.diff(dim=-1) > 0).all()
    assert (a.position[:, 0] != a.position[:, 1]).all()
    # the query names the keys at those positions, and the target codes their values in order
    assert torch.equal(a.query, a.keys.gather(1, a.position))
    found = a.values.gather(1, a.position)
    assert torch.equal(a.target, found[:, 0] * 5 + found[:, 1])
    # the order matters: swapping the two keys changes the answer whenever the values differ
    differ = found[:, 0] != found[:, 1]
    assert differ.any() and (a.target[differ] != (found[:, 1] * 5 + found[:, 0])[differ]).all()


def test_two_key_recall_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_keys"):
        two_key_recall(2, 10, 5, 3)
    with pytest.raises(ValueError, match="n_pairs >= 2"):
        two_key_recall(2, 1, 5, 3)
