"""The object-captions toy of chapters 13 and 14: seeded, shaped, and its planted structure holds."""

import pytest
import torch

from attnbook.tasks import object_captions
from attnbook.tasks.object_captions import BACKGROUND, IGNORE, OBJECT, PAD, REGISTER, TEXT


def _batch(seed=0, **kw):
    return object_captions(kw.pop("B", 300), generator=torch.Generator().manual_seed(seed), **kw)


def test_seeded_and_shaped():
    a, b, c = _batch(3, n_registers=2), _batch(3, n_registers=2), _batch(4, n_registers=2)
    for name in ("tokens", "targets", "kinds", "present", "pairs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.tokens, c.tokens)
    N = 16 + 2 * 2 + 3
    assert a.tokens.shape == a.targets.shape == a.kinds.shape == (300, N)
    assert a.present.shape == (300, 8) and a.pairs.shape == (300, 4)
    assert a.image == slice(1, 17) and a.desc_position == 17
    assert a.tokens.min() >= 0 and a.tokens.max() < a.vocab.size == 22


def test_the_image_holds_exactly_the_present_objects_and_the_registers():
    b = _batch(1, n_registers=2)
    v, img = b.vocab, b.tokens[:, b.image]
    kinds = b.kinds[:, b.image]
    for row in range(len(img)):
        objects = img[row][kinds[row] == OBJECT]
        assert sorted(objects.tolist()) == b.present[row].nonzero().flatten().tolist()
    assert ((img < v.n_objects) == (kinds == OBJECT)).all()
    assert ((img == v.register) == (kinds == REGISTER)).all() and (kinds == REGISTER).sum(-1).eq(2).all()
    assert ((img == v.background) == (kinds == BACKGROUND)).all()
    # the registers move: not always in the same slot
    assert (kinds == REGISTER).float().mean(0).max() < 0.5


def test_the_caption_lists_the_present_objects_sorted_then_eos():
    b = _batch(2)
    v, start = b.vocab, b.desc_position
    assert (b.tokens[:, 0] == v.bos).all() and (b.tokens[:, start] == v.desc).all()
    for row in range(len(b.tokens)):
        names = v.name(b.present[row].nonzero().flatten()).tolist()
        k = len(names)
        assert b.tokens[row, start + 1 : start + 1 + k].tolist() == names
        assert b.tokens[row, start + 1 + k] == v.eos
        assert (b.tokens[row, start + 2 + k :] == v.pad).all() and (
            b.kinds[row, start + 2 + k :] == PAD
        ).all()
        # targets: DESC ... last name predict the next token; nothing else is graded
        graded = (b.targets[row] != IGNORE).nonzero().flatten().tolist()
        assert graded == list(range(start, start + k + 1))
        assert torch.equal(b.targets[row, graded], b.tokens[row, [g + 1 for g in graded]])
    assert (b.kinds[:, 0] == TEXT).all() and (b.kinds[:, start] == TEXT).all()


def test_pairs_co_occur_and_counterfactual_images_break_every_pair():
    b = _batch(5, B=2000)
    members = b.present.view(-1, 4, 2)  # (B, pairs, 2)
    assert (b.pairs.sum(-1) == 2).all()
    # objects only from drawn pairs; each member kept with p ≈ 0.97
    assert not (members.any(-1) & ~b.pairs).any()
    kept = members[b.pairs].float().mean()
    assert abs(kept.item() - 0.97) < 0.01
    cf = _batch(5, B=2000, counterfactual=True)
    members = cf.present.view(-1, 4, 2)
    assert (members.sum(-1) == cf.pairs.long()).all()  # exactly one member of each drawn pair
    assert abs(members[cf.pairs][:, 0].float().mean().item() - 0.5) < 0.05


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="even"):
        object_captions(2, n_objects=5)
    with pytest.raises(ValueError, match="n_slots"):
        object_captions(2, n_slots=4, pairs_per_image=2, n_registers=1)
    with pytest.raises(ValueError, match="pairs_per_image"):
        object_captions(2, n_objects=4, pairs_per_image=3)
    with pytest.raises(ValueError, match="p_pair"):
        object_captions(2, p_pair=1.5)
    with pytest.raises(TypeError, match="batch_size"):
        object_captions(2.0)
