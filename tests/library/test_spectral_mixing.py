"""Library tests for chapter 06: attnbook/mechanisms/spectral_mixing.py.

Anchors: the layer is a per-channel circular convolution by irfft2(W) (checked against
F.conv2d on a circularly padded grid), W ≡ 1 is the identity, a phase ramp is torch.roll,
and rolling the token grid rolls the output (translation equivariance).
"""

import pytest
import torch
import torch.nn.functional as F

from attnbook.chapters import by_number
from attnbook.mechanisms import spectral_mixing as mechanism
from attnbook.mechanisms.spectral_mixing import (
    PatchEmbed,
    SpectralBlock,
    SpectralGating,
    classify,
    factor_accuracy,
    filter_kernel,
    shift_filter,
    spectformer,
    spectral_gating,
    train_classifier,
)
from attnbook.models import Block, ModelConfig
from attnbook.tasks.grating_squares import grating_squares

CHAPTER = by_number("06")
GRIDS = [(6, 6), (6, 5), (4, 6), (3, 7), (1, 4), (5, 1)]  # square, odd widths, non-square, one row/column


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _inputs(h, w, C=3, B=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, h * w, C, generator=g, dtype=dtype)
    weight = torch.randn(h, w // 2 + 1, C, 2, generator=g, dtype=dtype)
    return x, weight


def _circular_depthwise_conv(x, kernel, h, w):
    """y[y0, x0, c] = sum_{dy, dx} K_c[dy, dx] x[(y0 - dy) mod h, (x0 - dx) mod w, c], via F.conv2d."""
    B, N, C = x.shape
    grid = x.reshape(B, h, w, C).permute(0, 3, 1, 2)  # (B, C, h, w)
    # conv2d correlates: flip the kernel and pad h-1 rows on top, w-1 columns on the left
    padded = F.pad(grid, (w - 1, 0, h - 1, 0), mode="circular")
    out = F.conv2d(padded, kernel.flip(-2, -1)[:, None], groups=C)  # (B, C, h, w)
    return out.permute(0, 2, 3, 1).reshape(B, N, C)


@pytest.mark.parametrize("hw", GRIDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_a_circular_depthwise_convolution_by_irfft2_of_the_filter(hw, dtype):
    h, w = hw
    x, weight = _inputs(h, w, dtype=dtype)
    kernel = torch.fft.irfft2(torch.view_as_complex(weight.double()), s=(h, w), dim=(0, 1))  # (h, w, C)
    expected = _circular_depthwise_conv(x.double(), kernel.permute(2, 0, 1), h, w)
    out = spectral_gating(x, weight, (h, w))
    assert out.shape == x.shape and out.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), expected, **tol)
    torch.testing.assert_close(filter_kernel(weight, (h, w)).double(), kernel.permute(2, 0, 1), **tol)


@pytest.mark.parametrize("hw", GRIDS)
def test_a_unit_filter_is_the_identity(hw):
    h, w = hw
    x, weight = _inputs(h, w)
    ones = torch.zeros_like(weight)
    ones[..., 0] = 1.0
    torch.testing.assert_close(spectral_gating(x, ones, (h, w)), x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "hw, shift", [((6, 5), (2, 3)), ((4, 6), (-1, 2)), ((7, 3), (3, 0)), ((5, 8), (0, -5))]
)
def test_a_phase_ramp_is_torch_roll(hw, shift):
    h, w = hw
    x, _ = _inputs(h, w, C=4)
    out = spectral_gating(x, shift_filter((h, w), 4, shift), (h, w))
    expected = torch.roll(x.reshape(2, h, w, 4), shifts=shift, dims=(1, 2)).reshape(2, h * w, 4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_rolling_the_grid_rolls_the_output():
    h, w = 5, 6
    x, weight = _inputs(h, w)

    def roll(t):
        return torch.roll(t.reshape(2, h, w, -1), shifts=(2, -1), dims=(1, 2)).reshape(2, h * w, -1)

    torch.testing.assert_close(
        spectral_gating(roll(x), weight, (h, w)), roll(spectral_gating(x, weight, (h, w)))
    )


def test_without_s_an_odd_width_comes_back_one_column_short():
    # why s=(h, w) matters: irfft2 guesses the width 2·(w//2) from the w//2+1 columns
    x = torch.randn(1, 6, 5, 2, dtype=torch.float64)
    assert torch.fft.irfft2(torch.fft.rfft2(x, dim=(1, 2)), dim=(1, 2)).shape[2] == 4
    assert spectral_gating(x.reshape(1, 30, 2), shift_filter((6, 5), 2, (0, 0)), (6, 5)).shape == (1, 30, 2)


def test_half_precision_is_computed_in_float32():
    x, weight = _inputs(4, 6, dtype=torch.float32)
    out = spectral_gating(x.half(), weight.half(), (4, 6))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, spectral_gating(x.half().float(), weight.half().float(), (4, 6)))


