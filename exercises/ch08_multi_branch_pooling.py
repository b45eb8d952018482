"""Chapter 08 exercises: multi-branch attention pooling (ACMIL).

Fill in each function, then grade your work from the repository's root with

    attnbook grade 08

or, in a notebook, ``check("ch08.<function name>", your_function)`` from attnbook.grading.

multi_branch_attention ★★ (20 min), stkim_mask ★★ (20 min), diversity_loss ★ (10 min),
acmil_loss ★★ (15 min), stkim_experiment ★★★ (30 min, an experiment: it trains a model and returns
what it measures). Use only torch in the first four; do not import
attnbook.mechanisms.multi_branch_pooling there (it solves them). stkim_experiment uses attnbook's
ACMIL, acmil_loss and the shortcut_bags task.
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


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: int) -> Tensor:
    """ACMIL's training loss for one bag: ℒ = ℒ_div + ℒ_branch + ℒ_slide, unit weights.

    ℒ_slide = CE(slide_logits, y); ℒ_branch = the MEAN over the K branches of CE(branch_logits_k, y);
    ℒ_div = the mean cosine similarity of the rows of a over the pairs j < k (as diversity_loss).
    As in the reference training script, one branch (K = 1) drops ℒ_branch (and ℒ_div is 0): the
    loss is then CE(slide_logits, y) alone.

    Args:
        branch_logits: class logits of each branch (K, C), float32 or float64.
        slide_logits: class logits of the slide classifier (C,).
        a: the branches' attention weights (K, N) that produced them.
        y: the bag's label, an int in [0, C).

    Returns:
        a 0-d tensor, differentiable with respect to all three tensors.
    """
    raise NotImplementedError("ch08.acmil_loss")


def stkim_experiment(p: float, seed: int) -> float:
    """Experiment: train ABMIL with STKIM (share p) on shortcut bags; return its B/C-only test AUC.

    The recipe of the chapter's section 4 (follow it exactly and you reproduce the reference):

    - ``g = torch.Generator().manual_seed(seed)``; ``patterns = shortcut_patterns(16, g)``;
      ``train = shortcut_bags(15, "train", patterns, g)``, then
      ``test = shortcut_bags(60, "test", patterns, g)`` (attnbook.tasks).
    - ``torch.manual_seed(seed)``; ``model = ACMIL(16, 32, 16, K=1, k_top=10, p=p)``
      (attnbook.mechanisms.multi_branch_pooling; p = 0 is plain ABMIL);
      ``torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-5)``.
    - ``gen = torch.Generator().manual_seed(seed + 100)``; 15 epochs, each over the training bags
      in the order ``torch.randperm(len(train.bags), generator=gen)``, one bag per step, in
      ``model.train()`` mode: ``out = model(bag, gen)``, loss
      ``acmil_loss(out.branch_logits, out.slide_logits, out.attention, label)``.
    - ``model.eval()``; score every test bag by softmax(out.slide_logits)[1]; keep the bags whose
      ``test.shown`` is not 0 (the B-only and C-only positives and all negatives) and return the
      ROC AUC of those scores against ``test.labels`` (ties count one half).

    Returns:
        the AUC, a float in [0, 1].
    """
    raise NotImplementedError("ch08.stkim_experiment")
