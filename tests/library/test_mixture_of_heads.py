"""attnbook.mechanisms.mixture_of_heads: MHA limit, gate structure, sparsity, load balance, errors."""

import math

import pytest
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import mixture_of_heads as mechanism
from attnbook.mechanisms.mixture_of_heads import (
    MoHGate,
    load_balance_loss,
    mixture_of_heads_attention,
    moh_gates,
    moh_routing,
)

CHAPTER = by_number("07")
DTYPES = (torch.float32, torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _router(seed, D, h_s, E, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w_r = scale * torch.randn(E, D, generator=g, dtype=dtype)
    w_s = scale * torch.randn(h_s, D, generator=g, dtype=dtype) if h_s else None
    w_h = scale * torch.randn(2, D, generator=g, dtype=dtype) if h_s else None
    return g, w_r, w_s, w_h


def _gates_by_hand(x, w_r, w_s, w_h, k):
    """One token at a time, with Python lists: the equations of the module's docstring."""
    B, N, _ = x.shape
    E = w_r.shape[0]
    out = torch.zeros(B, N, (0 if w_s is None else w_s.shape[0]) + E, dtype=torch.float64)
    for b in range(B):
        for t in range(N):
            xt = x[b, t].double()
            logits = [float(w_r[j].double() @ xt) for j in range(E)]
            z = [math.exp(v - max(logits)) for v in logits]
            p = [v / sum(z) for v in z]
            order = sorted(range(E), key=lambda j: (-p[j], j))[:k]
            total = sum(p[j] for j in order)
            routed = [k * p[j] / total if j in order else 0.0 for j in range(E)]
            if w_s is None:
                out[b, t] = torch.tensor(routed, dtype=torch.float64)
                continue
            h_s = w_s.shape[0]
            s = torch.softmax(w_s.double() @ xt, dim=0) * h_s
            a = torch.softmax(w_h.double() @ xt, dim=0) * 2
            out[b, t] = torch.cat([a[0] * s, a[1] * torch.tensor(routed, dtype=torch.float64)])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,h_s", [(5, 0), (5, 1), (6, 2)])
def test_zero_router_with_all_routed_heads_is_torch_multihead_attention(dtype, H, h_s):
    torch.manual_seed(0)
    D = 3 * H  # odd head count and head width 3
    ref = nn.MultiheadAttention(D, H, batch_first=True).to(dtype)
    layer = MultiHeadAttention.from_torch(ref)
    layer.head_gate = MoHGate(D, H, h_s, k=H - h_s).to(dtype)
    x = torch.randn(2, 7, D, dtype=dtype)
    expected, _ = ref(x, x, x, need_weights=False)
    out, inter = layer(x, return_intermediates=True)
    assert torch.equal(inter.gates, torch.ones_like(inter.gates))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h_s,E,k", [(0, 4, 1), (1, 5, 2), (2, 6, 3), (3, 3, 3)])
def test_gates_match_the_equations_and_have_their_structure(dtype, h_s, E, k):
    D = 7
    g, w_r, w_s, w_h = _router(1, D, h_s, E, dtype)
    x = torch.randn(3, 5, D, generator=g, dtype=dtype)
    gates, probs, selected = moh_routing(x, w_r, w_s, w_h, k)
    assert gates.shape == (3, 5, h_s + E) and gates.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(gates.double(), _gates_by_hand(x, w_r, w_s, w_h, k), atol=tol, rtol=tol)
    assert ((gates != 0).sum(-1) == h_s + k).all()
    assert (gates >= 0).all()
    assert (selected.sum(-1) == k).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5, dtype=dtype))
    if h_s:
        alpha = 2 * torch.softmax(x @ w_h.T, dim=-1)
        torch.testing.assert_close(gates[..., :h_s].sum(-1), alpha[..., 0] * h_s)
        torch.testing.assert_close(gates[..., h_s:].sum(-1), alpha[..., 1] * k)
    else:
        torch.testing.assert_close(gates.sum(-1), torch.full((3, 5), float(k), dtype=dtype))


def test_ties_go_to_the_lowest_routed_heads():
    x = torch.randn(2, 4, 6, dtype=torch.float64)
    gates = moh_gates(x, torch.zeros(5, 6, dtype=torch.float64), None, None, k=2)
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64).expand(2, 4, 5)
    torch.testing.assert_close(gates, expected)


