r"""Chapter 14 · Vision-aware heads: head divergence with and without the image (VHD / VHR).

Chapter 00's sum-over-heads form, at the position t that generates the next token, layer l:

    x_{l+1/2} = x_l + Σ_h o_{lh} W_O^{lh} + b_O,   o_{lh} = Σ_j A_{lh,tj} v_{lh,j} ∈ R^{d_v} (head output)

**Vision-aware head divergence** (He et al., 2025) compares one head's output on two inputs that
differ only by the image: the full prompt (image tokens + text) and the text-only prompt,

    VHD_{lh} = dist( o_{lh}(y_t | y_<t, image, text),  o_{lh}(y_t | y_<t, text) ).

A head whose output does not move when the image goes away does not read the image.
The paper's T-VHD, a token's visual reliance, is the mean of the k largest VHD over all (l, h)
(:func:`token_vhd`; the chapter does not use it).

**Vision-aware head reinforcement** (VHR) is training-free: at each generated token, layer by
layer, it selects the heads of layer l whose VHD is above the layer's median (after dropping
"surge" outliers above mean + std) and multiplies their outputs by g_VHR (the paper's α, the
argument ``alpha`` here) before W_O,

    o_{lh} ← g_{lh} o_{lh},   g_{lh} = g_VHR if selected else 1,

which is the same as scaling W_O's block of rows W_O^{lh} by g_{lh}. The VHD of layer l is
measured on the image branch *after* layers < l were reinforced, so the selection follows the
residual stream it acts on (a one-shot selection from unmodified passes differs once g_VHR ≠ 1).
The scaling plugs into :class:`~attnbook.attention.MultiHeadAttention` as its ``head_transform``;
the divergences are read from ``Intermediates.heads``.

The book's reading, where the paper's text leaves details open:
- dist is the Euclidean norm (``"l2"``) or one minus the cosine similarity (``"cos"``), on the
  head outputs o before W_O (so VHD does not depend on W_O);
- the outlier filter uses mean + std of the layer's H values, std with Bessel's correction
  (torch's default), and the median is over all H heads of the layer; the median test is strict
  and the outlier ceiling inclusive (selected: VHD ≤ mean + std and VHD > median), so with H = 1
  nothing is selected;
- the text-only branch is the unmodified model; only the image branch is reinforced;
- the models here have no cache: each step re-runs the prefix and reinforces the last position
  only (the earlier positions keep the base model's keys and values);
- "without the image" is whatever token sequence the caller passes as ``tokens_txt``: the image
  tokens removed, or (as chapter 14's toy does) replaced by background tokens at the same positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "head_divergence",
    "token_vhd",
    "select_vision_heads",
    "HeadScaling",
    "scaled_heads",
    "vhr_step",
    "vhr_generate",
    "caption_objects",
    "chair_i",
]

METRICS = ("l2", "cos")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are upcast to float32 (a squared distance overflows float16 at 256)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def head_divergence(o_img: Tensor, o_txt: Tensor, metric: str = "l2") -> Tensor:
    r"""VHD: the distance between each head's output with and without the image.

    Args:
        o_img: (..., H, d) head outputs o_h (before W_O) on the prompt with the image.
        o_txt: (..., H, d) the same heads on the text-only prompt; same shape, dtype, device.
        metric: ``"l2"``: ||o_img - o_txt||_2; ``"cos"``: 1 - cos(o_img, o_txt) (a zero vector has
            cosine 0, as in torch.nn.functional.cosine_similarity).
    Returns:
        (..., H) divergences, float32 for float16/bfloat16 inputs, else the inputs' dtype.
    """
    require_tensor(o_img, "o_img", min_ndim=2, floating=True, shape="(..., H, d)")
    require_tensor(o_txt, "o_txt", min_ndim=2, floating=True, shape="(..., H, d)")
    require_same_dtype_device(o_img=o_img, o_txt=o_txt)
    if o_img.shape != o_txt.shape:
        raise ValueError(
            "o_img and o_txt must have one shape (..., H, d), "
            f"got {tuple(o_img.shape)} and {tuple(o_txt.shape)}"
        )
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    a, b = o_img.to(_work_dtype(o_img.dtype)), o_txt.to(_work_dtype(o_txt.dtype))
    if metric == "l2":
        # VHD_h = || o_h(img) - o_h(txt) ||_2
        return (a - b).norm(dim=-1)  # (..., H)
    # VHD_h = 1 - <a, b> / (max(|a|, eps) max(|b|, eps))
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)  # (..., H)


def token_vhd(v: Tensor, k: int) -> Tensor:
    r"""T-VHD: the mean of the k largest VHD of a token over all layers and heads.

    Args:
        v: (..., L, H) VHD of every head of every layer for one generated token.
        k: how many of the L·H values to average, 1 ≤ k ≤ L·H.
    Returns:
        (...) the token's visual reliance, in v's dtype.
    """
    require_tensor(v, "v", min_ndim=2, floating=True, shape="(..., L, H)")
    k = require_int(k, "k", minimum=1)
    if k > v.shape[-1] * v.shape[-2]:
        raise ValueError(f"k={k} exceeds the L·H = {v.shape[-1] * v.shape[-2]} heads of v")
    # T-VHD = (1/k) Σ top_k { VHD_{l,h} }
    return v.flatten(-2).topk(k, dim=-1).values.mean(-1)  # (...)


def select_vision_heads(v: Tensor, outlier_std: float = 1.0) -> Tensor:
    r"""The heads VHR reinforces: per row, not a surge outlier and strictly above the median.

    Args:
        v: (..., H) VHD of the H heads of one layer (the statistics run over the last axis).
        outlier_std: a head is an outlier when VHD > mean + outlier_std · std.
    Returns:
        (..., H) bool: VHD ≤ mean + outlier_std·std  and  VHD > median (std with Bessel's
        correction; with H = 1 nothing is selected).
    """
    require_tensor(v, "v", min_ndim=1, floating=True, shape="(..., H)")
    if not isinstance(outlier_std, (int, float)) or isinstance(outlier_std, bool):
        raise TypeError(f"outlier_std must be a number, got {type(outlier_std).__name__}")
    if v.shape[-1] < 2:
        return torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    w = v.to(_work_dtype(v.dtype))
    # surge outliers: VHD > μ + c σ over the layer's heads
    ceiling = w.mean(-1, keepdim=True) + outlier_std * w.std(-1, keepdim=True)  # (..., 1)
    # the lower median; "> median" selects the same heads as with the mean of the two middle values
    median = w.median(dim=-1, keepdim=True).values  # (..., 1)
    return (w <= ceiling) & (w > median)  # (..., H)


class HeadScaling(nn.Module):
    r"""A ``head_transform`` that multiplies the head outputs of the LAST position by per-head scales.

    o_{h,N-1} ← g_h o_{h,N-1}; the other positions pass unchanged. ``scales`` is (B, H) or None
    (then the layer is the base layer).
    """

    def __init__(self, scales: Tensor | None = None):
        super().__init__()
        self.scales = scales

    def forward(self, z: Tensor) -> Tensor:
        """z (B, H, N, d) -> (B, H, N, d)."""
        if self.scales is None:
            return z
        last = z[:, :, -1:, :] * self.scales.to(z.dtype)[:, :, None, None]  # (B, H, 1, d)
        return torch.cat([z[:, :, :-1, :], last], dim=2)  # (B, H, N, d)


@contextlib.contextmanager
def scaled_heads(model: nn.Module, scales: Tensor) -> Iterator[nn.Module]:
    """Within the block, layer l of ``model`` scales its last-position head outputs by scales[:, l].

    Args:
        model: a TinyTransformer whose blocks' attention is a MultiHeadAttention.
        scales: (B, L, H) one factor per head and layer (1 = unchanged).
    """
    layers = [block.attn for block in model.blocks]
    require_tensor(scales, "scales", ndim=3, floating=True, shape=f"(B, L={len(layers)}, H)")
    if scales.shape[1] != len(layers):
        raise ValueError(f"scales must have shape (B, L={len(layers)}, H), got {tuple(scales.shape)}")
    saved = [layer.head_transform for layer in layers]
    try:
        for l, layer in enumerate(layers):
            layer.head_transform = HeadScaling(scales[:, l])
        yield model
    finally:
        for layer, head_transform in zip(layers, saved):
            layer.head_transform = head_transform


def _embed(model: nn.Module, tokens: Tensor) -> Tensor:
    x = model.embed(tokens)  # (B, N, D)
    if model.pos is not None:
        x = x + model.pos.weight[: tokens.shape[1]]
    return x


class _Reinforce(nn.Module):
    """The ``head_transform`` of one VHR layer: VHD against the text branch, select, scale by g_VHR.

    A module, not a closure: once a layer's ``head_transform`` has held a module, torch accepts
    only a module (or None) in that slot.
    """

    def __init__(self, o_txt: Tensor, alpha: float, metric: str, outlier_std: float, vhds: list, sel: list):
        super().__init__()
        self.o_txt, self.alpha, self.metric, self.outlier_std = o_txt, float(alpha), metric, outlier_std
        self.vhds, self.sel = vhds, sel

    def forward(self, z: Tensor) -> Tensor:
        """z (B, H, N, d) -> (B, H, N, d), the selected heads' last position times g_VHR."""
        # VHD_{l,h} on this layer's (already-reinforced) image branch, at the last position
        v = head_divergence(z[:, :, -1, :], self.o_txt.to(z.dtype), self.metric)  # (B, H)
        keep = select_vision_heads(v, self.outlier_std)  # (B, H)
        self.vhds.append(v)
        self.sel.append(keep)
        # g_{lh} = g_VHR on the selected heads, 1 elsewhere
        scales = torch.where(keep, torch.full_like(v, self.alpha), torch.ones_like(v))  # (B, H)
        return HeadScaling(scales)(z)


