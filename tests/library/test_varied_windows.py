"""Library tests for chapter 19: attnbook/mechanisms/varied_windows.py.

VSA is checked against an explicit per-window reference built on torch's own SDPA (no sampling):
zero offsets and scales give plain window attention, one window over the whole map gives global
attention, an offset of one window gives window attention on keys/values shifted with zero fill,
and a scale of -1 collapses every window onto its centre. VWA's geometry is checked by slicing.
"""

import pytest
import torch
import torch.nn.functional as F

from attnbook.chapters import by_number
from attnbook.mechanisms import varied_windows as mechanism
from attnbook.mechanisms.varied_windows import (
    VariedSizeWindowAttention,
    WindowRegression,
    context_windows,
    copy_shift_pad,
    space_to_depth,
    vsa_attention,
    vsa_grid,
    vwa_flops,
)

CHAPTER = by_number("19")


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _window_reference(q, k, v, w, bias=None):
    """W-MSA with explicit loops over the windows and torch's SDPA inside each."""
    BH, d, H, W = q.shape
    out = torch.zeros_like(q)
    for a in range(H // w):
        for b in range(W // w):
            sl = (slice(None), slice(None), slice(a * w, a * w + w), slice(b * w, b * w + w))
            qs, ks, vs = (t[sl].flatten(2).transpose(1, 2) for t in (q, k, v))  # (BH, w², d)
            mask = None if bias is None else bias
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask)
            out[sl] = o.transpose(1, 2).reshape(BH, -1, w, w)
    return out


def _zeros(BH, H, W, w, dtype=torch.float64):
    return torch.zeros(BH, 2, H // w, W // w, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H, W, w", [(12, 20, 4), (6, 9, 3), (8, 8, 8)])
def test_zero_offsets_and_scales_sample_the_map_itself(H, W, w, dtype):
    x = torch.randn(3, 5, H, W, dtype=dtype)
    grid = vsa_grid(H, W, w, _zeros(3, H, W, w, dtype), _zeros(3, H, W, w, dtype))
    assert grid.shape == (3, H, W, 2) and grid.dtype == dtype
    y = F.grid_sample(x, grid, align_corners=True)
    torch.testing.assert_close(y, x, atol=3e-5 if dtype == torch.float32 else 1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_init_is_window_attention_with_relative_bias(dtype):
    BH, d, H, W, w = 4, 6, 12, 20, 4
    q, k, v = (torch.randn(BH, d, H, W, dtype=dtype) for _ in range(3))
    bias = torch.randn(BH, w * w, w * w, dtype=dtype)
    grid = vsa_grid(H, W, w, _zeros(BH, H, W, w, dtype), _zeros(BH, H, W, w, dtype))
    out = vsa_attention(q, k, v, grid, w, bias)
    torch.testing.assert_close(out, _window_reference(q, k, v, w, bias))


def test_one_window_over_the_map_is_global_attention():
    BH, d, H, w = 3, 5, 6, 6
    q, k, v = (torch.randn(BH, d, H, H, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(w * w, w * w, dtype=torch.float64)
    grid = vsa_grid(H, H, w, _zeros(BH, H, H, w), _zeros(BH, H, H, w))
    out = vsa_attention(q, k, v, grid, w, bias)
    flat = [t.flatten(2).transpose(1, 2) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*flat, attn_mask=bias).transpose(1, 2).reshape(BH, d, H, H)
    torch.testing.assert_close(out, expected)


def test_an_offset_of_one_window_reads_the_next_window_with_zero_fill():
    BH, d, H, W, w = 2, 4, 8, 12, 4
    q, k, v = (torch.randn(BH, d, H, W, dtype=torch.float64) for _ in range(3))
    off = _zeros(BH, H, W, w)
    # one window along x is w pixels = 2w/(W-1) normalised, and the offset is divided by W/w
    off[:, 0] = 2 * W / (W - 1)
    grid = vsa_grid(H, W, w, off, _zeros(BH, H, W, w))
    shifted = [torch.cat([t[..., w:], torch.zeros_like(t[..., :w])], dim=-1) for t in (k, v)]
    torch.testing.assert_close(vsa_attention(q, k, v, grid, w), _window_reference(q, *shifted, w))


def test_a_scale_of_minus_one_collapses_onto_the_window_centre():
    BH, d, H, W, w = 2, 3, 8, 12, 4
    q, k, v = (torch.randn(BH, d, H, W, dtype=torch.float64) for _ in range(3))
    grid = vsa_grid(H, W, w, _zeros(BH, H, W, w), -torch.ones(BH, 2, H // w, W // w, dtype=torch.float64))
    out = vsa_attention(q, k, v, grid, w, torch.randn(w * w, w * w, dtype=torch.float64))
    # every query outputs the bilinear V at the centre: the mean of the window's 4 middle pixels
    c = w // 2
    for a in range(H // w):
        for b in range(W // w):
            centre = v[:, :, a * w + c - 1 : a * w + c + 1, b * w + c - 1 : b * w + c + 1].mean(dim=(-2, -1))
            block = out[:, :, a * w : a * w + w, b * w : b * w + w]
            torch.testing.assert_close(block, centre[..., None, None].expand_as(block))


def test_gradients_through_the_sampling_match_finite_differences():
    BH, d, H, W, w = 2, 2, 4, 6, 2
    q, k, v = (torch.randn(BH, d, H, W, dtype=torch.float64) for _ in range(3))
    off = (0.3 * torch.randn(BH, 2, H // w, W // w, dtype=torch.float64)).requires_grad_()
    sc = (0.3 * torch.randn(BH, 2, H // w, W // w, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda o, s: vsa_attention(q, k, v, vsa_grid(H, W, w, o, s), w), (off, sc)
    )


def test_window_regression_shapes_zero_init_and_parameters():
    reg = WindowRegression(C=8, heads=3, w=4)
    x = torch.randn(2, 8, 12, 16)
    y = reg(x)
    assert y.shape == (6, 2, 3, 4)
    assert torch.equal(y, torch.zeros_like(y))
    assert sum(p.numel() for p in reg.parameters()) == 8 * 6 + 6


def test_the_module_at_initialisation_is_window_attention_with_its_weights():
    torch.manual_seed(0)
    C, heads, w, H, W = 8, 2, 4, 8, 12
    m = VariedSizeWindowAttention(C, heads, w).double()
    x = torch.randn(2, C, H, W, dtype=torch.float64)
    out, grid = m(x, return_grid=True)
    assert grid.shape == (2 * heads, H, W, 2)
    q, k, v = (t.reshape(2 * heads, C // heads, H, W) for t in m.qkv(x).chunk(3, dim=1))
    bias = m.relative_bias().repeat(2, 1, 1)
    ref = m.proj(_window_reference(q, k, v, w, bias).reshape(2, C, H, W))
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert m.offsets.conv.weight.grad.abs().sum() > 0 and m.scales.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("R, P", [(2, 2), (4, 2), (8, 2), (2, 4)])
def test_copy_shift_pad_interior_and_strips(R, P):
    H, W = 8 * P, 8 * P + 2 * P
    x = torch.randn(2, 3, H, W)
    y = copy_shift_pad(x, R, P)
    p = (R - 1) * P // 2
    assert y.shape == (2, 3, H + 2 * p, W + 2 * p)
    assert torch.equal(y[..., p : p + H, p : p + W], x)
    a, b = (R + 1) * P // 2, R * P
    assert torch.equal(y[..., p : p + H, :p], x[..., a:b])
    assert torch.equal(y[..., p : p + H, p + W :], x[..., W - b : W - a])
    assert torch.equal(y[..., :p, p : p + W], x[..., a:b, :])
    assert torch.equal(y[..., p + H :, p : p + W], x[..., H - b : H - a, :])


def test_context_windows_are_centred_slices_and_r1_is_the_query_window():
    R, P, H, W = 4, 2, 16, 12
    x = torch.randn(2, 3, H, W)
    ctx = context_windows(x, R, P)
    nh, nw = H // P, W // P
    assert ctx.shape == (2 * nh * nw, 3, R * P, R * P)
    padded = copy_shift_pad(x, R, P)
    p = (R - 1) * P // 2
    for i, (bimg, a, b) in enumerate((bi, a, b) for bi in range(2) for a in range(nh) for b in range(nw)):
        assert torch.equal(ctx[i], padded[bimg, :, a * P : a * P + R * P, b * P : b * P + R * P])
        # centred: the query window sits in the middle of its context window
        assert torch.equal(ctx[i][:, p : p + P, p : p + P], x[bimg, :, a * P : a * P + P, b * P : b * P + P])
    q1 = context_windows(x, 1, P)
    assert torch.equal(q1[5], x[0, :, 0:P, 5 * P : 6 * P])


def test_space_to_depth_by_index_and_round_trip():
    M, C, R, P = 3, 2, 2, 3
    ctx = torch.randn(M, C, R * P, R * P, dtype=torch.float64)
    out = space_to_depth(ctx, R)
    assert out.shape == (M, R * R * C, P, P)
    for rh in range(R):
        for rw in range(R):
            for c in range(C):
                assert torch.equal(out[:, (rh * R + rw) * C + c], ctx[:, c, rh::R, rw::R])
    back = out.reshape(M, R, R, C, P, P).permute(0, 3, 4, 1, 5, 2).reshape(M, C, R * P, R * P)
    assert torch.equal(back, ctx)


def test_vwa_flops_are_independent_of_r_after_rescaling():
    assert vwa_flops(16, 16, 32, 2, 1, True) == 64 * 4 * 4 * 4 * 32
    assert {vwa_flops(16, 16, 32, 2, R, True) for R in (1, 2, 4, 8)} == {vwa_flops(16, 16, 32, 2, 1, False)}
    assert [vwa_flops(16, 16, 32, 2, R, False) // vwa_flops(16, 16, 32, 2, R, True) for R in (2, 4)] == [
        4,
        16,
    ]


def test_bad_inputs_raise_clear_errors():
    z = torch.zeros(1, 2, 3, 5)
    with pytest.raises(ValueError, match="multiples"):
        vsa_grid(12, 18, 4, z, z)
    with pytest.raises(ValueError, match="off"):
        vsa_grid(12, 20, 4, torch.zeros(1, 3, 3, 5), z)
    with pytest.raises(TypeError, match="floating"):
        vsa_grid(12, 20, 4, z.long(), z)
    with pytest.raises(TypeError, match="w"):
        vsa_grid(12, 20, 4.0, z, z)
    with pytest.raises(ValueError, match="even"):
        copy_shift_pad(torch.zeros(1, 1, 9, 9), 2, 3)
    with pytest.raises(ValueError, match="grid"):
        q = torch.zeros(2, 3, 4, 4)
        vsa_attention(q, q, q, torch.zeros(2, 4, 4, 3), 2)


def test_tensors_follow_the_input_device_and_dtype():
    z = torch.zeros(2, 2, 3, 5, device="meta", dtype=torch.float32)
    grid = vsa_grid(12, 20, 4, z, z)
    assert grid.device.type == "meta" and grid.shape == (2, 12, 20, 2)
    q = torch.zeros(2, 3, 12, 20, device="meta")
    assert vsa_attention(q, q, q, grid, 4).device.type == "meta"
    assert copy_shift_pad(torch.zeros(1, 2, 8, 8, device="meta"), 2, 2).device.type == "meta"
