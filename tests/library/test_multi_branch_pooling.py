"""attnbook.mechanisms.multi_branch_pooling: ABMIL limit, STKIM invariants, diversity, eval, errors."""

import math

import pytest
import torch
from torch import nn

from attnbook.attention import scaled_dot_product_attention
from attnbook.chapters import by_number
from attnbook.mechanisms import multi_branch_pooling as mechanism
from attnbook.mechanisms.multi_branch_pooling import (
    ACMIL,
    acmil_loss,
    diversity_loss,
    gated_attention_logits,
    multi_branch_pool,
    stkim_mask,
    stkim_select,
    top_k_attention_mass,
)
from tests.library.device_check import (
    assert_follow,
    on_devices_and_dtypes,
    tensors_without_device_go_to_meta,
)

CHAPTER = by_number("08")
DTYPES = (torch.float32, torch.float64)


def _tol(dtype):
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}


def _weights(seed, M, D, d, H, dtype):
    g = torch.Generator().manual_seed(seed)
    shapes = ((M, D), (d, D), (d, D), (H, d))
    X, W_tanh, W_gate, Q = (torch.randn(*s, generator=g, dtype=dtype) for s in shapes)
    b_tanh, b_gate, b_Q = (torch.randn(s, generator=g, dtype=dtype) for s in (d, d, H))
    return X, W_tanh, W_gate, Q, b_tanh, b_gate, b_Q


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,D,d,H", [(1, 3, 2, 1), (7, 5, 3, 4), (13, 6, 9, 5)])
def test_gated_logits_match_an_instance_by_instance_loop(dtype, M, D, d, H):
    X, W_tanh, W_gate, Q, b_tanh, b_gate, b_Q = _weights(0, M, D, d, H, dtype)
    logits = gated_attention_logits(X, W_tanh, W_gate, Q, b_tanh, b_gate, b_Q)
    assert logits.shape == (H, M) and logits.dtype == dtype
    expected = torch.empty(H, M, dtype=torch.float64)
    for j in range(M):
        xj = X[j].double()
        key = [
            math.tanh(float(W_tanh[c].double() @ xj + b_tanh[c]))
            / (1 + math.exp(-float(W_gate[c].double() @ xj + b_gate[c])))
            for c in range(d)
        ]
        for h in range(H):
            expected[h, j] = sum(float(Q[h, c]) * key[c] for c in range(d)) + float(b_Q[h])
    torch.testing.assert_close(logits.double(), expected, **_tol(dtype))
    no_bias = gated_attention_logits(X, W_tanh, W_gate, Q)
    keys = torch.tanh(X @ W_tanh.T) * torch.sigmoid(X @ W_gate.T)
    torch.testing.assert_close(no_bias, (keys @ Q.T).T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 2, 37])
