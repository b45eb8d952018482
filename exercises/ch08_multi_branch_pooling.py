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


def multi_branch_attention(
    X: Tensor, W_tanh: Tensor, W_gate: Tensor, Q: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """H gated-attention branches over one bag, sharing their keys.

    keys k_j = tanh(W_tanh x_j) ⊙ sigmoid(W_gate x_j); scores S_{hj} = q_h^T k_j (no 1/sqrt(d));
    A_h = softmax over the instances of S_h; f_h = Σ_j A_{hj} x_j; the slide feature pools with
    the mean attention Ā = (1/H) Σ_h A_h.

    Args:
        X: instance features x_j, one per row (M, D), float32 or float64.
        W_tanh: (d, D) weight of the tanh half of the keys (nn.Linear's layout:
            the rows of X @ W_tanh.T are the W_tanh x_j).
        W_gate: (d, D) weight of the sigmoid gate.
        Q: (H, d) one query row q_h per branch.

    Returns:
        A (H, M) with rows summing to 1, f (H, D), f_slide (D,); all in X's dtype.
    """
    raise NotImplementedError("ch08.multi_branch_attention")


def stkim_mask(
    logits: Tensor, n_top: int, p: float, generator: torch.Generator, training: bool = True
) -> Tensor:
    """Stochastic top-n_top instance masking of the attention scores S (training only).

    In every branch (row) separately: take the min(n_top, M) instances with the largest scores,
    draw n_drop = ⌊min(n_top, M)·p⌋ of them uniformly at random and set their scores to -inf.
    Draw every random number from ``generator``; the reference code ranks the candidates of all
    branches at once by ``torch.argsort(torch.rand(H, min(n_top, M), generator=generator), dim=1)``
    and hides the first n_drop. With ``training=False`` nothing is masked.

    Args:
        logits: attention scores S (H, M), float32 or float64; do not change it in place.
        n_top: the number of candidates per branch (an int >= 0).
        p: the share of the candidates hidden, in [0, 1] (n_drop < M in every graded case).
        generator: a torch.Generator, the only source of randomness.
        training: False returns ``logits`` unchanged.

    Returns:
        (H, M) scores in the input's dtype: -inf on the hidden instances, unchanged elsewhere.
    """
    raise NotImplementedError("ch08.stkim_mask")


def diversity_loss(a: Tensor) -> Tensor:
    """The mean cosine similarity of the branches' attention over the pairs h < h'.

    Args:
        a: attention weights A (H, M), one row A_h per branch, float32 or float64.

    Returns:
        a 0-d tensor in a's dtype, differentiable with respect to a: 1 for identical
        branches, 0 for branches on disjoint instances, and 0 (not NaN) when H = 1.
    """
    raise NotImplementedError("ch08.diversity_loss")


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: int) -> Tensor:
    """ACMIL's training loss for one bag: ℒ = ℒ_div + ℒ_branch + ℒ_slide, unit weights.

    ℒ_slide = CE(slide_logits, y); ℒ_branch = the MEAN over the H branches of CE(branch_logits_h, y);
    ℒ_div = the mean cosine similarity of the rows of a over the pairs h < h' (as diversity_loss).
    As in the reference training script, one branch (H = 1) drops ℒ_branch (and ℒ_div is 0): the
    loss is then CE(slide_logits, y) alone.

    Args:
        branch_logits: class logits of each branch (H, n_classes), float32 or float64.
        slide_logits: class logits of the slide classifier (n_classes,).
        a: the branches' attention weights A (H, M) that produced them.
        y: the bag's label, an int in [0, n_classes).

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
    - ``torch.manual_seed(seed)``; ``model = ACMIL(16, 32, 16, H=1, n_top=10, p=p)``
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
