"""Chapter 12 solutions: the retrieval score, the query-masking ablation, the masking curve, chance."""

import math

import torch
from torch import Tensor


def retrieval_score(attn: Tensor, prompt_ids: Tensor, gen_ids: Tensor, span: tuple, correct: bool) -> Tensor:
    s, e = span
    N = prompt_ids.shape[0]
    # j* = argmax_j a_{l,h,t}[j], the first maximal index on ties
    top = attn.argmax(dim=-1)  # (S, L, H)
    # x_{j*} (an index j* >= N lies outside the span; clamp only to read a token)
    attended = prompt_ids[top.clamp(max=N - 1)]  # (S, L, H)
    # [s <= j* < e] · [x_{j*} = ŷ_t]
    copy = (top >= s) & (top < e) & (attended == gen_ids[:, None, None])  # (S, L, H)
    # RS = Σ_t copy / (e - s), zero for a wrong trial
    score = copy.sum(dim=0).float() / (e - s)  # (L, H)
    return score if correct else torch.zeros_like(score)


def ablated_attention(q: Tensor, k: Tensor, v: Tensor, ablate: Tensor, mode: str = "uniform") -> Tensor:
    N, d = q.shape[-2:]
    hidden = ablate.to(q.device)[None, :, None, None]  # (1, H, 1, 1)
    if mode == "uniform":
        # q_h = 0 for an ablated head, BEFORE the causal mask
        q = q.masked_fill(hidden, 0.0)
    # S = q k^T / sqrt(d), future keys hidden
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, N, N)
    future = torch.ones(N, N, dtype=torch.bool, device=q.device).triu(1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    out = weights @ v  # (B, H, N, d)
    if mode == "zero":
        out = out.masked_fill(hidden, 0.0)
    return out


def masking_curve(model, tokens: Tensor, answers: Tensor, order: list, ns: list) -> list:
    masks = [block.attn.qk_transform for block in model.blocks]  # one HeadQueryMask per layer
    curve = []
    try:
        for n in ns:
            for mask in masks:
                mask.heads.zero_()
            for layer, h in order[:n]:  # cumulative: the first n heads together
                masks[layer].heads[h] = True
            with torch.no_grad():
                predicted = model(tokens)[:, -1].argmax(-1)  # (B,)
            curve.append((predicted == answers).float().mean().item())
    finally:  # leave the model as it came
        for mask in masks:
            mask.heads.zero_()
    return curve


def chance_score(n_pairs: int, seed: int) -> float:
    from attnbook.mechanisms.retrieval_heads import recall_prompts, retrieval_transformer
    from attnbook.models import ModelConfig
    from attnbook.tasks.associative_recall import associative_recall

    config = ModelConfig(D=32, H=4, layers=2, vocab=32, max_len=2 * n_pairs + 1, mlp_ratio=0)
    torch.manual_seed(seed)
    model = retrieval_transformer(config)  # untrained
    batch = associative_recall(500, n_pairs, 16, 16, torch.Generator().manual_seed(seed))
    tokens, answers, spans = recall_prompts(batch, 16)
    with torch.no_grad():
        _, records = model(tokens, return_intermediates=True)
    rows = torch.stack([r.weights[:, :, -1] for r in records], dim=1)  # (T, L, H, N): the answer step
    scores = [
        retrieval_score(rows[t, None], tokens[t], answers[t, None], tuple(spans[t].tolist()), True)
        for t in range(len(tokens))
    ]
    return torch.stack(scores).mean().item()
