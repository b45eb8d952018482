"""attnbook.mechanisms.gaussian_adaptive against explicit-pdf references, plus its anchors and errors."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attnbook.masks import padding_mask
from attnbook.mechanisms.gaussian_adaptive import (
    GaussianAdaptiveAttention,
    axis_statistics,
    collapse_product,
    gaussian_logits,
    gaussian_weights,
    head_chunks,
    importance_factor,
    multi_head_gaussian_attention,
)
from attnbook.tasks.drifting_layers import drifting_layers, patterns
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

f64 = dict(dtype=torch.float64)


def pdf_reference(x, delta, c, axis=1, eps=1e-8, weights=None):
    """The reference code's arithmetic: product (or weighted sum) of pdfs divided by its sum."""
    m = x.mean(axis, keepdim=True)
    s = torch.sqrt(x.var(axis, keepdim=True) + eps)
    dens = torch.zeros_like(x) if weights is not None else torch.ones_like(x)
    for g in range(len(delta)):
        y = (x - (m + delta[g])) / s
        if weights is None:
            dens = dens * torch.exp(-(y**2) / (2 * c[g] ** 2)) / torch.sqrt(2 * math.pi * c[g] ** 2)
        else:  # the earlier version's mixture: no 1/sqrt(2π c²) factor
            dens = dens + weights[g] * torch.exp(-(y**2) / (2 * c[g] ** 2))
    return dens / dens.sum(axis, keepdim=True)


def reference_block(x, deltas, cs, axis=1):
    """Multi-head reference: n // H per head, the last head takes the remainder, plus residual."""
    n, H = x.shape[axis], deltas.shape[0]
    size, outs = n // H, []
    for h in range(H):
        stop = (h + 1) * size if h < H - 1 else n
        chunk = x.narrow(axis, h * size, stop - h * size)
        outs.append(chunk * pdf_reference(chunk, deltas[h], cs[h], axis))
    return x + torch.cat(outs, axis)


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 3),
    n=st.integers(2, 12),
    C=st.integers(1, 5),
    G=st.integers(1, 3),
    axis=st.sampled_from([1, 2, -1]),
    seed=st.integers(0, 10_000),
)
def test_weights_equal_explicit_pdf_product(B, n, C, G, axis, seed):
    g = torch.Generator().manual_seed(seed)
    x = 2 + 3 * torch.randn(B, n, C, generator=g, **f64)
    if x.shape[axis] < 2:
        return
    delta = torch.randn(G, generator=g, **f64)
    c = 0.7 + torch.rand(G, generator=g, **f64)
    ours = gaussian_weights(x, delta, c, axis=axis)
    reference = pdf_reference(x, delta, c, axis)
    # the explicit pdf product underflows to 0/0 for narrow Gaussians: the library works in log space
    assume(torch.isfinite(reference).all())
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(ours.sum(axis), torch.ones_like(ours.sum(axis)))


def test_mixture_form_equals_earlier_version():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=g, **f64)
    delta, c = torch.tensor([-1.0, 0.5, 1.5], **f64), torch.tensor([0.5, 1.0, 0.7], **f64)
    logits = torch.tensor([0.3, -1.0, 0.2], **f64)
    ours = gaussian_weights(x, delta, c, mixture_logits=logits)
    torch.testing.assert_close(ours, pdf_reference(x, delta, c, weights=torch.softmax(logits, 0)))
    # a mixture is NOT one Gaussian: it cannot be collapsed like the product
    d_eff, c_eff = collapse_product(delta, c)
    assert (ours - gaussian_weights(x, d_eff[None], c_eff[None])).abs().max() > 1e-3


def test_float32_matches_float64_and_narrow_gaussians_do_not_underflow():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 3, generator=g, **f64)
    delta, c = torch.tensor([4.0], **f64), torch.tensor([0.05], **f64)  # far, narrow: every pdf underflows
    a64 = gaussian_weights(x, delta, c)
    assert torch.isfinite(a64).all() and torch.allclose(a64.sum(1), torch.ones(4, 3, **f64))
    a32 = gaussian_weights(x.float(), delta.float(), c.float())
    assert torch.isfinite(a32).all() and a32.dtype == torch.float32


