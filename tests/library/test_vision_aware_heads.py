"""Library tests for chapter 14: attnbook/mechanisms/vision_aware_heads.py (VHD, selection, VHR, CHAIR_i)."""

import copy
import math
import statistics

import pytest
import torch

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import vision_aware_heads as mechanism
from attnbook.mechanisms.vision_aware_heads import (
    HeadScaling,
    caption_objects,
    chair_i,
    head_divergence,
    scaled_heads,
    select_vision_heads,
    token_vhd,
    vhr_generate,
    vhr_step,
)
from attnbook.models import ModelConfig, TinyTransformer
from attnbook.tasks.object_captions import CaptionVocab
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("14")
f64 = dict(dtype=torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


# ---- head_divergence and token_vhd --------------------------------------------------------------


def _loop_vhd(a, b, metric):
    """VHD with Python floats, one head at a time."""
    out = torch.zeros(a.shape[:-1], **f64)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in a.shape[:-1])).reshape(-1, a.ndim - 1):
        x, y = a[tuple(idx)].double().tolist(), b[tuple(idx)].double().tolist()
        if metric == "l2":
            out[tuple(idx)] = math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y)))
        else:
            dot = sum(p * q for p, q in zip(x, y))
            out[tuple(idx)] = 1 - dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))
    return out


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 7), (3, 2, 4, 6)])
def test_vhd_is_the_loop(metric, dtype, shape):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, generator=g, dtype=dtype), torch.randn(*shape, generator=g, dtype=dtype)
    v = head_divergence(a, b, metric)
    assert v.shape == shape[:-1] and v.dtype == dtype
    torch.testing.assert_close(v.double(), _loop_vhd(a, b, metric), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head_divergence(b, a, metric), v)  # symmetric
    assert head_divergence(a, a.clone(), metric).abs().max() < 1e-6  # identical outputs: 0


def test_vhd_upcasts_float16():
    a = torch.full((1, 2, 8), 200.0, dtype=torch.float16)
    v = head_divergence(a, -a)  # ||400·1||_2 = 400·sqrt(8) ≈ 1131; its square overflows float16
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, torch.full((1, 2), 400 * math.sqrt(8)))


def test_vhd_on_head_outputs_does_not_depend_on_w_o():
    torch.manual_seed(0)
    layer = MultiHeadAttention(12, 3).double()
    other = copy.deepcopy(layer)
    torch.nn.init.normal_(other.w_o.weight)  # a different W_O, same W_Q, W_K, W_V
    x_img = torch.randn(2, 6, 12, **f64)
    x_txt = x_img.clone()
    x_txt[:, 1:4] = 0.0  # the "image" tokens blanked
    vhd = []
    for m in (layer, other):
        _, a = m(x_img, causal=True, return_intermediates=True)
        _, b = m(x_txt, causal=True, return_intermediates=True)
        vhd.append(head_divergence(a.heads[:, :, -1], b.heads[:, :, -1]))
    torch.testing.assert_close(vhd[0], vhd[1], rtol=0, atol=0)
    assert vhd[0].min() > 0


def test_token_vhd_is_the_mean_of_the_top_k():
    v = torch.tensor([[[0.1, 0.9], [0.5, 0.3]], [[2.0, 0.0], [0.0, 1.0]]], **f64)  # (2, L=2, H=2)
    torch.testing.assert_close(token_vhd(v, 2), torch.tensor([(0.9 + 0.5) / 2, 1.5], **f64))
    torch.testing.assert_close(token_vhd(v, 4), v.flatten(1).mean(1))


# ---- select_vision_heads ------------------------------------------------------------------------


def _loop_select(v, c):
    out = torch.zeros(v.shape, dtype=torch.bool)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in v.shape[:-1])).reshape(-1, v.ndim - 1):
        row = v[tuple(idx)].double().tolist()
        if len(row) < 2:
            continue
        ceiling = statistics.mean(row) + c * statistics.stdev(row)
        med = statistics.median(row)
        out[tuple(idx)] = torch.tensor([ceiling >= x > med for x in row])
    return out


@pytest.mark.parametrize("H", [1, 2, 4, 5, 32])
@pytest.mark.parametrize("c", [1.0, 0.5])
def test_selection_is_the_loop(H, c):
    g = torch.Generator().manual_seed(H)
    v = torch.rand(3, 2, H, generator=g, **f64) ** 3
    assert torch.equal(select_vision_heads(v, c), _loop_select(v, c))
    assert torch.equal(select_vision_heads(v.float(), c), _loop_select(v, c))


