"""attnbook.mechanisms.attention_sinks: sink detection, head selection and VAR against references."""

import math

import pytest
import torch

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import attention_sinks as mechanism
from attnbook.mechanisms import attention_sinks_experiment as experiment
from attnbook.mechanisms.attention_sinks import (
    VARWeights,
    apply_var,
    grouped_var_output,
    image_centric,
    mean_replace_values,
    redistribute,
    rms_normalise,
    sink_mask,
    sink_scores,
)
from attnbook.mechanisms.attention_sinks_experiment import caption_accuracy, replaced_values
from attnbook.models import ModelConfig, TinyTransformer
from attnbook.tasks import object_captions
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("13")
DTYPES = (torch.float32, torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for module in (mechanism, experiment):
        assert module.__doc__
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{name} has no docstring"


def _rows(B, H, N, M, dtype, seed=0, causal=False):
    """Random softmax rows (B, H, N, M), peaked enough that some rows ignore the image."""
    g = torch.Generator().manual_seed(seed)
    s = 3 * torch.randn(B, H, N, M, generator=g, dtype=torch.float64)
    if causal:
        s = s.masked_fill(~torch.ones(N, M, dtype=torch.bool).tril(M - N), float("-inf"))
    return torch.softmax(s, -1).to(dtype), g


# ---- sink detection --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_phi_is_the_max_normalised_magnitude_on_the_sink_dims(dtype):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(2, 5, 7, generator=g, dtype=torch.float64).to(dtype)
    phi = sink_scores(h, [6, 2])
    for b in range(2):
        for t in range(5):
            x = h[b, t].double().tolist()
            rms = math.sqrt(sum(v * v for v in x) / 7 + 1e-6)
            assert abs(phi[b, t].item() - max(abs(x[6]), abs(x[2])) / rms) < 1e-5
    assert phi.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_phi_is_scale_invariant_bounded_by_sqrt_d_and_finds_a_planted_spike():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 6, 4096, generator=g, dtype=torch.float64)
    for c in (1e-2, 3.0, 1e3):
        assert torch.allclose(
            sink_scores(c * h, [5, 77], eps=0.0), sink_scores(h, [5, 77], eps=0.0), rtol=1e-12
        )
    # a value 100·RMS on a sink dimension: φ ≈ 100 / sqrt(1 + 100²/D) > τ = 20
    h[1, 3, 77] = 100 * h[1, 3].pow(2).mean().sqrt()
    assert torch.equal(
        sink_mask(h, [5, 77], 20.0),
        torch.zeros(2, 6, dtype=torch.bool).index_put_(
            (torch.tensor([1]), torch.tensor([3])), torch.tensor(True)
        ),
    )
    # |RMSNorm(x)_d| <= sqrt(D): at D = 64 no token can pass τ = 20
    small = torch.zeros(1, 1, 64, dtype=torch.float64)
    small[..., 0] = 1e6
    assert sink_scores(small, [0]).item() <= 8.0 + 1e-9 and not sink_mask(small, [0], 20.0).any()


def test_the_threshold_is_strict_and_float16_is_upcast():
    h = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)  # RMS 1 with eps = 0: φ = 2 exactly
    assert not sink_mask(h, [0], 2.0, eps=0.0).any() and sink_mask(h, [0], 1.999, eps=0.0).all()
    g = torch.Generator().manual_seed(3)
    x = (30 * torch.randn(2, 4, 16, generator=g)).half()  # squares overflow float16 beyond ~256
    x[0, 0, 3] = 250.0
    phi = sink_scores(x, [3])
    assert phi.dtype == torch.float32 and torch.isfinite(phi).all()
    assert torch.allclose(phi, sink_scores(x.double(), [3]).float(), rtol=1e-5)
    assert torch.allclose(rms_normalise(x), rms_normalise(x.double()).float(), rtol=1e-5, atol=1e-6)


# ---- image-centric heads ---------------------------------------------------------------------


def _image_centric_loop(A, img, sink, rho, summ):
    B, H, N, M = A.shape
    out = torch.zeros(B, H, N, dtype=torch.bool)
    for b in range(B):
        vis = [j for j in range(img.start, img.stop) if sink[b, j]]
        if not vis:
            continue
        for h in range(H):
            for q in range(N):
                nu = sum(A[b, h, q, j].item() for j in range(img.start, img.stop))
                share = sum(A[b, h, q, j].item() for j in vis) / nu if nu > 0 else 0.0
                out[b, h, q] = nu >= summ and share <= rho
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_image_centric_matches_a_loop(dtype):
    A, g = _rows(3, 2, 5, 9, dtype)
    img = slice(2, 7)
    sink = torch.rand(3, 9, generator=g) < 0.3
    sink[0, 2:7] = False  # row 0: no visual sink -> nothing selected (as in the official code)
    sink[1, 3] = True
    got = image_centric(A, img, sink, 0.5, 0.2)
    assert torch.equal(got, _image_centric_loop(A, img, sink, 0.5, 0.2))
    assert got.any() and not got.all() and not got[0].any()


