"""attnbook.mechanisms.retrieval_heads: the copy-paste score and the query-masking ablation."""

import pytest
import torch
from torch.nn import functional as F

from attnbook.attention import MultiHeadAttention
from attnbook.chapters import by_number
from attnbook.mechanisms import retrieval_heads as mechanism
from attnbook.mechanisms.retrieval_heads import (
    HeadQueryMask,
    ablated_attention,
    answer_step,
    chance_corrected,
    head_order,
    mask_queries,
    masking_curve,
    mean_retrieval_score,
    recall_prompts,
    retrieval_score,
    retrieval_scores,
    retrieval_transformer,
    set_masked_heads,
)
from attnbook.models import ModelConfig
from attnbook.tasks import associative_recall
from tests.library.device_check import assert_follow, on_devices_and_dtypes, tensors_without_device_go_to_meta

CHAPTER = by_number("12")
DTYPES = (torch.float16, torch.float32, torch.float64)


def test_the_public_names_are_documented():
    assert mechanism.__all__, f"{CHAPTER.mechanism_path} exports nothing"
    for name in mechanism.__all__:
        assert getattr(mechanism, name).__doc__, f"{name} has no docstring"


def _score_by_loop(attn, prompt_ids, gen_ids, span, correct):
    """The paper's double loop over layers and heads, one decoding step at a time (Python floats)."""
    S, L, H, _ = attn.shape
    s, e = span
    score = [[0.0] * H for _ in range(L)]
    if not correct:
        return torch.tensor(score, dtype=torch.float64)
    for t in range(S):
        for layer in range(L):
            for h in range(H):
                row = attn[t, layer, h].double().tolist()
                j = row.index(max(row))  # the first maximal key
                if s <= j < e and j < len(prompt_ids) and int(prompt_ids[j]) == int(gen_ids[t]):
                    score[layer][h] += 1 / (e - s)
    return torch.tensor(score, dtype=torch.float64)


def _planted(dtype, span=(3, 8), N=12):
    """Head (0, 0) copies the span token by token; head (0, 1) attends to position 0; head (1, 0)
    attends to a copy of the emitted token OUTSIDE the span; head (1, 1) is random."""
    g = torch.Generator().manual_seed(0)
    s, e = span
    S = e - s
    prompt = torch.randint(10, (N,), generator=g)
    gen = prompt[s:e].clone()
    outside = [j for j in range(1, N) if not s <= j < e][:S]
    prompt[outside] = gen  # the emitted tokens recur outside the span
    logits = torch.rand(S, 2, 2, N + S, generator=g, dtype=torch.float64)  # M = N + S keys
    steps = torch.arange(S)
    logits[steps, 0, 0, s + steps] = 5.0  # the oracle copy head
    logits[:, 0, 1, 0] = 5.0  # the position-0 head
    logits[steps, 1, 0, torch.tensor(outside)] = 5.0  # the same token, outside the span
    return logits.softmax(-1).to(dtype), prompt, gen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("span", [(3, 4), (3, 8)])
