"""Library tests for chapter 15: attnbook/mechanisms/attention_vs_saliency.py."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import attention_vs_saliency as mechanism
from attnbook.mechanisms.attention_vs_saliency import (
    SpeechTranscriber,
    aggregate_ca,
    gradient_saliency,
    occlusion_saliency,
    pearson_flat,
    random_block_masks,
    reduce_saliency,
    spearman_flat,
)
from attnbook.tasks.spoken_symbols import spoken_symbols
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

CHAPTER = by_number("15")
DTYPES = (torch.float32, torch.float64)


def _tol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


def test_random_block_masks_hide_whole_blocks_independently():
    masks = random_block_masks(
        4000, 7, 10, pi_occ=0.3, block=(2, 4), generator=torch.Generator().manual_seed(0)
    )
    assert masks.shape == (4000, 7, 10) and masks.dtype == torch.bool
    # every block, including the cut-short ones at the edges, is all hidden or all visible
    for t0, f0 in itertools.product(range(0, 7, 2), range(0, 10, 4)):
        cells = masks[:, t0 : t0 + 2, f0 : f0 + 4].flatten(1)
        assert torch.equal(cells.all(1), cells.any(1))
    # blocks are hidden with probability π_occ, independently: 4000 draws, 5 standard errors
    corners = masks[:, ::2, ::4].flatten(1).double()  # (4000, 12): one cell per block
    assert (corners.mean(0) - 0.3).abs().max() < 5 * (0.3 * 0.7 / 4000) ** 0.5
    both = (corners[:, 0] * corners[:, 1]).mean()
    assert abs(both - 0.09) < 5 * (0.09 * 0.91 / 4000) ** 0.5


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _stochastic(L, H, I, T, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(L, H, I, T, generator=g, dtype=dtype), -1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_aggregate_ca_is_the_mean_over_the_chosen_heads_and_stays_stochastic(dtype):
    ca = _stochastic(3, 5, 4, 7, dtype)
    out = aggregate_ca(ca, layers=[0, -1], heads=[1, 3, 4])
    expected = sum(ca[ell, h] for ell in (0, 2) for h in (1, 3, 4)) / 6
    torch.testing.assert_close(out, expected, atol=_tol(dtype), rtol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones(4, dtype=dtype), atol=_tol(dtype), rtol=0)
    assert torch.equal(aggregate_ca(ca, [1], [2]), ca[1, 2])  # a single head passes through
    torch.testing.assert_close(aggregate_ca(ca), ca.mean((0, 1)))


def test_per_head_cross_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 3, batch_first=True).double()
    ours = MultiHeadAttention.from_torch(ref)
    y, h = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 9, 12, dtype=torch.float64)
    _, expected = ref(y, h, h, need_weights=True, average_attn_weights=False)  # (B, H, I, T')
    _, inter = ours(y, context=h, return_intermediates=True)
    torch.testing.assert_close(inter.weights, expected, atol=1e-12, rtol=0)


def _windows(T, t_out):
    return [(math.floor(j * T / t_out), math.ceil((j + 1) * T / t_out)) for j in range(t_out)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "t_out"), [(11, 6), (8, 4), (5, 5), (7, 1)])
def test_reduce_saliency_against_explicit_windows(T, t_out, dtype):
    g = torch.Generator().manual_seed(T)
    sm = torch.rand(3, T, 5, generator=g, dtype=dtype)
    for freq, time in itertools.product(("max", "mean"), repeat=2):
        per_frame = sm.amax(-1) if freq == "max" else sm.mean(-1)
        expected = torch.stack(
            [
                per_frame[:, a:b].amax(-1) if time == "max" else per_frame[:, a:b].mean(-1)
                for a, b in _windows(T, t_out)
            ],
            dim=-1,
        )
        out = reduce_saliency(sm, t_out, freq, time)
        torch.testing.assert_close(out, expected, atol=_tol(dtype), rtol=0)
    # the windows cover every frame: a spike on the last frame reaches the last output frame
    spike = torch.zeros(1, T, 2, dtype=dtype)
    spike[0, -1, 1] = 1.0
    assert reduce_saliency(spike, t_out)[0, -1] == 1.0


def test_reduce_saliency_order_matters_with_a_mean():
    sm = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, T=2, F=2)
    assert reduce_saliency(sm, 1, "max", "mean").item() == 1.0  # max over freq, then mean over time
    assert sm.mean(1).amax(-1).item() == 0.5  # time first gives another answer


def _linear_model(a: torch.Tensor):
    """ŷ(x) = [1, 0] and KL(ŷ(x) ‖ ŷ(x ⊙ occ)) = Σ_u φ_u occ_u exactly over cells u (φ = a >= 0)."""
    I = a.shape[0]
    x = torch.ones(a.shape[1:], dtype=a.dtype)

    def f(xb):
        # q_0 = exp(a·x' - a·x) with x = 1: -log q_0 = Σ_u φ_u (1 - x'_u)
        s = torch.einsum("ic,bc->bi", a.flatten(1), (xb - 1).flatten(1)).exp()  # (B, I)
        return torch.stack([s, 1 - s], -1)  # (B, I, 2)

    return f, x, I


@pytest.mark.parametrize("dtype", DTYPES)
def test_occlusion_saliency_linear_closed_form_on_every_mask(dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 2, 3, generator=g, dtype=dtype)  # (I, T, F), 6 cells
    f, x, _ = _linear_model(a)
    masks = torch.tensor(list(itertools.product([False, True], repeat=6))).view(64, 2, 3)
    sm = occlusion_saliency(f, x, masks, batch_size=7)
    # over all 2^6 masks of one-cell blocks: SM_u = φ_u + (1/2) Σ_{u' != u} φ_u'
    expected = a + 0.5 * (a.sum((1, 2), keepdim=True) - a)
    torch.testing.assert_close(sm, expected, atol=1e-4 if dtype == torch.float32 else 1e-12, rtol=0)


def test_occlusion_saliency_with_block_masks_ranks_cells_by_their_block():
    g = torch.Generator().manual_seed(6)
    a = torch.rand(1, 2, 6, generator=g, dtype=torch.float64)  # (N, 2 frames, 6 bins): 6 blocks of 1 x 2
    f, x, _ = _linear_model(a)
    blocks = torch.tensor(list(itertools.product([False, True], repeat=6))).view(64, 2, 3)
    masks = blocks.repeat_interleave(2, dim=2)  # every block pattern, each block hiding 2 bins
    sm = occlusion_saliency(f, x, masks)
    # SM_u = φ_G + (1/2) Σ_{G' != G} φ_G' for the block G of cell u (φ_G: the block's summed effect)
    block_effect = a.view(1, 2, 3, 2).sum(-1).repeat_interleave(2, dim=2)  # (1, 2, 6)
    torch.testing.assert_close(sm, block_effect + 0.5 * (a.sum() - block_effect), atol=1e-12, rtol=0)


def test_occlusion_saliency_random_masks_follow_the_expected_value():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 4, 5, generator=g, dtype=torch.float64)
    f, x, _ = _linear_model(a)
    p = 0.3
    masks = torch.rand(20000, 4, 5, generator=g) < p
    sm = occlusion_saliency(f, x, masks, batch_size=5000)
    # E[SM_u] = φ_u + π_occ Σ_{u' != u} φ_u' = (1 - π_occ) φ_u + π_occ Σ φ: affine in φ_u,
    # so corr(SM, φ) ≈ 1
    expected = (1 - p) * a + p * a.sum()
    assert (sm - expected).abs().max() < 0.08  # about 4.5 standard errors of a 6000-mask average
    assert pearson_flat(sm, a) > 0.99


def test_identity_encoder_one_hot_attention_concentrates_saliency_on_the_attended_frame():
    torch.manual_seed(3)
    T, D, I = 6, 8, 3
    attended = torch.tensor([4, 0, 2])
    one_hot = torch.nn.functional.one_hot(attended, T).double()  # (I, T)
    layer = MultiHeadAttention(D, 1, weights_transform=lambda A: one_hot.expand_as(A)).double()
    readout = nn.Linear(D, 5).double()
    queries = torch.randn(1, I, D, dtype=torch.float64)
    h = torch.randn(T, D, dtype=torch.float64)  # identity encoder: H = X

    def f(hb):
        out, inter = layer(queries.expand(len(hb), -1, -1), context=hb, return_intermediates=True)
        return torch.softmax(readout(out), -1)

    _, inter = layer(queries, context=h[None], return_intermediates=True)
    assert torch.equal(inter.weights[0, 0], one_hot)
    frames = torch.tensor(list(itertools.product([False, True], repeat=T)))  # every frame mask
    sm = occlusion_saliency(f, h, frames[:, :, None].expand(-1, -1, D)).amax(-1)  # (I, T)
    assert torch.equal(sm.argmax(-1), attended)
    for i in range(I):  # the row is k_i (1/2 + 1/2 [t = j_i]): corr with the one-hot row is 1
        assert abs(pearson_flat(sm[i], one_hot[i]) - 1) < 1e-9


def test_drop_score_reads_only_the_decoded_token():
    f, x, _ = _linear_model(torch.full((1, 1, 2), 0.5, dtype=torch.float64))
    masks = torch.tensor([[[True, False]], [[True, True]]])
    sm = occlusion_saliency(f, x, masks, score="drop")
    # drop = 1 - exp(-Σ a occ): masks score 1 - e^{-1/2} and 1 - e^{-1}
    s = torch.tensor([1 - math.exp(-0.5), 1 - math.exp(-1.0)], dtype=torch.float64)
    torch.testing.assert_close(sm[0, 0], torch.stack([s.mean(), s[1]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_saliency_closed_form_for_a_softmax_linear_model(dtype):
    g = torch.Generator().manual_seed(4)
    W = torch.randn(2, 3, 3, 4, generator=g, dtype=dtype)  # (I, V, T, F)
    x = torch.randn(3, 4, generator=g, dtype=dtype)

    def f(xb):
        return torch.softmax(torch.einsum("ivtf,btf->biv", W, xb), -1)

    p = f(x[None])[0]  # (N, V)
    # ∂ log ŷ_i(y_i) / ∂x = W_{i,y_i} - Σ_v ŷ_iv W_iv, for the decoded tokens and for forced ones
    for y, targets in ((p.argmax(-1), None), (p.argmin(-1), p.argmin(-1))):
        expected = (W[torch.arange(2), y] - torch.einsum("iv,ivtf->itf", p, W)).abs()
        torch.testing.assert_close(gradient_saliency(f, x, targets), expected, atol=_tol(dtype), rtol=0)


def test_pearson_and_spearman_against_numpy():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    b = b + a
    valid = torch.rand(4, 9, generator=g) > 0.3
    expected = np.corrcoef(a[valid].double().numpy(), b[valid].double().numpy())[0, 1]
    assert abs(pearson_flat(a, b, valid) - expected) < 1e-12
    # invariant to positive affine maps of either map; corr(a, a) = 1; a sign flip negates it
    assert abs(pearson_flat(3 * a + 2, 0.5 * b - 1, valid) - expected) < 1e-6
    assert abs(pearson_flat(a, a) - 1) < 1e-12
    assert abs(pearson_flat(-a, b, valid) + expected) < 1e-12
    ranks = [np.argsort(np.argsort(v[valid].double().numpy())) for v in (a, b)]  # no ties
    assert abs(spearman_flat(a, b, valid) - np.corrcoef(*ranks)[0, 1]) < 1e-12
    # ties share their average rank: [1, 1, 2] ranks as [1.5, 1.5, 3]
    tied = torch.tensor([1.0, 1.0, 2.0])
    assert abs(spearman_flat(tied, torch.tensor([1.5, 1.5, 3.0])) - 1) < 1e-12
    assert (
        abs(spearman_flat(tied, torch.tensor([0.0, 1.0, 5.0])) - np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
        < 1e-12
    )


def test_constant_maps_give_nan_not_a_division_by_zero():
    a = torch.full((2, 3), 0.1)
    b = torch.rand(2, 3)
    assert math.isnan(pearson_flat(a, b)) and math.isnan(spearman_flat(b, a))
    valid = torch.tensor([[True, False, False], [False, False, False]])
    assert math.isnan(pearson_flat(b, b, valid))  # one valid cell


def test_speech_transcriber_shapes_stochastic_rows_and_no_attention_to_padding():
    torch.manual_seed(6)
    batch = spoken_symbols(3, generator=torch.Generator().manual_seed(6))
    model = SpeechTranscriber(16, batch.vocab, D=16, H=2, enc_layers=1, dec_layers=2)
    logits, ca = model(batch.x, batch.tokens[:, :-1], batch.frame_valid, return_cross=True)
    T_enc = math.ceil(batch.x.shape[1] / 2)
    assert logits.shape == (3, batch.targets.shape[1], batch.vocab)
    assert ca.shape == (3, 2, 2, batch.targets.shape[1], T_enc)
    torch.testing.assert_close(ca.sum(-1), torch.ones(ca.shape[:-1]))
    hidden = ~SpeechTranscriber.frames_valid(batch.frame_valid)  # (B, T')
    assert ca.permute(0, 4, 1, 2, 3)[hidden].abs().max() == 0
    # occluding padding changes nothing: the padded utterance and its crop decode alike
    T0 = int(batch.frame_valid[0].sum())
    crop = model(batch.x[:1, :T0], batch.tokens[:1, :-1])
    torch.testing.assert_close(crop, logits[:1], atol=1e-5, rtol=0)


def test_spoken_symbols_alignment_marks_the_bumps():
    b = spoken_symbols(4, noise=0.0, generator=torch.Generator().manual_seed(7))
    for u in range(4):
        for i, s in enumerate(b.targets[u].tolist()):
            if 0 <= s < b.n_symbols:
                frames = b.alignment[u, i]
                assert frames.sum() >= 3 and (b.x[u, frames][:, [s, s + 6]] == 1).all()


def test_bad_inputs_are_refused_with_clear_errors():
    ca = _stochastic(2, 2, 3, 4, torch.float32)
    with pytest.raises(ValueError, match="layers"):
        aggregate_ca(ca, layers=[2])
    with pytest.raises(ValueError, match="heads"):
        aggregate_ca(ca, heads=[])
    with pytest.raises(TypeError, match="heads"):
        aggregate_ca(ca, heads=1)
    with pytest.raises(ValueError, match="ca"):
        aggregate_ca(ca[0])
    with pytest.raises(ValueError, match="t_out"):
        reduce_saliency(torch.rand(2, 3, 4), 4)
    with pytest.raises(ValueError, match="freq"):
        reduce_saliency(torch.rand(2, 3, 4), 2, freq="sum")
    x = torch.rand(3, 4)
    with pytest.raises(TypeError, match="masks"):
        occlusion_saliency(lambda b: b, x, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="masks"):
        occlusion_saliency(lambda b: b, x, torch.zeros(2, 4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="score"):
        occlusion_saliency(lambda b: b, x, torch.zeros(2, 3, 4, dtype=torch.bool), score="l2")
    with pytest.raises(TypeError, match="f must be callable"):
        occlusion_saliency(None, x, torch.zeros(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        pearson_flat(torch.rand(3), torch.rand(4))
    with pytest.raises(TypeError, match="valid"):
        pearson_flat(torch.rand(3), torch.rand(3), torch.ones(3))
    with pytest.raises(ValueError, match="pi_occ must"):
        random_block_masks(2, 3, 4, pi_occ=1.0)
    with pytest.raises(TypeError, match="targets"):
        gradient_saliency(lambda b: torch.softmax(b, -1), x, torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        gradient_saliency(lambda b: torch.softmax(b, -1), x, torch.zeros(2, dtype=torch.long))


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs(device, dtype):
    ca = _stochastic(2, 3, 2, 5, dtype).to(device)
    sm = torch.rand(2, 5, 4, dtype=dtype, device=device)
    x = torch.rand(5, 4, dtype=dtype, device=device)
    masks = random_block_masks(3, 5, 4, generator=torch.Generator().manual_seed(0), device=device)

    def f(xb):
        return torch.softmax(xb[:, :2, :3], -1)

    with tensors_without_device_go_to_meta():
        results = [
            aggregate_ca(ca, [1], [0, 2]),
            reduce_saliency(sm, 3, "mean"),
            occlusion_saliency(f, x, masks),
            gradient_saliency(f, x),
        ]
    assert_follow(results, x.device, dtype)
    assert masks.device == x.device and masks.dtype == torch.bool


def test_the_experiment_runs_and_is_seeded():
    from attnbook.mechanisms.attention_vs_saliency_experiment import (
        KINDS,
        saliency_correlations,
        train_transcriber,
    )

    torch.set_num_threads(1)
    model = train_transcriber(0, enc_layers=1, steps=3, D=16, H=2)
    first = saliency_correlations(model, n_utterances=2, n_masks=8)
    again = saliency_correlations(
        train_transcriber(0, enc_layers=1, steps=3, D=16, H=2), n_utterances=2, n_masks=8
    )
    assert first == again
    assert set(first) == set(KINDS) | {"accuracy"}
    assert set(first["X"]) == {"l0h0", "l0h1", "l1h0", "l1h1", "layer0", "layer1", "all"}
    assert all(-1 <= v <= 1 for kind in KINDS for v in first[kind].values() if not math.isnan(v))


def test_mixing_toy_gap_is_zero_without_mixing_and_grows_with_it():
    from attnbook.mechanisms.attention_vs_saliency_experiment import mixing_gap, mixing_toy

    toy = mixing_toy(0.3)
    torch.testing.assert_close(toy.mix.sum(1), torch.ones(12, dtype=torch.float64))
    p = toy.decode(toy.encode(toy.x[None]))
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 4, dtype=torch.float64))
    assert mixing_gap(0.0, 0) == 0.0  # C = X: the same masks give the same maps
    gaps = {a: [mixing_gap(a, s, n_masks=100) for s in range(3)] for a in (0.3, 0.6, 0.9)}
    assert min(gaps[0.6]) > 0.1, gaps
    assert sum(gaps[0.3]) < sum(gaps[0.6]) < sum(gaps[0.9]), gaps  # the gap grows with α
    with pytest.raises(ValueError, match="alpha"):
        mixing_toy(1.5)