def test_module_matches_the_function_and_learns():
    torch.manual_seed(0)
    layer = SpectralGating((3, 5), 4)
    assert layer.weight.shape == (3, 3, 4, 2)
    assert 0.005 < layer.weight.std().item() < 0.05
    x = torch.randn(2, 15, 4)
    out = layer(x)
    torch.testing.assert_close(out, spectral_gating(x, layer.weight, (3, 5)))
    out.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_bad_input_is_refused_with_a_clear_error():
    x, weight = _inputs(4, 6)
    with pytest.raises(ValueError, match="N = 24"):
        spectral_gating(x, weight, (4, 5))
    with pytest.raises(ValueError, match="weight must have shape"):
        spectral_gating(x, weight[:, :3], (4, 6))
    with pytest.raises(ValueError, match="weight must have shape"):
        spectral_gating(x, weight[..., :2, :], (4, 6))
    with pytest.raises(ValueError, match="x must have shape"):
        spectral_gating(x[0], weight, (4, 6))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        spectral_gating(x.long(), weight, (4, 6))
    with pytest.raises(TypeError, match="hw must be a pair"):
        spectral_gating(x, weight, 24)
    with pytest.raises(TypeError, match="must be an integer"):
        spectral_gating(x, weight, (4.0, 6))
    with pytest.raises(ValueError, match=">= 1"):
        SpectralGating((0, 6), 3)


def _config(layers, H=3):
    return ModelConfig(D=12, H=H, layers=layers, n_out=4, mlp_ratio=2, causal=False)


def _encode(model, x):
    for block in model.blocks:
        x = block(x)  # (B, N, D)
    return x


