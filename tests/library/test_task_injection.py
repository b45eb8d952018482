"""attnbook.mechanisms.task_injection: α = 0, self-injection, locality, affinity, ragged batches, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnbook.chapters import by_number
from attnbook.mechanisms import task_injection as mechanism
from attnbook.mechanisms.task_injection import (
    SoftHeadSelection,
    SoftInjection,
    head_activations,
    last_token_index,
    optimize_alpha,
    soft_inject,
    task_embedding,
)
from attnbook.models import ModelConfig, TinyTransformer
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("10")
DTYPES = (torch.float32, torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _model(dtype, seed=0, layers=2, D=15, H=3):
    torch.manual_seed(seed)
    config = ModelConfig(D=D, H=H, layers=layers, vocab=11, max_len=12)
    return TinyTransformer(config).to(dtype).eval()


def _logits_by_hand(model, tokens, t, alpha, last_idx):
    """The model's forward written out with torch's SDPA and nn.Linear W_O, editing the
    concatenated head tensor (B, N, H·d) before W_O with a Python loop over prompts and heads."""
    x = model.embed(tokens) + model.pos.weight[: tokens.shape[1]]
    B, N, D = x.shape
    for layer, block in enumerate(model.blocks):
        attn, h = block.attn, block.norm1(x)
        q, k, v = (w(h).view(B, N, attn.H, attn.d).transpose(1, 2) for w in (attn.w_q, attn.w_k, attn.w_v))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, N, D)
        z = z.clone()
        for b in range(B):
            for head in range(attn.H):
                cols = slice(head * attn.d, (head + 1) * attn.d)
                a = alpha[layer, head]
                z[b, last_idx[b], cols] = (1 - a) * z[b, last_idx[b], cols] + a * t[layer, head]
        x = x + attn.w_o(z)
        x = x + block.mlp(block.norm2(x))
    return model.readout(model.norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_alpha_zero_is_the_unmodified_model(dtype):
    model = _model(dtype)
    tokens = torch.randint(0, 11, (3, 7))
    t = torch.randn(2, 3, 5, dtype=dtype)
    with SoftInjection(model, t, torch.zeros(2, 3, dtype=dtype), torch.tensor([6, 2, 4])):
        injected = model(tokens)
    assert torch.equal(injected, model(tokens))


@pytest.mark.parametrize("dtype", DTYPES)
def test_self_injection_with_alpha_one_is_a_no_op(dtype):
    model = _model(dtype, seed=1)
    prompt = torch.randint(0, 11, (1, 9))
    logits, records = model(prompt, return_intermediates=True)
    t = task_embedding(head_activations(records), torch.tensor([8]))  # M = 1
    with SoftInjection(model, t, torch.ones(2, 3, dtype=dtype), torch.tensor([8])):
        assert torch.equal(model(prompt), logits)


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_the_last_position_and_its_future_move(dtype):
    model = _model(dtype, seed=2)
    tokens = torch.randint(0, 11, (2, 8))
    T = 5
    t = 3 * torch.randn(2, 3, 5, dtype=dtype)
    with SoftInjection(model, t, torch.full((2, 3), 0.7, dtype=dtype), torch.tensor([T, T])):
        injected = model(tokens)
    clean = model(tokens)
    assert torch.equal(injected[:, :T], clean[:, :T])
    assert ((injected[:, T:] - clean[:, T:]).abs().amax(-1) > 1e-4).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_injection_equals_editing_the_concatenated_heads_before_w_o(dtype):
    model = _model(dtype, seed=3)
    tokens = torch.randint(0, 11, (3, 10))
    t, alpha = torch.randn(2, 3, 5, dtype=dtype), torch.rand(2, 3, dtype=dtype)
    last_idx = torch.tensor([9, 3, 6])
    with torch.no_grad(), SoftInjection(model, t, alpha, last_idx):
        injected = model(tokens)
    with torch.no_grad():
        expected = _logits_by_hand(model, tokens, t, alpha, last_idx)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(injected, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_mix_is_affine_in_alpha(dtype):
    B, H, N, d = 2, 3, 6, 5
    z, t = torch.randn(B, H, N, d, dtype=dtype), torch.randn(H, d, dtype=dtype)
    last_idx = torch.tensor([5, 1])
    alpha = torch.rand(H, dtype=dtype, requires_grad=True)
    out = soft_inject(z, t, alpha, last_idx)
    for b in range(B):
        for h in range(H):
            (grad,) = torch.autograd.grad(out[b, h, last_idx[b]].sum(), alpha, retain_graph=True)
            # ∂z̃/∂α_h = t_h − z_h (summed over the d coordinates), and no other head moves
            expected = torch.zeros(H, dtype=dtype)
            expected[h] = (t[h] - z[b, h, last_idx[b]]).sum()
            torch.testing.assert_close(grad, expected)
    others = torch.ones(B, N, dtype=torch.bool)
    others[torch.arange(B), last_idx] = False
    assert torch.equal(out.transpose(1, 2)[others], z.transpose(1, 2)[others])


@pytest.mark.parametrize("dtype", DTYPES)
def test_right_padded_batches_equal_batch_one_runs(dtype):
    model = _model(dtype, seed=4)
    lengths = [4, 9, 6]
    prompts = [torch.randint(0, 10, (n,)) for n in lengths]
    tokens = torch.full((3, 9), 10)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = p
    mask = torch.arange(9)[None, :] < torch.tensor(lengths)[:, None]
    last_idx = last_token_index(mask)
    assert last_idx.tolist() == [3, 8, 5]
    t, alpha = torch.randn(2, 3, 5, dtype=dtype), torch.rand(2, 3, dtype=dtype)
    with SoftInjection(model, t, alpha, last_idx):
        batched = model(tokens, mask=mask[:, None, None, :])[torch.arange(3), last_idx]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for b, p in enumerate(prompts):
        with SoftInjection(model, t, alpha, torch.tensor([len(p) - 1])):
            alone = model(p[None])[0, -1]
        torch.testing.assert_close(batched[b], alone, atol=tol, rtol=tol)


def test_task_embedding_is_the_mean_of_the_last_real_tokens():
    M, L, H, N, d = 4, 2, 3, 7, 5
    heads = torch.randn(M, L, H, N, d, dtype=torch.float64)
    last_idx = torch.tensor([6, 0, 3, 4])
    expected = sum(heads[m, :, :, last_idx[m]] for m in range(M)) / M
    torch.testing.assert_close(task_embedding(heads, last_idx), expected)
    order = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(task_embedding(heads[order], last_idx[order]), expected)
    torch.testing.assert_close(task_embedding(heads[:1], last_idx[:1]), heads[0, :, :, 6])


def test_soft_inject_replaces_at_alpha_one_and_keeps_the_input():
    z, t = torch.randn(2, 3, 4, 5), torch.randn(3, 5)
    before = z.clone()
    out = soft_inject(z, t, torch.ones(3), torch.tensor([1, 3]))
    assert torch.equal(z, before)
    assert torch.equal(out[0, :, 1], t) and torch.equal(out[1, :, 3], t)
    half = soft_inject(z.half(), t, torch.full((3,), 0.5), torch.tensor([1, 3]))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half[0, :, 1].float(), (z[0, :, 1] + t) / 2, atol=1e-2, rtol=1e-2)


def test_optimize_alpha_learns_the_right_heads_with_a_frozen_model():
    torch.manual_seed(0)
    L, H = 2, 4
    frozen = torch.nn.Linear(L * H, 1)
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # which heads help

    def loss_fn(alpha, batch):
        # a toy "model": the loss falls as α approaches the useful head set
        return (alpha - target).square().sum() + 0 * frozen(alpha.reshape(1, -1)).sum()

    alpha, history = optimize_alpha(loss_fn, (L, H), range(60), lr=0.2)
    assert frozen.weight.grad is None and frozen.bias.grad is None
    assert history[-1] < 0.1 * history[0]
    assert ((alpha > 0) & (alpha < 1)).all()
    assert torch.equal(alpha > 0.5, target > 0.5)
    # best on validation: a validation loss that prefers the early α
    seen = []

    def val_loss_fn(alpha):
        seen.append(alpha.clone())
        return float(len(seen))  # rises with every validation: the first one is the best

    best, _ = optimize_alpha(loss_fn, (L, H), range(60), lr=0.2, val_loss_fn=val_loss_fn, eval_every=10)
    assert len(seen) == 6
    torch.testing.assert_close(best, seen[0])


def test_soft_head_selection_starts_at_one_half():
    selection = SoftHeadSelection(3, 4)
    torch.testing.assert_close(selection(), torch.full((3, 4), 0.5))
    assert math.isclose(torch.sigmoid(torch.tensor(0.0)).item(), 0.5)


def test_bad_inputs_raise_clear_errors():
    z, t, alpha = torch.randn(2, 3, 4, 5), torch.randn(3, 5), torch.rand(3)
    with pytest.raises(ValueError, match="no negative indexing"):
        soft_inject(z, t, alpha, torch.tensor([-1, 2]))
    with pytest.raises(TypeError, match="integer positions"):
        soft_inject(z, t, alpha, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="alpha must have shape"):
        soft_inject(z, t, torch.rand(5), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        soft_inject(z, torch.randn(5, 3), alpha, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="floating"):
        soft_inject(z.long(), t, alpha, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="right-padded"):
        last_token_index(torch.tensor([[False, True, True]]))
    with pytest.raises(TypeError, match="boolean"):
        last_token_index(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="heads must have shape"):
        task_embedding(torch.randn(2, 3, 4, 5), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="Intermediates"):
        head_activations([torch.randn(2, 3, 4, 5)])
    model = _model(torch.float32)
    with pytest.raises(ValueError, match="alpha must have shape"):
        SoftInjection(model, torch.randn(2, 3, 5), torch.rand(3, 2), torch.tensor([1]))
    injection = SoftInjection(model, torch.randn(2, 3, 5), torch.rand(2, 3), torch.tensor([1]))
    with injection, pytest.raises(RuntimeError, match="already active"):
        injection.__enter__()
    assert all(b.attn.head_transform is None for b in model.blocks)  # restored on exit


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs(device, dtype):
    z = torch.randn(2, 3, 4, 5, device=device, dtype=dtype)
    t, alpha = torch.randn(3, 5, device=device, dtype=dtype), torch.rand(3, device=device, dtype=dtype)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]], device=device)
    heads = torch.randn(2, 2, 3, 4, 5, device=device, dtype=dtype)
    with tensors_without_device_go_to_meta():
        last_idx = last_token_index(mask)
        results = [soft_inject(z, t, alpha, last_idx), task_embedding(heads, last_idx)]
    assert last_idx.device == z.device
    assert_follow(results, z.device, dtype)


def test_task_prompts_interleave_inputs_and_answers():
    from attnbook.tasks import TASK_NAMES, task_prompts
    from attnbook.tasks.task_prompts import task_table

    table = task_table()
    assert len(TASK_NAMES) == 4 and table[0].tolist() == [(x + 1) % 10 for x in range(10)]
    assert sorted(table[2].tolist()) == list(range(10)) and not torch.equal(table[2], table[3])
    g = torch.Generator().manual_seed(0)
    p = task_prompts(torch.tensor([0, 1, 2]), 3, 4, g)
    assert p.tokens.shape == (3, 9) and p.answers.shape == (3, 5)
    x = p.tokens[:, 0::2]  # the inputs x₁ … x_q
    assert (x < 10).all() and (p.tokens[:, 1::2] >= 10).all()
    assert torch.equal(p.answers, table[p.task[:, None], x])
    assert torch.equal(p.tokens[:, 1::2] - 10, p.answers[:, :-1])  # the demonstrations' answers
    assert task_prompts(3, 2, 0, g).tokens.shape == (2, 1)  # zero-shot: the query alone