def vhr_step(
    model: nn.Module,
    tokens_img: Tensor,
    tokens_txt: Tensor,
    alpha: float = 2.0,
    *,
    metric: str = "l2",
    outlier_std: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""One VHR decoding step, layer by layer: logits of the next token with vision-aware heads reinforced.

    For l = 0 ... L-1: run block l on the text-only branch (base model) and read its last-position
    head outputs; run block l on the image branch with a ``head_transform`` that measures VHD
    against them, selects heads (:func:`select_vision_heads`) and scales them by g_VHR, all at the
    last position. Layer l's VHD thus sees the reinforcements of layers < l.

    Args:
        model: a :class:`~attnbook.models.TinyTransformer` with MultiHeadAttention blocks.
        tokens_img: (B, N1) token ids of the prompt with the image.
        tokens_txt: (B, N2) token ids without the image; the last positions are the same token.
        alpha: the factor g_VHR of the selected heads (1 gives the base model exactly).
        metric, outlier_std: as in :func:`head_divergence` and :func:`select_vision_heads`.
    Returns:
        logits (B, V) at the last position of the image branch, vhd (B, L, H) and selected
        (B, L, H) bool.
    """
    for name, t in (("tokens_img", tokens_img), ("tokens_txt", tokens_txt)):
        require_tensor(t, name, ndim=2, shape="(B, N)")
        if t.is_floating_point():
            raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
    if tokens_img.shape[0] != tokens_txt.shape[0]:
        raise ValueError(
            f"tokens_img and tokens_txt must share B, got {tokens_img.shape[0]} and {tokens_txt.shape[0]}"
        )
    x_img, x_txt = _embed(model, tokens_img), _embed(model, tokens_txt)  # (B, N1, D), (B, N2, D)
    vhds, selections = [], []
    for block in model.blocks:
        x_txt, inter_txt = block(x_txt, return_intermediates=True)
        o_txt = inter_txt.heads[:, :, -1, :]  # (B, H, d)

        reinforce = _Reinforce(o_txt, alpha, metric, outlier_std, vhds, selections)
        saved = block.attn.head_transform
        block.attn.head_transform = reinforce
        try:
            x_img = block(x_img)  # (B, N1, D)
        finally:
            block.attn.head_transform = saved
    logits = model.readout(model.norm(x_img[:, -1, :]))  # (B, V)
    return logits, torch.stack(vhds, 1), torch.stack(selections, 1)


@torch.no_grad()
def vhr_generate(
    model: nn.Module,
    tokens_img: Tensor,
    tokens_txt: Tensor,
    alpha: float = 2.0,
    max_new: int = 5,
    **kwargs,
) -> Tensor:
    """Greedy decoding with :func:`vhr_step`: each chosen token is appended to both branches.

    Args:
        tokens_img, tokens_txt: (B, N1), (B, N2) the two prompts.
        alpha: the reinforcement g_VHR (1: the base model's greedy output).
        max_new: the number of tokens to generate.
    Returns:
        (B, max_new) int64 generated ids (decoding does not stop at an end token).
    """
    max_new = require_int(max_new, "max_new", minimum=1)
    out = []
    for _ in range(max_new):
        logits, _, _ = vhr_step(model, tokens_img, tokens_txt, alpha, **kwargs)
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        tokens_img = torch.cat([tokens_img, nxt], 1)
        tokens_txt = torch.cat([tokens_txt, nxt], 1)
    return torch.cat(out, 1)


def caption_objects(gen: Tensor, vocab) -> Tensor:
    """Object ids of generated caption tokens: name(o) -> o, anything else -> -1, all -1 after [EOS].

    Args:
        gen: (B, T) generated ids of a :class:`~attnbook.tasks.object_captions.CaptionVocab`.
    Returns:
        (B, T) int64 object ids or -1.
    """
    require_tensor(gen, "gen", ndim=2, shape="(B, T)")
    obj = gen - vocab.name(0)  # (B, T)
    is_name = (obj >= 0) & (obj < vocab.n_objects)
    after_eos = (gen == vocab.eos).long().cumsum(1) > 0  # the EOS and everything after it
    return torch.where(is_name & ~after_eos, obj, torch.full_like(obj, -1))


def chair_i(objects: Tensor, present: Tensor) -> float:
    r"""CHAIR_I: the share of mentioned objects that are not in the image, over all captions.

    CHAIR_I = Σ_b |C_b ∖ P_b| / Σ_b |C_b|, with C_b the SET of objects caption b mentions (an object
    named twice counts once) and P_b the objects present in image b; 0 when nothing is mentioned.

    Args:
        objects: (B, T) int64 object ids mentioned by each caption, -1 for tokens that name none.
        present: (B, n_objects) bool, object o is in image b.
    Returns:
        a float in [0, 1].
    """
    require_tensor(objects, "objects", ndim=2, shape="(B, T)")
    require_tensor(present, "present", ndim=2, shape="(B, n_objects)")
    if present.dtype != torch.bool:
        raise TypeError(f"present must be a boolean tensor, got {present.dtype}")
    if objects.is_floating_point():
        raise TypeError(f"objects must hold integer ids, got {objects.dtype}")
    if objects.shape[0] != present.shape[0]:
        raise ValueError(f"objects and present must share B, got {objects.shape[0]} and {present.shape[0]}")
    n_obj = present.shape[1]
    if ((objects < -1) | (objects >= n_obj)).any():
        raise ValueError(f"objects must be -1 or an id in [0, {n_obj}), got values outside")
    # C_b as a (B, n_objects) indicator: scatter the mentions into one extra column for -1
    mentioned = torch.zeros(objects.shape[0], n_obj + 1, dtype=torch.bool, device=objects.device)
    mentioned.scatter_(1, torch.where(objects < 0, n_obj, objects), True)
    mentioned = mentioned[:, :n_obj]  # (B, n_objects)
    total = int(mentioned.sum())
    # Σ_b |C_b ∖ P_b| / Σ_b |C_b|
    return float((mentioned & ~present).sum()) / total if total else 0.0
