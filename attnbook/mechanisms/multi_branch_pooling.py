r"""ACMIL: multiple-branch attention pooling with stochastic top-n_top instance masking.

Derivation (chapter 08), in the book's notation (book/notation.md). Chapter 00 wrote one attention
head as O = softmax(τ Q K^T) V. Multiple-instance learning (MIL) classifies a *bag*
X = (x_1, ..., x_M) of M instance features x_j ∈ R^D (the patches of a whole-slide image) from one
label per bag. Gated attention pooling (ABMIL, Ilse et al. 2018) is that head with ONE query, a
learned vector q ∈ R^d, and τ = 1:

    k_j = tanh(W_tanh x_j) ⊙ sigmoid(W_gate x_j)           keys, (M, d)   (gated, not linear)
    S_j = q^T k_j                                          scores, (M,)
    A = softmax_j(S),   bag = Σ_j A_j x_j                  values are the features themselves

so bag = SDPA(q, k, v = X, scale = 1). ACMIL (Zhang et al. 2023) changes two things:

**MBA (multiple branch attention).** H queries q_1 ... q_H (the rows of Q ∈ R^{H×d}) over the
SAME keys: scores S = Q k^T ∈ R^{H×M}, A_h = softmax(S_h), branch features f_h = Σ_j A_{hj} x_j,
each with its own classifier. The slide prediction uses the mean attention Ā = (1/H) Σ_h A_h,
f_slide = Σ_j Ā_j x_j (= the mean of the f_h). A diversity term ℒ_div, the mean cosine similarity
of the branches' attention over their H(H-1)/2 pairs h < h', pushes the branches onto different
instances.

**STKIM (stochastic top-n_top instance masking), training only.** In each branch separately, take
the n_top instances with the largest scores and hide n_drop = ⌊min(n_top, M)·p⌋ of them, drawn
uniformly at random, by setting their scores to -inf before the softmax; their attention mass
goes to the others in proportion: A'_{hj} = A_{hj} / (1 - Σ_{hidden j'} A_{hj'}). The masked
scores also feed the slide attention Ā and ℒ_div. Evaluation masks nothing.

Loss (the reference training script): ℒ = ℒ_div + ℒ_branch + ℒ_slide with unit weights,
ℒ_branch = mean_h CE(branch_h, y) and ℒ_slide = CE(slide, y); with H = 1 the script drops
ℒ_branch (its one branch classifier is then never trained) and ℒ_div (there are no pairs).

Why this stands alone instead of plugging into MultiHeadAttention: the queries are parameters,
not projections of tokens; the keys come from a gated non-linear network; the values are the
features without a projection and no W_O follows; each "head" ends in its own classifier. The
H = 1 limit is nevertheless exactly one attention head (tested against torch's SDPA). One bag at
a time, as in the reference code (bags differ in M): X is (M, D), scores are (H, M). The code
calls the scores ``logits`` and the weights ``a`` (rows A_h). The reference code writes the
masked scores as -1e9; -inf gives the same weights whenever at least one instance survives,
which this module requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attention import stable_softmax
from ..validate import check_scale, require_int, require_same_dtype_device, require_tensor

__all__ = [
    "gated_attention_logits",
    "stkim_select",
    "stkim_mask",
    "multi_branch_pool",
    "diversity_loss",
    "acmil_loss",
    "top_k_attention_mass",
    "ACMILOutput",
    "ACMIL",
]


def _check_bag(X: Tensor) -> Tensor:
    return require_tensor(X, "X", ndim=2, floating=True, shape="(M, D)")


def _check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    require_tensor(logits, name, ndim=2, floating=True, shape="(H, M)")
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one branch and one instance, got {tuple(logits.shape)}")
    return logits


def gated_attention_logits(
    X: Tensor,
    W_tanh: Tensor,
    W_gate: Tensor,
    Q: Tensor,
    b_tanh: Tensor | None = None,
    b_gate: Tensor | None = None,
    b_Q: Tensor | None = None,
) -> Tensor:
    r"""The scores S = Q k^T of H branches over shared gated keys.

    Args:
        X: instance features (M, D), float.
        W_tanh: tanh half of the key network (d, D)  (nn.Linear's weight layout).
        W_gate: sigmoid gate of the key network (d, D).
        Q: one query row q_h per branch (H, d).
        b_tanh, b_gate: optional biases (d,); b_Q: optional bias (H,).

    Returns:
        scores (H, M) in X's dtype; H = 1 gives ABMIL's gated attention scores.
    """
    _check_bag(X)
    M, D = X.shape
    rows = W_tanh.shape[0] if isinstance(W_tanh, Tensor) else None
    for name, t, n_rows in (("W_tanh", W_tanh, None), ("W_gate", W_gate, rows)):
        require_tensor(t, name, ndim=2, floating=True, shape="(d, D)")
        if t.shape[1] != D or (n_rows is not None and t.shape[0] != n_rows):
            raise ValueError(
                f"{name} must have shape (d, D={D}) with W_tanh and W_gate alike, got {tuple(t.shape)}"
            )
    d = W_tanh.shape[0]
    require_tensor(Q, "Q", ndim=2, floating=True, shape=f"(H, d={d})")
    if Q.shape[1] != d or Q.shape[0] < 1:
        raise ValueError(f"Q must have shape (H >= 1, d={d}), got {tuple(Q.shape)}")
    for name, b, size in (("b_tanh", b_tanh, d), ("b_gate", b_gate, d), ("b_Q", b_Q, Q.shape[0])):
        if b is not None:
            require_tensor(b, name, ndim=1, floating=True, shape=f"({size},)")
            if b.shape[0] != size:
                raise ValueError(f"{name} must have shape ({size},), got {tuple(b.shape)}")
    require_same_dtype_device(X=X, W_tanh=W_tanh, W_gate=W_gate, Q=Q, b_tanh=b_tanh, b_gate=b_gate, b_Q=b_Q)
    # k_j = tanh(W_tanh x_j + b_tanh) ⊙ sigmoid(W_gate x_j + b_gate)
    keys = torch.tanh(nn.functional.linear(X, W_tanh, b_tanh)) * torch.sigmoid(
        nn.functional.linear(X, W_gate, b_gate)
    )
    # S_{hj} = q_h^T k_j + b_{Q,h}
    return nn.functional.linear(keys, Q, b_Q).T  # (H, M)


def _check_stkim(logits: Tensor, n_top: object, p: object, generator: object) -> tuple[int, float, int]:
    _check_logits(logits)
    n_top = require_int(n_top, "n_top", minimum=0)
    p = check_scale(p, "p", allow_zero=True)
    if p > 1:
        raise ValueError(f"p (the masked share of the top-n_top instances) must be in [0, 1], got {p}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    M = logits.shape[1]
    top = min(n_top, M)
    # n_drop = ⌊min(n_top, M) · p⌋ masked instances per branch
    n_drop = int(top * p)
    if n_drop >= M:
        raise ValueError(
            f"masking {n_drop} of the top-{top} instances would hide all M={M} instances; "
            "use p < 1 or n_top < M"
        )
    return top, p, n_drop


def stkim_select(logits: Tensor, n_top: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Which instances STKIM hides: n_drop = ⌊min(n_top, M)·p⌋ random ones among each branch's top n_top.

    The draw follows the reference code: rank the top-n_top instances of each branch by
    ``torch.rand(H, min(n_top, M), generator=generator)`` and hide the first n_drop of that order.
    Each branch draws its own subset.

    Args:
        logits: attention scores S (H, M), float.
        n_top: how many of the largest scores per branch are candidates (an int >= 0).
        p: the share of the candidates hidden, in [0, 1].
        generator: the random source (on the scores' device), or None for torch's default.

    Returns:
        bool (H, M), True where an instance is hidden; exactly n_drop True per row, all in that
        row's top min(n_top, M).
    """
    top, _, n_drop = _check_stkim(logits, n_top, p, generator)
    H, M = logits.shape
    hidden = torch.zeros(H, M, dtype=torch.bool, device=logits.device)
    if n_drop == 0:
        return hidden
    # the n_top largest scores of each branch
    candidates = torch.topk(logits.detach(), top, dim=1).indices  # (H, top)
    # a uniformly random order of the candidates, drawn per branch
    order = torch.argsort(torch.rand(H, top, generator=generator, device=logits.device), dim=1)
    # hide the first n_drop candidates in that order
    return hidden.scatter_(1, candidates.gather(1, order[:, :n_drop]), True)  # (H, M)


def stkim_mask(
    logits: Tensor,
    n_top: int,
    p: float,
    generator: torch.Generator | None = None,
    training: bool = True,
) -> Tensor:
    r"""The scores after STKIM: -inf on the instances :func:`stkim_select` hides (training only).

    Args:
        logits: attention scores S (H, M), float.
        n_top, p, generator: as in :func:`stkim_select`.
        training: False (evaluation) returns ``logits`` unchanged: STKIM never masks at test time.

    Returns:
        (H, M) scores, same dtype and device; the kept entries are the inputs' exactly, so the
        softmax over a row renormalises the kept attention: A'_{hj} = A_{hj} / (1 - Σ_hidden A_{hj'}).
    """
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if not training:
        _check_stkim(logits, n_top, p, generator)  # the same checks, and no random draw
        return logits
    hidden = stkim_select(logits, n_top, p, generator)
    # S'_{hj} = -inf for a hidden instance, S_{hj} otherwise
    return logits.masked_fill(hidden, float("-inf"))


def multi_branch_pool(X: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Softmax each branch over the instances, pool, and pool once more with the mean attention.

    Args:
        X: instance features (M, D), float.
        logits: (possibly masked) attention scores S (H, M), same dtype and device.

    Returns:
        a (H, M): attention A_h of each branch, rows summing to 1 (0 on -inf scores);
        f (H, D): branch features f_h = Σ_j A_{hj} x_j;
        f_slide (D,): Σ_j Ā_j x_j with Ā = (1/H) Σ_h A_h.
    """
    _check_bag(X)
    _check_logits(logits)
    if logits.shape[1] != X.shape[0]:
        raise ValueError(
            f"logits (H, M) and X (M, D) must share M: logits {tuple(logits.shape)}, X {tuple(X.shape)}"
        )
    require_same_dtype_device(X=X, logits=logits)
    # A_h = softmax_j(S_h), over the instances (the last axis), never over the branches
    a = stable_softmax(logits, dim=1)  # (H, M)
    # f_h = Σ_j A_{hj} x_j
    f = a @ X  # (H, D)
    # Ā = mean_h A_h ;  f_slide = Σ_j Ā_j x_j
    return a, f, a.mean(dim=0) @ X


def diversity_loss(a: Tensor) -> Tensor:
    r"""ℒ_div = mean over the H(H-1)/2 branch pairs h < h' of cos(A_h, A_h'); 0 when H = 1.

    Args:
        a: attention weights A (H, M), float (non-negative rows).

    Returns:
        a scalar in a's dtype: 1 for identical branches, 0 for branches on disjoint instances;
        differentiable, and exactly 0 (with a zero gradient) for H = 1.
    """
    _check_logits(a, "a")
    H = a.shape[0]
    # A_h / ||A_h||  (the eps keeps a zero row finite, as torch.cosine_similarity does)
    unit = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (H, M)
    # cos[h, h'] = cos(A_h, A_h')
    cos = unit @ unit.T  # (H, H)
    pairs = torch.triu_indices(H, H, offset=1, device=a.device)  # (2, H(H-1)/2)
    if pairs.shape[1] == 0:
        return a.sum() * 0.0
    # mean over h < h' of cos[h, h']
    return cos[pairs[0], pairs[1]].mean()


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: Tensor | int) -> Tensor:
    r"""ℒ = ℒ_div(A) + mean_h CE(branch_logits_h, y) + CE(slide_logits, y)  (ℒ_branch only if H > 1).

    Args:
        branch_logits: class logits of each branch (H, n_classes).
        slide_logits: class logits of the slide classifier (n_classes,).
        a: the (masked) attention weights A (H, M) that made them.
        y: the bag's label, an int in [0, n_classes) or a 0-d integer tensor.

    Returns:
        a scalar. H = 1 gives CE(slide_logits, y) alone, as in the reference training script.
    """
    require_tensor(branch_logits, "branch_logits", ndim=2, floating=True, shape="(H, n_classes)")
    require_tensor(slide_logits, "slide_logits", ndim=1, floating=True, shape="(n_classes,)")
    _check_logits(a, "a")
    H, n_classes = branch_logits.shape
    if slide_logits.shape[0] != n_classes or a.shape[0] != H:
        raise ValueError(
            f"branch_logits (H, n_classes), slide_logits (n_classes,) and a (H, M) disagree: "
            f"{tuple(branch_logits.shape)}, {tuple(slide_logits.shape)}, {tuple(a.shape)}"
        )
    y = require_int(y, "y", minimum=0)
    if y >= n_classes:
        raise ValueError(f"y must be a class index in [0, n_classes={n_classes}), got {y}")
    target = torch.full((H,), y, dtype=torch.long, device=branch_logits.device)
    # ℒ_slide = CE(slide, y)
    loss = nn.functional.cross_entropy(slide_logits[None], target[:1])
    if H > 1:
        # ℒ_branch = mean_h CE(branch_h, y) ;  ℒ_div = mean_{h<h'} cos(A_h, A_h')
        loss = loss + nn.functional.cross_entropy(branch_logits, target) + diversity_loss(a)
    return loss


def top_k_attention_mass(a: Tensor, n_top: int = 10) -> Tensor:
    r"""The attention mass on each branch's n_top most attended instances (the paper's diagnostic).

    Args:
        a: attention weights A (H, M) or (M,).
        n_top: how many instances (min(n_top, M) are used).

    Returns:
        (H,) (or a scalar for 1-D input): Σ of the n_top largest weights; near 1 = concentrated.
    """
    require_tensor(a, "a", ndim=(1, 2), floating=True, shape="(H, M) or (M,)")
    n_top = require_int(n_top, "n_top", minimum=1)
    return torch.topk(a, min(n_top, a.shape[-1]), dim=-1).values.sum(dim=-1)


@dataclass
class ACMILOutput:
    """What :class:`ACMIL` returns for one bag (H branches, n_classes classes, M instances)."""

    branch_logits: Tensor  # (H, n_classes)
    slide_logits: Tensor  # (n_classes,)
    attention: Tensor  # (H, M) the (masked, in training) attention A
    logits: Tensor  # (H, M) the (masked, in training) attention scores S


class ACMIL(nn.Module):
    """Feature reduction, gated multi-branch attention, H branch classifiers and a slide classifier.

    ``ACMIL(D_in, D, d, H=1, n_top=0, p=0.0)`` is ABMIL; the paper's defaults are H = 5,
    n_top = 10, p = 0.6. D_in is the width of the raw instances, D that of the reduced features X,
    d that of the keys and queries. Masking happens only in ``train()`` mode, drawn from
    ``generator``.
    """

    def __init__(
        self, D_in: int, D: int, d: int, n_classes: int = 2, H: int = 5, n_top: int = 10, p: float = 0.6
    ):
        super().__init__()
        D_in, D, d = (require_int(v, n, minimum=1) for v, n in ((D_in, "D_in"), (D, "D"), (d, "d")))
        n_classes = require_int(n_classes, "n_classes", minimum=2)
        self.H = require_int(H, "H", minimum=1)
        self.n_top = require_int(n_top, "n_top", minimum=0)
        self.p = check_scale(p, "p", allow_zero=True)
        if self.p > 1:
            raise ValueError(f"p must be in [0, 1], got {self.p}")
        # X = ReLU(X_in W_red^T)  (no bias, as in the reference code)
        self.reduce = nn.Linear(D_in, D, bias=False)
        self.W_tanh, self.W_gate, self.Q = nn.Linear(D, d), nn.Linear(D, d), nn.Linear(d, self.H)
        self.branch_classifiers = nn.ModuleList(nn.Linear(D, n_classes) for _ in range(self.H))
        self.slide_classifier = nn.Linear(D, n_classes)

    def forward(self, X_in: Tensor, generator: torch.Generator | None = None) -> ACMILOutput:
        """X_in: one bag (M, D_in) -> :class:`ACMILOutput`."""
        require_tensor(X_in, "X_in", ndim=2, floating=True, shape="(M, D_in)")
        if X_in.shape[1] != self.reduce.in_features:
            raise ValueError(
                f"X_in must have shape (M, D_in={self.reduce.in_features}), got {tuple(X_in.shape)}"
            )
        # x_j = ReLU(W_red x_j^in)
        X = torch.relu(self.reduce(X_in))  # (M, D)
        W_tanh, W_gate, Q = self.W_tanh, self.W_gate, self.Q
        logits = gated_attention_logits(
            X, W_tanh.weight, W_gate.weight, Q.weight, W_tanh.bias, W_gate.bias, Q.bias
        )  # (H, M)
        if self.n_top > 0 and self.p > 0:
            logits = stkim_mask(logits, self.n_top, self.p, generator, training=self.training)
        a, f, f_slide = multi_branch_pool(X, logits)
        branch = torch.stack([cls(f[h]) for h, cls in enumerate(self.branch_classifiers)])  # (H, n_classes)
        return ACMILOutput(branch, self.slide_classifier(f_slide), a, logits)