def test_an_unselected_head_has_no_influence_on_the_token():
    torch.manual_seed(3)
    D, H, h_s, k = 12, 6, 2, 1
    layer = mixture_of_heads_attention(D, H, h_s, k).double()
    with torch.no_grad():
        layer.head_gate.w_r.normal_(0, 3.0)
        layer.head_gate.w_s.normal_()
        layer.head_gate.w_h.normal_()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    out = layer(x)
    gates = layer.head_gate(x)
    head = h_s + 1  # a routed head; perturb its rows of W_Q, W_K, W_V
    rows = slice(head * (D // H), (head + 1) * (D // H))
    with torch.no_grad():
        for w in (layer.w_q, layer.w_k, layer.w_v):
            w.weight[rows] += torch.randn_like(w.weight[rows])
    changed = (layer(x) - out).abs().amax(-1)  # (B, N)
    off = gates[..., head] == 0
    assert off.any() and (~off).any(), "the router should select this head for some tokens only"
    assert (changed[off] == 0).all()
    assert (changed[~off] > 1e-6).all()


def test_load_balance_closed_forms_and_gradient():
    T, E, k = 12, 6, 2
    uniform = torch.full((T, E), 1 / E, dtype=torch.float64, requires_grad=True)
    sel = torch.zeros(T, E, dtype=torch.bool)
    for t in range(T):  # a different pair of heads per token
        sel[t, [t % E, (t + 1) % E]] = True
    loss = load_balance_loss(uniform, sel)
    torch.testing.assert_close(loss, torch.tensor(float(k), dtype=torch.float64))
    loss.backward()
    # dL/dp_tj = E · f_j / T
    torch.testing.assert_close(uniform.grad, E * sel.double().mean(0).expand(T, E) / T)
    collapsed = torch.zeros(T, E, dtype=torch.float64)
    collapsed[:, :k] = 1 / k
    same = torch.zeros(T, E, dtype=torch.bool)
    same[:, :k] = True
    torch.testing.assert_close(
        load_balance_loss(collapsed, same), torch.tensor(float(E), dtype=torch.float64)
    )


def test_the_gate_module_records_the_balance_loss_and_trains():
    layer = mixture_of_heads_attention(8, 4, 1, 2)
    x = torch.randn(2, 5, 8)
    out = layer(x)
    gate = layer.head_gate
    torch.testing.assert_close(gate.balance_loss, torch.tensor(2.0))  # uniform p at zero init: L_b = k
    (out.square().mean() + 0.01 * gate.balance_loss).backward()
    assert gate.w_r.grad is not None and gate.w_r.grad.abs().sum() > 0
    assert {n for n, _ in layer.named_parameters()} >= {"head_gate.w_r", "head_gate.w_s", "head_gate.w_h"}


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 3, 4)
    w_r = torch.randn(3, 4)
    with pytest.raises(ValueError, match="k must be at most"):
        moh_gates(x, w_r, None, None, k=4)
    with pytest.raises(TypeError, match="k must be an integer"):
        moh_gates(x, w_r, None, None, k=2.0)
    with pytest.raises(ValueError, match="w_r must have shape"):
        moh_gates(x, torch.randn(3, 5), None, None, k=1)
    with pytest.raises(TypeError, match="floating"):
        moh_gates(x.long(), w_r, None, None, k=1)
    with pytest.raises(ValueError, match="both None"):
        moh_gates(x, w_r, torch.randn(2, 4), None, k=1)
    with pytest.raises(TypeError, match="one dtype"):
        moh_gates(x.double(), w_r, None, None, k=1)
    with pytest.raises(TypeError, match="boolean"):
        load_balance_loss(torch.rand(4, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="h_s must leave"):
        MoHGate(8, 4, 4, 1)


def test_typed_copy_targets_follow_each_type_by_an_explicit_loop():
    from attnbook.tasks.typed_copy import IGNORE, typed_copy

    S, N = 7, 11
    b = typed_copy(5, N, S, torch.Generator().manual_seed(0))
    again = typed_copy(5, N, S, torch.Generator().manual_seed(0))
    assert torch.equal(b.tokens, again.tokens) and torch.equal(b.targets, again.targets)
    symbols, types = b.tokens % S, b.tokens // S
    assert torch.equal(types, b.types) and int(types.max()) <= 3
    for i in range(5):
        for t in range(N):
            source = {0: t - 1, 1: t - 2, 2: 0, 3: t - 4}[int(types[i, t])]
            valid = source >= 0 and not (int(types[i, t]) == 2 and t == 0)
            expected = int(symbols[i, source]) if valid else IGNORE
            assert int(b.targets[i, t]) == expected
    with pytest.raises(ValueError, match="N >= 5"):
        typed_copy(2, 4, S)