def test_selection_anchors():
    assert not select_vision_heads(torch.ones(2, 1)).any()  # H = 1: nothing is above the median
    assert not select_vision_heads(torch.full((2, 6), 0.3)).any()  # all equal: nothing
    v = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 9.0]])  # a planted surge outlier
    assert select_vision_heads(v).tolist() == [[False] * 4 + [True] * 3 + [False]]
    # per row: a row of large values does not crowd out a row of small ones
    two = torch.tensor([[0.1, 0.2, 0.35, 0.36], [10.0, 20.0, 35.0, 36.0]])
    assert select_vision_heads(two).tolist() == [[False, False, True, True]] * 2
    # permuting the heads permutes the selection
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(select_vision_heads(v[:, perm]), select_vision_heads(v)[:, perm])


# ---- reinforcement: head_transform, VHR step ----------------------------------------------------


def test_scaling_a_head_equals_scaling_its_block_of_w_o():
    torch.manual_seed(1)
    layer = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 5, 12, **f64)
    scales = torch.tensor([[2.0, 1.0, 0.5], [1.0, 3.0, 1.0]], **f64)  # (B, H)
    layer.head_transform = HeadScaling(scales)
    out = layer(x, causal=True)
    layer.head_transform = None
    for b in range(2):
        block = copy.deepcopy(layer)
        with torch.no_grad():  # nn.Linear stores W_O^T: head h is the column block h·d ... (h+1)·d
            block.w_o.weight.mul_(scales[b].repeat_interleave(4)[None, :])
        torch.testing.assert_close(out[b, -1], block(x[b : b + 1], causal=True)[0, -1])
        torch.testing.assert_close(out[b, :-1], layer(x[b : b + 1], causal=True)[0, :-1])  # only the last row


def _model(seed, layers=2, H=4, D=16, vocab=11, N=12):
    torch.manual_seed(seed)
    config = ModelConfig(D=D, H=H, layers=layers, vocab=vocab, max_len=N)
    return TinyTransformer(config).double().eval()


def _prompts(seed, B=3, N=9, vocab=11):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, vocab, (B, N), generator=g)
    txt = img.clone()
    txt[:, 1:5] = 0  # the image slots replaced by one background token
    return img, txt


def _reference_vhr(model, img, txt, alpha, one_shot=False):
    """VHR with L full forwards: layer l's VHD is read with the scales of layers < l already in place."""
    B, L, H = img.shape[0], len(model.blocks), model.config.H
    scales = torch.ones(B, L, H, **f64)
    with torch.no_grad():
        _, rec_txt = model(txt, return_intermediates=True)
        for l in range(L):
            with scaled_heads(model, scales if not one_shot else torch.ones_like(scales)):
                _, rec_img = model(img, return_intermediates=True)
            v = head_divergence(rec_img[l].heads[:, :, -1], rec_txt[l].heads[:, :, -1])
            scales[:, l] = torch.where(select_vision_heads(v), alpha, 1.0)
        with scaled_heads(model, scales):
            return model(img)[:, -1], scales


def test_alpha_one_is_the_base_model():
    model, (img, txt) = _model(0), _prompts(0)
    with torch.no_grad():
        logits, vhd, sel = vhr_step(model, img, txt, 1.0)
        torch.testing.assert_close(logits, model(img)[:, -1], rtol=0, atol=1e-12)
        assert vhd.shape == sel.shape == (3, 2, 4) and sel.any()
        base, seq = [], img
        for _ in range(4):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            base.append(nxt)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(vhr_generate(model, img, txt, 1.0, max_new=4), torch.cat(base, 1))


