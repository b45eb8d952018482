r"""Chapter 13 · Attention sinks: detecting sink tokens and redistributing their attention (VAR).

From chapter 00's notation (S = Q K^T / sqrt(d), A = softmax(S) over the keys, out = Σ_h A_h V_h
W_O^h), with the keys split into text and an image span I:

1. **Sink tokens** are found on the residual stream x_t entering a layer (the block's input, not
   the attention's LayerNorm output), normalised without a learned weight:
       RMSNorm(x) = x / sqrt(mean_d x_d² + ε),   MA(x_t) = max_{d ∈ D_sink} |RMSNorm(x_t)_d|,
       t is a sink  ⇔  MA(x_t) > χ_MA.
   D_sink is a property of the model (its massive-activation dimensions). Since
   |RMSNorm(x)_d| ≤ sqrt(D), χ_MA must be below sqrt(D): χ_MA = 20 suits D = 4096, not D = 64.
   Visual sinks are the sinks inside I, text sinks the others (BOS, say).
2. **Image-centric heads**, per head and query row of the post-softmax A:
       VR = Σ_{j∈I} A_qj ≥ χ_VR   and   SR = Σ_{j∈I, sink} A_qj / VR ≤ χ_SR.
3. **Redistribution (VAR)** on the selected rows: every sink keeps a fraction α of its weight and
   the rest, the budget (1 - α) Σ_{j sink} A_qj, goes to the non-sink image tokens in proportion to
   their weight:  A'_qj = A_qj + budget · A_qj / Σ_{j'∈I∖sinks} A_qj'.  Then out = A' V W_O.

Rows keep their sums, so A' is still a distribution; α = 1 is the identity.

Names: the thresholds χ_MA, χ_VR, χ_SR and the kept fraction α are the paper's τ, summ, ρ and p
(the book keeps τ for the score scale, ρ for a magnitude, p_i for a position); the arguments keep
the official code's names ``tau``, ``summ``, ``rho`` and ``p``.

How it plugs in: VAR edits the weights after the softmax and before they multiply the values,
which is :class:`~attnbook.attention.MultiHeadAttention`'s ``weights_transform`` point.
:class:`VARWeights` is that transform; it holds the sink mask of the current call. Sinks are
detected on the block's input, which the attention layer does not see: :func:`apply_var` reads
it with a forward pre-hook on each block of a :class:`~attnbook.models.TinyTransformer`, sets the
mask before the attention runs, and restores each layer's previous transform afterwards. The
chapter's experiment (the toy's training recipe and its scores) is
:mod:`attnbook.mechanisms.attention_sinks_experiment`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..masks import query_positions
from ..validate import require_int, require_tensor

__all__ = [
    "rms_normalise",
    "sink_scores",
    "sink_mask",
    "image_centric",
    "redistribute",
    "grouped_var_output",
    "mean_replace_values",
    "VARWeights",
    "apply_var",
]


def _number(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high) or value != value:
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def _image_keys(img: object, M: int, device) -> Tensor:
    """(M,) bool, True on the image span ``img`` (a slice of key positions with step 1)."""
    if not isinstance(img, slice) or img.step not in (None, 1):
        raise TypeError(f"img must be a slice of key positions with step 1, e.g. slice(1, 17), got {img!r}")
    start, stop, _ = img.indices(M)
    keys = torch.arange(M, device=device)
    return (keys >= start) & (keys < stop)


def _weights(weights: object, name: str = "weights") -> Tensor:
    return require_tensor(weights, name, ndim=4, floating=True, shape="(B, H, N, M)")


def _key_mask(mask: object, name: str, B: int, M: int) -> Tensor:
    mask = require_tensor(mask, name, ndim=2, shape=f"(B={B}, M={M})")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor (True = sink), got {mask.dtype}")
    if tuple(mask.shape) != (B, M):
        raise ValueError(f"{name} must have shape (B={B}, M={M}), got {tuple(mask.shape)}")
    return mask


def rms_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x²) + eps) over the last axis, with no learned weight.

    Args:
        x: (..., D) floating; float16/bfloat16 is computed in float32.
    Returns:
        (..., D) in float32 (float64 for float64 input).
    """
    require_tensor(x, "x", min_ndim=1, floating=True, shape="(..., D)")
    eps = _number(eps, "eps", 0.0)
    x = x if x.dtype == torch.float64 else x.float()
    # RMSNorm(x) = x / sqrt(mean_d x_d² + ε)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def sink_scores(h: Tensor, dims: Sequence[int] | Tensor, eps: float = 1e-6) -> Tensor:
    """MA(h_t) = max over the sink dimensions of |RMSNorm(h_t)|.

    Args:
        h: (B, N, D) a layer's input hidden states (the residual stream).
        dims: the sink dimensions D_sink, ints in [0, D) (a list or a 1-D integer tensor).
    Returns:
        (B, N) MA in float32 (float64 for float64 input); each entry ≤ sqrt(D).
    """
    require_tensor(h, "h", ndim=3, floating=True, shape="(B, N, D)")
    D = h.shape[-1]
    dims = torch.as_tensor(dims, device=h.device)
    if dims.ndim != 1 or dims.numel() == 0 or dims.is_floating_point() or dims.dtype == torch.bool:
        raise TypeError(f"dims must be a non-empty 1-D list of integer dimensions, got {dims.tolist()}")
    if dims.min() < 0 or dims.max() >= D:
        raise ValueError(f"dims must lie in [0, D={D}), got {dims.tolist()}")
    # MA = max_{d ∈ D_sink} |RMSNorm(h)_d|
    return rms_normalise(h, eps)[..., dims.long()].abs().amax(dim=-1)