def test_wide_gaussians_give_uniform_weights_and_x_over_n():
    x = torch.randn(2, 10, 3, **f64)
    big = torch.full((4, 2), 1e6, **f64)
    out, a = multi_head_gaussian_attention(x, torch.zeros(4, 2, **f64), big)
    sizes = torch.tensor([2, 2, 2, 4], **f64).repeat_interleave(torch.tensor([2, 2, 2, 4]))
    torch.testing.assert_close(a, (1 / sizes)[None, :, None].expand_as(x))
    block = GaussianAdaptiveAttention(1, 1).double()
    with torch.no_grad():
        block.c.fill_(1e6)
    torch.testing.assert_close(block(x), x + x / 10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(-50, 50), alpha=st.floats(0.1, 10))
def test_shift_invariance_always_scale_invariance_only_without_offset(seed, beta, alpha):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 4, generator=g, **f64)
    delta, c = torch.tensor([0.8, -0.3], **f64), torch.tensor([0.9, 1.3], **f64)
    shift = beta + torch.randn(3, 1, 4, generator=g, **f64)  # one constant per column
    torch.testing.assert_close(
        gaussian_weights(x + shift, delta, c), gaussian_weights(x, delta, c), atol=1e-9, rtol=1e-7
    )
    zero = torch.zeros(2, **f64)
    # exact only without the variance floor eps (s = sqrt(var + eps) does not scale with alpha)
    torch.testing.assert_close(
        gaussian_weights(alpha * x, zero, c, eps=0.0),
        gaussian_weights(x, zero, c, eps=0.0),
        atol=1e-9,
        rtol=1e-7,
    )


def test_rescaling_changes_weights_when_offset_is_nonzero():
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(2), **f64)
    delta, c = torch.tensor([1.0], **f64), torch.tensor([0.5], **f64)
    assert (gaussian_weights(3 * x, delta, c) - gaussian_weights(x, delta, c)).abs().max() > 1e-2


@settings(max_examples=25, deadline=None)
@given(G=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_product_collapses_to_one_gaussian(G, seed):
    g = torch.Generator().manual_seed(seed)
    delta = 2 * torch.randn(G, generator=g, **f64)
    sign = torch.where(torch.rand(G, generator=g) < 0.3, -1.0, 1.0).double()
    c = (0.4 + torch.rand(G, generator=g, **f64)) * sign
    d_eff, c_eff = collapse_product(delta, c)
    assert d_eff.shape == () and c_eff.shape == () and c_eff > 0
    x = 4 * torch.randn(2, 11, 3, generator=g, **f64) - 1
    torch.testing.assert_close(gaussian_weights(x, d_eff[None], c_eff[None]), gaussian_weights(x, delta, c))


def test_heads_normalise_their_own_chunks_and_never_mix():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 11, 4, generator=g, **f64)
    deltas, cs = torch.randn(3, 2, generator=g, **f64), 0.5 + torch.rand(3, 2, generator=g, **f64)
    out, a = multi_head_gaussian_attention(x, deltas, cs)
    assert head_chunks(11, 3) == [(0, 3), (3, 3), (6, 5)]
    for h, (start, length) in enumerate(head_chunks(11, 3)):
        torch.testing.assert_close(a[:, start : start + length].sum(1), torch.ones(2, 4, **f64))
        own = gaussian_weights(x[:, start : start + length], deltas[h], cs[h])
        torch.testing.assert_close(a[:, start : start + length], own)
    y = x.clone()
    y[:, 6:] = 100 * torch.randn(2, 5, 4, generator=g, **f64)  # change only the last head's chunk
    _, b = multi_head_gaussian_attention(y, deltas, cs)
    torch.testing.assert_close(b[:, :6], a[:, :6])
    torch.testing.assert_close(out, x * a)
    # the module is the residual block over the same function, and H = 1 is a single head
    block = GaussianAdaptiveAttention(3, 2).double()
    with torch.no_grad():
        block.delta.copy_(deltas)
        block.c.copy_(cs)
    torch.testing.assert_close(block(x), reference_block(x, deltas, cs))
    one_head = multi_head_gaussian_attention(x, deltas[:1], cs[:1])[1]
    torch.testing.assert_close(one_head, gaussian_weights(x, deltas[0], cs[0]))


def test_single_element_columns_get_weight_one():
    x = torch.randn(3, 1, 5, **f64)
    a = gaussian_weights(x, torch.tensor([0.7], **f64), torch.tensor([0.3], **f64))
    assert torch.equal(a, torch.ones_like(a))
    ones = torch.ones(4, 1, **f64)
    _, a = multi_head_gaussian_attention(torch.randn(2, 4, 3, **f64), ones, ones)
    assert torch.equal(a, torch.ones_like(a))


