"""attnbook.mechanisms.multi_scale_heads: backbone limit, bilinear resize, shared-body gradients, parity."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnbook.chapters import by_number
from attnbook.mechanisms import multi_scale_heads as mechanism
from attnbook.mechanisms.multi_scale_heads import (
    MedusaBody,
    MedusaNet,
    attention_iou,
    count_parameters,
    gate,
    medusa_heads,
    resize_map,
    zscore_image,
)
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("09")
DTYPES = (torch.float32, torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _bilinear_by_hand(g, H, W):
    """align_corners=False, one output pixel at a time: source = (dst + ½)·in/out - ½, clamped at 0."""
    B, C, h, w = g.shape
    out = torch.empty(B, C, H, W, dtype=torch.float64)
    a = g.double()

    def source(dst, n_in, n_out):
        src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), src - i0

    for y in range(H):
        y0, y1, ly = source(y, h, H)
        for x in range(W):
            x0, x1, lx = source(x, w, W)
            top = (1 - lx) * a[..., y0, x0] + lx * a[..., y0, x1]
            bottom = (1 - lx) * a[..., y1, x0] + lx * a[..., y1, x1]
            out[..., y, x] = (1 - ly) * top + ly * bottom
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw,HW", [((3, 5), (7, 4)), ((4, 4), (9, 6)), ((6, 9), (2, 3)), ((5, 3), (5, 3))])
def test_gate_is_the_features_times_the_bilinear_map(dtype, hw, HW):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2, 3, *HW, generator=gen, dtype=dtype)
    g = torch.rand(2, 1, *hw, generator=gen, dtype=dtype)
    a = _bilinear_by_hand(g, *HW)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(resize_map(g, HW).double(), a.expand(2, 1, *HW), atol=tol, rtol=tol)
    torch.testing.assert_close(gate(X, g, "mul").double(), X.double() * a, atol=tol, rtol=tol)
    torch.testing.assert_close(gate(X, g, "residual").double(), X.double() * (1 + a), atol=tol, rtol=tol)
    assert gate(X, g).dtype == dtype


def test_gate_identity_limits_and_float16():
    X = torch.randn(2, 4, 5, 7, dtype=torch.float16)
    assert torch.equal(gate(X, torch.ones(2, 1, 3, 2, dtype=torch.float16), "mul"), X)
    assert torch.equal(gate(X, torch.zeros(2, 1, 3, 2, dtype=torch.float16), "residual"), X)
    g = torch.rand(2, 1, 3, 2, dtype=torch.float16)
    expected = X.double() * _bilinear_by_hand(g, 5, 7)
    torch.testing.assert_close(gate(X, g).double(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_heads_are_a_one_by_one_convolution_and_a_sigmoid(dtype):
    gen = torch.Generator().manual_seed(1)
    sizes = [(5, 6, 7), (3, 3, 4), (9, 1, 2)]
    dec = [torch.randn(2, c, h, w, generator=gen, dtype=dtype) for c, h, w in sizes]
    weights = [torch.randn(c, generator=gen, dtype=dtype) for c, _, _ in sizes]
    biases = [torch.randn((), generator=gen, dtype=dtype) for _ in sizes]
    maps = medusa_heads(dec, weights, biases)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for E, w, b, g in zip(dec, weights, biases, maps):
        expected = torch.sigmoid(F.conv2d(E, w.view(1, -1, 1, 1), b.view(1)))
        assert g.shape == (2, 1, *E.shape[-2:]) and g.dtype == dtype
        torch.testing.assert_close(g, expected, atol=tol, rtol=tol)
        assert ((g >= 0) & (g <= 1)).all()


def _copy_backbone(src, dst):
    for a, b in zip(src.stages.parameters(), dst.stages.parameters()):
        b.data.copy_(a.data)
    dst.classifier.load_state_dict(src.classifier.state_dict())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,bias", [("mul", 100.0), ("residual", -100.0)])
def test_saturated_heads_give_the_plain_backbone_exactly(dtype, mode, bias):
    torch.manual_seed(2)
    plain = MedusaNet("none").to(dtype)
    net = MedusaNet("medusa", mode=mode).to(dtype)
    _copy_backbone(plain, net)
    image = torch.randn(3, 1, 64, 64, dtype=dtype)
    expected = plain(image)
    assert not torch.equal(net(image), expected)  # trained or random heads do change the output
    assert torch.equal(net(image, disabled=(0, 1, 2)), expected)  # the widget's switch
    with torch.no_grad():
        for head in net.body.heads:
            head.weight.zero_()
            head.bias.fill_(bias)
    out = net(image)
    for g in net.maps:  # σ(100) rounds to 1; σ(-100) ≈ 4e-44 is not 0, but 1 + 4e-44 rounds to 1
        assert torch.equal(g, torch.ones_like(g)) if mode == "mul" else (g < 1e-40).all()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_each_head_alone_sends_gradient_to_the_shared_body(s):
    torch.manual_seed(3)
    image = torch.randn(2, 1, 64, 64)
    others = tuple(t for t in range(3) if t != s)
    net = MedusaNet("medusa")
    net(image, disabled=others).sum().backward()
    for name in ("enc.0.0.weight", "bottleneck.0.weight", f"heads.{s}.weight"):
        grad = dict(net.body.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(net.body.heads[t].weight.grad is None for t in others)
    iso = MedusaNet("isolated")
    iso(image, disabled=others).sum().backward()
    assert next(iso.gates[s].parameters()).grad.abs().sum() > 0
    assert all(p.grad is None for t in others for p in iso.gates[t].parameters())


def test_isolated_gates_match_the_body_parameters_within_ten_percent():
    for widths, c in [((8, 16, 32, 64), 8), ((4, 8, 16, 32), 4), ((8, 16, 32, 64), 16)]:
        body = count_parameters(MedusaNet("medusa", widths, c)) - count_parameters(MedusaNet("none", widths))
        gates = count_parameters(MedusaNet("isolated", widths, c)) - count_parameters(
            MedusaNet("none", widths)
        )
        assert body == count_parameters(MedusaBody(c))
        assert abs(gates - body) <= 0.1 * body, (widths, c, gates, body)


def test_mirrored_inputs_mirror_the_maps_only_with_mirror_symmetric_kernels():
    torch.manual_seed(4)
    body = MedusaBody(4).double()
    x = torch.randn(2, 1, 16, 24, dtype=torch.float64)
    flipped = body(x.flip(-1))
    assert max((a.flip(-1) - b).abs().max().item() for a, b in zip(body(x), flipped)) > 1e-3
    with torch.no_grad():
        for conv in body.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    for a, b in zip(body(x), body(x.flip(-1))):
        torch.testing.assert_close(a.flip(-1), b, atol=1e-12, rtol=1e-12)


def test_zscore_matches_numpy_and_zeroes_a_constant_image():
    g = torch.Generator().manual_seed(5)
    img = torch.randint(0, 256, (7, 9), generator=g, dtype=torch.uint8)
    z = zscore_image(img)
    ref = img.numpy().astype("float64")
    ref = (ref - ref.mean()) / ref.std()
    assert z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), ref, atol=1e-12)
    batch = torch.rand(3, 5, 4, generator=g) * 10
    zb = zscore_image(batch)
    torch.testing.assert_close(zb.mean((-2, -1)), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(zb.std((-2, -1), correction=0), torch.ones(3))
    assert torch.equal(
        zscore_image(torch.full((4, 6), 17, dtype=torch.uint8)), torch.zeros(4, 6, dtype=torch.float64)
    )


def test_attention_iou_counts_the_thresholded_overlap():
    g = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.6]], dtype=torch.float64)[None, None]
    mask = torch.tensor([[True, False, False], [False, True, True]])[None]
    # attended {(0,0), (0,1), (1,1), (1,2)}; mask {(0,0), (1,1), (1,2)}: 3 / 4
    torch.testing.assert_close(attention_iou(g, mask, 0.5), torch.tensor([0.75], dtype=torch.float64))
    torch.testing.assert_close(attention_iou(g, mask, 0.85), torch.tensor([0.25], dtype=torch.float64))
    empty = attention_iou(torch.zeros(1, 1, 2, 2), torch.zeros(1, 4, 4, dtype=torch.bool))
    assert torch.equal(empty, torch.ones(1))
    # a coarse map is resized to the mask first: a 1×1 map of 0.7 attends everywhere
    torch.testing.assert_close(
        attention_iou(torch.full((1, 1, 1, 1), 0.7), mask.repeat(1, 2, 2)), torch.tensor([0.5])
    )


def test_bad_inputs_raise_clear_errors():
    X, g = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match="mode must be one of"):
        gate(X, g, "add")
    with pytest.raises(ValueError, match="g must have shape"):
        gate(X, torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="X must have shape"):
        gate(X[0], g)
    with pytest.raises(TypeError, match="one dtype"):
        gate(X.double(), g)
    with pytest.raises(TypeError, match="size must be a pair"):
        resize_map(g, 4)
    with pytest.raises(ValueError, match="one weight and one bias"):
        medusa_heads([torch.randn(1, 2, 3, 3)], [torch.randn(2)], [])
    with pytest.raises(ValueError, match=r"weights\[0\] must have shape \(2,\)"):
        medusa_heads([torch.randn(1, 2, 3, 3)], [torch.randn(3)], [torch.tensor(0.0)])
    with pytest.raises(TypeError, match="mask must be boolean"):
        attention_iou(g, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="gating must be"):
        MedusaNet("cbam")


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs(device, dtype):
    X = torch.randn(2, 3, 5, 7).to(device, dtype)
    g = torch.rand(2, 1, 3, 4).to(device, dtype)
    dec = [torch.randn(2, 4, 3, 5).to(device, dtype)]
    w, b = torch.randn(4).to(device, dtype), torch.tensor(0.5).to(device, dtype)
    mask = torch.rand(2, 6, 6).to(device) > 0.5
    with tensors_without_device_go_to_meta():
        results = [gate(X, g, "mul"), gate(X, g, "residual"), *medusa_heads(dec, [w], [b])]
        results += [zscore_image(X), attention_iou(g, mask, 0.5), resize_map(g, (6, 2))]
    assert_follow(results, X.device, dtype)


def test_radiographs_put_positive_nodules_inside_and_distractors_outside_the_lungs():
    from attnbook.tasks import radiographs

    data = radiographs(300, size=32, noise=0.0, generator=torch.Generator().manual_seed(3))
    again = radiographs(300, size=32, noise=0.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(data.images, again.images) and torch.equal(data.kind, again.kind)
    assert data.images.shape == (300, 1, 32, 32) and data.lungs.shape == (300, 32, 32)
    assert set(data.kind.tolist()) == {0, 1, 2} and torch.equal(data.target, (data.kind == 0).float())
    # the nodules are what the image holds above the noise-free background: rebuild it without them
    plain = radiographs(300, size=32, noise=0.0, nodule=0.0, generator=torch.Generator().manual_seed(3))
    bump = (data.images - plain.images)[:, 0]  # (B, H, W): the nodules alone
    assert (bump[data.kind == 2] == 0).all() and (bump.flatten(1)[data.kind < 2].amax(-1) > 0.1).all()
    # the brightest nodule pixel lies inside the lungs for a positive, outside for a distractor
    peak_inside = data.lungs.flatten(1).gather(1, bump.flatten(1).argmax(-1, keepdim=True))[:, 0]
    assert peak_inside[data.kind == 0].all() and not peak_inside[data.kind == 1].any()
    # two lung fields, one per half of the image
    half = data.lungs.shape[-1] // 2
    assert data.lungs[..., :half].flatten(1).any(-1).all() and data.lungs[..., half:].flatten(1).any(-1).all()


def test_roc_auc_counts_ordered_pairs_and_half_ties():
    from attnbook.mechanisms.multi_scale_heads import roc_auc

    scores = torch.tensor([0.9, 0.4, 0.4, 0.1, 0.8])
    labels = torch.tensor([1, 1, 0, 0, 0])
    # pairs (pos, neg): 0.9 beats all 3; 0.4 ties one, beats 0.1, loses to 0.8 -> (3 + 1.5) / 6
    assert roc_auc(scores, labels) == pytest.approx(4.5 / 6)
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(scores, torch.ones(5))