def sink_mask(h: Tensor, dims: Sequence[int] | Tensor, tau: float, eps: float = 1e-6) -> Tensor:
    """Sink tokens: MA(h_t) > χ_MA (strictly), on normalised activations.

    Args:
        h: (B, N, D) a layer's input hidden states; dims: D_sink; tau: the threshold (< sqrt(D)).
    Returns:
        (B, N) bool, True on sink tokens.
    """
    tau = _number(tau, "tau", 0.0)
    # t is a sink ⇔ MA(h_t) > χ_MA
    return sink_scores(h, dims, eps) > tau


def image_centric(weights: Tensor, img: slice, sink: Tensor, rho: float = 0.5, summ: float = 0.2) -> Tensor:
    """The (head, query) rows that look at the image but not mostly at its sinks.

    Selected ⇔ VR = Σ_{j∈I} A_qj ≥ summ and SR = Σ_{j∈I, sink} A_qj / VR ≤ χ_SR (SR = 0 when VR = 0).
    As in the official code, a sequence with no visual sink selects nothing.

    Args:
        weights: (B, H, N, M) post-softmax attention; img: the image span of the M keys.
        sink: (B, M) bool sink tokens (only those inside img count here).
        rho: the largest visual-sink share; summ: the least visual attention ratio.
    Returns:
        (B, H, N) bool.
    """
    A = _weights(weights)
    B, H, N, M = A.shape
    sink = _key_mask(sink, "sink", B, M)
    rho, summ = _number(rho, "rho", 0.0, 1.0), _number(summ, "summ", 0.0, 1.0)
    in_img = _image_keys(img, M, A.device)  # (M,)
    vis_sink = sink & in_img  # (B, M)
    # VR = Σ_{j∈I} A_qj
    nu = (A * in_img).sum(-1)  # (B, H, N)
    sink_mass = (A * vis_sink[:, None, None, :]).sum(-1)  # (B, H, N)
    # SR = Σ_{j∈I∩sinks} A_qj / VR, defined as 0 where VR = 0
    share = torch.where(
        nu > 0, sink_mass / torch.where(nu > 0, nu, torch.ones_like(nu)), torch.zeros_like(nu)
    )
    has_visual_sink = vis_sink.any(-1)[:, None, None]  # (B, 1, 1)
    return (nu >= summ) & (share <= rho) & has_visual_sink


def redistribute(weights: Tensor, sink: Tensor, img: slice, sel: Tensor, p: float = 0.6) -> Tensor:
    """VAR: move (1 - p) of the sink mass onto the non-sink image tokens of the selected rows.

    A'_qj = p A_qj on every sink j (text and visual); budget = (1 - p) Σ_{j sink} A_qj;
    A'_qj = A_qj + budget · A_qj / m_ns on the non-sink image tokens, m_ns = Σ_{j∈I∖sinks} A_qj;
    other tokens and unselected rows unchanged. Rows with m_ns = 0 (an all-sink image, or no
    weight on its other tokens) have nowhere to send the budget and stay unchanged.

    Args:
        weights: (B, H, N, M) post-softmax attention.
        sink: (B, M) bool sink tokens; img: the image span of the M keys.
        sel: (B, H, N) bool rows to edit; p: the fraction of its weight a sink keeps, in [0, 1].
    Returns:
        (B, H, N, M) A', same dtype and device; each row sums as before.
    """
    A = _weights(weights)
    B, H, N, M = A.shape
    sink = _key_mask(sink, "sink", B, M)
    require_tensor(sel, "sel", ndim=3, shape=f"(B={B}, H={H}, N={N})")
    if sel.dtype != torch.bool or tuple(sel.shape) != (B, H, N):
        raise ValueError(
            f"sel must be a boolean (B={B}, H={H}, N={N}) tensor, got {sel.dtype} {tuple(sel.shape)}"
        )
    p = _number(p, "p", 0.0, 1.0)
    s = sink[:, None, None, :]  # (B, 1, 1, M)
    ns_img = (_image_keys(img, M, A.device) & ~sink)[:, None, None, :]  # (B, 1, 1, M)
    # budget = (1 - p) Σ_{j sink} A_qj
    budget = (1 - p) * (A * s).sum(-1, keepdim=True)  # (B, H, N, 1)
    # m_ns = Σ_{j ∈ I∖sinks} A_qj
    m_ns = (A * ns_img).sum(-1, keepdim=True)  # (B, H, N, 1)
    safe = torch.where(m_ns > 0, m_ns, torch.ones_like(m_ns))
    # A'_qj = p A_qj (sinks);  A_qj + budget · A_qj / m_ns (non-sink image);  A_qj (others)
    edited = torch.where(s, p * A, A) + torch.where(ns_img, budget * A / safe, torch.zeros_like(A))
    keep = ~(sel[..., None] & (m_ns > 0))  # (B, H, N, 1)
    return torch.where(keep, A, edited)