def test_one_branch_without_masking_is_single_query_attention(dtype, M):
    """ABMIL = SDPA(q, k, v = X, scale = 1), by torch and by the book's own SDPA."""
    D, d = 6, 5
    X, W_tanh, W_gate, Q, b_tanh, b_gate, _ = _weights(1, M, D, d, 1, dtype)
    a, f, f_slide = multi_branch_pool(X, gated_attention_logits(X, W_tanh, W_gate, Q, b_tanh, b_gate))
    keys = torch.tanh(X @ W_tanh.T + b_tanh) * torch.sigmoid(X @ W_gate.T + b_gate)  # (M, d)
    expected = nn.functional.scaled_dot_product_attention(Q[None], keys[None], X[None], scale=1.0)[0]
    torch.testing.assert_close(f, expected, **_tol(dtype))
    torch.testing.assert_close(f_slide, expected[0], **_tol(dtype))
    out, weights = scaled_dot_product_attention(Q, keys, X, scale=1.0)
    torch.testing.assert_close(f, out, **_tol(dtype))
    torch.testing.assert_close(a, weights, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_branches_and_the_mean_attention(dtype):
    H, M, D = 3, 11, 4
    g = torch.Generator().manual_seed(2)
    X = torch.randn(M, D, generator=g, dtype=dtype)
    logits = torch.randn(H, M, generator=g, dtype=dtype)
    logits[1, 4] = float("-inf")
    a, f, f_slide = multi_branch_pool(X, logits)
    for h in range(H):
        e = [math.exp(float(v)) for v in logits[h]]
        a_h = torch.tensor([v / sum(e) for v in e], dtype=torch.float64)
        torch.testing.assert_close(a[h].double(), a_h, **_tol(dtype))
        torch.testing.assert_close(f[h], sum(a[h, j] * X[j] for j in range(M)), **_tol(dtype))
    assert a[1, 4] == 0
    torch.testing.assert_close(f_slide, f.mean(0), **_tol(dtype))  # Σ_j Ā_j x_j = mean_h f_h (linearity)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,M,n_top,p", [(5, 40, 10, 0.6), (3, 7, 10, 0.6), (4, 12, 5, 0.5), (2, 9, 9, 0.9)])
def test_stkim_masks_exactly_n_drop_of_each_branchs_top_instances_and_renormalises(dtype, H, M, n_top, p):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(H, M, generator=g, dtype=dtype)
    masked = stkim_mask(logits, n_top, p, generator=g)
    hidden = torch.isinf(masked)
    n_drop = int(min(n_top, M) * p)
    assert (hidden.sum(1) == n_drop).all()
    top = torch.topk(logits, min(n_top, M), dim=1).indices
    for h in range(H):
        assert set(hidden[h].nonzero().flatten().tolist()) <= set(top[h].tolist())
    assert torch.equal(masked[~hidden], logits[~hidden])
    a = torch.softmax(logits, dim=1)
    a_masked, _, _ = multi_branch_pool(torch.eye(M, dtype=dtype), masked)
    assert (a_masked[hidden] == 0).all()
    # A'_{hj} = A_{hj} / (1 - Σ_hidden A_{hj'})
    renormalised = a / (1 - (a * hidden).sum(1, keepdim=True))
    torch.testing.assert_close(a_masked[~hidden], renormalised[~hidden], **_tol(dtype))


def test_stkim_draws_per_branch_uniformly_and_reproducibly():
    logits = torch.randn(1, 30, dtype=torch.float64).expand(400, 30).contiguous()  # 400 equal branches
    top = set(torch.topk(logits[0], 10).indices.tolist())
    hidden = stkim_select(logits, 10, 0.6, torch.Generator().manual_seed(4))
    assert len({tuple(row.nonzero().flatten().tolist()) for row in hidden}) > 100  # one draw per branch
    rate = hidden.double().mean(0)
    assert all(abs(rate[i] - 0.6) < 0.12 for i in top)  # each candidate hidden with probability p
    assert all(rate[i] == 0 for i in range(30) if i not in top)
    again = stkim_select(logits, 10, 0.6, torch.Generator().manual_seed(4))
    assert torch.equal(hidden, again)
    assert not torch.equal(hidden, stkim_select(logits, 10, 0.6, torch.Generator().manual_seed(5)))


def test_stkim_identities_and_evaluation():
    logits = torch.randn(3, 8)
    for n_top, p in [(10, 0.0), (0, 0.6), (1, 0.6)]:  # n_drop = 0: nothing hidden
        assert torch.equal(stkim_mask(logits, n_top, p), logits)
    g = torch.Generator().manual_seed(0)
    state, default_state = g.get_state(), torch.get_rng_state()
    assert stkim_mask(logits, 10, 0.6, g, training=False) is logits
    assert torch.equal(g.get_state(), state) and torch.equal(torch.get_rng_state(), default_state)


def test_diversity_identities_and_gradient():
    a = torch.softmax(torch.randn(4, 9, dtype=torch.float64), dim=1)
    assert diversity_loss(a[:1]) == 0
    torch.testing.assert_close(diversity_loss(a[:1].expand(3, 9)), torch.tensor(1.0, dtype=torch.float64))
    disjoint = torch.zeros(3, 9, dtype=torch.float64)
    disjoint[0, :3], disjoint[1, 3:5], disjoint[2, 5:] = 1 / 3, 1 / 2, 1 / 4
    assert diversity_loss(disjoint) == 0
    pairs = [(h, h2) for h in range(4) for h2 in range(h + 1, 4)]
    expected = sum(nn.functional.cosine_similarity(a[h], a[h2], dim=0) for h, h2 in pairs) / len(pairs)
    torch.testing.assert_close(diversity_loss(a), expected)
    logits = torch.randn(1, 5, dtype=torch.float64, requires_grad=True)
    diversity_loss(torch.softmax(logits, 1)).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: diversity_loss(torch.softmax(x, 1)), (logits,))


