r"""Gaussian adaptive attention (GAAM): a learned Gaussian over each element's standardised value.

Derivation from softmax attention (chapter 03 has the full text; symbols as in the book's
notation table). Attention pooling over an axis of length M gives weights a_j = softmax_j(s_j)
and the output Σ_j a_j v_j. GAAM
(Ioannides, Chadha, Elkins 2024) changes three things, and keeps the softmax:

1. **The logit is a Gaussian log-density of the element's own standardised value.** For one
   "column" x_1..x_M along the axis (every other index held fixed), with the column's mean
   x̄ and unbiased variance σ_x² (plus ε),

       ζ_j = (x_j - x̄) / σ_x,      s_j = Σ_r -(ζ_j - b_r / σ_x)² / (2 σ_r²)

   for G Gaussians r = 1..G with learned offsets b_r (in the input's raw units; the argument
   ``delta``) and widths σ_r (the argument ``c``). Expanding one square,
   -(ζ - μ)²/(2σ²) = (μ/σ²)·ζ - ζ²/(2σ²) + const with μ = b_r/σ_x: a dot product of the
   scalar "key" ζ with a learned "query" μ/σ², minus a penalty on the key's size. There are
   no Q/K projections and no query tokens: it is **not** query-key attention.
2. **Normalisation along the axis.** The code divides a product of Gaussian pdfs by its sum;
   the 1/sqrt(2π σ_r²) factors cancel, so this is exactly softmax(s) along the axis. We
   compute it in log space (the code's pdf product underflows for small σ_r).
3. **Gating instead of mixing.** The output keeps every position: out_j = x_j · a_j, and the
   block adds a residual, x + out. Summing the gated output over the axis gives back
   attention pooling with v_j = x_j.

**Heads** split the *normalisation axis* into H contiguous chunks (the last one takes the
remainder); each head has its own (b_r, σ_r) and its own statistics. MHA instead splits the
feature width D.

**Product vs mixture.** The current reference code multiplies the G Gaussians (the sum of
logits above). A product of Gaussians in z is one Gaussian (see :func:`collapse_product`), so
G > 1 adds nothing in that form. An earlier version of the reference code used a mixture,
a_j ∝ Σ_r α_r exp(-(ζ_j - b_r/σ_x)²/(2σ_r²)) with α = softmax(learned logits), which can be
multi-modal; ``mixture_logits`` selects that form.

**Invariances.** The weights do not change under a per-column shift x → x + κ (any b_r), and
under a rescale x → κx (κ > 0) only when b_r = 0, because b_r is in raw units and enters as
b_r/σ_x.

**Why this module stands alone.** GAAM is a different computation from
:class:`attnbook.attention.MultiHeadAttention`: no queries, keys or projections, a score that
each element computes from its own standardised value, and a gate instead of a weighted sum;
only the core's softmax (:func:`attnbook.attention.stable_softmax`) and mask convention
(:func:`attnbook.masks.apply_mask`) are shared.

**Masks** are boolean and shaped like x (or broadcastable to it): True marks a real element,
False a padding element that takes no part in the statistics and gets weight 0. For x of shape
(B, M, D) with ``lengths[b]`` real elements, ``padding_mask(lengths, M)[:, :, None]``
(:func:`attnbook.masks.padding_mask`) is such a mask.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from ..attention import stable_softmax
from ..masks import apply_mask
from ..validate import check_mask, check_scale, require_int, require_same_dtype_device, require_tensor

__all__ = [
    "axis_statistics",
    "gaussian_logits",
    "gaussian_weights",
    "head_chunks",
    "multi_head_gaussian_attention",
    "collapse_product",
    "importance_factor",
    "GaussianAdaptiveAttention",
]


def _check_axis(
    x: Tensor, axis: int, mask: Tensor | None = None, name: str = "x", axis_name: str = "axis"
) -> int:
    """x: a floating tensor with the axis ``axis``; mask: None or boolean, broadcastable to x."""
    require_tensor(x, name, min_ndim=1, floating=True, shape=f"(..., n, ...) with n along {axis_name}")
    axis = require_int(axis, axis_name)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{axis_name}={axis} is out of range for {name} of shape {tuple(x.shape)}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(
                f"mask must be boolean (True = real element, False = padding), got {got}; "
                "convert a 0/1 mask with mask.bool()"
            )
        check_mask(mask, x.shape, "mask")  # broadcastable to x
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
    return axis % x.ndim


def _check_params(x: Tensor | None, shape: str, **params: Tensor | None) -> None:
    """The Gaussians' parameters (None skipped): each ``shape`` ((G,) or (H, G)), x's dtype and device."""
    present = {name: t for name, t in params.items() if t is not None}
    for name, t in present.items():
        require_tensor(t, name, ndim=1 if shape == "(G,)" else 2, floating=True, shape=shape)
    (first, ref), *rest = present.items()
    for name, t in rest:
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} must have {first}'s shape {shape}, {tuple(ref.shape)}; got {tuple(t.shape)}"
            )
    require_same_dtype_device(**present, x=x)


def axis_statistics(
    x: Tensor, axis: int = 1, eps: float = 1e-8, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Mean x̄ and scale σ_x = sqrt(unbiased variance + eps) along ``axis`` (kept as size 1).

    The unbiased variance divides by (count - 1); a column with a single element (or a
    single unmasked element) gets variance 0 instead of torch's NaN, so σ_x = sqrt(eps).
    ``mask`` (bool, broadcastable to x, True = real element) leaves padding out of both.
    """
    axis = _check_axis(x, axis, mask)
    eps = 0.0 if isinstance(eps, numbers.Real) and eps == 0 else check_scale(eps, "eps")  # ε >= 0
    if mask is None:
        count = torch.full_like(x.narrow(axis, 0, 1), float(x.shape[axis]))
        # x̄ = (1/M) Σ_j x_j
        mean = x.mean(dim=axis, keepdim=True)
        squares = (x - mean).square()
    else:
        mask = mask.expand_as(x)
        count = mask.sum(dim=axis, keepdim=True).to(x.dtype)
        mean = torch.where(mask, x, 0).sum(dim=axis, keepdim=True) / count.clamp(min=1)
        squares = torch.where(mask, (x - mean).square(), 0)
    # σ_x² = Σ_j (x_j - x̄)² / (M - 1) + ε, with M - 1 clamped to 1 so that M = 1 gives σ_x² = ε
    var = squares.sum(dim=axis, keepdim=True) / (count - 1).clamp(min=1)
    return mean, torch.sqrt(var + eps)


