"""Library tests for chapter 18: attnbook/mechanisms/shifted_windows.py."""

import pytest
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import shifted_windows as mechanism
from attnbook.mechanisms.shifted_windows import (
    GridWindowMask,
    RandomShiftMask,
    grid_window_mask,
    msw_partition,
    msw_reverse,
    msw_shift,
    msw_window,
    share_probability,
    window_attention,
    window_attention_flops,
    window_index,
    window_partition,
)

CHAPTER = by_number("18")
GRIDS = ((6, 10), (8, 8), (12, 4))


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _loop_window(r, c, H, W, window, shift, wrap):
    """The window of (r, c), written out with Python integers."""
    (wh, ww), (sh, sw) = window, shift
    if wrap:
        return ((r - sh) % H) // wh, ((c - sw) % W) // ww
    return (r - sh) // wh, (c - sw) // ww


def _loop_mask(H, W, window, shift, wrap):
    cells = [(r, c) for r in range(H) for c in range(W)]
    labels = [_loop_window(r, c, H, W, window, shift, wrap) for r, c in cells]
    return torch.tensor([[a == b for b in labels] for a in labels])


def _swin_region_mask(H, W, window, shift):
    """Swin's construction: label the regions of the rolled map, keep pairs of one region in one window."""
    (wh, ww), (sh, sw) = window, shift
    img = torch.zeros(H, W, dtype=torch.long)
    count = 0
    for hs in (slice(0, H - wh), slice(H - wh, H - sh), slice(H - sh, H)):
        for ws in (slice(0, W - ww), slice(W - ww, W - sw), slice(W - sw, W)):
            img[hs, ws] = count
            count += 1
    # the region label sits at rolled coordinates; read it back at the original token
    region = torch.roll(img, shifts=(sh, sw), dims=(0, 1)).reshape(-1)
    same_window = _loop_mask(H, W, window, shift, True)
    return same_window & (region[:, None] == region[None, :])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("m", range(4))
@pytest.mark.parametrize("B", (1, 3))
def test_msw_partition_round_trip_is_exact(grid, m, B):
    H, W = grid
    x = torch.randn(B, H, W, 5, dtype=torch.float64)
    shift = msw_shift(H, W, m)
    win = msw_partition(x, shift)
    assert win.shape == (4 * B, H * W // 4, 5)
    assert torch.equal(msw_reverse(win, H, W, shift), x)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("m", range(4))
def test_labelled_tokens_land_in_their_predicted_windows(grid, m):
    H, W = grid
    window, shift = msw_window(H, W), msw_shift(H, W, m)
    ids = torch.arange(2 * H * W, dtype=torch.float64).reshape(2, H, W, 1)
    win = msw_partition(ids, shift)  # (8, H·W/4, 1)
    for row in range(win.shape[0]):
        b, k = divmod(row, 4)
        expected = {
            b * H * W + r * W + c
            for r in range(H)
            for c in range(W)
            if _loop_window(r, c, H, W, window, shift, True) == divmod(k, 2)
        }
        assert {int(t) for t in win[row, :, 0]} == expected


@pytest.mark.parametrize(
    "grid,window,shift",
    [
        ((6, 10), (3, 5), (1, 2)),
        ((8, 8), (4, 4), (3, 1)),
        ((12, 4), (4, 2), (0, 1)),
        ((5, 7), (5, 7), (2, 3)),
    ],
)
@pytest.mark.parametrize("wrap", (True, False))
def test_mask_matches_the_window_formula(grid, window, shift, wrap):
    if not wrap and (shift[0] >= window[0] or shift[1] >= window[1]):
        pytest.skip("Swin's shift lies below the window")
    expected = _loop_mask(*grid, window, shift, wrap)
    assert torch.equal(grid_window_mask(grid, window, shift, wrap=wrap), expected)
    labels = window_index(grid, window, shift, wrap=wrap)
    assert torch.equal(labels[:, None] == labels[None, :], expected)


@pytest.mark.parametrize("grid,window,shift", [((8, 8), (4, 4), (2, 2)), ((6, 9), (3, 3), (1, 2))])
def test_swin_mask_is_swins_region_construction(grid, window, shift):
    expected = _swin_region_mask(*grid, window, shift)
    assert torch.equal(grid_window_mask(grid, window, shift, wrap=False), expected)
    # HiDiffusion keeps the wrapped pairs that Swin hides
    assert (grid_window_mask(grid, window, shift) & ~expected).any()


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("m", range(4))
def test_masked_attention_equals_roll_partition_attend_merge(dtype, atol, grid, m):
    torch.manual_seed(m)
    H, W = grid
    window, shift = msw_window(H, W), msw_shift(H, W, m)
    plain = MultiHeadAttention(12, 3).to(dtype)
    masked = MultiHeadAttention(12, 3, mask_mod=GridWindowMask(grid, window, shift)).to(dtype)
    masked.load_state_dict(plain.state_dict())
    x = torch.randn(2, H * W, 12, dtype=dtype)
    explicit = window_attention(x, plain, grid, window, shift)
    torch.testing.assert_close(masked(x), explicit, atol=atol, rtol=0)


@pytest.mark.parametrize("shift", [(0, 0), (1, 2), (3, 1)])
def test_masked_attention_equals_torch_with_the_same_mask(shift):
    torch.manual_seed(0)
    grid, window = (6, 8), (3, 4)
    ref = nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    ours = MultiHeadAttention.from_torch(ref)
    ours.mask_mod = GridWindowMask(grid, window, shift)
    x = torch.randn(3, 48, 16, dtype=torch.float64)
    allowed = _loop_mask(*grid, window, shift, True)
    expected, _ = ref(x, x, x, attn_mask=~allowed)  # torch: True = hidden
    torch.testing.assert_close(ours(x), expected, atol=1e-12, rtol=0)


def test_one_window_over_the_grid_is_full_attention():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    ours = MultiHeadAttention.from_torch(ref)
    ours.mask_mod = GridWindowMask((5, 7), (5, 7), (2, 3))
    x = torch.randn(2, 35, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-12, rtol=0)


def test_shift_by_the_window_is_no_shift_and_equivariance_holds():
    torch.manual_seed(2)
    grid, window, s = (8, 6), (4, 3), (2, 1)
    attn = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 8, 6, 8, dtype=torch.float64)

    def run(t, shift):
        return window_attention(t.reshape(2, 48, 8), attn, grid, window, shift).reshape(2, 8, 6, 8)

    assert torch.equal(grid_window_mask(grid, window, (4, 3)), grid_window_mask(grid, window, (0, 0)))
    torch.testing.assert_close(run(x, (4, 3)), run(x, (0, 0)), atol=1e-12, rtol=0)
    # MSW-MSA_s(x) = roll_s(MSW-MSA_0(roll_{−s}(x)))
    rolled = torch.roll(run(torch.roll(x, (-s[0], -s[1]), (1, 2)), (0, 0)), s, (1, 2))
    torch.testing.assert_close(run(x, s), rolled, atol=1e-12, rtol=0)
    assert not torch.allclose(run(x, s), run(x, (0, 0)))


