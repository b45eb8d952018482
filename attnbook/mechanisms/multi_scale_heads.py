r"""Multi-scale heads (MEDUSA): one shared encoder–decoder body whose heads gate several backbone stages.

MEDUSA (Aboutalebi et al. 2021) replaces several small attention modules, each computing its
gate from the features of one depth, by ONE self-attention body with several heads, each head
feeding a different scale of the main network. The architecture's source is not public (the
released COVIDNet-CXR-3 checkpoint comes with pre-processing and evaluation code only), so the
equations below are this book's reading of that one sentence, not the paper's code.

Derivation (chapter 09), from chapter 00's multi-head attention, one change at a time:

    MHA:     shared input X  ->  heads h = 1..H, each its own projections  ->  outputs combined
    MEDUSA:  shared body     ->  heads h = 1..H, each a light projection    ->  each gates one stage

(i)   the shared part is an encoder–decoder over the image (a small U-Net here): its
      bottleneck sees the whole image, so every head reads global context;
(ii)  head h is a 1×1 convolution of the decoder map E_h (B, D^E_h, n_y, n_x) at its own scale,
          g_h = sigmoid(Σ_c w_{h,c} E_{h,c} + b_h)  ∈ [0, 1]^{B×1×n_y×n_x};
(iii) instead of being concatenated, head h multiplies the features X^(h) (B, D_h, N_y, N_x) of
      backbone stage h, after a bilinear resize (align_corners=False) to (N_y, N_x):
          X̃^(h) = X^(h) ⊙ resize(g_h)          ("mul": g ≡ 1 leaves the backbone unchanged)
          X̃^(h) = X^(h) ⊙ (1 + resize(g_h))    ("residual": g ≡ 0 leaves it unchanged).
      The map broadcasts over the channels: one weight per position, not per channel.

Why this module stands alone instead of plugging into :class:`attnbook.attention.MultiHeadAttention`:
there are no tokens, queries or keys. g_h is a sigmoid of one position's decoder features,
not a softmax over keys of Q·Kᵀ scores: nothing is normalised over positions and no N×N
matrix exists. "Self-attention" here means spatial gating computed from the image itself; the
analogy with MHA is the shared input and the several heads, nothing more.

The released model's body reads its own input: the whole image resized to 256×256, one
channel, z-scored per image (:func:`zscore_image`); the classifier reads the image at 480×480.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import roc_auc  # re-exported: the chapter's notebook imports it from here
from ..validate import require_int, require_same_dtype_device, require_tensor

__all__ = [
    "MODES",
    "resize_map",
    "gate",
    "medusa_heads",
    "zscore_image",
    "attention_iou",
    "MedusaBody",
    "IsolatedGate",
    "MedusaNet",
    "count_parameters",
    "roc_auc",
    "fit_classifier",
]

MODES = ("mul", "residual")
"""The two gating forms: X ⊙ g ("mul") and X ⊙ (1 + g) ("residual")."""


def _size(size: object) -> tuple[int, int]:
    if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
        raise TypeError(f"size must be a pair (H, W) of integers, got {size!r}")
    return require_int(size[0], "size[0] (H)", minimum=1), require_int(size[1], "size[1] (W)", minimum=1)


def resize_map(g: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of gate maps to a stage's spatial size.

    Args:
        g: (B, C, h, w) maps, float (C = 1 for one map per image).
        size: (H, W), the target height and width (in this order).
    Returns:
        (B, C, H, W), g's dtype and device; g itself when (h, w) == (H, W).
    """
    require_tensor(g, "g", ndim=4, floating=True, shape="(B, C, h, w)")
    H, W = _size(size)
    if g.shape[-2:] == (H, W):
        return g
    # resize(g)(y, x) = bilinear interpolation of g at ((y + ½)·h/H - ½, (x + ½)·w/W - ½)
    return F.interpolate(g, size=(H, W), mode="bilinear", align_corners=False)