def test_identical_branches_select_nothing():
    model, (img, _) = _model(1), _prompts(1)
    with torch.no_grad():
        logits, vhd, sel = vhr_step(model, img, img.clone(), 3.0)
        assert vhd.abs().max() == 0 and not sel.any()
        torch.testing.assert_close(logits, model(img)[:, -1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("layers", [2, 3])
def test_layer_by_layer_is_the_reference_and_differs_from_one_shot(layers):
    model, (img, txt) = _model(2, layers=layers, H=8, D=32), _prompts(2, B=16)
    with torch.no_grad():
        logits, _, sel = vhr_step(model, img, txt, 4.0)
    ref, scales = _reference_vhr(model, img, txt, 4.0)
    torch.testing.assert_close(logits, ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(sel, scales == 4.0)
    # one shot: every VHD from the unmodified image branch; a later layer then selects other heads
    one_shot, one_scales = _reference_vhr(model, img, txt, 4.0, one_shot=True)
    assert torch.equal(one_scales[:, 0], scales[:, 0])
    differs = (one_scales != scales).flatten(1).any(1)  # (B,)
    assert differs.sum() >= 2
    assert (logits - one_shot)[differs].abs().amax(-1).min() > 1e-6
    torch.testing.assert_close(logits[~differs], one_shot[~differs], rtol=1e-10, atol=1e-10)


def test_vhr_step_after_scaled_heads_and_restores_the_model():
    model, (img, txt) = _model(6), _prompts(6)
    with torch.no_grad(), scaled_heads(model, torch.full((3, 2, 4), 2.0, **f64)):
        model(img)
    with torch.no_grad():
        first, _, _ = vhr_step(model, img, txt, 2.0)  # the slots held modules: still accepted
        again, _, _ = vhr_step(model, img, txt, 2.0)
    assert torch.equal(first, again) and all(b.attn.head_transform is None for b in model.blocks)


def test_odd_sizes_float32():
    torch.manual_seed(3)
    model = TinyTransformer(ModelConfig(D=15, H=5, layers=1, vocab=7, max_len=9)).eval()
    img = torch.randint(0, 7, (2, 7))
    txt = img[:, 3:]  # the image removed: a shorter text-only prompt
    with torch.no_grad():
        logits, vhd, sel = vhr_step(model, img, txt, 2.0, metric="cos")
    assert logits.shape == (2, 7) and logits.dtype == torch.float32 and vhd.shape == (2, 1, 5)
    assert torch.equal(sel, select_vision_heads(vhd))


# ---- CHAIR_i ------------------------------------------------------------------------------------


def test_chair_i_counts_sets_over_all_captions():
    objects = torch.tensor([[0, 1, 1, -1], [3, -1, -1, -1], [-1, -1, -1, -1]])
    present = torch.tensor([[True, False, False, False], [False, False, False, False], [True] * 4])
    # caption 0 mentions {0, 1}: 1 absent; caption 1 mentions {3}: absent; caption 2 nothing
    assert chair_i(objects, present) == pytest.approx(2 / 3)
    assert chair_i(torch.full((2, 3), -1), present[:2]) == 0.0
    g = torch.Generator().manual_seed(4)
    objects = torch.randint(-1, 6, (20, 7), generator=g)
    present = torch.rand(20, 6, generator=g) < 0.5
    sets = [{o for o in row if o >= 0} for row in objects.tolist()]
    bad = sum(sum(not present[b, o] for o in s) for b, s in enumerate(sets))
    assert chair_i(objects, present) == pytest.approx(bad / sum(len(s) for s in sets))


def test_caption_objects_reads_names_until_eos():
    vocab = CaptionVocab(8)
    gen = torch.tensor(
        [[vocab.name(3), vocab.name(5), vocab.eos, vocab.name(1)], [vocab.desc, 2, vocab.name(0), 9]]
    )
    assert caption_objects(gen, vocab).tolist() == [[3, 5, -1, -1], [-1, -1, 0, -1]]


# ---- errors and devices ------------------------------------------------------------------------


def test_bad_inputs_are_named():
    a = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="o_img and o_txt"):
        head_divergence(a, a[:, :2])
    with pytest.raises(TypeError, match="o_txt"):
        head_divergence(a, a.double())
    with pytest.raises(ValueError, match="metric"):
        head_divergence(a, a, "l1")
    with pytest.raises(TypeError, match="v must"):
        select_vision_heads(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k="):
        token_vhd(a, 13)
    with pytest.raises(TypeError, match="present"):
        chair_i(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="objects must be -1"):
        chair_i(torch.full((2, 3), 4), torch.zeros(2, 4, dtype=torch.bool))
    model = _model(0)
    with pytest.raises(TypeError, match="tokens_img"):
        vhr_step(model, torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="share B"):
        vhr_step(model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="scales"):
        with scaled_heads(model, torch.ones(2, 3, 4)):
            pass


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randn(2, 3, 4, generator=g).to(device, dtype) for _ in range(2))
    z = torch.randn(2, 3, 5, 4, generator=g).to(device, dtype)
    with tensors_without_device_go_to_meta():
        v = head_divergence(a, b)
        results = [v, head_divergence(a, b, "cos"), token_vhd(v[:, None], 2), HeadScaling(v)(z)]
        flags = [select_vision_heads(v), select_vision_heads(v[..., :1])]
    assert_follow(results, a.device, dtype)
    assert all(f.device == a.device and f.dtype == torch.bool for f in flags)
    objects = torch.tensor([[0, -1]], device=device)
    with tensors_without_device_go_to_meta():
        assert chair_i(objects, torch.tensor([[False, True]], device=device)) == 1.0


# ---- the experiment's recipe -------------------------------------------------------------------


def test_the_experiment_runs_and_repeats():
    from attnbook.mechanisms.vision_aware_heads_experiment import hallucination, train_captioner

    model = train_captioner(0, D=16, steps=3, batch_size=8)
    again = train_captioner(0, D=16, steps=3, batch_size=8)
    base = hallucination(model, 1.0, n_test=12)
    assert base == hallucination(again, 1.0, n_test=12)
    boosted = hallucination(model, 3.0, outlier_std=1e9, n_test=12)
    for scores in (base, boosted):
        assert set(scores) == {"chair_i", "recall", "length"}
        assert 0 <= scores["chair_i"] <= 1 and 0 <= scores["recall"] <= 1 and 0 <= scores["length"] <= 8