def test_mask_equals_dropping_the_padding():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 3, generator=g, **f64)
    mask = torch.ones(2, 9, 3, dtype=torch.bool)
    mask[0, 6:] = False  # sample 0 has 6 real elements
    delta, c = torch.tensor([0.4], **f64), torch.tensor([0.8], **f64)
    a = gaussian_weights(x, delta, c, mask=mask)
    torch.testing.assert_close(a[0, :6], gaussian_weights(x[:1, :6], delta, c)[0])
    assert (a[0, 6:] == 0).all()
    torch.testing.assert_close(a[1], gaussian_weights(x[1:], delta, c)[0])
    m, s = axis_statistics(x, 1, mask=mask)
    torch.testing.assert_close(m[0], x[0, :6].mean(0, keepdim=True))
    torch.testing.assert_close(s[0], torch.sqrt(x[0, :6].var(0, keepdim=True) + 1e-8))
    empty = torch.zeros_like(mask)
    assert (gaussian_weights(x, delta, c, mask=empty) == 0).all()


def test_raw_units_ablation_is_not_shift_invariant():
    x = torch.randn(2, 8, 3, **f64)
    delta, c = torch.tensor([0.5], **f64), torch.tensor([0.5], **f64)
    raw = gaussian_weights(x, delta, c, standardize=False)
    torch.testing.assert_close(raw, torch.softmax(-((x - 0.5) ** 2) / 0.5, 1))
    assert (gaussian_weights(x + 2, delta, c, standardize=False) - raw).abs().max() > 1e-2


def test_importance_factor():
    A = torch.softmax(torch.randn(6, 8, 3, **f64), 1)
    IF = importance_factor(A)
    mean = A.mean(0)
    torch.testing.assert_close(IF, (mean - mean.min()) / (mean.max() - mean.min()))
    assert IF.min() == 0 and IF.max() == 1
    assert torch.equal(importance_factor(torch.full((3, 4, 2), 0.25)), torch.zeros(4, 2))