def gate(X: Tensor, g: Tensor, mode: str = "mul") -> Tensor:
    """Gate the features X^(h) of one backbone stage with one head's spatial map g_h.

    Args:
        X: (B, C, H, W) stage features, float.
        g: (B, 1, h, w) gate map in [0, 1] (already a sigmoid: no second σ), same dtype
            and device; any (h, w), resized bilinearly (align_corners=False) to (H, W).
        mode: "mul" for X ⊙ resize(g), "residual" for X ⊙ (1 + resize(g)).
    Returns:
        (B, C, H, W) gated features X̃, X's dtype and device.
    """
    require_tensor(X, "X", ndim=4, floating=True, shape="(B, C, H, W)")
    require_tensor(g, "g", ndim=4, floating=True, shape="(B, 1, h, w)")
    require_same_dtype_device(X=X, g=g)
    if g.shape[0] != X.shape[0] or g.shape[1] != 1:
        raise ValueError(
            f"g must have shape (B={X.shape[0]}, 1, h, w) for X of shape {tuple(X.shape)}, "
            f"got {tuple(g.shape)}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    a = resize_map(g, X.shape[-2:])  # (B, 1, H, W)
    # X̃ = X ⊙ resize(g)   or   X̃ = X ⊙ (1 + resize(g)), broadcast over the C channels
    return X * a if mode == "mul" else X * (1 + a)


def medusa_heads(dec: list[Tensor], weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    """The H heads: a 1×1 convolution to one channel and a sigmoid, one per decoder scale.

    Args:
        dec: H decoder maps E_h (B, C_h, h, w), float, one dtype and device.
        weights: H tensors (C_h,), the 1×1 convolution of head h.
        biases: H 0-d tensors, the bias b_h of head h.
    Returns:
        H gate maps g_h (B, 1, h, w) in [0, 1], the inputs' dtype and device.
    """
    if not isinstance(dec, (list, tuple)) or not dec:
        raise TypeError(f"dec must be a non-empty list of (B, C_h, h, w) tensors, got {type(dec).__name__}")
    if not isinstance(weights, (list, tuple)) or not isinstance(biases, (list, tuple)):
        raise TypeError("weights and biases must be lists, one entry per head")
    if not len(dec) == len(weights) == len(biases):
        raise ValueError(
            f"one weight and one bias per decoder map: got {len(dec)} maps, "
            f"{len(weights)} weights, {len(biases)} biases"
        )
    maps = []
    for s, (E, w, b) in enumerate(zip(dec, weights, biases)):
        require_tensor(E, f"dec[{s}]", ndim=4, floating=True, shape="(B, C_h, h, w)")
        require_tensor(w, f"weights[{s}]", ndim=1, floating=True, shape=f"(C_h={E.shape[1]},)")
        require_tensor(b, f"biases[{s}]", ndim=0, floating=True, shape="() (a 0-d tensor)")
        require_same_dtype_device(**{"dec[0]": dec[0], f"dec[{s}]": E, f"weights[{s}]": w, f"biases[{s}]": b})
        if w.shape[0] != E.shape[1] or E.shape[0] != dec[0].shape[0]:
            raise ValueError(
                f"weights[{s}] must have shape ({E.shape[1]},) for dec[{s}] of shape {tuple(E.shape)} "
                f"(and every map batch size {dec[0].shape[0]}), got {tuple(w.shape)}"
            )
        # g_h = σ(Σ_c w_c E_{h,c} + b_h)
        maps.append(torch.sigmoid(torch.einsum("bchw,c->bhw", E, w) + b)[:, None])  # (B, 1, h, w)
    return maps


def zscore_image(img: Tensor) -> Tensor:
    """Per-image z-score of the body's input (mean 0, std 1, population std as numpy's).

    Args:
        img: (..., H, W) image(s), uint8 or float.
    Returns:
        (..., H, W): float64 for integer input, img's dtype otherwise; a constant image gives
        zeros (its std is 0; the released pre-processing would divide by it and return NaN).
    """
    require_tensor(img, "img", min_ndim=2, shape="(..., H, W)")
    x = img if img.is_floating_point() else img.to(torch.float64)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, correction=0)
    # z = (x - mean) / std, and 0 where std = 0
    return torch.where(std > 0, (x - mean) / torch.where(std > 0, std, 1), 0)


def attention_iou(g: Tensor, mask: Tensor, thr: float = 0.5) -> Tensor:
    """IoU of a thresholded gate map with a region (the lung fields, say), per image.

    Args:
        g: (B, 1, h, w) maps in [0, 1]; resized bilinearly to the mask's size first.
        mask: (B, H, W) bool region.
        thr: a position is "attended" when resize(g) > thr.
    Returns:
        (B,) IoU = |g>thr ∧ mask| / |g>thr ∨ mask| in g's dtype; 1 when both are empty.
    """
    require_tensor(g, "g", ndim=4, floating=True, shape="(B, 1, h, w)")
    require_tensor(mask, "mask", ndim=3, shape="(B, H, W)")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be boolean (True = inside the region), got {mask.dtype}")
    if g.shape[1] != 1 or g.shape[0] != mask.shape[0] or g.device != mask.device:
        raise ValueError(f"g {tuple(g.shape)} and mask {tuple(mask.shape)} need one batch size, one device")
    attended = resize_map(g, mask.shape[-2:])[:, 0] > thr  # (B, H, W)
    inter = (attended & mask).sum(dim=(-2, -1)).to(g.dtype)
    union = (attended | mask).sum(dim=(-2, -1)).to(g.dtype)
    return torch.where(union > 0, inter / union.clamp_min(1), 1)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


class MedusaBody(nn.Module):
    """The shared body: a small U-Net over the body image, and S = 3 heads (1×1 conv + σ).

    Input (B, 1, h, w), h and w multiples of 8 (32×32 in the chapter). Encoder widths c, 2c,
    4c at h, h/2, h/4 and a bottleneck at h/8; the decoder goes back up with skips, and taps
    E_1 (c, h), E_2 (2c, h/2), E_3 (4c, h/4): finest first, the order of the backbone stages.
    """

    def __init__(self, c: int = 8):
        super().__init__()
        c = require_int(c, "c", minimum=1)
        self.enc = nn.ModuleList([_conv(1, c), _conv(c, 2 * c), _conv(2 * c, 4 * c)])
        self.bottleneck = _conv(4 * c, 4 * c)
        self.dec = nn.ModuleList(
            [_conv(2 * c + c, c), _conv(4 * c + 2 * c, 2 * c), _conv(4 * c + 4 * c, 4 * c)]
        )
        self.heads = nn.ModuleList([nn.Conv2d(w, 1, 1) for w in (c, 2 * c, 4 * c)])

    def decoder_maps(self, x: Tensor) -> list[Tensor]:
        """(B, 1, h, w) -> [E_1 (B, c, h, w), E_2 (B, 2c, h/2, w/2), E_3 (B, 4c, h/4, w/4)]."""
        require_tensor(x, "x", ndim=4, floating=True, shape="(B, 1, h, w)")
        skips = []
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)  # (B, 4c, h/8, w/8): every position sees the whole image
        out = []
        for layer, skip in zip(reversed(self.dec), reversed(skips)):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = layer(torch.cat([up, skip], dim=1))
            out.append(x)
        return out[::-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 1, h, w) -> [g_1 (B, 1, h, w), g_2 (B, 1, h/2, w/2), g_3 (B, 1, h/4, w/4)] in [0, 1]."""
        dec = self.decoder_maps(x)
        return medusa_heads(
            dec, [h.weight.view(-1) for h in self.heads], [h.bias.view(()) for h in self.heads]
        )


class IsolatedGate(nn.Module):
    """The baseline: a spatial gate computed from one stage's own features (CBAM-like, wider).

    (B, C, H, W) -> (B, 1, H, W) = σ(conv1×1(ReLU(conv3×3(ReLU(conv3×3(X)))))), hidden width k:
    its parameters receive gradient from its own stage only.
    """

    def __init__(self, C: int, k: int):
        super().__init__()
        self.net = nn.Sequential(_conv(C, k), _conv(k, k), nn.Conv2d(k, 1, 1))

    def forward(self, X: Tensor) -> Tensor:
        return torch.sigmoid(self.net(X))


def count_parameters(module: nn.Module) -> int:
    """The number of scalars in a module's parameters."""
    return sum(p.numel() for p in module.parameters())


