"""Library tests for chapter 17: attnbook/mechanisms/object_level_attention.py."""

import math

import pytest
import torch

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import object_level_attention as mechanism
from attnbook.mechanisms.object_level_attention import (
    ObjectPointer,
    cosine_gram,
    fit_gaussian_pe,
    gaussian_kernel,
    object_tokens,
    pointer_logits,
    sinusoidal_pe,
)

CHAPTER = by_number("17")


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def test_gaussian_kernel_matches_an_explicit_loop():
    K = gaussian_kernel(5, 1.5)
    for a in range(5):
        for b in range(5):
            assert K[a, b].item() == pytest.approx(math.exp(-((a - b) ** 2) / (2 * 1.5**2)), abs=1e-15)


@pytest.mark.parametrize("R, C, sigma", [(8, 12, 1.5), (7, 7, 2.0), (5, 9, 1.0)])
def test_fitted_table_realises_the_gaussian_kernel_when_C_at_least_R(R, C, sigma):
    W = fit_gaussian_pe(R, C, sigma, steps=1500, seed=3)
    assert W.shape == (R, C) and W.dtype == torch.float32
    err = (cosine_gram(W.double()) - gaussian_kernel(R, sigma)).abs().max().item()
    assert err < 0.01, err
    norms = W.norm(dim=-1)
    assert (norms.max() / norms.min()).item() < 1.05


def test_fitted_table_is_deterministic_under_its_seed_and_differs_across_seeds():
    a, b = fit_gaussian_pe(6, 8, 1.5, steps=200, seed=1), fit_gaussian_pe(6, 8, 1.5, steps=200, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, fit_gaussian_pe(6, 8, 1.5, steps=200, seed=2))


def test_gaussian_similarity_decays_monotonically_but_sinusoidal_does_not():
    W = fit_gaussian_pe(12, 16, 2.0, steps=1500)
    g = cosine_gram(W.double())[0]
    assert (g[1:] < g[:-1] + 1e-3).all()
    s = cosine_gram(sinusoidal_pe(12, 16))[0]
    assert (s[1:] > s[:-1]).any(), "the sinusoidal similarity should rise again somewhere"