def test_module_parameters_init_and_gradients():
    torch.manual_seed(0)
    block = GaussianAdaptiveAttention(4, 2, mixture=True)
    assert sum(p.numel() for p in block.parameters()) == 3 * 4 * 2
    assert (block.delta == 0).all() and (block.c > 0).all()
    x = torch.randn(5, 24, 7)
    out, a = block(x, return_weights=True)
    out.square().sum().backward()
    assert out.shape == x.shape and a.shape == x.shape
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in block.parameters())
    assert "heads=4, gaussians=2" in repr(block)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="c must have delta's shape"):
        gaussian_weights(x, torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="axis=3"):
        gaussian_weights(x, torch.zeros(1), torch.ones(1), axis=3)
    with pytest.raises(ValueError, match="at least the number of heads"):
        multi_head_gaussian_attention(x, torch.zeros(6, 1), torch.ones(6, 1))
    with pytest.raises(ValueError, match=r"\(H, G\)"):
        multi_head_gaussian_attention(x, torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="mask"):
        multi_head_gaussian_attention(
            x, torch.zeros(1, 1), torch.ones(1, 1), mask=torch.ones(2, 5, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="mixture_logits"):
        gaussian_logits(x, torch.zeros(2), torch.ones(2), mixture_logits=torch.zeros(3))
    with pytest.raises(ValueError, match="n_heads"):
        GaussianAdaptiveAttention(0)


def test_bad_masks_dtypes_and_sizes_get_attnbook_errors_not_torch_errors():
    x = torch.randn(2, 5, 3, **f64)
    delta, c = torch.zeros(1, **f64), torch.ones(1, **f64)
    # a mask of the wrong shape (expand_as raised a bare RuntimeError)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 3\) does not broadcast"):
        gaussian_weights(x, delta, c, mask=torch.ones(2, 4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask of shape"):
        axis_statistics(x, 1, mask=torch.ones(5, 2, dtype=torch.bool))
    # an integer 0/1 mask is ambiguous; a float mask has no meaning for the statistics
    with pytest.raises(TypeError, match="mask must be boolean .* got torch.int64"):
        gaussian_weights(x, delta, c, mask=torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="mask must be boolean"):
        multi_head_gaussian_attention(x, delta[None], c[None], mask=torch.ones(2, 5, 3, **f64))
    # mixed dtypes: the parameters must be in x's dtype
    with pytest.raises(TypeError, match="one dtype"):
        gaussian_weights(x.float(), delta, c)
    with pytest.raises(TypeError, match="one dtype"):
        GaussianAdaptiveAttention(1)(x)  # float32 block, float64 input
    with pytest.raises(TypeError, match="floating dtype"):
        gaussian_weights(x.long(), delta, c)
    # sizes must be integers
    with pytest.raises(TypeError, match="H must be an integer"):
        head_chunks(10, 2.0)
    with pytest.raises(TypeError, match="n_heads must be an integer"):
        GaussianAdaptiveAttention(2.5)
    with pytest.raises(TypeError, match="axis must be an integer"):
        gaussian_weights(x, delta, c, axis=1.0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        drifting_layers(4.5)
    with pytest.raises(ValueError, match="eps must be"):
        axis_statistics(x, 1, eps=-1e-8)
    with pytest.raises(ValueError, match="sample_axis=3"):
        importance_factor(x, sample_axis=3)


def test_a_broadcastable_padding_mask_equals_the_expanded_one():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 10, 4, generator=g, **f64)
    mask = padding_mask(torch.tensor([10, 7, 4]), 10)[:, :, None]  # (B, n, 1): 10, 7 and 4 real elements
    deltas, cs = torch.randn(2, 1, generator=g, **f64), 0.5 + torch.rand(2, 1, generator=g, **f64)
    out, a = multi_head_gaussian_attention(x, deltas, cs, mask=mask)
    out_full, a_full = multi_head_gaussian_attention(x, deltas, cs, mask=mask.expand_as(x))
    assert torch.equal(a, a_full) and torch.equal(out, out_full)
    assert (a[~mask.expand_as(x)] == 0).all()


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    """Every tensor a function creates lives on its inputs' device and dtype (so it runs on a GPU)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 9, 3, generator=g).to(device, dtype)
    mask = padding_mask(torch.tensor([7, 9], device=device), 9)[:, :, None]  # (B, n, 1)
    deltas = torch.randn(3, 2, generator=g).to(device, dtype)
    cs = (0.5 + torch.rand(3, 2, generator=g)).to(device, dtype)
    block = GaussianAdaptiveAttention(3, 2, mixture=True).to(device, dtype)
    with tensors_without_device_go_to_meta():
        results = [
            *axis_statistics(x, 1),
            *axis_statistics(x, 1, mask=mask),
            gaussian_logits(x, deltas[0], cs[0]),
            gaussian_weights(x, deltas[0], cs[0], mask=mask, standardize=False),
            gaussian_weights(x, deltas[0], cs[0], mixture_logits=cs[1]),
            *multi_head_gaussian_attention(x, deltas, cs, mask=mask),
            *collapse_product(deltas[0], cs[0]),
            importance_factor(x),
            importance_factor(torch.ones_like(x)),
            *block(x, return_weights=True),
        ]
    assert_follow(results, x.device, dtype)


def test_drifting_layers_task():

    u, v = patterns(16)
    assert u.sum() == 0 and v.sum() == 0 and (u @ v) == 0 and torch.equal(patterns(16)[0], u)
    b = drifting_layers(64, torch.Generator().manual_seed(0))
    again = drifting_layers(64, torch.Generator().manual_seed(0))
    assert torch.equal(b.x, again.x) and b.x.shape == (64, 32, 16) and b.label.shape == (64,)
    blocks = b.role.view(64, 4, 8)
    n_loud = (blocks == 2).sum(-1)
    assert ((blocks == 1).sum(-1) == 1).all() and (n_loud >= 1).all() and (n_loud <= 2).all()
    assert (blocks[..., [0, 2, 3, 4, 5, 7]] != 1).all()  # informative layers sit at slots 1 and 6
    assert (b.offset.abs() <= 3).all() and (b.gain >= 1 / 1.43 - 1e-6).all() and (b.gain <= 1.43 + 1e-6).all()
    # undo the drift: the informative layers carry the label's pattern along u
    x0 = (b.x - b.offset[:, None, None]) / b.gain[:, None, None]
    informative = x0[b.role == 1].view(64, 4, 16).mean(1)
    assert ((informative @ u > 0).long() == b.label).float().mean() > 0.9
    still = drifting_layers(8, torch.Generator().manual_seed(1), offset=0.0, gain=1.0)
    assert (still.offset == 0).all() and (still.gain == 1).all()
    with pytest.raises(ValueError, match="divisible"):
        drifting_layers(4, n_layers=30)
    with pytest.raises(ValueError, match="multiple of 4"):
        patterns(6)