class MedusaNet(nn.Module):
    """A 4-stage CNN classifier with no gates, isolated gates, or a MEDUSA body gating stages 1–3.

    Args:
        gating: "none" (the plain backbone), "isolated" (one IsolatedGate per gated stage, hidden
            width chosen to match the MEDUSA body's parameter count) or "medusa".
        widths: the backbone's stage widths; each stage is conv3×3 + ReLU + 2×2 max-pool.
        body_width: c of :class:`MedusaBody` (the isolated gates match its parameter count).
        body_size: (h, w) of the body image (the whole image, resized and z-scored).
        mode: "mul" or "residual", see :func:`gate`.
    forward(image (B, 1, H, W), body_image=None, *, disabled=()) -> logits (B,); a stage s in
    ``disabled`` is not gated (g_h ≡ 1 in "mul", ≡ 0 in "residual"). After a call,
    ``self.maps`` holds the S maps used (None for a disabled or ungated stage).
    """

    S = 3

    def __init__(
        self,
        gating: str = "medusa",
        widths: tuple[int, ...] = (8, 16, 32, 64),
        body_width: int = 8,
        body_size: tuple[int, int] = (32, 32),
        mode: str = "mul",
    ):
        super().__init__()
        if gating not in ("none", "isolated", "medusa"):
            raise ValueError(f"gating must be 'none', 'isolated' or 'medusa', got {gating!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(widths) < self.S:
            raise ValueError(f"widths needs at least {self.S} stages, got {widths}")
        self.gating, self.mode, self.body_size = gating, mode, _size(body_size)
        chans = (1, *widths)
        self.stages = nn.ModuleList([_conv(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.classifier = nn.Linear(widths[-1], 1)
        self.body, self.gates = None, None
        if gating == "medusa":
            self.body = MedusaBody(body_width)
        elif gating == "isolated":
            target = count_parameters(MedusaBody(body_width))
            # the hidden width k whose S gates come closest to the body's parameter count
            k = min(
                range(1, 257),
                key=lambda k: abs(sum(self._gate_size(w, k) for w in widths[: self.S]) - target),
            )
            self.gates = nn.ModuleList([IsolatedGate(w, k) for w in widths[: self.S]])
        self.maps: list[Tensor | None] = [None] * self.S

    @staticmethod
    def _gate_size(C: int, k: int) -> int:
        # conv3×3(C→k) + conv3×3(k→k) + conv1×1(k→1), with biases
        return 9 * C * k + k + 9 * k * k + k + k + 1

    def body_input(self, image: Tensor) -> Tensor:
        """(B, 1, H, W) -> (B, 1, h, w): the whole image resized to body_size and z-scored."""
        return zscore_image(resize_map(image, self.body_size))

    def forward(self, image: Tensor, body_image: Tensor | None = None, *, disabled=()) -> Tensor:
        require_tensor(image, "image", ndim=4, floating=True, shape="(B, 1, H, W)")
        maps = [None] * self.S
        if self.body is not None:
            maps = self.body(self.body_input(image) if body_image is None else body_image)
        x = image
        used: list[Tensor | None] = [None] * self.S
        for s, stage in enumerate(self.stages):
            x = F.max_pool2d(stage(x), 2)  # X^(h), h = s + 1: (B, C_h, H/2^h, W/2^h)
            if s >= self.S or s in disabled or self.gating == "none":
                continue
            g = maps[s] if self.gates is None else self.gates[s](x)
            used[s] = g
            x = gate(x, g, self.mode)  # X̃^(h) = X^(h) ⊙ resize(g_h)  (or ⊙ (1 + resize(g_h)))
        self.maps = used
        return self.classifier(x.mean(dim=(-2, -1)))[:, 0]


def fit_classifier(
    net: nn.Module, images: Tensor, target: Tensor, *, epochs: int, batch_size: int, lr: float, seed: int
) -> nn.Module:
    """Train a (B, 1, H, W) -> (B,) logit classifier with Adam and binary cross-entropy, in place.

    The mini-batch order comes from a generator seeded with ``seed`` (initialise ``net`` under
    ``torch.manual_seed(seed)`` yourself). Returns ``net``, in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for start in range(0, len(images), batch_size):
            b = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(net(images[b]), target[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()
