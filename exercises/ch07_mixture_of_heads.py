"""Chapter 07 exercises: Mixture of heads.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 07

or, in a notebook, ``check("ch07.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.mixture_of_heads (it solves these), except
in the experiment moh_accuracy, which measures the library's model.
"""

from torch import Tensor


def moh_gates(x: Tensor, w_r: Tensor, w_s: Tensor | None, w_h: Tensor | None, k: int) -> Tensor:
    """The per-token gates of every head of a mixture of heads.

    p = softmax(W_r x) over the E routed heads; keep the top k, renormalise them over the kept
    ones and multiply by k. Shared gates: h_s · softmax(W_s x). Then [α₁, α₂] = 2 · softmax(W_h x)
    scales the shared gates by α₁ and the routed ones by α₂. With no shared heads (w_s and w_h
    None) the gates are the routed gates alone.

    Args:
        x: (B, N, D) tokens, float32 or float64.
        w_r: (E, D) routed-head router.
        w_s: (h_s, D) shared-head router, or None.
        w_h: (2, D) head-type balance, or None (exactly when w_s is None).
        k: routed heads kept per token, 1 <= k <= E.

    Returns:
        (B, N, h_s + E) gates in x's dtype, shared heads first; h_s + k non-zero per token.
    """
    raise NotImplementedError("ch07.moh_gates")


def load_balance_loss(probs: Tensor, selected: Tensor) -> Tensor:
    """The load-balance loss L_bal = H_rt · Σ_h ḡ_h load_h of the routed heads.

    ḡ_h = mean over tokens i of the router probability g̃_ih; load_h = fraction of the tokens whose
    top-n_top selection contains routed head h. Uniform routing gives n_top; every token on the same
    n_top heads (with p uniform on them) gives H_rt.

    Args:
        probs: (T, E) router probabilities (rows sum to 1), float32 or float64; may require grad.
        selected: (T, E) bool, True for each token's selected routed heads.

    Returns:
        a scalar (0-dim tensor) in probs' dtype, differentiable with respect to probs.
    """
    raise NotImplementedError("ch07.load_balance_loss")


def gated_heads(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, b_o: Tensor, gates: Tensor
) -> Tensor:
    """Causal multi-head self-attention in the sum-over-heads form, each head gated per token.

        out_i = Σ_h g_ih · O_h[i] W_O^h + b_O,   O_h = softmax(Q_h K_h^T / sqrt(d) + causal mask) V_h

    Q = x W_Q^T, K = x W_K^T, V = x W_V^T (no biases); head h owns the columns h·d ... (h+1)·d - 1
    of Q, K, V (d = D / H) and the matching columns of W_O (nn.Linear's (out, in) layout).

    Args:
        x: (B, N, D) tokens, float32 or float64.
        w_q, w_k, w_v, w_o: (D, D) weights.
        b_o: (D,) output bias.
        gates: (B, N, H) gate g_ih of head h at query i (H divides D).

    Returns:
        (B, N, D) in x's dtype.
    """
    raise NotImplementedError("ch07.gated_heads")


def head_load(gates: Tensor, types: Tensor, n_types: int) -> Tensor:
    """The head-load table: for each token type, how often each head is active.

    Args:
        gates: (B, N, H) gates; a head is active for a token when its gate is non-zero.
        types: (B, N) int64 type of each token, in [0, n_types); every type occurs.
        n_types: number of types.

    Returns:
        (n_types, H) in gates' dtype: row t = fraction of the tokens of type t whose gate on each head is
        non-zero (with MoH every row sums to H_sh + n_top).
    """
    raise NotImplementedError("ch07.head_load")


def moh_accuracy(h_s: int, k: int, seed: int) -> float:
    """Experiment: train MoH with h_s shared and top-k routed heads on typed copies; its accuracy.

    Recipe (scaled down from the chapter's section 4): ``train_typed_copy(seed, h_s=h_s, k=k,
    N=12, n_sym=8, D=32, H=8, steps=60, batch_size=32, lr=1e-2)`` from
    attnbook.mechanisms.mixture_of_heads (λ = 0.01 on L_bal is its default), then
    ``typed_copy_accuracy(model, test)["accuracy"]`` on the test batch
    ``typed_copy(500, 12, 8, torch.Generator().manual_seed(1000))`` from attnbook.tasks.

    (This exercise may import the library: the lesson is the measurement. Try other (h_s, k)
    and compare with the table of section 4.)

    Returns:
        the test accuracy over the positions that have a source, a float in [0, 1].
    """
    raise NotImplementedError("ch07.moh_accuracy")
