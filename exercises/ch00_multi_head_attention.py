"""Chapter 00 exercises: multi-head attention from scratch.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 00

or, in a notebook, ``check("ch00.<function name>", your_function)`` from attnbook.grading.
Difficulty and time: causal_mask ★ (10 min), split_heads and merge_heads ★ (15 min),
scaled_dot_product_attention ★★ (30 min), multi_head_attention ★★ (30 min), heads_experiment
★★★ (40 min, an experiment: it trains a model and returns what it measures).
Write the attention with plain torch operations: the grader compares you with
torch.nn.functional.scaled_dot_product_attention and torch.nn.MultiheadAttention, and a call to
the former fails scaled_dot_product_attention. heads_experiment uses attnbook's TinyTransformer,
train and two_key_recall.
"""

from torch import Tensor


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, returning the output and the weights.

    Args:
        q: queries (..., N, d), float32 or float64; the leading dims may be (B,) or (B, H).
        k: keys (..., M, d). M may differ from N (cross-attention).
        v: values (..., M, d_v).
        mask: None or a boolean (N, M) tensor, True where a query MAY attend to a key.
            Every query has at least one visible key.

    Returns:
        out: (..., N, d_v), out = weights @ v.
        weights: (..., N, M), softmax over the KEYS of q k^T / sqrt(d), with hidden keys at
            exactly 0 and each row summing to 1. Same dtype as q.
    """
    raise NotImplementedError("ch00.scaled_dot_product_attention")


def split_heads(x: Tensor, H: int) -> Tensor:
    """Split the feature axis into H heads: (B, N, D) -> (B, H, N, d) with d = D // H.

    Head h owns the contiguous columns h*d ... (h+1)*d - 1 of x.
    """
    raise NotImplementedError("ch00.split_heads")


def merge_heads(x: Tensor) -> Tensor:
    """Concatenate heads back: (B, H, N, d) -> (B, N, H*d), head 0's features first."""
    raise NotImplementedError("ch00.merge_heads")


def multi_head_attention(x: Tensor, params: dict[str, Tensor], H: int, mask: Tensor | None = None) -> Tensor:
    """Multi-head self-attention without biases, in the sum-over-heads form.

    Args:
        x: tokens (B, N, D).
        params: {"w_q", "w_k", "w_v", "w_o"}, each (D, D); projections act on the right
            (Q = x @ w_q). Head h uses columns h*d ... (h+1)*d - 1 of Q, K, V and rows
            h*d ... (h+1)*d - 1 of w_o (its block W_O^h).
        H: number of heads (D divisible by H).
        mask: None or boolean (N, N), True where a query may attend.

    Returns:
        (B, N, D): Σ_h softmax(Q_h K_h^T / sqrt(d) + mask) V_h W_O^h.
    """
    raise NotImplementedError("ch00.multi_head_attention")


def causal_mask(N: int, M: int | None = None) -> Tensor:
    """Boolean causal mask (N, M), True where query i may attend to key j.

    M defaults to N. With M > N the queries are the LAST N of the M positions (decoding
    with M - N cached tokens), so query i sits at position i + M - N.
    """
    raise NotImplementedError("ch00.causal_mask")


def heads_experiment(H: int, seed: int) -> float:
    """Experiment: train the chapter's two-key recall model with H heads; return its test accuracy.

    The task (attnbook.tasks.two_key_recall): 6 (key, value) pairs with distinct keys from 12
    symbols and values from 6, then a query naming two different keys a and b; the answer is
    the ordered pair of their values, one class values[a] * 6 + values[b] of 36. Build it as in
    the chapter, section 5:

    - tokens (B, 7, D), D = 24: pair token j is key_emb(keys[:, j]) + value_emb(values[:, j]);
      the last token is first(query[:, 0]) + second(query[:, 1]), with four nn.Embedding tables
      (12 or 6 rows, width 24);
    - after ``torch.manual_seed(seed)``, the model TinyTransformer(ModelConfig(D=24, H=H,
      layers=1, n_out=36, mlp_ratio=0, norm=False, causal=False), embed=<your embedding>);
    - attnbook.train.train for 100 steps, lr=1e-2, seed=seed, on batches
      two_key_recall(64, 6, 12, 6, generator) with the cross-entropy of the logits at the LAST
      position (the query token): ``model(batch)[:, -1]`` is (B, 36);
    - test set: two_key_recall(1000, 6, 12, 6, torch.Generator().manual_seed(123)).

    Only H changes between the arms: W_Q, W_K, W_V, W_O are D x D whatever H is, so both
    models have the same parameters. Try H = 1 and H = 4 over a few seeds before grading.

    Returns:
        the fraction of test queries answered correctly, a float in [0, 1].
    """
    raise NotImplementedError("ch00.heads_experiment")