def test_the_planted_heads_score_one_zero_and_zero(dtype, span):
    attn, prompt, gen = _planted(dtype, span)
    score = retrieval_score(attn, prompt, gen, span, True)
    assert score.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert score[0, 0].item() == 1.0  # exactly 1: (e - s) copies / (e - s)
    assert score[0, 1].item() == 0.0  # position 0 is outside the span
    assert score[1, 0].item() == 0.0  # the same token outside the span does not count
    torch.testing.assert_close(
        score.double(), _score_by_loop(attn, prompt, gen, span, True), atol=1e-6, rtol=0
    )
    assert (retrieval_score(attn, prompt, gen, span, False) == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_score_equals_the_loop_on_random_rows(dtype):
    g = torch.Generator().manual_seed(1)
    for S, L, H, N, M in ((1, 1, 1, 1, 1), (5, 3, 2, 7, 9), (4, 2, 3, 11, 11)):
        prompt = torch.randint(3, (N,), generator=g)  # few token ids: many matches
        gen = torch.randint(3, (S,), generator=g)
        attn = torch.rand(S, L, H, M, generator=g, dtype=torch.float64).softmax(-1).to(dtype)
        s = int(torch.randint(N, (1,), generator=g))
        span = (s, int(torch.randint(s + 1, N + 1, (1,), generator=g)))
        got = retrieval_score(attn, prompt, gen, span)
        torch.testing.assert_close(
            got.double(), _score_by_loop(attn, prompt, gen, span, True), atol=1e-6, rtol=0
        )
        assert (got >= 0).all() and (got <= 1).all()


def test_ties_go_to_the_first_key():
    prompt, gen = torch.tensor([7, 7, 5, 9]), torch.tensor([7])
    attn = torch.zeros(1, 1, 2, 4)
    attn[0, 0, 0, [0, 1]] = 0.5  # tie between 0 (outside) and 1 (inside the span [1, 2))
    attn[0, 0, 1, [1, 3]] = 0.5  # tie between 1 (inside) and 3
    assert retrieval_score(attn, prompt, gen, (1, 2)).tolist() == [[0.0, 1.0]]


def test_batched_scores_and_the_mean_over_correct_trials():
    g = torch.Generator().manual_seed(2)
    T, S, L, H, N = 6, 3, 2, 2, 8
    attn = torch.rand(T, S, L, H, N, generator=g).softmax(-1)
    prompt = torch.randint(4, (T, N), generator=g)
    gen = torch.randint(4, (T, S), generator=g)
    spans = torch.tensor([[0, 3], [2, 5], [1, 2], [4, 8], [0, 8], [5, 6]])
    correct = torch.tensor([True, False, True, True, False, True])
    scores = retrieval_scores(attn, prompt, gen, spans, correct)
    for t in range(T):
        expected = _score_by_loop(attn[t], prompt[t], gen[t], spans[t].tolist(), bool(correct[t]))
        assert torch.allclose(scores[t].double(), expected, atol=1e-7)
    # wrong trials add nothing: the mean runs over the correct ones only
    assert torch.allclose(mean_retrieval_score(scores, correct), scores[correct].sum(0) / 4)
    with pytest.raises(ValueError, match="no trial is correct"):
        mean_retrieval_score(scores, torch.zeros(T, dtype=torch.bool))
    assert torch.allclose(chance_corrected(torch.tensor([0.125, 1.0]), 1 / 8), torch.tensor([0.0, 1.0]))


def test_bad_inputs_are_named():
    attn, prompt, gen = _planted(torch.float32)
    with pytest.raises(TypeError, match="prompt_ids"):
        retrieval_score(attn, prompt.float(), gen, (3, 8))
    with pytest.raises(ValueError, match="span"):
        retrieval_score(attn, prompt, gen, (3, 13))
    with pytest.raises(ValueError, match="span"):
        retrieval_score(attn, prompt, gen, (4, 4))
    with pytest.raises(TypeError, match="correct"):
        retrieval_score(attn, prompt, gen, (3, 8), 1)
    with pytest.raises(ValueError, match="attn"):
        retrieval_score(attn[0], prompt, gen, (3, 8))
    with pytest.raises(ValueError, match="fewer than the prompt"):
        retrieval_score(attn[..., :5], prompt, gen, (3, 4))
    with pytest.raises(ValueError, match="gen_ids"):
        retrieval_score(attn, prompt, gen[:2], (3, 8))
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="mode"):
        ablated_attention(q, q, q, torch.tensor([True, False]), "mean")
    with pytest.raises(ValueError, match="heads"):
        mask_queries(q, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="ablate"):
        ablated_attention(q, q, q, torch.tensor([True]), "zero")