def grouped_var_output(
    weights: Tensor, v: Tensor, sink: Tensor, img: slice, sel: Tensor, p: float = 0.6
) -> Tensor:
    """A' V without forming A': out = O_other + p O_sink + (1 + budget / m_ns) O_ns on selected rows.

    O_g = Σ_{j∈g} A_qj v_j over three key groups (sinks, non-sink image, the rest): one pass
    that accumulates three partial outputs and masses, as a fused kernel would.

    Args:
        weights: (B, H, N, M); v: (B, H, M, d); sink (B, M), img, sel (B, H, N), p as in redistribute.
    Returns:
        (B, H, N, d), equal to redistribute(weights, ...) @ v.
    """
    A = _weights(weights)
    B, H, N, M = A.shape
    require_tensor(v, "v", ndim=4, floating=True, shape=f"(B={B}, H={H}, M={M}, d)")
    if tuple(v.shape[:3]) != (B, H, M):
        raise ValueError(f"v must have shape (B={B}, H={H}, M={M}, d), got {tuple(v.shape)}")
    sink = _key_mask(sink, "sink", B, M)
    p = _number(p, "p", 0.0, 1.0)
    g_sink = sink[:, None, None, :].to(A.dtype)  # (B, 1, 1, M)
    g_ns = (_image_keys(img, M, A.device) & ~sink)[:, None, None, :].to(A.dtype)
    # O_g = (A ⊙ 1_g) V for each group
    o_sink, o_ns = (A * g_sink) @ v, (A * g_ns) @ v  # (B, H, N, d)
    o_other = A @ v - o_sink - o_ns
    m_sink, m_ns = (A * g_sink).sum(-1, keepdim=True), (A * g_ns).sum(-1, keepdim=True)  # (B, H, N, 1)
    active = sel[..., None] & (m_ns > 0)
    c_sink = torch.where(active, torch.full_like(m_sink, p), torch.ones_like(m_sink))
    # 1 + budget / m_ns with budget = (1 - p) m_sink
    c_ns = torch.where(active, 1 + (1 - p) * m_sink / torch.where(m_ns > 0, m_ns, torch.ones_like(m_ns)), 1.0)
    return o_other + c_sink * o_sink + c_ns * o_ns


def mean_replace_values(v: Tensor, tokens: Tensor) -> Tensor:
    """Replace the value vectors of the chosen tokens by their mean over the whole batch (per head).

    Use as a ``value_transform`` of MultiHeadAttention to test whether tokens that receive
    attention carry information: a query still receives Σ A v̄ from them, but v̄ is the same for
    every sequence. (A mean over one sequence's tokens would keep what they have in common: the
    mean of two object tokens still names the pair.)

    Args:
        v: (B, H, M, d) values; tokens: (B, M) bool, True on the tokens to replace.
    Returns:
        (B, H, M, d); unchanged when no token is chosen.
    """
    require_tensor(v, "v", ndim=4, floating=True, shape="(B, H, M, d)")
    B, _, M, _ = v.shape
    t = _key_mask(tokens, "tokens", B, M)[:, None, :, None]  # (B, 1, M, 1)
    count = t.sum((0, 2), keepdim=True).clamp(min=1)  # (1, 1, 1, 1)
    # v̄_h = Σ_{b, j chosen} v_bhj / |chosen|
    mean = (v * t).sum((0, 2), keepdim=True) / count  # (1, H, 1, d)
    return torch.where(t, mean, v)


