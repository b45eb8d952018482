r"""ACMIL: multiple-branch attention pooling with stochastic top-K instance masking.

Derivation (chapter 08). Chapter 00 wrote one attention head as out = softmax(q K^T / sqrt(d)) V.
Multiple-instance learning (MIL) classifies a *bag* of N instance features h_i ∈ R^L (the
patches of a whole-slide image) from one label per bag. Gated attention pooling (ABMIL, Ilse et
al. 2018) is that head with ONE query, a learned vector w ∈ R^D, and no scaling:

    κ_i = tanh(V h_i) ⊙ sigmoid(U h_i)                     keys, (N, D)   (gated, not linear)
    A_i = w^T κ_i                                          logits, (N,)
    a = softmax_i(A),   bag = Σ_i a_i h_i                  values are the features themselves

so bag = SDPA(q = w, k = κ, v = h, scale = 1). ACMIL (Zhang et al. 2023) changes two things:

**MBA (multiple branch attention).** K queries w_1 ... w_K (the rows of W ∈ R^{K×D}) over the
SAME keys: logits A = W κ^T ∈ R^{K×N}, a_k = softmax(A_k), branch features f_k = Σ_i a_{k,i} h_i,
each with its own classifier. The slide prediction uses the mean attention ā = (1/K) Σ_k a_k,
f = Σ_i ā_i h_i (= the mean of the f_k). A diversity term, the mean cosine similarity of the
branches' attention over their K(K-1)/2 pairs, pushes the branches onto different instances.

**STKIM (stochastic top-K instance masking), training only.** In each branch separately, take
the K_top instances with the largest logits and hide ⌊min(K_top, N)·p⌋ of them, drawn
uniformly at random, by setting their logits to -inf before the softmax; their attention mass
goes to the others in proportion: a'_i = a_i / (1 - Σ_{masked} a_j). The masked logits also feed
the slide attention ā and the diversity term. Evaluation masks nothing.

Loss (the reference training script): ℒ = ℒ_div + ℒ_branch + ℒ_slide with unit weights,
ℒ_branch = mean_k CE(branch_k, y) and ℒ_slide = CE(slide, y); with K = 1 the script drops
ℒ_branch (its one branch classifier is then never trained) and ℒ_div (there are no pairs).

Why this stands alone instead of plugging into MultiHeadAttention: the queries are parameters,
not projections of tokens; the keys come from a gated non-linear network; the values are the
features without a projection and no W_O follows; each "head" ends in its own classifier. The
K = 1 limit is nevertheless exactly one attention head (tested against torch's SDPA). One bag at
a time, as in the reference code (bags differ in N): h is (N, L), logits are (K, N).
The reference code writes the masked logits as -1e9; -inf gives the same weights whenever at
least one instance survives, which this module requires.
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


def _check_bag(h: Tensor) -> Tensor:
    return require_tensor(h, "h", ndim=2, floating=True, shape="(N, L)")


def _check_logits(logits: Tensor, name: str = "logits") -> Tensor:
    require_tensor(logits, name, ndim=2, floating=True, shape="(K, N)")
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one branch and one instance, got {tuple(logits.shape)}")
    return logits


def gated_attention_logits(
    h: Tensor,
    V: Tensor,
    U: Tensor,
    W: Tensor,
    b_V: Tensor | None = None,
    b_U: Tensor | None = None,
    b_W: Tensor | None = None,
) -> Tensor:
    r"""The attention logits A = W κ^T of K branches over shared gated keys.

    Args:
        h: instance features (N, L), float.
        V: tanh branch of the key network (D, L)  (nn.Linear's weight layout).
        U: sigmoid gate of the key network (D, L).
        W: one query row per branch (K, D).
        b_V, b_U: optional biases (D,); b_W: optional bias (K,).

    Returns:
        logits (K, N) in h's dtype; K = 1 gives ABMIL's gated attention logits.
    """
    _check_bag(h)
    N, L = h.shape
    for name, t, rows in (("V", V, None), ("U", U, V.shape[0] if isinstance(V, Tensor) else None)):
        require_tensor(t, name, ndim=2, floating=True, shape="(D, L)")
        if t.shape[1] != L or (rows is not None and t.shape[0] != rows):
            raise ValueError(f"{name} must have shape (D, L={L}) with V and U alike, got {tuple(t.shape)}")
    D = V.shape[0]
    require_tensor(W, "W", ndim=2, floating=True, shape=f"(K, D={D})")
    if W.shape[1] != D or W.shape[0] < 1:
        raise ValueError(f"W must have shape (K >= 1, D={D}), got {tuple(W.shape)}")
    for name, b, size in (("b_V", b_V, D), ("b_U", b_U, D), ("b_W", b_W, W.shape[0])):
        if b is not None:
            require_tensor(b, name, ndim=1, floating=True, shape=f"({size},)")
            if b.shape[0] != size:
                raise ValueError(f"{name} must have shape ({size},), got {tuple(b.shape)}")
    require_same_dtype_device(h=h, V=V, U=U, W=W, b_V=b_V, b_U=b_U, b_W=b_W)
    # κ_i = tanh(V h_i + b_V) ⊙ sigmoid(U h_i + b_U)
    keys = torch.tanh(nn.functional.linear(h, V, b_V)) * torch.sigmoid(nn.functional.linear(h, U, b_U))
    # A_{k,i} = w_k^T κ_i + b_k
    return nn.functional.linear(keys, W, b_W).T  # (K, N)


def _check_stkim(logits: Tensor, k_top: object, p: object, generator: object) -> tuple[int, float, int]:
    _check_logits(logits)
    k_top = require_int(k_top, "k_top", minimum=0)
    p = check_scale(p, "p", allow_zero=True)
    if p > 1:
        raise ValueError(f"p (the masked share of the top-K_top instances) must be in [0, 1], got {p}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    N = logits.shape[1]
    top = min(k_top, N)
    # n = ⌊min(K_top, N) · p⌋ masked instances per branch
    n = int(top * p)
    if n >= N:
        raise ValueError(
            f"masking {n} of the top-{top} instances would hide all N={N} instances; use p < 1 or k_top < N"
        )
    return top, p, n


def stkim_select(logits: Tensor, k_top: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Which instances STKIM hides: ⌊min(K_top, N)·p⌋ random ones among each branch's top K_top.

    The draw follows the reference code: rank the top-K_top instances of each branch by
    ``torch.rand(K, min(K_top, N), generator=generator)`` and hide the first n of that order.
    Each branch draws its own subset.

    Args:
        logits: attention logits (K, N), float.
        k_top: how many of the largest logits per branch are candidates (an int >= 0).
        p: the share of the candidates hidden, in [0, 1].
        generator: the random source (on the logits' device), or None for torch's default.

    Returns:
        bool (K, N), True where an instance is hidden; exactly n True per row, all in that
        row's top min(K_top, N).
    """
    top, _, n = _check_stkim(logits, k_top, p, generator)
    K, N = logits.shape
    hidden = torch.zeros(K, N, dtype=torch.bool, device=logits.device)
    if n == 0:
        return hidden
    # the K_top largest logits of each branch
    candidates = torch.topk(logits.detach(), top, dim=1).indices  # (K, top)
    # a uniformly random order of the candidates, drawn per branch
    order = torch.argsort(torch.rand(K, top, generator=generator, device=logits.device), dim=1)
    # hide the first n candidates in that order
    return hidden.scatter_(1, candidates.gather(1, order[:, :n]), True)  # (K, N)


def stkim_mask(
    logits: Tensor,
    k_top: int,
    p: float,
    generator: torch.Generator | None = None,
    training: bool = True,
) -> Tensor:
    r"""The logits after STKIM: -inf on the instances :func:`stkim_select` hides (training only).

    Args:
        logits: attention logits (K, N), float.
        k_top, p, generator: as in :func:`stkim_select`.
        training: False (evaluation) returns ``logits`` unchanged: STKIM never masks at test time.

    Returns:
        (K, N) logits, same dtype and device; the kept entries are the inputs' exactly, so
        softmax over a row renormalises the kept attention: a'_i = a_i / (1 - Σ_hidden a_j).
    """
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if not training:
        _check_stkim(logits, k_top, p, generator)  # the same checks, and no random draw
        return logits
    hidden = stkim_select(logits, k_top, p, generator)
    # A'_{k,i} = -inf for a hidden instance, A_{k,i} otherwise
    return logits.masked_fill(hidden, float("-inf"))


def multi_branch_pool(h: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Softmax each branch over the instances, pool, and pool once more with the mean attention.

    Args:
        h: instance features (N, L), float.
        logits: (possibly masked) attention logits (K, N), same dtype and device.

    Returns:
        a (K, N): attention of each branch, rows summing to 1 (0 on -inf logits);
        f (K, L): branch features f_k = Σ_i a_{k,i} h_i;
        f_slide (L,): Σ_i ā_i h_i with ā = (1/K) Σ_k a_k.
    """
    _check_bag(h)
    _check_logits(logits)
    if logits.shape[1] != h.shape[0]:
        raise ValueError(
            f"logits (K, N) and h (N, L) must share N: logits {tuple(logits.shape)}, h {tuple(h.shape)}"
        )
    require_same_dtype_device(h=h, logits=logits)
    # a_k = softmax_i(A_k), over the instances (the last axis), never over the branches
    a = stable_softmax(logits, dim=1)  # (K, N)
    # f_k = Σ_i a_{k,i} h_i
    f = a @ h  # (K, L)
    # ā = mean_k a_k ;  f_slide = Σ_i ā_i h_i
    return a, f, a.mean(dim=0) @ h


def diversity_loss(a: Tensor) -> Tensor:
    r"""ℒ_div = mean over the K(K-1)/2 branch pairs j < k of cos(a_j, a_k); 0 when K = 1.

    Args:
        a: attention weights (K, N), float (non-negative rows).

    Returns:
        a scalar in a's dtype: 1 for identical branches, 0 for branches on disjoint instances;
        differentiable, and exactly 0 (with a zero gradient) for K = 1.
    """
    _check_logits(a, "a")
    K = a.shape[0]
    # â_k = a_k / ||a_k||  (the eps keeps a zero row finite, as torch.cosine_similarity does)
    unit = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)  # (K, N)
    # C_{jk} = cos(a_j, a_k)
    cos = unit @ unit.T  # (K, K)
    pairs = torch.triu_indices(K, K, offset=1, device=a.device)  # (2, K(K-1)/2)
    if pairs.shape[1] == 0:
        return a.sum() * 0.0
    # mean over j < k of C_{jk}
    return cos[pairs[0], pairs[1]].mean()


def acmil_loss(branch_logits: Tensor, slide_logits: Tensor, a: Tensor, y: Tensor | int) -> Tensor:
    r"""ℒ = ℒ_div(a) + mean_k CE(branch_logits_k, y) + CE(slide_logits, y)  (ℒ_branch only if K > 1).

    Args:
        branch_logits: class logits of each branch (K, C).
        slide_logits: class logits of the slide classifier (C,).
        a: the (masked) attention weights (K, N) that made them.
        y: the bag's label, an int in [0, C) or a 0-d integer tensor.

    Returns:
        a scalar. K = 1 gives CE(slide_logits, y) alone, as in the reference training script.
    """
    require_tensor(branch_logits, "branch_logits", ndim=2, floating=True, shape="(K, C)")
    require_tensor(slide_logits, "slide_logits", ndim=1, floating=True, shape="(C,)")
    _check_logits(a, "a")
    K, C = branch_logits.shape
    if slide_logits.shape[0] != C or a.shape[0] != K:
        raise ValueError(
            f"branch_logits (K, C), slide_logits (C,) and a (K, N) disagree: {tuple(branch_logits.shape)}, "
            f"{tuple(slide_logits.shape)}, {tuple(a.shape)}"
        )
    y = require_int(y, "y", minimum=0)
    if y >= C:
        raise ValueError(f"y must be a class index in [0, C={C}), got {y}")
    target = torch.full((K,), y, dtype=torch.long, device=branch_logits.device)
    # ℒ_slide = CE(slide, y)
    loss = nn.functional.cross_entropy(slide_logits[None], target[:1])
    if K > 1:
        # ℒ_branch = mean_k CE(branch_k, y) ;  ℒ_div = mean_{j<k} cos(a_j, a_k)
        loss = loss + nn.functional.cross_entropy(branch_logits, target) + diversity_loss(a)
    return loss


def top_k_attention_mass(a: Tensor, k: int = 10) -> Tensor:
    r"""The attention mass on each branch's k most attended instances (the paper's diagnostic).

    Args:
        a: attention weights (K, N) or (N,).
        k: how many instances (min(k, N) are used).

    Returns:
        (K,) (or a scalar for 1-D input): Σ of the k largest weights; near 1 = concentrated.
    """
    require_tensor(a, "a", ndim=(1, 2), floating=True, shape="(K, N) or (N,)")
    k = require_int(k, "k", minimum=1)
    return torch.topk(a, min(k, a.shape[-1]), dim=-1).values.sum(dim=-1)


@dataclass
class ACMILOutput:
    """What :class:`ACMIL` returns for one bag (K branches, C classes, N instances)."""

    branch_logits: Tensor  # (K, C)
    slide_logits: Tensor  # (C,)
    attention: Tensor  # (K, N) the (masked, in training) attention a
    logits: Tensor  # (K, N) the (masked, in training) attention logits A


class ACMIL(nn.Module):
    """Feature reduction, gated multi-branch attention, K branch classifiers and a slide classifier.

    ``ACMIL(L_in, L, D, K=1, k_top=0, p=0.0)`` is ABMIL; the paper's defaults are K = 5,
    k_top = 10, p = 0.6. Masking happens only in ``train()`` mode, drawn from ``generator``.
    """

    def __init__(
        self, L_in: int, L: int, D: int, n_classes: int = 2, K: int = 5, k_top: int = 10, p: float = 0.6
    ):
        super().__init__()
        L_in, L, D = (require_int(v, n, minimum=1) for v, n in ((L_in, "L_in"), (L, "L"), (D, "D")))
        n_classes = require_int(n_classes, "n_classes", minimum=2)
        self.K = require_int(K, "K", minimum=1)
        self.k_top = require_int(k_top, "k_top", minimum=0)
        self.p = check_scale(p, "p", allow_zero=True)
        if self.p > 1:
            raise ValueError(f"p must be in [0, 1], got {self.p}")
        # h = ReLU(W_red x)  (no bias, as in the reference code)
        self.reduce = nn.Linear(L_in, L, bias=False)
        self.V, self.U, self.W = nn.Linear(L, D), nn.Linear(L, D), nn.Linear(D, self.K)
        self.branch_classifiers = nn.ModuleList(nn.Linear(L, n_classes) for _ in range(self.K))
        self.slide_classifier = nn.Linear(L, n_classes)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> ACMILOutput:
        """x: one bag (N, L_in) -> :class:`ACMILOutput`."""
        require_tensor(x, "x", ndim=2, floating=True, shape="(N, L_in)")
        if x.shape[1] != self.reduce.in_features:
            raise ValueError(f"x must have shape (N, L_in={self.reduce.in_features}), got {tuple(x.shape)}")
        # h_i = ReLU(W_red x_i)
        h = torch.relu(self.reduce(x))  # (N, L)
        V, U, W = self.V, self.U, self.W
        logits = gated_attention_logits(h, V.weight, U.weight, W.weight, V.bias, U.bias, W.bias)  # (K, N)
        if self.k_top > 0 and self.p > 0:
            logits = stkim_mask(logits, self.k_top, self.p, generator, training=self.training)
        a, f, f_slide = multi_branch_pool(h, logits)
        branch = torch.stack([cls(f[k]) for k, cls in enumerate(self.branch_classifiers)])  # (K, C)
        return ACMILOutput(branch, self.slide_classifier(f_slide), a, logits)