def test_share_probability_matches_monte_carlo_and_is_symmetric():
    H, W = 8, 12
    exact = share_probability(H, W)
    masker = RandomShiftMask((H, W), torch.Generator().manual_seed(0))
    draws = 400
    estimate = sum(masker(H * W, H * W).double() for _ in range(draws)) / draws
    assert (exact - estimate).abs().max() < 0.05
    assert torch.equal(exact, exact.T) and torch.all(exact.diagonal() == 1)
    # four equally likely shifts: every probability is a multiple of 1/4
    assert torch.equal(exact * 4, (exact * 4).round())


def test_random_shift_is_reproducible_and_covers_the_four_shifts():
    a = RandomShiftMask((8, 8), torch.Generator().manual_seed(3))
    b = RandomShiftMask((8, 8), torch.Generator().manual_seed(3))
    seen_a = [a.draw() for _ in range(40)]
    assert seen_a == [b.draw() for _ in range(40)]
    assert set(seen_a) == {msw_shift(8, 8, m) for m in range(4)} == {(0, 0), (1, 1), (2, 2), (3, 3)}
    layer = mechanism.msw_attention(8, 2, (8, 8), torch.Generator().manual_seed(0))
    out = layer(torch.randn(1, 64, 8))
    assert out.shape == (1, 64, 8) and layer.mask_mod.last_shift is not None


@pytest.mark.parametrize("g,ratio", [(2, 4), (4, 16)])
def test_window_flops_ratio_is_exact(g, ratio):
    full = window_attention_flops(16, 32, 64, 1)
    assert full == 4 * (16 * 32) ** 2 * 64
    assert full == ratio * window_attention_flops(16, 32, 64, g)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="even"):
        msw_window(7, 8)
    with pytest.raises(ValueError, match="divide"):
        grid_window_mask((6, 8), (4, 4))
    with pytest.raises(TypeError, match="shift"):
        grid_window_mask((8, 8), (4, 4), (1.5, 0))
    with pytest.raises(TypeError, match="grid"):
        grid_window_mask(64, (4, 4))
    with pytest.raises(ValueError, match="shift"):
        grid_window_mask((8, 8), (4, 4), (4, 0), wrap=False)
    with pytest.raises(ValueError, match="m must"):
        msw_shift(8, 8, 4)
    with pytest.raises(ValueError, match="x must"):
        msw_partition(torch.zeros(8, 8, 3), (0, 0))
    with pytest.raises(ValueError, match="N = M"):
        GridWindowMask((4, 4), (2, 2))(15, 15)
    with pytest.raises(ValueError, match="win must"):
        msw_reverse(torch.zeros(3, 16, 2), 8, 8, (0, 0))


def test_tensors_follow_the_input_device_and_dtype():
    meta = torch.device("meta")
    assert grid_window_mask((4, 6), (2, 3), (1, 1), device=meta).device == meta
    assert window_index((4, 6), (2, 3), device=meta).device == meta
    x = torch.empty(2, 4, 6, 3, device=meta, dtype=torch.float16)
    win = window_partition(x, (2, 3), (1, 2))
    assert win.device == meta and win.dtype == torch.float16 and win.shape == (8, 6, 3)
    for dtype in (torch.float32, torch.float64):
        y = torch.randn(1, 4, 4, 2, dtype=dtype)
        assert msw_partition(y, (1, 1)).dtype == dtype
