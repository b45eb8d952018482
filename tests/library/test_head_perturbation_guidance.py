"""attnbook.mechanisms.head_perturbation_guidance: SoftPAG anchors, guidance, HeadHunter, DDIM, errors."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import head_perturbation_guidance as mechanism
from attnbook.mechanisms.head_perturbation_guidance import (
    HeadPerturbation,
    cosine_alpha_bar,
    ddim_sample,
    guided_eps,
    guided_prediction,
    headhunter,
    headhunter_step,
    identity_weights,
    layer_selection,
    perturbation_layers,
    perturbed,
    soft_identity,
    softpag_attention,
)
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("16")
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-10)}


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    assert mechanism.__doc__
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _qkv(B, H, N, d, dtype, seed=0, M=None):
    g = torch.Generator().manual_seed(seed)
    M = N if M is None else M
    return [torch.randn(B, H, n, d, generator=g, dtype=dtype) for n in (N, M, M)]


# ---------------------------------------------------------------- SoftPAG anchors


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,N,d", [(1, 1, 1, 4), (2, 3, 7, 5), (3, 4, 16, 8)])
def test_u_zero_is_torch_scaled_dot_product_attention(B, H, N, d, dtype):
    q, k, v = _qkv(B, H, N, d, dtype)
    out, weights = softpag_attention(q, k, v, torch.zeros(H, dtype=dtype))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    assert out.dtype == dtype and weights.shape == (B, H, N, N)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 6])
def test_u_one_returns_the_values_exactly(N, dtype):
    q, k, v = _qkv(2, 3, N, 5, dtype, seed=1)
    out, weights = softpag_attention(q, k, v, 1.0)
    assert torch.equal(out, v)
    assert torch.equal(weights, torch.eye(N, dtype=dtype).expand(2, 3, N, N))


def test_u_one_with_a_cache_picks_each_query_s_own_key():
    # 2 queries that are the last 2 of 5 keys: query i attends key i + 3
    q, k, v = _qkv(1, 2, 2, 4, torch.float64, seed=2, M=5)
    out, _ = softpag_attention(q, k, v, 1.0)
    assert torch.equal(out, v[..., 3:, :])
    assert torch.equal(identity_weights(2, 5), torch.tensor([[0, 0, 0, 1.0, 0], [0, 0, 0, 0, 1.0]]))


def test_per_head_strengths_match_an_explicit_loop():
    q, k, v = _qkv(2, 3, 6, 4, torch.float64, seed=3)
    u = torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64)
    out, _ = softpag_attention(q, k, v, u)
    for h in range(3):
        ref = F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h])
        # O^soft_h = (1 - u_h) A_h V_h + u_h V_h
        torch.testing.assert_close(out[:, h], (1 - u[h]) * ref + u[h] * v[:, h], atol=1e-12, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), u=st.lists(st.floats(0, 1), min_size=3, max_size=3))
def test_mixed_rows_are_distributions(seed, u):
    q, k, v = _qkv(2, 3, 5, 4, torch.float64, seed=seed)
    _, weights = softpag_attention(q, k, v, torch.tensor(u, dtype=torch.float64), causal=True)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64), atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.floats(0, 1), b=st.floats(0, 1))
def test_the_output_is_affine_in_u(seed, a, b):
    q, k, v = _qkv(1, 2, 5, 3, torch.float64, seed=seed)
    out = lambda u: softpag_attention(q, k, v, u)[0]  # noqa: E731
    # O(a) = (1 - a) O(0) + a O(1), and the midpoint of O(a), O(b) is O((a + b) / 2)
    torch.testing.assert_close(out(a), (1 - a) * out(0.0) + a * out(1.0), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out((a + b) / 2), (out(a) + out(b)) / 2, atol=1e-12, rtol=1e-10)


# ---------------------------------------------------------------- the layer and the model


def _model(layers=2, D=12, H=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        *[MultiHeadAttention(D, H, weights_transform=HeadPerturbation(H)) for _ in range(layers)]
    ).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unperturbed_layer_is_torch_multihead_attention(dtype):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 3, batch_first=True).to(dtype)
    layer = MultiHeadAttention.from_torch(ref)
    layer.weights_transform = HeadPerturbation(3).to(dtype)
    x = torch.randn(2, 7, 12, dtype=dtype)
    expected, _ = ref(x, x, x)
    torch.testing.assert_close(layer(x), expected, **TOL[dtype])


def test_all_heads_of_a_layer_is_layer_level_pag():
    model = _model()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    with perturbed(model, layer_selection(1, 3)):
        _, inter = model[1](model[0](x), return_intermediates=True)
    # every head of layer 1 returns its values: O_h = V_h
    assert torch.equal(inter.heads, inter.v)
    # the same as a layer whose weights are replaced by the identity outright
    pag = MultiHeadAttention(
        12, 3, weights_transform=lambda A: torch.eye(A.shape[-1], dtype=A.dtype).expand_as(A)
    )
    pag.load_state_dict({k: v for k, v in model[1].state_dict().items() if not k.endswith(".u")})
    with perturbed(model, layer_selection(1, 3)):
        torch.testing.assert_close(model(x), pag.double()(model[0](x)), atol=1e-12, rtol=0)


def test_perturbing_one_head_changes_only_that_head():
    model = _model(layers=1)
    x = torch.randn(1, 6, 12, dtype=torch.float64)
    _, plain = model[0](x, return_intermediates=True)
    with perturbed(model, {(0, 2): 0.5}):
        _, pert = model[0](x, return_intermediates=True)
    assert torch.equal(pert.heads[:, :2], plain.heads[:, :2])
    torch.testing.assert_close(
        pert.heads[:, 2], 0.5 * plain.heads[:, 2] + 0.5 * plain.v[:, 2], atol=1e-12, rtol=0
    )


def test_perturbed_restores_the_strengths_even_after_an_error():
    model = _model()
    with perturbed(model, {(0, 1): 0.7}):
        assert perturbation_layers(model)[0].u.tolist() == [0.0, 0.7, 0.0]
    assert all(not m.u.any() for m in perturbation_layers(model))
    with pytest.raises(RuntimeError, match="boom"), perturbed(model, {(1, 0): 1.0}):
        raise RuntimeError("boom")
    assert all(not m.u.any() for m in perturbation_layers(model))


# ---------------------------------------------------------------- guidance


class _Denoiser(nn.Module):
    """x (B, N, D), t (B,) -> eps (B, N, D): two perturbable attention layers and a time shift."""

    def __init__(self):
        super().__init__()
        self.body = _model()

    def forward(self, x, t):
        return self.body(x + 0.01 * t.to(x.dtype)[:, None, None])


@pytest.mark.parametrize("selection,w", [({}, 2.0), ({(0, 1): 0.0, (1, 2): 0.0}, 2.0), ({(0, 1): 1.0}, 0.0)])
def test_no_selection_no_strength_or_no_scale_gives_eps_exactly(selection, w):
    model = _Denoiser()
    x, t = torch.randn(2, 5, 12, dtype=torch.float64), torch.tensor([3, 9])
    assert torch.equal(guided_prediction(model, x, t, selection, w), model(x, t))


def test_guidance_moves_away_from_the_perturbed_prediction():
    model = _Denoiser()
    x, t = torch.randn(2, 5, 12, dtype=torch.float64), torch.tensor([3, 9])
    eps = model(x, t)
    with perturbed(model, {(0, 0): 1.0, (1, 2): 0.5}):
        eps_pert = model(x, t)
    guided = guided_prediction(model, x, t, {(0, 0): 1.0, (1, 2): 0.5}, 1.5)
    # the two conventions are one expression: ε + w (ε - ε̃) = (1 + w) ε - w ε̃
    torch.testing.assert_close(guided, 2.5 * eps - 1.5 * eps_pert, atol=1e-12, rtol=1e-10)
    # ⟨ε̂ - ε, ε̃ - ε⟩ = -w ‖ε̃ - ε‖² < 0
    inner = ((guided - eps) * (eps_pert - eps)).sum()
    torch.testing.assert_close(inner, -1.5 * ((eps_pert - eps) ** 2).sum(), atol=1e-12, rtol=1e-10)
    assert inner < 0


# ---------------------------------------------------------------- HeadHunter


def test_headhunter_step_on_an_additive_objective_is_the_best_subset():
    values = {(0, 0): 0.1, (0, 1): 0.9, (1, 0): -0.4, (1, 1): 0.5, (2, 0): 0.7}
    calls = []

    def f(S):
        calls.append(list(S))
        return sum(values[c] for c in S)

    chosen = headhunter_step(list(values), [], f, k=2)
    best = max(itertools.combinations(values, 2), key=lambda S: sum(values[c] for c in S))
    assert set(chosen) == set(best) and chosen == [(0, 1), (2, 0)]
    assert len(calls) == 5  # one evaluation per candidate
    # starting from a selection: it is kept first and never re-scored
    assert headhunter_step(list(values), [(0, 1)], f, k=1) == [(0, 1), (2, 0)]
    # k larger than what is left: everything is added, best first
    assert headhunter_step(list(values), [(0, 1)], f, k=10) == [(0, 1), (2, 0), (1, 1), (0, 0), (1, 0)]
    assert headhunter(list(values), f, k=1, iterations=3) == [(0, 1), (2, 0), (1, 1)]


def test_headhunter_ties_go_to_the_candidate_listed_first():
    assert headhunter_step(["c", "a", "b"], [], lambda S: 1.0, k=2) == ["c", "a"]
    assert headhunter_step(["b", "a", "c"], [], lambda S: 0.0 if S[-1] == "a" else 1.0, k=3) == [
        "b",
        "c",
        "a",
    ]


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [1, 7, 20])
def test_ddim_with_the_exact_noise_of_a_point_mass_lands_on_it(steps, dtype):
    ab = cosine_alpha_bar(50)
    assert ab[0] == 1 and (ab[1:] < ab[:-1]).all() and ab[-1] > 0
    target = torch.randn(3, 4, dtype=dtype)
    ab_x = ab.to(dtype)

    def eps_fn(x, t):
        a = ab_x[t][:, None]
        # data = one point x_0*: ε = (x_t - sqrt(Γ) x_0*) / sqrt(1 - Γ)
        return (x - a.sqrt() * target) / (1 - a).sqrt()

    x = ddim_sample(eps_fn, torch.randn(3, 4, dtype=dtype), ab, steps)
    torch.testing.assert_close(x, target, **TOL[dtype])


def test_ddim_is_deterministic_and_matches_one_step_by_hand():
    ab = cosine_alpha_bar(10)
    x_T = torch.randn(2, 3, dtype=torch.float64)
    eps_fn = lambda x, t: torch.sin(x) + t[:, None].double()  # noqa: E731
    x = ddim_sample(eps_fn, x_T, ab, 1)
    # one step from T to 0: x_0 = (x_T - sqrt(1 - Γ_T) ε) / sqrt(Γ_T)
    expected = (x_T - (1 - ab[10]).sqrt() * (torch.sin(x_T) + 10)) / ab[10].sqrt()
    torch.testing.assert_close(x, expected, atol=1e-12, rtol=1e-10)
    assert torch.equal(ddim_sample(eps_fn, x_T, ab, 4), ddim_sample(eps_fn, x_T, ab, 4))


# ---------------------------------------------------------------- errors and devices


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv(1, 2, 3, 4, torch.float32)
    A = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    with pytest.raises(ValueError, match="u must lie"):
        soft_identity(A, 1.5)
    with pytest.raises(ValueError, match="u must lie"):
        soft_identity(A, torch.tensor([0.2, -0.1]))
    with pytest.raises(ValueError, match="one strength per head"):
        soft_identity(A, torch.zeros(3))
    with pytest.raises(TypeError, match="u"):
        soft_identity(A, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="weights"):
        soft_identity(A[0], 0.5)
    with pytest.raises(ValueError, match="N <= M"):
        identity_weights(4, 3)
    with pytest.raises(ValueError, match="q"):
        softpag_attention(q[0], k[0], v[0], 0.5)
    with pytest.raises(ValueError, match="one shape"):
        guided_eps(torch.zeros(2, 3), torch.zeros(3, 2), 1.0)
    with pytest.raises(TypeError, match="w"):
        guided_eps(torch.zeros(2), torch.zeros(2), "1")
    with pytest.raises(TypeError, match="dtype"):
        guided_eps(torch.zeros(2), torch.zeros(2, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="k must be"):
        headhunter_step([1, 2], [], lambda S: 0.0, k=0)
    with pytest.raises(TypeError, match="k must be"):
        headhunter_step([1, 2], [], lambda S: 0.0, k=1.5)
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(lambda x, t: x, torch.zeros(2, 3), cosine_alpha_bar(5), 6)
    model = _model()
    with pytest.raises(ValueError, match="no head"), perturbed(model, {(2, 0): 1.0}):
        pass
    with pytest.raises(ValueError, match="u of head"), perturbed(model, {(0, 0): 2.0}):
        pass
    with pytest.raises(TypeError, match="pairs"), perturbed(model, {0: 1.0}):
        pass
    assert all(not m.u.any() for m in perturbation_layers(model))


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    q, k, v = (t.to(device) for t in _qkv(2, 3, 5, 4, dtype))
    A = torch.softmax(torch.randn(2, 3, 5, 5), -1).to(device, dtype)
    layer = HeadPerturbation(3).to(device)
    layer.u[1] = 0.5
    with tensors_without_device_go_to_meta():
        results = [
            soft_identity(A, 0.4),
            softpag_attention(q, k, v, 0.3)[0],
            softpag_attention(q, k, v, torch.tensor([0.1, 0.2, 0.3], device=device, dtype=dtype))[0],
            layer(A),
            guided_eps(q, k, 2.0),
            ddim_sample(lambda x, t: 0.1 * x, q, cosine_alpha_bar(8), 3),
        ]
    assert_follow(results, q.device, dtype)


def test_the_grader_accepts_the_other_guidance_convention():
    from attnbook.grading import run_task

    # (1 + w) ε - w ε̃ is ε + w (ε - ε̃) rearranged: the check must accept it
    assert run_task("ch16.guided_eps", lambda e, p, w: (1 + w) * e - w * p).passed
    assert not run_task("ch16.guided_eps", lambda e, p, w: (1 + w) * p - w * e).passed


# ---------------------------------------------------------------- the miniature


def test_the_miniature_runs_and_its_pieces_agree():
    from attnbook.mechanisms.head_perturbation_guidance_experiment import (
        compare_guidance,
        patchify,
        sample_images,
        train_denoiser,
        unpatchify,
    )
    from attnbook.tasks import nearest_prototype, template_images

    batch = template_images(4, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpatchify(patchify(batch.images)), batch.images)
    # patch 1 is the 2 × 2 block at rows 0-1, columns 2-3
    torch.testing.assert_close(patchify(batch.images)[:, 1], batch.images[:, 0:2, 2:4].reshape(4, 4))
    distance, classes = nearest_prototype(batch.images)
    assert torch.equal(distance, torch.zeros(4)) and torch.equal(classes, batch.target)
    model = train_denoiser(0, steps=3, batch_size=8, D=16, H=2, layers=2)
    a = sample_images(model, {(1, 0): 1.0}, 2.0, n=3, seed=5, steps=3)
    assert a.shape == (3, 8, 8) and torch.equal(
        a, sample_images(model, {(1, 0): 1.0}, 2.0, n=3, seed=5, steps=3)
    )
    assert a.abs().max() <= 1.0 + 1e-6  # DDIM's last step returns the clamped x̂_0
    result = compare_guidance(model, 2.0, iterations=1, n_search=2, n_eval=2, steps=2, us=(0.5,))
    assert result["layer"] in (0, 1) and len(result["heads"]) == 1 and len(result["soft"]) == 1
    assert all(result[key] >= 0 for key in ("none", "pag", "headhunter"))
