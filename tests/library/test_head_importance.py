"""attnbook.mechanisms.head_importance: gates, ablation, Taylor scores, distance profiles, recentring."""

import copy
import math

import pytest
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import head_importance as mechanism
from attnbook.mechanisms.head_importance import (
    HeadMask,
    ablation_importance,
    distance_bins,
    distance_profile,
    head_masked_transformer,
    masked_mha,
    mean_attention_distance,
    recenter,
    set_head_masks,
    taylor_importance,
)
from attnbook.models import ModelConfig
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

CHAPTER = by_number("11")
DTYPES = (torch.float32, torch.float64)


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


# --- the gates ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,D,H", [(2, 7, 15, 5), (1, 1, 6, 2), (3, 4, 12, 4)])
def test_masked_mha_with_ones_is_torch_multihead_attention(dtype, B, N, D, H):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(dtype)
    x = torch.randn(B, N, D, dtype=dtype)
    expected, expected_w = ref(x, x, x, need_weights=True, average_attn_weights=False)
    out, weights = masked_mha(x, ref.in_proj_weight, ref.out_proj.weight, H, torch.ones(H, dtype=dtype))
    torch.testing.assert_close(out, expected, atol=_tol(dtype), rtol=_tol(dtype))
    torch.testing.assert_close(weights, expected_w, atol=_tol(dtype), rtol=_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_zero_gate_equals_zeroing_the_heads_rows_of_w_o(dtype):
    torch.manual_seed(1)
    B, N, D, H = 2, 5, 12, 3
    d = D // H
    ref = nn.MultiheadAttention(D, H, bias=False, batch_first=True).to(dtype)
    x = torch.randn(B, N, D, dtype=dtype)
    for h in range(H):
        mask = torch.ones(H, dtype=dtype)
        mask[h] = 0
        w_o = ref.out_proj.weight.detach().clone()
        w_o[:, h * d : (h + 1) * d] = 0  # rows h·d ... of W_O = w_o^T
        pruned = copy.deepcopy(ref)
        with torch.no_grad():
            pruned.out_proj.weight.copy_(w_o)
        expected, expected_w = pruned(x, x, x, need_weights=True, average_attn_weights=False)
        out, weights = masked_mha(x, ref.in_proj_weight, ref.out_proj.weight, H, mask)
        torch.testing.assert_close(out, expected, atol=_tol(dtype), rtol=_tol(dtype))
        torch.testing.assert_close(weights, expected_w, atol=_tol(dtype), rtol=_tol(dtype))


def test_gates_scale_each_head_term_and_leave_the_weights_alone():
    torch.manual_seed(2)
    D, H = 12, 4
    x = torch.randn(2, 6, D, dtype=torch.float64)
    w_qkv, w_o = torch.randn(3 * D, D, dtype=torch.float64), torch.randn(D, D, dtype=torch.float64)
    mask = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    out, weights = masked_mha(x, w_qkv, w_o, H, mask)
    # an explicit loop over heads: Σ_h m_h softmax(q_h k_h^T / sqrt(d)) v_h W_O^h
    d = D // H
    expected = torch.zeros_like(x)
    for h in range(H):
        cols = slice(h * d, (h + 1) * d)
        q, k, v = (x @ w[cols].T for w in w_qkv.chunk(3))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        torch.testing.assert_close(weights[:, h], a)
        expected += mask[h] * (a @ v) @ w_o[:, cols].T
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_head_mask_gate_in_the_core_layer(dtype):
    torch.manual_seed(3)
    D, H = 10, 5
    ref = nn.MultiheadAttention(D, H, batch_first=True).to(dtype)
    layer = MultiHeadAttention.from_torch(ref)
    layer.head_gate = HeadMask(H)
    x = torch.randn(3, 4, D, dtype=dtype)
    expected, _ = ref(x, x, x, need_weights=False)
    torch.testing.assert_close(layer(x), expected, atol=_tol(dtype), rtol=_tol(dtype))  # m = 1
    layer.head_gate.mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    pruned = copy.deepcopy(ref)
    with torch.no_grad():
        pruned.out_proj.weight[:, 2:4] = 0
        pruned.out_proj.weight[:, 8:10] = 0
    torch.testing.assert_close(
        layer(x), pruned(x, x, x, need_weights=False)[0], atol=_tol(dtype), rtol=_tol(dtype)
    )


def _model(seed=0, dtype=torch.float64, layers=2, H=3):
    torch.manual_seed(seed)
    cfg = ModelConfig(D=12, H=H, layers=layers, vocab=7, n_out=4, max_len=8, causal=False)
    return head_masked_transformer(cfg).to(dtype)


def _losses(outputs, targets):
    return nn.functional.cross_entropy(outputs[:, -1], targets, reduction="none")  # (B,)


def test_ablation_equals_a_model_with_the_heads_w_o_rows_zeroed():
    model = _model()
    g = torch.Generator().manual_seed(4)
    tokens, targets = torch.randint(7, (16, 6), generator=g), torch.randint(4, (16,), generator=g)

    def metric(m):
        with torch.no_grad():
            return -_losses(m(tokens), targets).mean().item()

    importance = ablation_importance(model, metric)
    assert importance.shape == (2, 3)
    full = metric(model)
    for layer in range(2):
        for h in range(3):
            pruned = copy.deepcopy(model)
            with torch.no_grad():
                pruned.blocks[layer].attn.w_o.weight[:, 4 * h : 4 * (h + 1)] = 0
            assert abs(importance[layer, h].item() - (full - metric(pruned))) < 1e-12
    assert importance.abs().max() > 1e-4  # the heads matter for a random model
    assert all(
        torch.equal(g.mask, torch.ones(3, dtype=g.mask.dtype))
        for g in model.modules()
        if isinstance(g, HeadMask)
    )


def test_taylor_equals_a_float64_finite_difference_per_example():
    model = _model(seed=5)
    g = torch.Generator().manual_seed(6)
    tokens, targets = torch.randint(7, (5, 6), generator=g), torch.randint(4, (5,), generator=g)
    scores = taylor_importance(model, tokens, lambda out: _losses(out, targets))
    assert scores.shape == (2, 3) and scores.dtype == torch.float64
    eps = 1e-6
    expected = torch.zeros(2, 3, dtype=torch.float64)
    signed = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for layer in range(2):
            for h in range(3):
                losses = []
                for sign in (1, -1):
                    masks = torch.ones(2, 3, dtype=torch.float64)
                    masks[layer, h] += sign * eps
                    set_head_masks(model, masks)
                    losses.append(_losses(model(tokens), targets))  # (B,) per example
                # mean_x |(L_x(m + ε e) - L_x(m - ε e)) / 2ε|
                expected[layer, h] = ((losses[0] - losses[1]) / (2 * eps)).abs().mean()
                signed[layer, h] = ((losses[0] - losses[1]) / (2 * eps)).mean()
    set_head_masks(model, None)
    torch.testing.assert_close(scores, expected, atol=1e-8, rtol=1e-6)
    # the absolute value is per example: not |mean_x ∂L_x/∂m| (examples disagree in sign here)
    assert (scores > 0).all() and (scores - signed.abs()).max() > 1e-3
    assert all(p.grad is None for p in model.parameters())


# --- distance profiles -------------------------------------------------------------------------
def _profile_loop(attn, G, has_cls, metric, normalize):
    """Every (b, h, i, j) by hand with Python numbers."""
    B, H = attn.shape[:2]
    bins = sorted({round(_dist(i, j, G, metric), 9) for i in range(G * G) for j in range(G * G)})
    total = torch.zeros(H, len(bins), dtype=torch.float64)
    count = [0] * len(bins)
    off = 1 if has_cls else 0
    for i in range(G * G):
        for j in range(G * G):
            count[bins.index(round(_dist(i, j, G, metric), 9))] += 1
    for b in range(B):
        for h in range(H):
            for i in range(G * G):
                row = [float(attn[b, h, i + off, j + off]) for j in range(G * G)]
                s = sum(row)
                for j in range(G * G):
                    total[h, bins.index(round(_dist(i, j, G, metric), 9))] += row[j] / s
    if normalize == "mass":
        return total / (B * G * G)
    return total / (B * torch.tensor(count, dtype=torch.float64))


def _dist(i, j, G, metric):
    dr, dc = abs(i // G - j // G), abs(i % G - j % G)
    return max(dr, dc) if metric == "chebyshev" else math.hypot(dr, dc)


def _random_attention(B, H, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64), -1).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("G,has_cls", [(3, True), (4, False), (1, True), (5, True)])
@pytest.mark.parametrize("metric", ["chebyshev", "euclidean"])
@pytest.mark.parametrize("normalize", ["mass", "mean"])
def test_profiles_match_an_explicit_loop(dtype, G, has_cls, metric, normalize):
    attn = _random_attention(2, 3, G * G + has_cls, dtype)
    got = distance_profile(attn, G, has_cls, metric, normalize)
    assert got.dtype == dtype
    expected = _profile_loop(attn.double(), G, has_cls, metric, normalize)
    torch.testing.assert_close(got.double(), expected, atol=_tol(dtype), rtol=_tol(dtype))
    if normalize == "mass":
        torch.testing.assert_close(
            got.double().sum(-1), torch.ones(3, dtype=torch.float64), atol=_tol(dtype), rtol=0
        )


@pytest.mark.parametrize("metric", ["chebyshev", "euclidean"])
def test_identity_and_uniform_attention(metric):
    G = 6
    N = G * G + 1
    eye = torch.eye(N, dtype=torch.float64).expand(2, 4, N, N)
    profile = distance_profile(eye, G, True, metric, "mass")
    assert torch.equal(profile[:, 0], torch.ones(4, dtype=torch.float64))
    assert torch.equal(profile[:, 1:], torch.zeros_like(profile[:, 1:]))
    uniform = torch.full((1, 2, N, N), 1 / N, dtype=torch.float64)
    mean = distance_profile(uniform, G, True, metric, "mean")
    torch.testing.assert_close(mean, torch.full_like(mean, 1 / (N - 1)))
    # under uniform attention the ring mass is the ring's share of the pairs: ring sizes sum to G²
    mass = distance_profile(uniform, G, True, metric, "mass")
    ring_sizes = mass * G * G  # average number of keys on each ring, per query
    torch.testing.assert_close(ring_sizes.sum(-1), torch.full((2,), float(G * G), dtype=torch.float64))
    assert mean_attention_distance(eye, G).abs().max() == 0


def test_chebyshev_bins_are_rings_and_euclidean_bins_are_distinct_distances():
    assert torch.equal(distance_bins(8), torch.arange(8, dtype=torch.float64))
    expected = sorted({math.hypot(a, b) for a in range(4) for b in range(4)})
    torch.testing.assert_close(distance_bins(4, "euclidean"), torch.tensor(expected, dtype=torch.float64))


def test_the_cls_column_is_dropped_and_rows_renormalised():
    G = 3
    attn = _random_attention(1, 2, G * G + 1, torch.float64, seed=3)
    moved = attn.clone()
    moved[..., 0] *= 5  # more mass on CLS: the patch profile is unchanged after renormalising
    moved = moved / moved.sum(-1, keepdim=True)
    moved[:, :, 0] = torch.softmax(torch.randn(2, G * G + 1, dtype=torch.float64), -1)  # CLS query row
    torch.testing.assert_close(distance_profile(moved, G), distance_profile(attn, G))
    torch.testing.assert_close(mean_attention_distance(moved, G), mean_attention_distance(attn, G))


def test_mean_attention_distance_matches_a_loop():
    G = 4
    attn = _random_attention(2, 3, G * G, torch.float64, seed=7)
    got = mean_attention_distance(attn, G, has_cls=False)
    expected = torch.zeros(3, dtype=torch.float64)
    for h in range(3):
        for b in range(2):
            for i in range(G * G):
                expected[h] += sum(attn[b, h, i, j] * _dist(i, j, G, "euclidean") for j in range(G * G))
    torch.testing.assert_close(got, expected / (2 * G * G))


def test_recenter_puts_the_query_at_the_centre_and_corners_in_their_quadrant():
    G = 4
    for i in range(G * G):
        canvas = recenter(torch.eye(G * G, dtype=torch.float64)[i], G, i)
        assert canvas.shape == (7, 7) and canvas[3, 3] == 1 and canvas.sum() == 1
    row = torch.arange(1.0, G * G + 1)
    top_left = recenter(row, G, 0)  # every key lies below and to the right of patch 0
    assert top_left[3:, 3:].sum() == row.sum() and top_left[3, 3] == 1
    bottom_right = recenter(row, G, G * G - 1)
    assert bottom_right[:4, :4].sum() == row.sum() and bottom_right[3, 3] == G * G
    i = 6  # (1, 2)
    canvas = recenter(row, G, i)
    for j in range(G * G):
        assert canvas[3 + j // G - 1, 3 + j % G - 2] == row[j]


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 3, 8)
    w_qkv, w_o, m = torch.randn(24, 8), torch.randn(8, 8), torch.ones(2)
    with pytest.raises(ValueError, match="n_heads"):
        masked_mha(x, w_qkv, w_o, 3, torch.ones(3))
    with pytest.raises(ValueError, match="head_mask"):
        masked_mha(x, w_qkv, w_o, 2, torch.ones(4))
    with pytest.raises(TypeError, match="dtype"):
        masked_mha(x, w_qkv.double(), w_o, 2, m)
    with pytest.raises(TypeError, match="head_mask"):
        masked_mha(x, w_qkv, w_o, 2, torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="grid"):  # a rectangular grid: 3·4 + 1 tokens
        distance_profile(torch.rand(1, 2, 13, 13), 3)
    with pytest.raises(ValueError, match="normalize"):
        distance_profile(torch.rand(1, 2, 10, 10), 3, normalize="ring")
    with pytest.raises(ValueError, match="metric"):
        distance_profile(torch.rand(1, 2, 10, 10), 3, metric="manhattan")
    with pytest.raises(ValueError, match="attn"):
        distance_profile(torch.rand(2, 10, 10), 3)
    with pytest.raises(ValueError, match="row"):
        recenter(torch.rand(10), 3, 0)
    with pytest.raises(ValueError, match="i must"):
        recenter(torch.rand(9), 3, 9)
    with pytest.raises(ValueError, match="HeadMask"):
        ablation_importance(nn.Linear(2, 2), lambda m: 0.0)
    with pytest.raises(ValueError, match="masks"):
        set_head_masks(_model(), torch.ones(3, 3))


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs(device, dtype):
    x = torch.randn(2, 3, 8, device=device, dtype=dtype)
    w_qkv, w_o = torch.randn(24, 8, device=device, dtype=dtype), torch.randn(8, 8, device=device, dtype=dtype)
    attn = _random_attention(1, 2, 10, dtype).to(device)
    layer = MultiHeadAttention(8, 2, head_gate=HeadMask(2)).to(device, dtype)
    with tensors_without_device_go_to_meta():
        results = [
            *masked_mha(x, w_qkv, w_o, 2, torch.ones(2, device=device, dtype=dtype)),
            distance_profile(attn, 3),
            distance_profile(attn, 3, metric="euclidean", normalize="mean"),
            mean_attention_distance(attn, 3),
            recenter(attn[0, 0, 1, 1:], 3, 4),
            layer(x),
        ]
    assert_follow(results, x.device, dtype)


# --- the chapter's data and patch embedding ------------------------------------------------------
def test_shape_patches_draws_each_shape_and_cuts_row_major_patches():
    from attnbook.tasks import SHAPE_NAMES, shape_patches

    data = shape_patches(
        400, size=8, patch=2, length=5, noise=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert data.images.shape == (400, 8, 8) and data.target.shape == (400,) and data.grid == 4
    assert set(data.target.tolist()) == set(range(len(SHAPE_NAMES)))
    on = data.images.flatten(1).sum(-1)  # pixels of the shape, without noise
    assert torch.all(on[data.target == 0] == 5) and torch.all(on[data.target == 1] == 5)
    assert torch.all(on[data.target == 2] == 2 * 3 - 1)  # two arms of length - 2 sharing a corner
    assert torch.all((on[data.target == 3] >= 4) & (on[data.target == 3] <= 8))  # two 2 × 2 dots, may overlap
    # patch j holds the pixels of rows 2(j // 4) ..., columns 2(j % 4) ...
    j = 6
    r, c = divmod(j, 4)
    torch.testing.assert_close(
        data.patches[:, j], data.images[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].flatten(1)
    )
    again = shape_patches(
        400, size=8, patch=2, length=5, noise=0.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.images, data.images)
    with pytest.raises(ValueError):
        shape_patches(4, size=9, patch=2)


def test_patch_embedding_puts_cls_first_and_a_short_training_run_learns():
    import torch.nn.functional as F

    from attnbook.mechanisms.head_importance import PatchEmbedding
    from attnbook.tasks import shape_patches
    from attnbook.train import train

    torch.manual_seed(0)
    embed = PatchEmbedding(4, 16)
    data = shape_patches(8, size=8, patch=2, generator=torch.Generator().manual_seed(1))
    tokens = embed(data)
    assert tokens.shape == (8, 17, 16)
    torch.testing.assert_close(tokens[:, 0], embed.cls[0].expand(8, 16))
    torch.testing.assert_close(tokens[:, 1:], embed(data.patches)[:, 1:])
    torch.manual_seed(0)
    config = ModelConfig(D=16, H=4, layers=2, n_out=4, max_len=17, mlp_ratio=2, causal=False)
    model = head_masked_transformer(config, embed=PatchEmbedding(4, 16))
    test = shape_patches(256, size=8, patch=2, length=5, generator=torch.Generator().manual_seed(2))
    train(
        model,
        lambda step, g: shape_patches(64, size=8, patch=2, length=5, generator=g),
        lambda m, b: F.cross_entropy(m(b)[:, 0], b.target),
        steps=100,
        lr=3e-3,
        progress=False,
    )
    with torch.no_grad():
        accuracy = (model(test)[:, 0].argmax(-1) == test.target).float().mean().item()
    assert accuracy > 0.33, accuracy  # chance is 0.25 (± 0.03 on 256 images)
