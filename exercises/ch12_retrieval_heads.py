"""Chapter 12 exercises: the retrieval score of each head, and the query-masking ablation.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 12

or, in a notebook, ``check("ch12.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.retrieval_heads (it solves these).
"""

from torch import Tensor


def retrieval_score(attn: Tensor, prompt_ids: Tensor, gen_ids: Tensor, span: tuple, correct: bool) -> Tensor:
    """The retrieval (copy-paste) score of every head in one decoding trial.

    At decoding step t the model emitted the token gen_ids[t], and head (l, h) attended with the row
    attn[t, l, h]. The head copy-pastes at step t when its most attended key
    j* = argmax_j attn[t, l, h, j] lies in the needle span, s <= j* < e, AND holds the emitted
    token, prompt_ids[j*] == gen_ids[t]. Each copy-paste adds 1 / (e - s):

        RS[l, h] = #{t : copy-paste at step t} / (e - s).

    A trial whose answer was wrong (correct False) scores 0 for every head.

    Args:
        attn: (S, L, H, M) float16/32/64 attention rows at the S decoding steps over M >= N key
            positions; positions 0 ... N-1 are the prompt, positions >= N are generated tokens
            (never in the span).
        prompt_ids: (N,) int64 token ids of the prompt.
        gen_ids: (S,) int64 ids of the emitted tokens.
        span: (s, e) with 0 <= s < e <= N: the needle's positions [s, e).
        correct: whether the trial's answer was right.

    Returns:
        (L, H) float tensor of scores in [0, 1]. On a tie, j* is the FIRST maximal index (as
        torch.argmax returns it).
    """
    raise NotImplementedError("ch12.retrieval_score")


def ablated_attention(q: Tensor, k: Tensor, v: Tensor, ablate: Tensor, mode: str = "uniform") -> Tensor:
    """Causal self-attention of H heads in which the heads where ``ablate`` is True are ablated.

    A kept head: out_i = Σ_{j <= i} softmax_j(q_i · k_j / sqrt(d)) v_j (future keys hidden).
    An ablated head:
        "uniform": its query is set to 0, so its scores are all 0 BEFORE the causal mask and its
                   attention is uniform over the visible keys: out_i = mean_{j <= i} v_j;
        "zero":    its output is 0.

    Args:
        q, k, v: (B, H, N, d) float32 or float64.
        ablate: (H,) bool, True for an ablated head.
        mode: "uniform" or "zero".

    Returns:
        (B, H, N, d) in q's dtype.
    """
    raise NotImplementedError("ch12.ablated_attention")