def test_zero_image_mass_does_not_divide_by_zero():
    A = torch.zeros(1, 1, 2, 6)
    A[..., 0] = 1.0  # all weight on BOS, none on the image 1..4
    sink = torch.zeros(1, 6, dtype=torch.bool)
    sink[0, 2] = True
    assert not image_centric(A, slice(1, 5), sink, 0.5, 0.2).any()
    assert image_centric(A, slice(1, 5), sink, 0.5, 0.0).all()  # ν = 0 ≥ 0 and r := 0


# ---- redistribution --------------------------------------------------------------------------


def _redistribute_loop(A, sink, img, sel, p):
    out = A.clone().double()
    B, H, N, M = A.shape
    for b in range(B):
        sinks = [j for j in range(M) if sink[b, j]]
        others = [j for j in range(img.start, img.stop) if not sink[b, j]]
        for h in range(H):
            for q in range(N):
                row = [A[b, h, q, j].item() for j in range(M)]
                m_ns = sum(row[j] for j in others)
                if not sel[b, h, q] or m_ns == 0:
                    continue
                omega = (1 - p) * sum(row[j] for j in sinks)
                for j in sinks:
                    out[b, h, q, j] = p * row[j]
                for j in others:
                    out[b, h, q, j] = row[j] + omega * row[j] / m_ns
    return out.to(A.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.6])
def test_redistribute_matches_a_loop_and_keeps_rows_distributions(dtype, p):
    A, g = _rows(2, 3, 7, 11, dtype, causal=True)
    img = slice(1, 8)
    sink = torch.rand(2, 11, generator=g) < 0.3
    sink[:, 0] = True  # a text sink (BOS)
    sel = torch.rand(2, 3, 7, generator=g) < 0.6
    got = redistribute(A, sink, img, sel, p)
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got, _redistribute_loop(A, sink, img, sel, p), atol=atol)
    assert (got.sum(-1) - A.sum(-1)).abs().max() < atol and (got >= 0).all()
    assert torch.equal(got[~sel], A[~sel])  # unselected rows bit-identical
    outside = torch.ones(11, dtype=torch.bool)
    outside[img] = False
    keep = outside[None, :] & ~sink  # non-sink tokens outside the image
    assert torch.equal(got.transpose(1, 3)[keep], A.transpose(1, 3)[keep])
    # the non-sink image tokens gain exactly (1 - p)·(sink mass) on the edited rows
    ns = (~sink)[:, None, None, :] & ~outside
    s = sink[:, None, None, :]
    rows = sel & ((A * ns).sum(-1) > 0)
    gain = (got * ns).sum(-1) - (A * ns).sum(-1)
    assert torch.allclose(gain[rows], (1 - p) * (A * s).sum(-1)[rows], atol=atol)
    assert rows.any()


def test_identities_p_one_no_sinks_no_selection_all_sink_image():
    A, g = _rows(2, 2, 5, 8, torch.float32)
    img = slice(2, 6)
    sink = torch.rand(2, 8, generator=g) < 0.4
    sel = torch.ones(2, 2, 5, dtype=torch.bool)
    assert torch.equal(redistribute(A, sink, img, sel, 1.0), A)
    assert torch.equal(redistribute(A, torch.zeros_like(sink), img, sel, 0.3), A)
    assert torch.equal(redistribute(A, sink, img, torch.zeros_like(sel), 0.3), A)
    all_sink = torch.zeros_like(sink)
    all_sink[:, 0] = True
    all_sink[:, img] = True  # nowhere to send the budget: the row stays (no 0/0)
    assert torch.equal(redistribute(A, all_sink, img, sel, 0.3), A)


@pytest.mark.parametrize("dtype", DTYPES)
def test_group_linearity_gives_a_v_without_forming_a_prime(dtype):
    A, g = _rows(2, 3, 6, 9, dtype, causal=True)
    v = torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64).to(dtype)
    sink = torch.rand(2, 9, generator=g) < 0.3
    sel = torch.rand(2, 3, 6, generator=g) < 0.7
    expected = redistribute(A, sink, slice(1, 6), sel, 0.4) @ v
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(grouped_var_output(A, v, sink, slice(1, 6), sel, 0.4), expected, atol=atol)