class VARWeights(nn.Module):
    """VAR as a ``weights_transform`` of MultiHeadAttention: A (B, H, N, M) -> A'.

    Install it as ``attn.weights_transform``; the core then computes
    out = Σ_h g_h (A'_h V_h) W_O^h + b_O. It redistributes only while ``sink`` (B, M) is set
    (otherwise it returns A itself), and only on the image-centric query rows after the image
    span. ``record`` keeps the last call's weights, A', selection and sinks for inspection.
    """

    def __init__(self, img: slice, rho: float = 0.5, summ: float = 0.2, p: float = 0.6):
        super().__init__()
        _image_keys(img, 1, None)  # a slice with step 1, or a named error now
        self.img = img
        self.rho, self.summ = _number(rho, "rho", 0.0, 1.0), _number(summ, "summ", 0.0, 1.0)
        self.p = _number(p, "p", 0.0, 1.0)
        self.sink: Tensor | None = None
        self.record: dict[str, Tensor] = {}

    def forward(self, weights: Tensor) -> Tensor:
        """A' (B, H, N, M): :func:`redistribute` on the selected rows; A itself when no sink is set."""
        self.record = {}
        if self.sink is None:
            return weights
        A = _weights(weights)
        N, M = A.shape[-2:]
        sel = image_centric(A, self.img, self.sink, self.rho, self.summ)  # (B, H, N)
        _, stop, _ = self.img.indices(M)
        # only the text after the image: query positions p_i = i + M - N ≥ end of the image
        sel = sel & (query_positions(N, M, device=A.device) >= stop)
        A2 = redistribute(A, self.sink, self.img, sel, self.p)
        self.record = {"weights": A, "redistributed": A2, "selected": sel, "sink": self.sink}
        return A2


def _set_weights_transform(layer: nn.Module, transform) -> None:
    """layer.weights_transform = transform, whether the old or new value is a module or a function."""
    delattr(layer, "weights_transform")  # nn.Module keeps submodules and plain attributes apart
    layer.weights_transform = transform


def apply_var(
    model: nn.Module,
    inputs: Tensor,
    *,
    dims: Sequence[int] | Tensor,
    img: slice,
    tau: float,
    rho: float = 0.5,
    summ: float = 0.2,
    p: float = 0.6,
    first_layer: int = 2,
    skip_last: bool = True,
    eps: float = 1e-6,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Run a TinyTransformer with VAR: sinks found on each block's input, weights redistributed.

    Each edited layer gets a :class:`VARWeights` as its ``weights_transform`` (replacing any it
    had) for this one call; a forward pre-hook on its block sets the sinks from the block's input.
    Layers before ``first_layer`` (2 in the official code) are left alone; so is the last layer
    when ``skip_last``. Every layer's previous ``weights_transform`` is restored afterwards.

    Args:
        model: a TinyTransformer whose blocks hold MultiHeadAttention layers.
        inputs: what the model takes, e.g. (B, N) token ids.
        dims, tau, eps: sink detection (:func:`sink_mask`); img, rho, summ, p: as in VAR.
    Returns:
        logits (B, N, n_out) and, per layer, a record: "phi" (B, N) and, where VAR ran, "sink",
        "weights", "redistributed" and "selected".
    """
    blocks = list(model.blocks)
    first_layer = require_int(first_layer, "first_layer", minimum=0)
    tau = _number(tau, "tau", 0.0)
    records: list[dict[str, Tensor]] = [{} for _ in blocks]
    transforms: dict[int, VARWeights] = {
        layer: VARWeights(img, rho, summ, p)
        for layer in range(len(blocks))
        if layer >= first_layer and not (skip_last and layer == len(blocks) - 1)
    }

    def input_reader(layer: int):
        def read_input(module, args):
            # MA on the block's input x_l (the residual stream), sinks where MA > χ_MA,
            # set before the block's attention runs
            phi = sink_scores(args[0], dims, eps)  # (B, N)
            records[layer]["phi"] = phi
            if layer in transforms:
                transforms[layer].sink = phi > tau

        return read_input

    handles = [block.register_forward_pre_hook(input_reader(layer)) for layer, block in enumerate(blocks)]
    saved = {layer: blocks[layer].attn.weights_transform for layer in transforms}
    try:
        for layer, transform in transforms.items():
            _set_weights_transform(blocks[layer].attn, transform)
        logits = model(inputs)
    finally:
        for layer, previous in saved.items():
            _set_weights_transform(blocks[layer].attn, previous)
        for handle in handles:
            handle.remove()
    for layer, transform in transforms.items():
        records[layer].update(transform.record)
    return logits, records