def gaussian_logits(
    x: Tensor,
    delta: Tensor,
    c: Tensor,
    *,
    axis: int = 1,
    eps: float = 1e-8,
    mixture_logits: Tensor | None = None,
    standardize: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The scores s of one head, same shape as x (softmax along ``axis`` gives a).

    Product form (``mixture_logits=None``):  s_j = Σ_r -((x_j - x̄ - b_r) / σ_x)² / (2 σ_r²).
    Mixture form:  s_j = log Σ_r α_r exp(-((x_j - x̄ - b_r) / σ_x)² / (2 σ_r²)),
    with α = softmax(mixture_logits).
    ``standardize=False`` uses x̄ = 0, σ_x = 1 (a Gaussian in raw units: the book's ablation).

    Args:
        x: any shape; the axis ``axis`` is the one the weights are normalised over.
        delta, c: (G,) offsets b_r (raw units) and widths σ_r of the G Gaussians, in x's dtype.
        mixture_logits: (G,) for the mixture form.
        mask: boolean, broadcastable to x; True = real element, False = padding (weight 0).
    """
    axis = _check_axis(x, axis, mask)
    _check_params(x, "(G,)", delta=delta, c=c, mixture_logits=mixture_logits)
    if standardize:
        mean, scale = axis_statistics(x, axis, eps, mask)
    else:
        like = dict(dtype=x.dtype, device=x.device)
        mean, scale = torch.zeros((), **like), torch.ones((), **like)
    G = delta.shape[0]
    delta = delta.view(G, *([1] * x.ndim))
    c = c.view(G, *([1] * x.ndim))
    # y_r = (x - (x̄ + b_r)) / σ_x  — the offset is added to the mean BEFORE dividing by σ_x
    y = (x - (mean + delta)) / scale  # (G, *x.shape)
    log_kernel = -y.square() / (2 * c.square())  # -y_r² / (2 σ_r²), (G, *x.shape)
    if mixture_logits is None:
        # product of Gaussians: the log-densities add (their 1/sqrt(2π σ_r²) factors cancel later)
        logits = log_kernel.sum(dim=0)
    else:
        # mixture: log Σ_r α_r exp(-y_r² / (2 σ_r²))
        log_w = torch.log_softmax(mixture_logits, dim=0).view(G, *([1] * x.ndim))
        logits = torch.logsumexp(log_w + log_kernel, dim=0)
    # padding: s_j = -inf where the mask is False
    return apply_mask(logits, mask)


def gaussian_weights(x: Tensor, delta: Tensor, c: Tensor, *, axis: int = 1, **kwargs) -> Tensor:
    r"""One head's weights a = softmax(ℓ) along ``axis``: same shape as x, each column sums to 1.

    Keyword arguments as :func:`gaussian_logits` (eps, mixture_logits, standardize, mask);
    masked elements get weight 0, a fully masked column gets all zeros.
    """
    # a_j = exp(s_j) / Σ_j' exp(s_j')  ==  Π_r N(y_r,j; 0, σ_r²) / Σ_j' Π_r N(y_r,j'; 0, σ_r²)
    return stable_softmax(gaussian_logits(x, delta, c, axis=axis, **kwargs), dim=_check_axis(x, axis))


def head_chunks(n: int, H: int) -> list[tuple[int, int]]:
    """(start, length) of each head's contiguous chunk of an axis of length n.

    Every head gets n // H elements and the last one also takes the remainder, as the
    reference code does (e.g. n=10, H=4 -> lengths 2, 2, 2, 4). Needs n >= H.
    """
    n, H = require_int(n, "n", minimum=1), require_int(H, "H", minimum=1)
    if n < H:
        raise ValueError(f"the axis length n={n} must be at least the number of heads H={H}")
    size = n // H
    return [(h * size, size if h < H - 1 else n - h * size) for h in range(H)]


def multi_head_gaussian_attention(
    x: Tensor,
    deltas: Tensor,
    cs: Tensor,
    *,
    axis: int = 1,
    eps: float = 1e-8,
    mixture_logits: Tensor | None = None,
    standardize: bool = True,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Multi-head GAAM without the residual: (x ⊙ a, a), both of x's shape.

    Head h owns the h-th contiguous chunk of ``axis`` (:func:`head_chunks`), computes its
    own mean and variance there and normalises its weights there (each chunk sums to 1).

    Args:
        x: e.g. (B, M, D) with ``axis=1``: M elements per column, D columns.
        deltas, cs: (H, G) per-head offsets and scales; ``mixture_logits`` (H, G) for the
            mixture form.
        mask: optional bool broadcastable to x, True = real element.
    """
    axis = _check_axis(x, axis, mask)
    _check_params(x, "(H, G)", deltas=deltas, cs=cs, mixture_logits=mixture_logits)
    mask = None if mask is None else mask.expand_as(x)
    weights = []
    for h, (start, length) in enumerate(head_chunks(x.shape[axis], deltas.shape[0])):
        chunk = x.narrow(axis, start, length)  # (..., M_h, ...)
        weights.append(
            gaussian_weights(
                chunk,
                deltas[h],
                cs[h],
                axis=axis,
                eps=eps,
                standardize=standardize,
                mixture_logits=None if mixture_logits is None else mixture_logits[h],
                mask=None if mask is None else mask.narrow(axis, start, length),
            )
        )
    a = torch.cat(weights, dim=axis)  # (..., M, ...), each head's chunk sums to 1
    # gating, not mixing: out_j = x_j · a_j
    return x * a, a


def collapse_product(delta: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    r"""The single Gaussian equal to a product of G Gaussians: (b_prod, σ_prod), 0-d tensors.

    Σ_r (ζ - b_r/σ_x)² / σ_r² = (ζ - b_prod/σ_x)² / σ_prod² + const, with
    1 / σ_prod² = Σ_r 1 / σ_r²  (precisions add)  and  b_prod = σ_prod² Σ_r b_r / σ_r²
    (the precision-weighted mean). The constant cancels in the softmax, so GAAM's weights
    with (delta, c) equal those with (b_prod, σ_prod) for every input.
    """
    _check_params(None, "(G,)", delta=delta, c=c)
    precision = (1 / c.square()).sum()
    c_eff_sq = 1 / precision
    return c_eff_sq * (delta / c.square()).sum(), torch.sqrt(c_eff_sq)


def importance_factor(weights: Tensor, sample_axis: int = 0) -> Tensor:
    r"""The book's reading of the paper's Importance Factor: mean weight, min-max scaled to [0, 1].

    IF = (ā - min ā) / (max ā - min ā), with ā the weights averaged over ``sample_axis`` and
    the min and max taken over the whole remaining map (e.g. (S, M, D) -> (M, D)). A constant
    map gives zeros. The paper names the IF but its formula was not available to us.
    """
    sample_axis = _check_axis(weights, sample_axis, name="weights", axis_name="sample_axis")
    mean = weights.mean(dim=sample_axis)
    low, high = mean.min(), mean.max()
    span = high - low
    return torch.where(span > 0, (mean - low) / torch.where(span > 0, span, 1), torch.zeros_like(mean))


class GaussianAdaptiveAttention(nn.Module):
    r"""A multi-head GAAM block: x + x ⊙ a (or just x ⊙ a with ``residual=False``).

    Parameters per head: G offsets b_r (``delta``, init 0) and G widths σ_r (``c``, init
    exp(N(0, 1)), as in the reference code), i.e. 2·H·G scalars; ``mixture=True`` adds G
    mixture logits per head.

    Args:
        n_heads: H, the number of contiguous chunks of the normalisation axis.
        n_gaussians: G.
        axis: the normalisation axis of the input (e.g. 1 for (B, M, D)).
    """

    def __init__(
        self,
        n_heads: int,
        n_gaussians: int = 1,
        *,
        axis: int = 1,
        eps: float = 1e-8,
        residual: bool = True,
        mixture: bool = False,
        standardize: bool = True,
    ):
        super().__init__()
        n_heads = require_int(n_heads, "n_heads", minimum=1)
        n_gaussians = require_int(n_gaussians, "n_gaussians", minimum=1)
        axis = require_int(axis, "axis")
        self.axis, self.eps, self.residual, self.standardize = axis, eps, residual, standardize
        self.delta = nn.Parameter(torch.zeros(n_heads, n_gaussians))
        self.c = nn.Parameter(torch.exp(torch.randn(n_heads, n_gaussians)))
        self.mixture_logits = nn.Parameter(torch.zeros(n_heads, n_gaussians)) if mixture else None

    def forward(self, x: Tensor, *, mask: Tensor | None = None, return_weights: bool = False):
        """x: any shape with the normalisation axis ``self.axis``; returns x's shape (+ weights)."""
        gated, a = multi_head_gaussian_attention(
            x,
            self.delta,
            self.c,
            axis=self.axis,
            eps=self.eps,
            mixture_logits=self.mixture_logits,
            standardize=self.standardize,
            mask=mask,
        )
        out = x + gated if self.residual else gated
        return (out, a) if return_weights else out

    def extra_repr(self) -> str:
        H, G = self.delta.shape
        form = "mixture" if self.mixture_logits is not None else "product"
        return f"heads={H}, gaussians={G}, axis={self.axis}, {form}, residual={self.residual}"