def test_mean_replace_values_matches_a_loop():
    g = torch.Generator().manual_seed(5)
    v = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    tokens = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    got = mean_replace_values(v, tokens)
    chosen = [(0, 1), (0, 2), (0, 4), (1, 0)]
    mean = sum(v[b, :, j] for b, j in chosen) / 4  # (H, d): one mean over the batch
    for b in range(2):
        for j in range(6):
            assert torch.allclose(got[b, :, j], mean if (b, j) in chosen else v[b, :, j])
    assert torch.equal(mean_replace_values(v, torch.zeros_like(tokens)), v)


def test_replaced_values_mean_replaces_in_every_layer_and_restores():
    torch.manual_seed(0)
    model = TinyTransformer(ModelConfig(D=16, H=2, layers=2, vocab=9, max_len=6)).double().eval()
    ids = torch.tensor([[8, 0, 1, 2, 3, 4], [8, 4, 3, 2, 1, 0]])
    chosen = torch.zeros(2, 6, dtype=torch.bool)
    chosen[:, 1:3] = True
    with torch.no_grad():
        plain = model(ids)
        with replaced_values(model, chosen):
            inside = model(ids)
        for block in model.blocks:
            block.attn.value_transform = lambda v: mean_replace_values(v, chosen)
        by_hand = model(ids)
        for block in model.blocks:
            block.attn.value_transform = None
        assert torch.equal(model(ids), plain)
    assert torch.equal(inside, by_hand) and not torch.allclose(inside, plain)
    assert all(block.attn.value_transform is None for block in model.blocks)


def test_caption_accuracy_counts_only_the_caption_positions():
    batch = object_captions(4, n_registers=1, generator=torch.Generator().manual_seed(0))
    answer = batch.targets != -100
    logits = torch.zeros(*batch.targets.shape, batch.vocab.size)
    logits[answer] = torch.nn.functional.one_hot(batch.targets[answer], batch.vocab.size).float()
    assert caption_accuracy(logits, batch) == 1.0
    first = answer.float().argmax(-1)  # the [DESC] position of each row: wrong there
    logits[torch.arange(4), first] = logits[torch.arange(4), first].roll(1, -1)
    assert abs(caption_accuracy(logits, batch) - (1 - 4 / answer.sum().item())) < 1e-6


# ---- the layer and the model -----------------------------------------------------------------


def test_var_weights_plug_into_the_core_between_softmax_and_values():
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    _, base = mha(x, causal=True, return_intermediates=True)
    plain = mha(x, causal=True)
    var = VARWeights(slice(1, 6), rho=0.9, summ=0.1, p=0.3)
    mha.weights_transform = var
    assert torch.equal(mha(x, causal=True), plain) and var.record == {}  # no sinks set: the core layer
    var.sink = torch.zeros(2, 9, dtype=torch.bool)
    var.sink[:, [0, 3]] = True
    out, inter = mha(x, causal=True, return_intermediates=True)
    sel = var.record["selected"]
    assert sel.any() and not sel[..., :6].any()  # only the queries after the image
    expected_weights = redistribute(base.weights, var.sink, slice(1, 6), sel, 0.3)
    assert torch.equal(var.record["weights"], base.weights) and torch.equal(inter.weights, expected_weights)
    # out = Σ_h (A'_h V_h) W_O^h + b_O, as one matrix product
    heads = (expected_weights @ base.v).transpose(1, 2).reshape(2, 9, 12)
    assert torch.allclose(out, heads @ mha.w_o.weight.T + mha.w_o.bias, atol=1e-12)
    assert torch.allclose(inter.contributions.sum(1) + mha.w_o.bias, out, atol=1e-12)
    var.p = 1.0
    assert torch.allclose(mha(x, causal=True), plain, atol=1e-12)
    with pytest.raises(TypeError, match="img"):
        VARWeights(slice(1, 6, 2))