def test_no_spectral_block_is_a_vit_encoder_with_nn_multihead_attention():
    torch.manual_seed(0)
    model = spectformer(_config(2), (3, 5), 0, torch.nn.Identity()).double()
    x = torch.randn(2, 15, 12, dtype=torch.float64)
    expected = x
    for block in model.blocks:
        attn = block.attn
        reference = torch.nn.MultiheadAttention(12, 3, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            reference.in_proj_weight.copy_(torch.cat([attn.w_q.weight, attn.w_k.weight, attn.w_v.weight]))
            reference.in_proj_bias.copy_(torch.cat([attn.w_q.bias, attn.w_k.bias, attn.w_v.bias]))
            reference.out_proj.weight.copy_(attn.w_o.weight)
            reference.out_proj.bias.copy_(attn.w_o.bias)
        # x <- x + MHSA(LN1(x)); x <- x + MLP(LN2(x))
        h = block.norm1(expected)
        expected = expected + reference(h, h, h, need_weights=False)[0]
        expected = expected + block.mlp(block.norm2(expected))
    torch.testing.assert_close(_encode(model, x), expected)


def test_all_blocks_spectral_is_gfnet():
    torch.manual_seed(0)
    h, w = 4, 5
    model = spectformer(_config(3), (h, w), 3, torch.nn.Identity())
    assert all(isinstance(b, SpectralBlock) for b in model.blocks)
    x = torch.randn(2, h * w, 12)
    expected = x
    for block in model.blocks:
        # GFNet: x <- x + MLP(LN2(irfft2(rfft2(LN1(x)) ⊙ W, s=(h, w))))
        grid = block.norm1(expected).reshape(2, h, w, 12)
        W = torch.view_as_complex(block.filter.weight)
        mixed = torch.fft.irfft2(
            torch.fft.rfft2(grid, dim=(1, 2), norm="ortho") * W, s=(h, w), dim=(1, 2), norm="ortho"
        )
        expected = expected + block.mlp(block.norm2(mixed.reshape(2, h * w, 12)))
    torch.testing.assert_close(_encode(model, x), expected)


@pytest.mark.parametrize("n_spectral", [0, 1, 2, 3])
def test_the_first_blocks_are_spectral_and_heads_are_a_parameter(n_spectral):
    h, w, D = 4, 6, 12
    model = spectformer(_config(3, H=4), (h, w), n_spectral, torch.nn.Identity())
    kinds = [isinstance(b, SpectralBlock) for b in model.blocks]
    assert kinds == [True] * n_spectral + [False] * (3 - n_spectral)
    assert all(isinstance(b, Block) and b.attn.H == 4 for b in model.blocks[n_spectral:])
    ln, mlp = 2 * 2 * D, (D * 2 * D + 2 * D) + (2 * D * D + D)
    spectral = h * (w // 2 + 1) * D * 2 + ln + mlp  # filter + two LayerNorms + MLP
    attention = 4 * (D * D + D) + ln + mlp
    blocks = sum(p.numel() for p in model.blocks.parameters())
    assert blocks == n_spectral * spectral + (3 - n_spectral) * attention
    assert model(torch.randn(2, h * w, D)).shape == (2, h * w, 4)


def test_spectformer_refuses_bad_settings():
    with pytest.raises(ValueError, match="n_spectral must be <="):
        spectformer(_config(2), (3, 5), 3, torch.nn.Identity())
    with pytest.raises(ValueError, match="causal"):
        spectformer(ModelConfig(D=12, H=3, layers=2, n_out=4), (3, 5), 1, torch.nn.Identity())
    with pytest.raises(TypeError, match="n_spectral must be an integer"):
        spectformer(_config(2), (3, 5), 1.0, torch.nn.Identity())
    with pytest.raises(ValueError, match="takes no mask"):
        SpectralBlock(_config(1), (3, 5))(torch.randn(1, 15, 12), mask=torch.ones(15, 15, dtype=torch.bool))


def test_patch_embed_cuts_row_major_patches():
    embed = PatchEmbed(3, 2, 5)
    images = torch.randn(2, 3, 4, 6)
    tokens = embed(images)
    assert tokens.shape == (2, 6, 5)  # a 2 × 3 grid of patches
    # token 4 is grid row 1, column 1: pixels [2:4, 2:4]
    patch = images[:, :, 2:4, 2:4].reshape(2, -1)
    torch.testing.assert_close(tokens[:, 4], embed.proj(patch))


def test_classify_is_global_average_pooling_before_the_readout():
    torch.manual_seed(0)
    config = ModelConfig(D=12, H=3, layers=2, n_out=4, max_len=16, mlp_ratio=2, causal=False)
    model = spectformer(config, (4, 4), 1, PatchEmbed(3, 2, 12))
    images = torch.randn(3, 3, 8, 8)
    x = model.embed(images) + model.pos.weight[:16]
    pooled = model.norm(_encode(model, x)).mean(1)  # SpectFormer: head(LN(x).mean(1))
    torch.testing.assert_close(classify(model, images), model.readout(pooled))


def test_grating_squares_factors_and_a_short_training_run():
    data = grating_squares(200, size=8, patch=2, n_colours=2, generator=torch.Generator().manual_seed(0))
    assert data.images.shape == (200, 3, 8, 8)
    assert torch.equal(data.target, 2 * data.frequency + data.same)
    assert (data.squares[:, 0] != data.squares[:, 1]).all()
    # the two squares' pixels: equal colours exactly when same == 1
    grid = data.images.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)).flatten(2)  # (B, 3, 16)
    a = grid[torch.arange(200), :, data.squares[:, 0]]
    b = grid[torch.arange(200), :, data.squares[:, 1]]
    assert torch.equal((a == b).all(1).long(), data.same)
    model = train_classifier(1, 0, data, grid=4, patch=2, D=8, H=2, steps=3)
    result = factor_accuracy(model, data)
    assert set(result) == {"class", "frequency", "same"} and all(0 <= v <= 1 for v in result.values())