def test_sinusoidal_pe_matches_the_closed_form():
    pe = sinusoidal_pe(4, 6)
    for a in range(4):
        for nu in range(3):
            w = 10000.0 ** (-2 * nu / 6)
            assert pe[a, 2 * nu].item() == pytest.approx(math.sin(a * w), abs=1e-12)
            assert pe[a, 2 * nu + 1].item() == pytest.approx(math.cos(a * w), abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_object_tokens_concatenate_appearance_row_and_column(dtype):
    g = torch.Generator().manual_seed(0)
    app = torch.randn(2, 5, 3, generator=g, dtype=dtype)
    pe = torch.randn(4, 7, generator=g, dtype=dtype)
    rc = torch.randint(4, (2, 5, 2), generator=g)
    e = object_tokens(app, rc, pe)
    assert e.shape == (2, 5, 3 + 14) and e.dtype == dtype
    for b in range(2):
        for i in range(5):
            expected = torch.cat([app[b, i], pe[rc[b, i, 0]], pe[rc[b, i, 1]]])
            assert torch.equal(e[b, i], expected)


def _loop_logits(enc, dec, We, Wd, r, pad):
    B, N, _ = enc.shape
    T, dk = dec.shape[1], We.shape[-1]
    out = torch.zeros(B, T, N + 1, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            for i in range(N):
                if pad is not None and pad[b, i]:
                    out[b, t, i] = float("-inf")
                    continue
                for c in range(We.shape[0]):
                    kk = enc[b, i].double() @ We[c].double()
                    qq = dec[b, t].double() @ Wd[c].double()
                    out[b, t, i] += r[c].double() * (qq @ kk) / math.sqrt(dk)
    return out


@pytest.mark.parametrize(
    "B, N, T, D, C, dk, dtype",
    [(2, 5, 3, 6, 2, 4, torch.float64), (1, 1, 1, 3, 1, 5, torch.float32), (3, 7, 4, 5, 3, 3, torch.float32)],
)
def test_pointer_logits_match_an_explicit_loop(B, N, T, D, C, dk, dtype):
    g = torch.Generator().manual_seed(B * 10 + N)
    enc, dec = torch.randn(B, N, D, generator=g, dtype=dtype), torch.randn(B, T, D, generator=g, dtype=dtype)
    We, Wd = (torch.randn(C, D, dk, generator=g, dtype=dtype) for _ in range(2))
    r = torch.randn(C, generator=g, dtype=dtype)
    pad = torch.rand(B, N, generator=g) < 0.3
    pad[:, 0] = False
    out = pointer_logits(enc, dec, We, Wd, r, pad)
    assert out.shape == (B, T, N + 1) and out.dtype == dtype
    ref = _loop_logits(enc, dec, We, Wd, r, pad)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    assert (out[..., N] == 0).all()
    probs = torch.softmax(out.double(), dim=-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, T, dtype=torch.float64))
    assert (probs[..., :N][pad[:, None, :].expand(B, T, N)] == 0).all()


def test_pointer_head_scores_are_multihead_cross_attention_scores():
    """With one-hot readout, head c's pointer scores are MultiHeadAttention's pre-softmax scores of head c."""
    torch.manual_seed(0)
    D, H, B, N, T = 12, 3, 2, 5, 4
    mha = MultiHeadAttention(D, H, bias=False).double()
    enc, dec = torch.randn(B, N, D, dtype=torch.float64), torch.randn(B, T, D, dtype=torch.float64)
    _, inter = mha(dec, enc, return_intermediates=True)  # scores (B, H, T, N)
    d = D // H
    We = torch.stack([mha.w_k.weight[c * d : (c + 1) * d].T for c in range(H)]).detach()  # (H, D, d)
    Wd = torch.stack([mha.w_q.weight[c * d : (c + 1) * d].T for c in range(H)]).detach()
    for c in range(H):
        r = torch.zeros(H, dtype=torch.float64)
        r[c] = 1.0
        logits = pointer_logits(enc, dec, We, Wd, r)
        torch.testing.assert_close(logits[..., :N], inter.scores[:, c].detach())


def test_encoder_and_pointer_are_permutation_equivariant_over_objects():
    torch.manual_seed(1)
    B, N, T, D = 2, 6, 3, 16
    pe = fit_gaussian_pe(4, 4, 1.5, steps=50)
    app = torch.randn(B, N, 8)
    rc = torch.randint(4, (B, N, 2))
    layer = torch.nn.TransformerEncoderLayer(D, 4, 32, dropout=0.0, batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    pointer = ObjectPointer(D, C=2, dk=8)
    dec = torch.randn(B, T, D)
    perm = torch.randperm(N)
    with torch.no_grad():
        out = pointer(encoder(object_tokens(app, rc, pe)), dec)
        out_p = pointer(encoder(object_tokens(app[:, perm], rc[:, perm], pe)), dec)
    torch.testing.assert_close(out_p[..., :N], out[..., perm], atol=1e-5, rtol=1e-5)
    assert (out_p[..., N] == 0).all()


def test_object_pointer_module_matches_the_function_and_trains():
    torch.manual_seed(2)
    ptr = ObjectPointer(6, C=2, dk=4)
    enc, dec = torch.randn(2, 3, 6), torch.randn(2, 2, 6)
    torch.testing.assert_close(ptr(enc, dec), pointer_logits(enc, dec, ptr.We, ptr.Wd, ptr.readout))
    ptr(enc, dec)[..., :3].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ptr.parameters())


def test_bad_inputs_raise_clear_errors():
    app, pe = torch.randn(1, 3, 2), torch.randn(4, 3)
    with pytest.raises(TypeError, match="rc"):
        object_tokens(app, torch.zeros(1, 3, 2), pe)
    with pytest.raises(ValueError, match="rc"):
        object_tokens(app, torch.full((1, 3, 2), 4), pe)
    with pytest.raises(ValueError, match="rc"):
        object_tokens(app, torch.zeros(1, 2, 2, dtype=torch.long), pe)
    enc, dec, W = torch.randn(1, 3, 4), torch.randn(1, 2, 4), torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match="We"):
        pointer_logits(enc, dec, torch.randn(2, 3, 5), W, torch.ones(2))
    with pytest.raises(TypeError, match="pad"):
        pointer_logits(enc, dec, W, W, torch.ones(2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(3, 0.0)
    with pytest.raises(ValueError, match="dim"):
        sinusoidal_pe(3, 5)
    with pytest.raises(TypeError, match="n_pos"):
        fit_gaussian_pe(3.5, 4, 1.0)


def test_tensors_follow_the_inputs_device():
    enc, dec = torch.empty(2, 3, 4, device="meta"), torch.empty(2, 5, 4, device="meta")
    W = torch.empty(2, 4, 6, device="meta")
    out = pointer_logits(enc, dec, W, W, torch.empty(2, device="meta"), torch.zeros(2, 3, dtype=torch.bool))
    assert out.device.type == "meta" and out.shape == (2, 5, 4)
    assert gaussian_kernel(3, 1.0, device="meta").device.type == "meta"
    assert sinusoidal_pe(3, 4, device="meta").device.type == "meta"
