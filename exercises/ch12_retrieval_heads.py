"""Chapter 12 exercises: the retrieval score, the query-masking ablation, the masking curve, chance.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 12

or, in a notebook, ``check("ch12.<function name>", your_function)`` from attnbook.grading.
Use torch; do not call the functions of attnbook.mechanisms.retrieval_heads that solve these
(the experiment uses only its model and prompts, as its docstring says).
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
        attn: (T_gen, L, H, M) float16/32/64 attention rows at the T_gen decoding steps over M >= N key
            positions; positions 0 ... N-1 are the prompt, positions >= N are generated tokens
            (never in the span).
        prompt_ids: (N,) int64 token ids of the prompt.
        gen_ids: (T_gen,) int64 ids of the emitted tokens.
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


def masking_curve(model, tokens: Tensor, answers: Tensor, order: list, ns: list) -> list:
    """Accuracy of a model with the first n heads of ``order`` masked, for every n in ``ns``.

    ``model`` is a TinyTransformer built by retrieval_transformer: the attention of layer l,
    ``model.blocks[l].attn``, carries a ``qk_transform`` whose boolean buffer ``heads`` (H,)
    marks the heads whose queries are set to 0 (True: masked; all False: the plain layer).

    For each n: mask the heads order[0], ..., order[n-1] TOGETHER (cumulative, not one at a
    time), predict model(tokens)[:, -1].argmax(-1) (the answer step) without gradients, and
    record the fraction of predictions equal to ``answers``. Unmask every head before
    returning, also when an error interrupts the loop (try/finally).

    Args:
        model: the TinyTransformer (L layers of H heads), unmasked on entry.
        tokens: (B, N) int64 prompts; answers: (B,) int64 answer tokens.
        order: a list of (layer, head) pairs, the masking order.
        ns: the numbers of masked heads, each 0 ... L·H.

    Returns:
        list of len(ns) Python floats in [0, 1].
    """
    raise NotImplementedError("ch12.masking_curve")


def chance_score(n_pairs: int, seed: int) -> float:
    """EXPERIMENT: the retrieval score that the heads of an UNTRAINED model get by chance.

    The recipe (what the check runs itself on seeds 0 ... 4):

        from attnbook.mechanisms.retrieval_heads import recall_prompts, retrieval_transformer
        from attnbook.models import ModelConfig
        from attnbook.tasks.associative_recall import associative_recall

        config = ModelConfig(D=32, H=4, layers=2, vocab=32, max_len=2 * n_pairs + 1, mlp_ratio=0)
        torch.manual_seed(seed)
        model = retrieval_transformer(config)                 # no training
        batch = associative_recall(500, n_pairs, 16, 16, torch.Generator().manual_seed(seed))
        tokens, answers, spans = recall_prompts(batch, 16)   # (T, 2n+1), (T,), (T, 2)

    Run the model with return_intermediates=True; each layer's record has ``weights``
    (T, H, N, N). Take every head's attention row at the LAST position (the answer step),
    score it with your retrieval_score (one decoding step, the answer as the emitted token,
    every trial counted as correct), and return the mean over trials, layers and heads as a
    Python float. Compare it, in the notebook, with 1/(2n+1) (a uniformly random key) and 1/n
    (a random value token).

    The check calls it for n_pairs 4 and 8 with a seed of its own, and accepts a value within
    mean ± max(4 std, 0.03) of its own runs of the recipe.
    """
    raise NotImplementedError("ch12.chance_score")