def _running_mean(v):
    """mean_{j <= i} v_j by cumulative sums: (B, H, M, d)."""
    counts = torch.arange(1, v.shape[-2] + 1, dtype=v.dtype)[:, None]
    return v.cumsum(-2) / counts


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_uniform_masking_is_sdpa_with_zero_queries(dtype):
    g = torch.Generator().manual_seed(3)
    B, H, N, d = 2, 3, 7, 5
    q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=dtype) for _ in range(3))
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    none = torch.zeros(H, dtype=torch.bool)
    out, _ = ablated_attention(q, k, v, none)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **tol)
    ablate = torch.tensor([False, True, False])
    out, weights = ablated_attention(q, k, v, ablate)
    torch.testing.assert_close(
        out[:, 1],
        F.scaled_dot_product_attention(q[:, 1:2] * 0, k[:, 1:2], v[:, 1:2], is_causal=True)[:, 0],
        **tol,
    )
    torch.testing.assert_close(out[:, 1], _running_mean(v[:, 1]), **tol)  # a running mean, not zero
    torch.testing.assert_close(
        out[:, [0, 2]], F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, [0, 2]], **tol
    )
    assert (weights[:, 1].triu(1) == 0).all()  # no weight on future keys
    future = v.clone()
    future[..., -1, :] += 100.0  # the last key is in every earlier query's future
    assert torch.equal(ablated_attention(q, k, future, ablate)[0][..., :-1, :], out[..., :-1, :])
    zero, zero_weights = ablated_attention(q, k, v, ablate, "zero")
    assert (zero[:, 1] == 0).all() and (zero_weights[:, 1] == 0).all()
    torch.testing.assert_close(zero[:, [0, 2]], out[:, [0, 2]], **tol)


def test_mask_queries_leaves_earlier_positions_and_its_input_alone():
    q = torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(4))
    before = q.clone()
    masked = mask_queries(q, torch.tensor([True, False, True]), from_position=4)
    assert torch.equal(q, before)
    assert (masked[:, [0, 2], 4:] == 0).all()
    assert torch.equal(masked[:, :, :4], q[:, :, :4]) and torch.equal(masked[:, 1], q[:, 1])


def _pair(seed=5, dtype=torch.float64):
    torch.manual_seed(seed)
    mask = HeadQueryMask(4)
    layer = MultiHeadAttention(12, 4, qk_transform=mask).to(dtype)
    plain = MultiHeadAttention(12, 4).to(dtype)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("qk_transform")})
    return mask, layer, plain


def test_the_layer_with_nothing_masked_is_the_plain_layer():
    mask, layer, plain = _pair()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    assert torch.equal(layer(x, causal=True), plain(x, causal=True))
    mask.heads[2] = True
    out, inter = layer(x, causal=True, return_intermediates=True)
    # head 2's weights: 1 / (i + 1) on the visible keys
    expected = (
        torch.tril(torch.ones(9, 9, dtype=torch.float64)) / torch.arange(1, 10, dtype=torch.float64)[:, None]
    )
    torch.testing.assert_close(inter.weights[:, 2], expected.expand(2, 9, 9), atol=1e-12, rtol=0)
    _, plain_inter = plain(x, causal=True, return_intermediates=True)
    assert torch.equal(inter.weights[:, [0, 1, 3]], plain_inter.weights[:, [0, 1, 3]])
    # the output: Σ_h z_h W_O^h + b_O, with head 2's z a running mean of its values
    heads = plain_inter.heads.clone()
    heads[:, 2] = _running_mean(plain_inter.v[:, 2])
    w_o = plain.w_o.weight.T.reshape(4, 3, 12)
    torch.testing.assert_close(
        out, torch.einsum("bhnd,hde->bne", heads, w_o) + plain.w_o.bias, atol=1e-12, rtol=0
    )


def _tiny_model():
    torch.manual_seed(6)
    return retrieval_transformer(ModelConfig(D=16, H=2, layers=2, vocab=16, max_len=9, mlp_ratio=0))


