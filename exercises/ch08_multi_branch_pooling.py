"""Chapter 08 exercises: multi-branch attention pooling (ACMIL).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 08

or, in a notebook, ``check("ch08.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.multi_branch_pooling (it solves these).
"""

import torch
from torch import Tensor


def multi_branch_attention(h: Tensor, V: Tensor, U: Tensor, W: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """K gated-attention branches over one bag, sharing their keys.

    keys κ_i = tanh(V h_i) ⊙ sigmoid(U h_i); logits A_{k,i} = w_k^T κ_i (no 1/sqrt(D));
    a_k = softmax over the instances of A_k; f_k = Σ_i a_{k,i} h_i; the slide feature pools with
    the mean attention ā = (1/K) Σ_k a_k.

    Args:
        h: instance features (N, L), float32 or float64.
        V: (D, L) weight of the tanh branch of the keys (nn.Linear's layout: V h_i = h @ V.T).
        U: (D, L) weight of the sigmoid gate.
        W: (K, D) one query row w_k per branch.

    Returns:
        a (K, N) with rows summing to 1, f (K, L), f_slide (L,); all in h's dtype.
    """
    raise NotImplementedError("ch08.multi_branch_attention")


def stkim_mask(
    logits: Tensor, k_top: int, p: float, generator: torch.Generator, training: bool = True
) -> Tensor:
    """Stochastic top-K instance masking of the attention logits (training only).

    In every branch (row) separately: take the min(k_top, N) instances with the largest logits,
    draw n = ⌊min(k_top, N)·p⌋ of them uniformly at random and set their logits to -inf. Draw
    every random number from ``generator``; the reference code ranks the candidates of all
    branches at once by ``torch.argsort(torch.rand(K, min(k_top, N), generator=generator), dim=1)``
    and hides the first n. With ``training=False`` nothing is masked.

    Args:
        logits: attention logits (K, N), float32 or float64; do not change it in place.
        k_top: the number of candidates per branch (an int >= 0).
        p: the share of the candidates hidden, in [0, 1] (n < N in every graded case).
        generator: a torch.Generator, the only source of randomness.
        training: False returns ``logits`` unchanged.

    Returns:
        (K, N) logits in the input's dtype: -inf on the hidden instances, unchanged elsewhere.
    """
    raise NotImplementedError("ch08.stkim_mask")


def diversity_loss(a: Tensor) -> Tensor:
    """The mean cosine similarity of the branches' attention over the pairs j < k.

    Args:
        a: attention weights (K, N), one row per branch, float32 or float64.

    Returns:
        a 0-d tensor in a's dtype, differentiable with respect to a: 1 for identical
        branches, 0 for branches on disjoint instances, and 0 (not NaN) when K = 1.
    """
    raise NotImplementedError("ch08.diversity_loss")