def _by_hand(model, tokens, dims, tau, img, rho, summ, p):
    """The TinyTransformer's forward written out, with VAR on every layer but the last."""
    x = model.embed(tokens) + model.pos.weight[: tokens.shape[1]]
    L = len(model.blocks)
    for layer, block in enumerate(model.blocks):
        sink = sink_mask(x, dims, tau)
        a = block.attn
        z = block.norm1(x)
        B, N, D = z.shape
        q, k, v = (w(z).view(B, N, a.H, a.d).transpose(1, 2) for w in (a.w_q, a.w_k, a.w_v))
        s = (q @ k.transpose(-2, -1)) / math.sqrt(a.d)
        A = torch.softmax(s.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf")), -1)
        if layer < L - 1:
            sel = image_centric(A, img, sink, rho, summ) & (torch.arange(N) >= img.stop)
            A = redistribute(A, sink, img, sel, p)
        x = x + a.w_o((A @ v).transpose(1, 2).reshape(B, N, D))
        x = x + block.mlp(block.norm2(x))
    return model.readout(model.norm(x))


def test_apply_var_equals_the_forward_written_out_and_restores_the_model():
    torch.manual_seed(1)
    model = TinyTransformer(ModelConfig(D=16, H=2, layers=3, vocab=10, max_len=12)).double()
    with torch.no_grad():
        model.embed.weight[7, 4] = 40.0  # a planted massive activation on dim 4 for token 7
    tokens = torch.randint(0, 7, (3, 12))
    tokens[:, 3] = 7
    tokens[:, 0] = 7
    kw = dict(dims=[4], tau=2.5, img=slice(1, 8), rho=0.6, summ=0.05, p=0.2)
    with torch.no_grad():
        logits, records = apply_var(model, tokens, first_layer=0, **kw)
        expected = _by_hand(model, tokens, **kw)
        assert torch.allclose(logits, expected, atol=1e-10)
        assert not torch.allclose(logits, model(tokens), atol=1e-4)  # VAR changed something
        assert all(isinstance(b.attn, MultiHeadAttention) for b in model.blocks)
        assert all(b.attn.weights_transform is None for b in model.blocks)  # restored
        assert "redistributed" in records[1] and "redistributed" not in records[2]
        assert records[0]["sink"][:, 3].all() and all("phi" in r for r in records)
        same, _ = apply_var(model, tokens, first_layer=0, **{**kw, "p": 1.0})
        assert torch.allclose(same, model(tokens), atol=1e-12)
        late, records = apply_var(model, tokens, **kw)  # first_layer = 2 = the last: nothing edited
        assert torch.allclose(late, model(tokens), atol=1e-12) and "redistributed" not in records[2]
        # a transform the layer already had is replaced for the run, then given back
        identity = lambda A: A  # noqa: E731
        model.blocks[1].attn.weights_transform = identity
        again, _ = apply_var(model, tokens, first_layer=0, **kw)
        assert torch.equal(again, logits) and model.blocks[1].attn.weights_transform is identity


# ---- errors and devices ----------------------------------------------------------------------


def test_bad_inputs_are_named():
    A, _ = _rows(1, 2, 3, 5, torch.float32)
    sink = torch.zeros(1, 5, dtype=torch.bool)
    sel = torch.ones(1, 2, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="sink"):
        redistribute(A, sink.float(), slice(1, 3), sel)
    with pytest.raises(ValueError, match="sink"):
        redistribute(A, torch.zeros(1, 4, dtype=torch.bool), slice(1, 3), sel)
    with pytest.raises(ValueError, match="p must"):
        redistribute(A, sink, slice(1, 3), sel, 1.5)
    with pytest.raises(ValueError, match="sel"):
        redistribute(A, sink, slice(1, 3), sel[..., :2])
    with pytest.raises(TypeError, match="img"):
        image_centric(A, slice(0, 5, 2), sink)
    with pytest.raises(ValueError, match="weights"):
        image_centric(A[0], slice(1, 3), sink)
    with pytest.raises(TypeError, match="weights"):
        image_centric(A.long(), slice(1, 3), sink)
    with pytest.raises(ValueError, match="dims"):
        sink_scores(torch.randn(1, 2, 4), [4])
    with pytest.raises(TypeError, match="dims"):
        sink_scores(torch.randn(1, 2, 4), [1.5])
    with pytest.raises(TypeError, match="tau"):
        sink_mask(torch.randn(1, 2, 4), [1], "20")
    with pytest.raises(TypeError, match="tokens"):
        mean_replace_values(torch.randn(1, 2, 5, 3), sink.long())


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    A, g = _rows(2, 2, 4, 6, dtype)
    A = A.to(device)
    v = torch.randn(2, 2, 6, 3, generator=g).to(device, dtype)
    h = torch.randn(2, 6, 8, generator=g).to(device, dtype)
    sink = (torch.rand(2, 6, generator=g) < 0.5).to(device)
    sel = torch.ones(2, 2, 4, dtype=torch.bool, device=device)
    with tensors_without_device_go_to_meta():
        results = [
            rms_normalise(h),
            sink_scores(h, [1, 5]),
            redistribute(A, sink, slice(1, 4), sel),
            grouped_var_output(A, v, sink, slice(1, 4), sel),
            mean_replace_values(v, sink),
        ]
        flags = [sink_mask(h, [1], 1.0), image_centric(A, slice(1, 4), sink)]
    assert_follow(results, A.device, dtype)
    assert all(f.device == A.device and f.dtype == torch.bool for f in flags)
