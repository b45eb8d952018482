r"""Retrieval heads: a copy-paste score per head, and the query-masking ablation.

Derivation (chapter 12). Nothing in the forward pass changes. Chapter 00 wrote multi-head
attention as a sum over heads; for layer l and the query at position i,

    MHA_l(X)_i = Σ_h a_{l,h,i} V_{l,h} W_O^{l,h},
    a_{l,h,i}  = softmax(q_{l,h,i} K_{l,h}^T / sqrt(d) + causal),

so each head's row a_{l,h,i} says where head (l, h) reads from. Wu et al. (2024) turn that row
into a diagnostic. A prompt x_0 ... x_{N-1} holds a needle span [s, e); the model decodes
greedily, emitting ŷ_t at step t. Head (l, h) *copy-pastes* at step t when its most attended
key j* = argmax_j a_{l,h,t}[j] lies in the span AND holds the emitted token:

    copy_{l,h,t} = [s <= j* < e] · [x_{j*} = ŷ_t]          (ties: the first maximal j)
    RS_{l,h}     = Σ_t copy_{l,h,t} / (e - s)               (one trial)

and a trial counts only when the model's answer was correct (wrong trials add nothing; the
mean runs over the correct trials). A token equal to ŷ_t OUTSIDE the span does not count: in
a haystack the same token recurs.

The causal test masks heads. In the paper's code a masked head's QUERY is set to 0 (the
FlashAttention path), so its scores are all 0 and its attention is uniform over the visible
keys: the head's output becomes the running mean of V, not zero,

    q_{l,h,i} = 0  =>  a_{l,h,i}[j] = 1 / (p_i + 1) for j <= p_i,   out_{h,i} = mean_{j <= p_i} v_{h,j}.

Zeroing the query BEFORE the causal mask keeps the future hidden; overwriting the scores with 0
after the mask was added (the code's eager path) lets a prefill query see every key.

The mask is a ``qk_transform`` of :class:`~attnbook.attention.MultiHeadAttention`
(:class:`HeadQueryMask`), so the chapter's model is ``TinyTransformer(config, attn=...)``; the
score is an analysis of the attention weights that the core returns with
``return_intermediates=True``, a plain function of tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..attention import MultiHeadAttention, scaled_dot_product_attention
from ..models import ModelConfig, TinyTransformer
from ..tasks.associative_recall import RecallBatch, associative_recall
from ..validate import check_qkv, require_int, require_tensor

__all__ = [
    "retrieval_score",
    "retrieval_scores",
    "mean_retrieval_score",
    "chance_corrected",
    "mask_queries",
    "ablated_attention",
    "HeadQueryMask",
    "retrieval_transformer",
    "set_masked_heads",
    "recall_prompts",
    "answer_step",
    "head_order",
    "masking_curve",
    "recall_training_batch",
    "sinusoidal_positions",
    "train_recall",
]

MODES = ("uniform", "zero")
ORDERS = ("top", "bottom", "random")


def _require_ids(x: object, name: str, ndim: int, shape: str) -> Tensor:
    x = require_tensor(x, name, ndim=ndim, shape=shape)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got {x.dtype}")
    return x


def retrieval_scores(
    attn: Tensor, prompt_ids: Tensor, gen_ids: Tensor, spans: Tensor, correct: Tensor
) -> Tensor:
    r"""The retrieval score of every head in each of T trials (the batched form).

    Args:
        attn: (T, S, L, H, M) attention rows of every head at the S decoding steps; key
            positions 0 ... N-1 are the prompt, positions >= N (generated tokens, or padding
            with weight 0) can never be in the span. Any floating dtype.
        prompt_ids: (T, N) integer token ids of the prompts, N <= M.
        gen_ids: (T, S) integer ids of the emitted tokens ŷ_t.
        spans: (T, 2) integer [s, e) of each needle, 0 <= s < e <= N.
        correct: (T,) bool, whether each trial's answer was right.
    Returns:
        (T, L, H) scores in [0, 1], float32 (float64 for float64 attn), on attn's device; the
        rows of wrong trials are 0. Ties in a row go to the first maximal key (torch.argmax).
    """
    attn = require_tensor(attn, "attn", ndim=5, floating=True, shape="(T, S, L, H, M)")
    T, S, _, _, M = attn.shape
    prompt_ids = _require_ids(prompt_ids, "prompt_ids", 2, "(T, N)")
    gen_ids = _require_ids(gen_ids, "gen_ids", 2, "(T, S)")
    spans = _require_ids(spans, "spans", 2, "(T, 2)")
    correct = require_tensor(correct, "correct", ndim=1, shape="(T,)")
    N = prompt_ids.shape[1]
    if prompt_ids.shape[0] != T or gen_ids.shape != (T, S) or spans.shape != (T, 2) or correct.shape != (T,):
        raise ValueError(
            f"for attn (T={T}, S={S}, ...) expected prompt_ids (T, N), gen_ids (T, S), spans (T, 2) and "
            f"correct (T,), got {tuple(prompt_ids.shape)}, {tuple(gen_ids.shape)}, {tuple(spans.shape)} "
            f"and {tuple(correct.shape)}"
        )
    if correct.dtype != torch.bool:
        raise TypeError(f"correct must be a boolean tensor, got {correct.dtype}")
    if N > M:
        raise ValueError(f"attn covers M={M} keys, fewer than the prompt's N={N} tokens")
    start, end = spans[:, 0], spans[:, 1]  # (T,)
    if (start < 0).any() or (end <= start).any() or (end > N).any():
        raise ValueError(f"every span [s, e) needs 0 <= s < e <= N={N}, got {spans.tolist()}")
    dtype = torch.promote_types(attn.dtype, torch.float32)
    # j*_{t,l,h} = argmax_j a_{l,h,t}[j]   (the first maximal j on ties)
    top = attn.argmax(dim=-1)  # (T, S, L, H)
    # [s <= j* < e]
    inside = (top >= start[:, None, None, None]) & (top < end[:, None, None, None])  # (T, S, L, H)
    # x_{j*}: the prompt token at j* (j* >= N lies outside the span; clamp only to index)
    attended = torch.gather(prompt_ids, 1, top.clamp(max=N - 1).flatten(1)).view_as(top)  # (T, S, L, H)
    # copy_{l,h,t} = [s <= j* < e] · [x_{j*} = ŷ_t]
    copy = inside & (attended == gen_ids[:, :, None, None])  # (T, S, L, H)
    # RS_{l,h} = Σ_t copy_{l,h,t} / (e - s), and 0 for a wrong trial
    score = copy.sum(dim=1).to(dtype) / (end - start).to(dtype)[:, None, None]  # (T, L, H)
    return score * correct.to(dtype)[:, None, None]


def retrieval_score(
    attn: Tensor, prompt_ids: Tensor, gen_ids: Tensor, span: tuple[int, int], correct: bool = True
) -> Tensor:
    r"""The retrieval score of every head in one trial: Σ_t copy_{l,h,t} / (e - s).

    Args:
        attn: (S, L, H, M) attention rows at the S decoding steps (M >= N; see
            :func:`retrieval_scores`).
        prompt_ids: (N,) integer token ids of the prompt.
        gen_ids: (S,) integer ids of the emitted tokens.
        span: (s, e), the needle's positions [s, e) in the prompt.
        correct: whether the answer was right; False gives zeros.
    Returns:
        (L, H) scores in [0, 1] (float32, or float64 for float64 attn).
    """
    attn = require_tensor(attn, "attn", ndim=4, floating=True, shape="(S, L, H, M)")
    if not isinstance(span, Sequence) or len(span) != 2:
        raise TypeError(f"span must be a pair (s, e) of integers, got {span!r}")
    s, e = require_int(span[0], "span[0]"), require_int(span[1], "span[1]")
    if not isinstance(correct, bool):
        raise TypeError(f"correct must be a bool, got {type(correct).__name__}")
    device = attn.device
    spans = torch.tensor([[s, e]], device=device)  # (1, 2)
    flag = torch.tensor([correct], device=device)  # (1,)
    prompt_ids = _require_ids(prompt_ids, "prompt_ids", 1, "(N,)")
    gen_ids = _require_ids(gen_ids, "gen_ids", 1, "(S,)")
    return retrieval_scores(attn[None], prompt_ids[None], gen_ids[None], spans, flag)[0]  # (L, H)


def mean_retrieval_score(scores: Tensor, correct: Tensor) -> Tensor:
    r"""Mean of per-trial scores over the CORRECT trials only: (T, L, H), (T,) -> (L, H)."""
    scores = require_tensor(scores, "scores", ndim=3, floating=True, shape="(T, L, H)")
    correct = require_tensor(correct, "correct", ndim=1, shape="(T,)")
    if correct.dtype != torch.bool or correct.shape[0] != scores.shape[0]:
        raise ValueError(
            f"correct must be a boolean (T={scores.shape[0]},) tensor, got {correct.dtype} "
            f"{tuple(correct.shape)}"
        )
    if not correct.any():
        raise ValueError("no trial is correct: the retrieval score is defined over correct trials only")
    # RS = (1 / #correct) Σ_{correct trials} RS_trial
    return scores[correct].mean(dim=0)  # (L, H)


def chance_corrected(score: Tensor, chance: float) -> Tensor:
    r"""(RS - c) / (1 - c): 0 at the chance level c, 1 for a perfect copy head."""
    score = require_tensor(score, "score", floating=True)
    if not 0 <= chance < 1:
        raise ValueError(f"chance must lie in [0, 1), got {chance}")
    return (score - chance) / (1 - chance)


def _check_heads(heads: object, H: int, name: str) -> Tensor:
    heads = require_tensor(heads, name, ndim=1, shape=f"(H={H},)")
    if heads.dtype != torch.bool or heads.shape[0] != H:
        raise ValueError(f"{name} must be a boolean (H={H},) tensor, got {heads.dtype} {tuple(heads.shape)}")
    return heads


def mask_queries(q: Tensor, heads: Tensor, pos_q: Tensor | None = None, from_position: int = 0) -> Tensor:
    r"""Set the queries of the masked heads to 0 at positions p >= from_position.

    Args:
        q: (B, H, N, d) queries.
        heads: (H,) bool, True for a masked head.
        pos_q: (N,) positions of the queries (default 0 ... N-1).
        from_position: mask only queries at p_i >= from_position (the decoding steps, when the
            prompt is prefilled unmasked as in the paper's code); 0 masks every query.
    Returns:
        (B, H, N, d), q's dtype and device; q itself is not changed.
    """
    q = require_tensor(q, "q", ndim=4, floating=True, shape="(B, H, N, d)")
    heads = _check_heads(heads, q.shape[1], "heads")
    from_position = require_int(from_position, "from_position", minimum=0)
    pos_q = torch.arange(q.shape[2], device=q.device) if pos_q is None else pos_q
    # masked where head h is masked and p_i >= from_position
    hidden = heads.to(q.device)[:, None] & (pos_q.to(q.device) >= from_position)[None, :]  # (H, N)
    # q'_{h,i} = 0 there, q_{h,i} elsewhere
    return q.masked_fill(hidden[None, :, :, None], 0.0)  # (B, H, N, d)


def ablated_attention(
    q: Tensor, k: Tensor, v: Tensor, ablate: Tensor, mode: str = "uniform", *, causal: bool = True
) -> tuple[Tensor, Tensor]:
    r"""Attention with some heads ablated: "uniform" zeroes their queries, "zero" their outputs.

    Args:
        q: (B, H, N, d); k, v: (B, H, M, d), queries the last N of M positions.
        ablate: (H,) bool, True for an ablated head.
        mode: "uniform" (q = 0: uniform weights over the visible keys, the output a running
            mean of V, the paper's masking) or "zero" (the head's output and weights set to 0).
        causal: hide future keys.
    Returns:
        out (B, H, N, d) and weights (B, H, N, M).
    """
    check_qkv(q, k, v)
    require_tensor(q, "q", ndim=4, shape="(B, H, N, d)")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ablate = _check_heads(ablate, q.shape[1], "ablate")
    if mode == "uniform":
        # S_h = 0 · K_h^T = 0 before the causal mask: a_h[i, j] = 1/(p_i + 1) for j <= p_i
        return scaled_dot_product_attention(mask_queries(q, ablate), k, v, causal=causal)
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    keep = (~ablate.to(q.device)).to(q.dtype)[None, :, None, None]  # (1, H, 1, 1)
    # z_h = 0 for an ablated head
    return out * keep, weights * keep


class HeadQueryMask(nn.Module):
    r"""A ``qk_transform`` that zeroes the queries of chosen heads (all heads kept by default).

    ``heads`` (H,) bool buffer, True for a masked head; ``from_position``: mask queries at
    positions >= from_position only (0: every query).
    """

    def __init__(self, H: int):
        super().__init__()
        self.register_buffer("heads", torch.zeros(require_int(H, "H", minimum=1), dtype=torch.bool))
        self.from_position = 0

    def forward(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        if not self.heads.any():
            return q, k  # nothing masked: the unchanged layer
        return mask_queries(q, self.heads, pos_q, self.from_position), k


def retrieval_transformer(config: ModelConfig) -> TinyTransformer:
    """TinyTransformer whose every attention layer carries a :class:`HeadQueryMask`."""
    return TinyTransformer(
        config, attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H, qk_transform=HeadQueryMask(cfg.H))
    )


def set_masked_heads(model: TinyTransformer, masked: Tensor, from_position: int = 0) -> None:
    """Mask the heads where ``masked`` (L, H) is True (all False unmasks every head)."""
    L, H = len(model.blocks), model.config.H
    masked = require_tensor(masked, "masked", ndim=2, shape=f"(L={L}, H={H})")
    if masked.dtype != torch.bool or tuple(masked.shape) != (L, H):
        raise ValueError(
            f"masked must be a boolean (L={L}, H={H}) tensor, got {masked.dtype} {tuple(masked.shape)}"
        )
    for block, row in zip(model.blocks, masked, strict=True):
        mask = block.attn.qk_transform
        if not isinstance(mask, HeadQueryMask):
            raise TypeError("the model's attention layers need a HeadQueryMask (use retrieval_transformer)")
        mask.heads.copy_(row)
        mask.from_position = require_int(from_position, "from_position", minimum=0)


def recall_prompts(batch: RecallBatch, n_keys: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Associative recall as a one-token needle in a haystack.

    Tokens: k_1 v_1 k_2 v_2 ... k_n v_n q, keys 0 ... n_keys-1, value v as token n_keys + v.
    Returns tokens (B, 2n + 1), answers (B,) (the query's value token) and spans (B, 2): the
    answer's position [2p + 1, 2p + 2) (the needle, one token).
    """
    B, n = batch.keys.shape
    tokens = torch.stack([batch.keys, batch.values + n_keys], dim=-1).reshape(B, 2 * n)  # (B, 2n)
    tokens = torch.cat([tokens, batch.query[:, None]], dim=1)  # (B, 2n + 1)
    start = 2 * batch.position + 1  # (B,)
    return tokens, batch.target + n_keys, torch.stack([start, start + 1], dim=-1)


def answer_step(model: TinyTransformer, tokens: Tensor, answers: Tensor, spans: Tensor):
    r"""One greedy step at the last position: (accuracy, per-trial scores (T, L, H), correct (T,))."""
    with torch.no_grad():
        logits, inters = model(tokens, return_intermediates=True)
    emitted = logits[:, -1].argmax(-1)  # (T,)
    correct = emitted == answers  # (T,)
    rows = torch.stack([i.weights[:, :, -1] for i in inters], dim=1)  # (T, L, H, N)
    scores = retrieval_scores(rows[:, None], tokens, emitted[:, None], spans, correct)
    return correct.float().mean().item(), scores, correct


def head_order(scores: Tensor, order: str = "top", generator: torch.Generator | None = None) -> list:
    """Heads (l, h) sorted by score: "top" (highest first), "bottom" (lowest first) or "random"."""
    scores = require_tensor(scores, "scores", ndim=2, floating=True, shape="(L, H)")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    L, H = scores.shape
    flat = scores.flatten().cpu()
    if order == "random":
        index = torch.randperm(L * H, generator=generator)
    else:  # stable sort: equal scores keep the (l, h) order
        index = torch.sort(flat, descending=order == "top", stable=True).indices
    return [(int(i) // H, int(i) % H) for i in index]


def masking_curve(
    model: TinyTransformer, tokens: Tensor, answers: Tensor, order: list, ns, from_position: int = 0
) -> list[float]:
    """Accuracy with the first n heads of ``order`` masked, for each n in ``ns``; unmasks after."""
    L, H = len(model.blocks), model.config.H
    accuracies = []
    try:
        for n in ns:
            masked = torch.zeros(L, H, dtype=torch.bool)
            for l, h in order[: require_int(n, "n", minimum=0)]:
                masked[l, h] = True
            set_masked_heads(model, masked.to(tokens.device), from_position)
            with torch.no_grad():
                accuracies.append((model(tokens)[:, -1].argmax(-1) == answers).float().mean().item())
    finally:
        set_masked_heads(model, torch.zeros(L, H, dtype=torch.bool, device=tokens.device))
    return accuracies


def recall_training_batch(
    batch_size: int, n_pairs: int, n_keys: int, n_queries: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    r"""Training sequences with several questions: k_1 v_1 ... k_n v_n q_1 a_1 ... q_Q (a_Q dropped).

    The first question is that of :func:`recall_prompts`, so the test prompt is a prefix of the
    training sequence. Returns tokens (B, 2n + 2Q - 1) and answers (B, Q), the value tokens to
    predict at the question positions 2n, 2n + 2, ...
    """
    batch = associative_recall(batch_size, n_pairs, n_keys, n_keys, generator)
    tokens, answers, _ = recall_prompts(batch, n_keys)  # (B, 2n + 1), (B,)
    picks = torch.randint(n_pairs, (batch_size, n_queries), generator=generator)  # (B, Q)
    picks[:, 0] = batch.position
    rows = torch.arange(batch_size)[:, None]
    keys, values = batch.keys[rows, picks], batch.values[rows, picks] + n_keys  # (B, Q)
    questions = torch.stack([keys, values], dim=-1).reshape(batch_size, 2 * n_queries)  # (B, 2Q)
    return torch.cat([tokens[:, :-1], questions[:, :-1]], dim=1), values


def sinusoidal_positions(n: int, D: int, base: float = 100.0) -> Tensor:
    r"""(n, D) sines and cosines: row p holds sin(p ω_f), cos(p ω_f) with ω_f = base^(-2f/D)."""
    freq = base ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
    angle = torch.arange(n, dtype=torch.float32)[:, None] * freq  # (n, D/2)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)  # (n, D)


def train_recall(
    seed: int,
    *,
    n_pairs: int = 8,
    n_keys: int = 8,
    layers: int = 2,
    H: int = 4,
    D: int = 32,
    n_queries: int = 4,
    max_steps: int = 400,
    batch_size: int = 64,
    lr: float = 1e-2,
    warmup: int = 30,
    patience: int = 10,
    threshold: float = 0.98,
    sinusoidal: bool = True,
) -> tuple[TinyTransformer, int]:
    """Train the chapter's attention-only model on associative recall; return (model, steps).

    AdamW at ``lr`` after a linear warm-up, gradients clipped to norm 1, cross-entropy at the
    question positions of :func:`recall_training_batch`. Training stops once ``patience``
    consecutive batches had a fraction >= ``threshold`` of their questions right, or after
    ``max_steps``.
    """
    config = ModelConfig(
        D=D, H=H, layers=layers, vocab=2 * n_keys, max_len=2 * n_pairs + 2 * n_queries, mlp_ratio=0
    )
    torch.manual_seed(seed)
    model = retrieval_transformer(config)
    if sinusoidal:  # start the (learned) positions from sines and cosines: a shift is then a rotation
        model.pos.weight.data.copy_(sinusoidal_positions(config.max_len, D))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    perfect, step = 0, 0
    model.train()
    while step < max_steps and perfect < patience:
        step += 1
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = lr * min(1.0, step / warmup)
        tokens, answers = recall_training_batch(batch_size, n_pairs, n_keys, n_queries, generator)
        logits = model(tokens)[:, 2 * n_pairs :: 2]  # (B, Q, vocab): the question positions
        loss = F.cross_entropy(logits.flatten(0, 1), answers.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        right = (logits.argmax(-1) == answers).float().mean().item()
        perfect = perfect + 1 if right >= threshold else 0
    model.eval()
    return model, step