def _model(H, n_top, p, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return ACMIL(9, 7, 5, n_classes=3, H=H, n_top=n_top, p=p).to(dtype)


def test_the_module_is_the_functional_composition():
    model = _model(4, 10, 0.6)
    X_in = torch.randn(17, 9, dtype=torch.float64)
    out = model(X_in, torch.Generator().manual_seed(6))
    X = torch.relu(X_in @ model.reduce.weight.T)
    W_tanh, W_gate, Q = model.W_tanh, model.W_gate, model.Q
    logits = stkim_mask(
        gated_attention_logits(X, W_tanh.weight, W_gate.weight, Q.weight, W_tanh.bias, W_gate.bias, Q.bias),
        10,
        0.6,
        torch.Generator().manual_seed(6),
    )
    a, f, f_slide = multi_branch_pool(X, logits)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.attention, a)
    for h in range(4):
        torch.testing.assert_close(out.branch_logits[h], model.branch_classifiers[h](f[h]))
    torch.testing.assert_close(out.slide_logits, model.slide_classifier(f_slide))


@pytest.mark.parametrize("dtype", DTYPES)
def test_evaluation_is_permutation_invariant_and_draws_nothing(dtype):
    model = _model(5, 10, 0.6, dtype).eval()
    x = torch.randn(23, 9, dtype=dtype)
    perm = torch.randperm(23)
    state = torch.get_rng_state()
    out, shuffled = model(x), model(x[perm])
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(shuffled.slide_logits, out.slide_logits, **_tol(dtype))
    torch.testing.assert_close(shuffled.branch_logits, out.branch_logits, **_tol(dtype))
    torch.testing.assert_close(shuffled.attention, out.attention[:, perm], **_tol(dtype))
    assert not torch.isinf(out.logits).any()
    model.train()
    assert (torch.isinf(model(x).logits).sum(1) == 6).all()


def test_no_masking_makes_training_equal_evaluation():
    x = torch.randn(15, 9, dtype=torch.float64)
    for model in (_model(5, 10, 0.0), _model(5, 0, 0.6), _model(1, 0, 0.0)):
        train = model.train()(x)
        test = model.eval()(x)
        assert torch.equal(train.slide_logits, test.slide_logits)
        assert torch.equal(train.attention, test.attention)


def test_loss_terms_and_the_one_branch_case():
    model = _model(3, 10, 0.6).train()
    out = model(torch.randn(21, 9, dtype=torch.float64), torch.Generator().manual_seed(7))
    ce = nn.functional.cross_entropy
    expected = (
        ce(out.slide_logits[None], torch.tensor([2]))
        + sum(ce(out.branch_logits[h : h + 1], torch.tensor([2])) for h in range(3)) / 3
        + diversity_loss(out.attention)
    )
    loss = acmil_loss(out.branch_logits, out.slide_logits, out.attention, 2)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.Q.weight.grad.abs().sum() > 0 and model.branch_classifiers[2].weight.grad.abs().sum() > 0
    one = _model(1, 0, 0.0)(torch.randn(5, 9, dtype=torch.float64))
    torch.testing.assert_close(
        acmil_loss(one.branch_logits, one.slide_logits, one.attention, torch.tensor(1)),
        ce(one.slide_logits[None], torch.tensor([1])),
    )