def test_recall_prompts_the_model_and_the_masking_curve():
    batch = associative_recall(32, 4, 8, 8, torch.Generator().manual_seed(7))
    tokens, answers, spans = recall_prompts(batch, 8)
    assert tokens.shape == (32, 9) and torch.equal(tokens[:, -1], batch.query)
    rows = torch.arange(32)
    assert torch.equal(tokens[rows, spans[:, 0]], answers) and (spans[:, 1] - spans[:, 0] == 1).all()
    assert torch.equal(tokens[rows, spans[:, 0] - 1], batch.query)  # the needle follows its key
    model = _tiny_model()
    accuracy, scores, correct = answer_step(model, tokens, answers, spans)
    assert scores.shape == (32, 2, 2) and accuracy == correct.float().mean().item()
    order = head_order(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), "top")
    assert order == [(0, 1), (1, 0), (0, 0), (1, 1)]
    assert head_order(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), "bottom") == order[::-1]
    with torch.no_grad():
        base = model(tokens)
    curve = masking_curve(model, tokens, answers, order, [0, 4])
    assert curve[0] == accuracy
    assert torch.equal(model(tokens), base)  # unmasked again afterwards
    set_masked_heads(model, torch.ones(2, 2, dtype=torch.bool), from_position=8)
    with torch.no_grad():
        masked = model(tokens)
    assert torch.equal(masked[:, :8], base[:, :8]) and not torch.equal(masked[:, 8], base[:, 8])


@on_devices_and_dtypes
def test_created_tensors_follow_the_inputs_device_and_dtype(device, dtype):
    attn, prompt, gen = _planted(dtype)
    attn, prompt, gen = attn.to(device), prompt.to(device), gen.to(device)
    q = torch.randn(2, 3, 5, 4, dtype=dtype).to(device)
    ablate = torch.tensor([True, False, True], device=device)
    layer = MultiHeadAttention(12, 4, qk_transform=HeadQueryMask(4)).to(device, dtype)
    layer.qk_transform.heads[1] = True
    x = torch.randn(2, 5, 12).to(device, dtype)
    with tensors_without_device_go_to_meta():
        results = [
            retrieval_score(attn, prompt, gen, (3, 8), True),
            mask_queries(q, ablate),
            *ablated_attention(q, q, q, ablate),
            *ablated_attention(q, q, q, ablate, "zero"),
            layer(x, causal=True),
        ]
    assert results[0].device == attn.device
    assert_follow(results[1:], q.device, dtype)


def test_training_batches_extend_the_test_prompt_and_training_stops():
    from attnbook.mechanisms.retrieval_heads import recall_training_batch, sinusoidal_positions, train_recall

    tokens, answers = recall_training_batch(16, 8, 8, 4, torch.Generator().manual_seed(8))
    batch = associative_recall(16, 8, 8, 8, torch.Generator().manual_seed(8))
    prompts, first, _ = recall_prompts(batch, 8)
    assert tokens.shape == (16, 23) and answers.shape == (16, 4)
    assert torch.equal(tokens[:, :17], prompts) and torch.equal(
        answers[:, 0], first
    )  # the test prompt is a prefix
    pairs = tokens[:, :16].reshape(16, 8, 2)
    for question in range(4):  # each question's answer is the value paired with its key
        key = tokens[:, 16 + 2 * question]
        value = pairs[:, :, 1][pairs[:, :, 0] == key[:, None]]
        assert torch.equal(value, answers[:, question])
        if question < 3:
            assert torch.equal(tokens[:, 17 + 2 * question], answers[:, question])
    pe = sinusoidal_positions(5, 4)
    assert torch.allclose(pe[:, 0], torch.arange(5.0).sin()) and torch.allclose(
        pe[:, 3], (torch.arange(5.0) / 10).cos()
    )
    model, steps = train_recall(0, max_steps=2, D=16, H=2, layers=1)
    assert steps == 2 and not model.training
    assert torch.allclose(model.pos.weight, sinusoidal_positions(24, 16), atol=0.1)  # started from sinusoids