def test_top_k_attention_mass():
    a = torch.tensor([[0.5, 0.1, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(top_k_attention_mass(a, 2), torch.tensor([0.8, 0.5]))
    torch.testing.assert_close(top_k_attention_mass(a[0], 10), torch.tensor(1.0))


def test_bad_inputs_raise_clear_errors():
    X, W_tanh, W_gate, Q, *_ = _weights(0, 6, 4, 3, 2, torch.float64)
    logits = torch.randn(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="X must have shape"):
        gated_attention_logits(X[0], W_tanh, W_gate, Q)
    with pytest.raises(ValueError, match="W_gate must have shape"):
        gated_attention_logits(X, W_tanh, W_gate[:, :3], Q)
    with pytest.raises(ValueError, match="Q must have shape"):
        gated_attention_logits(X, W_tanh, W_gate, Q[:, :2])
    with pytest.raises(TypeError, match="one dtype"):
        gated_attention_logits(X, W_tanh, W_gate, Q.float())
    with pytest.raises(TypeError, match="n_top must be an integer"):
        stkim_mask(logits, 2.5, 0.5)
    with pytest.raises(ValueError, match="p .* must be in"):
        stkim_mask(logits, 3, 1.5)
    with pytest.raises(ValueError, match="p must be a finite number"):
        stkim_mask(logits, 3, -0.1)
    with pytest.raises(ValueError, match="would hide all"):
        stkim_mask(logits, 10, 1.0)
    with pytest.raises(TypeError, match="generator must be"):
        stkim_mask(logits, 3, 0.5, generator=0)
    with pytest.raises(TypeError, match="training must be a bool"):
        stkim_mask(logits, 3, 0.5, training=0)
    with pytest.raises(ValueError, match="must share M"):
        multi_branch_pool(X[:5], logits)
    with pytest.raises(ValueError, match="a must have shape"):
        diversity_loss(logits[0])
    with pytest.raises(ValueError, match="y must be a class index"):
        acmil_loss(torch.randn(2, 3), torch.randn(3), torch.rand(2, 6), 3)
    with pytest.raises(TypeError, match="y must be an integer"):
        acmil_loss(torch.randn(2, 3), torch.randn(3), torch.rand(2, 6), 1.0)
    with pytest.raises(ValueError, match="X_in must have shape"):
        ACMIL(9, 7, 5)(torch.randn(4, 8))
    with pytest.raises(ValueError, match="H must be >= 1"):
        ACMIL(9, 7, 5, H=0)


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs(device, dtype):
    weights = (t.to(device, dtype) for t in _weights(0, 13, 4, 3, 3, torch.float64))
    X, W_tanh, W_gate, Q, b_tanh, b_gate, b_Q = weights
    model = ACMIL(4, 5, 3, H=3).to(device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with tensors_without_device_go_to_meta():
        logits = gated_attention_logits(X, W_tanh, W_gate, Q, b_tanh, b_gate, b_Q)
        masked = stkim_mask(logits, 10, 0.6, gen)
        a, f, f_slide = multi_branch_pool(X, masked)
        out = model(X, gen)
        results = [logits, masked, a, f, f_slide, diversity_loss(a), diversity_loss(a[:1])]
        results += [top_k_attention_mass(a), out.branch_logits, out.slide_logits, out.attention]
        results.append(acmil_loss(out.branch_logits, out.slide_logits, out.attention, 1))
    assert_follow(results, X.device, dtype)
    assert stkim_select(logits, 10, 0.6, gen).device == X.device


def test_shortcut_bags_hold_the_advertised_patterns():
    from attnbook.tasks import shortcut_bags, shortcut_patterns

    g = torch.Generator().manual_seed(0)
    patterns = shortcut_patterns(16, g)
    train, test = shortcut_bags(6, "train", patterns, g), shortcut_bags(6, "test", patterns, g)
    assert train.labels.tolist() == [1, 0] * 6 and test.labels.tolist() == [1, 0] * 6
    for b, (x, kind) in enumerate(zip(train.bags, train.kinds)):
        assert x.shape == (kind.shape[0], 16) and 40 <= x.shape[0] <= 80
        counts = [int((kind == k).sum()) for k in range(3)]
        if train.labels[b] == 1:  # 1-2 A and 5-8 of B (even positives) or C (odd positives)
            i = b // 2
            assert 1 <= counts[0] <= 2 and 5 <= counts[1 + i % 2] <= 8 and counts[2 - i % 2] == 0
            a = x[kind == 0] @ patterns[0]
            assert (a > 2).all()  # amplitude 4 along u_A, noise 0.5
        else:
            assert counts == [0, 0, 0]
    for b, kind in enumerate(test.kinds):
        shown = int(test.shown[b])
        present = [k for k in range(3) if (kind == k).any()]
        assert present == ([shown] if test.labels[b] == 1 else []) and (shown >= 0) == bool(test.labels[b])
    again = shortcut_bags(6, "train", patterns, torch.Generator().manual_seed(1))
    same = shortcut_bags(6, "train", patterns, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(again.bags, same.bags))
    with pytest.raises(ValueError, match="split"):
        shortcut_bags(2, "valid", patterns, g)


def test_train_on_bags_is_seeded_and_returns_an_eval_model():
    from attnbook.mechanisms.multi_branch_pooling_experiment import train_on_bags
    from attnbook.tasks import shortcut_bags, shortcut_patterns

    g = torch.Generator().manual_seed(0)
    train = shortcut_bags(4, "train", shortcut_patterns(16, g), g)
    a, b = (train_on_bags(train, 3, H=2, n_top=10, p=0.6, epochs=1) for _ in range(2))
    c = train_on_bags(train, 4, H=2, n_top=10, p=0.6, epochs=1)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
