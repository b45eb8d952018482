"""Checks for chapter 09's exercises (MEDUSA's heads and gates).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.multi_scale_heads: the bilinear resize (align_corners=False) as two explicit
interpolation matrices built from the half-pixel rule, and the heads as a channel sum and
1 / (1 + e^{-z}) in float64.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, expect_number, fresh_generator

# (B, C, (h, w) of the map, (H, W) of the features, dtype): up- and down-sampling, non-square,
# one side kept, equal sizes, float16
GATE_CASES = [
    (2, 3, (3, 5), (7, 4), torch.float64),
    (1, 4, (4, 4), (9, 6), torch.float32),
    (3, 2, (6, 9), (2, 3), torch.float64),
    (2, 5, (2, 7), (5, 7), torch.float32),
    (1, 3, (5, 3), (5, 3), torch.float64),
    (2, 4, (3, 2), (6, 5), torch.float16),
]


def interpolation_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of 1-D linear interpolation with align_corners=False.

    Output pixel i reads source coordinate max((i + ½)·n_in/n_out - ½, 0) between its two
    neighbours, the right one clamped to the last pixel.
    """
    R = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1, lam = min(i0 + 1, n_in - 1), src - i0
        R[i, i0] += 1 - lam
        R[i, i1] += lam
    return R


def bilinear_reference(g: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, H, W) float64: R_y g R_xᵀ."""
    return interpolation_matrix(H, g.shape[-2]) @ g.double() @ interpolation_matrix(W, g.shape[-1]).T


def gate_reference(X: torch.Tensor, g: torch.Tensor, mode: str) -> torch.Tensor:
    a = bilinear_reference(g, *X.shape[-2:])
    # X ⊙ g  or  X ⊙ (1 + g)
    return (X.double() * (a if mode == "mul" else 1 + a)).to(X.dtype)


GATE_HINT = (
    "resize g with F.interpolate(g, size=(H, W), mode='bilinear', align_corners=False), then "
    "X * a ('mul') or X * (1 + a) ('residual'); a broadcasts over the channels"
)


@task("ch09.gate", points=2)
def check_gate(fn):
    """X ⊙ resize(g) or X ⊙ (1 + resize(g)), bilinear with align_corners=False, any (h, w) -> (H, W)."""
    gen, _ = fresh_generator()
    for B, C, hw, HW, dtype in GATE_CASES:
        for mode in ("mul", "residual"):
            with case():
                X = torch.randn(B, C, *HW, generator=gen, dtype=torch.float64).to(dtype)
                g = torch.rand(B, 1, *hw, generator=gen, dtype=torch.float64).to(dtype)
                what = f"gate({describe({'X': X, 'g': g, 'mode': mode, 'dtype': dtype})})"
                before = g.clone()
                answer = fn(X, g, mode)
                if not torch.equal(g, before):
                    raise CheckFailed(f"{what} changed its input g in place")
                expect_close(answer, gate_reference(X, g, mode), what=what, hint=GATE_HINT)
    for mode, fill in (("mul", 1.0), ("residual", 0.0)):
        with case():  # the backbone limit: g ≡ 1 (mul) or g ≡ 0 (residual) returns X itself
            X = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
            g = torch.full((2, 1, 3, 4), fill, dtype=torch.float64)
            expect_close(
                fn(X, g, mode),
                X,
                what=f"gate(mode={mode!r}) with g ≡ {fill:g} (must return X unchanged)",
                hint="g is already a probability map: use it as given, with no second sigmoid",
            )


HEAD_CASES = [
    ([(5, 6, 7), (3, 3, 4), (9, 1, 2)], 2, torch.float64),
    ([(4, 8, 8)], 1, torch.float32),
    ([(2, 5, 3), (6, 2, 9)], 3, torch.float32),
    ([(7, 4, 6), (3, 2, 3), (1, 1, 1)], 2, torch.float64),
]


def heads_reference(dec, weights, biases):
    maps = []
    for E, w, b in zip(dec, weights, biases):
        z = (E.double() * w.double()[None, :, None, None]).sum(dim=1, keepdim=True) + b.double()
        maps.append((1 / (1 + torch.exp(-z))).to(E.dtype))  # σ(z)
    return maps


@task("ch09.medusa_heads", points=2)
def check_medusa_heads(fn):
    """g_h = sigmoid(Σ_c w_{h,c} E_{h,c} + b_h) for each decoder map: H maps (B, 1, h_h, w_h) in [0, 1]."""
    gen, _ = fresh_generator()
    for sizes, B, dtype in HEAD_CASES:
        with case():
            dec = [torch.randn(B, c, h, w, generator=gen, dtype=torch.float64).to(dtype) for c, h, w in sizes]
            weights = [torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) for c, _, _ in sizes]
            biases = [torch.randn((), generator=gen, dtype=torch.float64).to(dtype) for _ in sizes]
            what = (
                f"medusa_heads with maps {[tuple(E.shape) for E in dec]}, {str(dtype).replace('torch.', '')}"
            )
            answer = fn(list(dec), list(weights), list(biases))
            if not isinstance(answer, (list, tuple)) or len(answer) != len(dec):
                raise CheckFailed(f"{what}: return a list of {len(dec)} maps, one per decoder map")
            for s, (got, expected) in enumerate(zip(answer, heads_reference(dec, weights, biases))):
                expect_close(
                    got,
                    expected,
                    what=f"{what}: map {s}",
                    hint="a head is a 1×1 convolution to one channel, Σ_c w[c] E[:, c] + b, then a "
                    "sigmoid at each position; keep the channel axis: (B, 1, h, w)",
                )


@mistake("ch09.gate", "nearest-neighbour resize; the maps are resized bilinearly (mode='bilinear')")
def gate_nearest(X, g, mode="mul"):
    a = torch.nn.functional.interpolate(g, size=X.shape[-2:], mode="nearest")
    return X * a if mode == "mul" else X * (1 + a)


@mistake(
    "ch09.gate",
    "bilinear with align_corners=True; this book (and torch's default) uses align_corners=False, "
    "pixel centres at half-pixel positions",
)
def gate_align_corners(X, g, mode="mul"):
    a = torch.nn.functional.interpolate(g, size=X.shape[-2:], mode="bilinear", align_corners=True)
    return X * a if mode == "mul" else X * (1 + a)


@mistake(
    "ch09.gate",
    "the map's orientation is wrong (H and W swapped: resized to (W, H) and transposed); resize to "
    "size=(H, W) = X.shape[-2:] and never transpose",
)
def gate_swapped(X, g, mode="mul"):
    H, W = X.shape[-2:]
    a = torch.nn.functional.interpolate(g, size=(W, H), mode="bilinear", align_corners=False).transpose(
        -1, -2
    )
    return X * a if mode == "mul" else X * (1 + a)


@mistake("ch09.gate", "a second sigmoid is applied to g, which is already a probability map in [0, 1]")
def gate_sigmoid_twice(X, g, mode="mul"):
    a = torch.nn.functional.interpolate(torch.sigmoid(g), size=X.shape[-2:], mode="bilinear")
    return X * a if mode == "mul" else X * (1 + a)


@mistake("ch09.gate", "the residual form adds the map, X + g; it multiplies, X ⊙ (1 + g)")
def gate_residual_adds(X, g, mode="mul"):
    a = torch.nn.functional.interpolate(g, size=X.shape[-2:], mode="bilinear")
    return X * a if mode == "mul" else X + a


@mistake(
    "ch09.medusa_heads",
    "a softmax over the positions (as in QK attention); a head is a sigmoid at each position, "
    "independent of the others",
)
def heads_spatial_softmax(dec, weights, biases):
    out = []
    for E, w, b in zip(dec, weights, biases):
        z = torch.einsum("bchw,c->bhw", E, w) + b
        out.append(torch.softmax(z.flatten(1), dim=-1).view_as(z)[:, None])
    return out


@mistake("ch09.medusa_heads", "the sigmoid is applied twice: σ(σ(z))")
def heads_sigmoid_twice(dec, weights, biases):
    return [
        torch.sigmoid(torch.sigmoid(torch.einsum("bchw,c->bhw", E, w) + b))[:, None]
        for E, w, b in zip(dec, weights, biases)
    ]


@mistake("ch09.medusa_heads", "the bias b_h is missing")
def heads_no_bias(dec, weights, biases):
    return [
        torch.sigmoid(torch.einsum("bchw,c->bhw", E, w))[:, None] for E, w, _ in zip(dec, weights, biases)
    ]


@mistake("ch09.medusa_heads", "the logits are returned without the sigmoid; the maps must lie in [0, 1]")
def heads_no_sigmoid(dec, weights, biases):
    return [(torch.einsum("bchw,c->bhw", E, w) + b)[:, None] for E, w, b in zip(dec, weights, biases)]


# ---------------------------------------------------------------- ch09.zscore_image

ZSCORE_HINT = (
    "per image: subtract the mean over (H, W) and divide by the population std (correction=0, as "
    "numpy's np.std), both over the last two axes only; integers become float64"
)


def zscore_reference(img: torch.Tensor) -> torch.Tensor:
    x = img.double()
    flat = x.flatten(-2)
    mean = flat.sum(-1) / flat.shape[-1]
    var = ((flat - mean[..., None]) ** 2).sum(-1) / flat.shape[-1]
    std = var.sqrt()[..., None, None]
    out = torch.where(std > 0, (x - mean[..., None, None]) / torch.where(std > 0, std, 1.0), 0.0)
    return out if not img.is_floating_point() else out.to(img.dtype)


@task("ch09.zscore_image", points=1)
def check_zscore_image(fn):
    """The body's input: (x - mean) / std per image over (H, W), population std; zeros if constant."""
    gen, _ = fresh_generator()
    cases = [
        ("uint8 (H, W)", torch.randint(0, 256, (7, 5), generator=gen, dtype=torch.int64).to(torch.uint8)),
        (
            "uint8 (B, H, W)",
            torch.randint(0, 256, (3, 4, 6), generator=gen, dtype=torch.int64).to(torch.uint8),
        ),
        ("float64 (B, 1, H, W)", 3 + 2 * torch.randn(2, 1, 5, 8, generator=gen, dtype=torch.float64)),
        ("float32 (H, W)", torch.rand(6, 6, generator=gen)),
    ]
    for name, img in cases:
        with case():
            answer = fn(img)
            expect_close(answer, zscore_reference(img), what=f"zscore_image({name})", hint=ZSCORE_HINT)
    with case():  # a constant image: std = 0, the answer is zeros, not NaN
        img = torch.stack(
            [torch.full((4, 4), 7, dtype=torch.uint8), torch.arange(16, dtype=torch.uint8).view(4, 4)]
        )
        answer = fn(img)
        expect_close(
            answer,
            zscore_reference(img),
            what="zscore_image of a batch whose first image is constant (std 0)",
            hint="where the std is 0 return zeros (torch.where), not (x - mean) / 0 = NaN; and "
            "normalise each image on its own",
        )


@mistake(
    "ch09.zscore_image",
    "the unbiased std (correction=1, torch's default); the z-score uses the population std",
)
def zscore_unbiased(img):
    x = img.double() if not img.is_floating_point() else img
    mean, std = x.mean(dim=(-2, -1), keepdim=True), x.std(dim=(-2, -1), keepdim=True)
    return torch.where(std > 0, (x - mean) / torch.where(std > 0, std, 1), 0)


@mistake("ch09.zscore_image", "a constant image gives NaN (0 / 0); return zeros where the std is 0")
def zscore_nan(img):
    x = img.double() if not img.is_floating_point() else img
    return (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True, correction=0)


@mistake(
    "ch09.zscore_image",
    "one mean and std over the whole batch; each image is normalised on its own, over its last two axes",
)
def zscore_whole_batch(img):
    x = img.double() if not img.is_floating_point() else img
    mean, std = x.mean(), x.std(correction=0)
    return torch.where(std > 0, (x - mean) / torch.where(std > 0, std, 1), 0)


# ---------------------------------------------------------------- ch09.attention_iou

IOU_CASES = [  # (B, (h, w) of the map, (H, W) of the mask, thr)
    (3, (4, 6), (8, 12), 0.5),
    (2, (5, 3), (7, 9), 0.3),
    (4, (6, 6), (6, 6), 0.6),
]


def iou_reference(g: torch.Tensor, mask: torch.Tensor, thr: float) -> torch.Tensor:
    attended = bilinear_reference(g, *mask.shape[-2:])[:, 0] > thr  # (B, H, W)
    inter = (attended & mask).flatten(1).sum(-1).double()
    union = (attended | mask).flatten(1).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0).to(g.dtype)


IOU_HINT = (
    "resize g bilinearly (align_corners=False) to the mask's (H, W), threshold with g > thr, then "
    "|attended ∧ mask| / |attended ∨ mask| per image, a (B,) tensor in g's dtype"
)


@task("ch09.attention_iou", points=2)
def check_attention_iou(fn):
    """Per-image IoU of the thresholded, resized map with a boolean region; 1 when both are empty."""
    gen, _ = fresh_generator()
    for B, hw, HW, thr in IOU_CASES:
        for dtype in (torch.float64, torch.float32):
            with case():
                g = torch.rand(B, 1, *hw, generator=gen, dtype=torch.float64).to(dtype)
                mask = torch.rand(B, *HW, generator=gen) < 0.4
                what = f"attention_iou({describe({'g': g, 'mask': mask, 'thr': thr, 'dtype': dtype})})"
                expect_close(fn(g, mask, thr), iou_reference(g, mask, thr), what=what, hint=IOU_HINT)
    with case():  # exactly at the threshold is not attended; both empty gives 1
        g = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
        mask = torch.zeros(2, 4, 4, dtype=torch.bool)
        mask[1, :2] = True
        expect_close(
            fn(g, mask, 0.5),
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            what="attention_iou with g ≡ thr (nothing attended) and an empty / a half mask",
            hint="a position is attended when g > thr (strictly); an empty union gives IoU 1, not NaN",
        )


@mistake("ch09.attention_iou", "nearest-neighbour resize; the maps are resized bilinearly (mode='bilinear')")
def iou_nearest(g, mask, thr=0.5):
    attended = torch.nn.functional.interpolate(g, size=mask.shape[-2:], mode="nearest")[:, 0] > thr
    inter, union = (attended & mask).sum((-2, -1)), (attended | mask).sum((-2, -1))
    return torch.where(union > 0, inter / union.clamp(min=1), 1).to(g.dtype)


@mistake(
    "ch09.attention_iou",
    "one IoU pooled over the whole batch; the IoU is computed per image and returned as a (B,) tensor",
)
def iou_pooled(g, mask, thr=0.5):
    attended = torch.nn.functional.interpolate(g, size=mask.shape[-2:], mode="bilinear")[:, 0] > thr
    value = (attended & mask).sum() / (attended | mask).sum().clamp(min=1)
    return value.to(g.dtype).expand(g.shape[0])


@mistake("ch09.attention_iou", "an empty union gives NaN (0 / 0); two empty regions agree: IoU 1")
def iou_nan(g, mask, thr=0.5):
    attended = torch.nn.functional.interpolate(g, size=mask.shape[-2:], mode="bilinear")[:, 0] > thr
    return ((attended & mask).sum((-2, -1)) / (attended | mask).sum((-2, -1))).to(g.dtype)


# ---------------------------------------------------------------- ch09.receptive_field (experiment)

REFERENCE_SEEDS = (101, 102, 103)


def _reference_receptive_field(gating: str, seed: int) -> float:
    from ...mechanisms.multi_scale_heads import MedusaNet
    from ...tasks.radiographs import radiographs

    image = radiographs(4, size=32, generator=torch.Generator().manual_seed(seed)).images.requires_grad_()
    torch.manual_seed(seed)
    net = MedusaNet(gating, body_width=8, body_size=(16, 16), mode="residual")
    net(image)
    g = net.maps[0]  # (4, 1, 16, 16): the finest head, which gates stage 1
    g[:, 0, g.shape[-2] // 2, g.shape[-1] // 2].sum().backward()
    return (image.grad != 0).any(dim=0).double().mean().item()


@functools.cache
def _reference_fields(gating: str) -> tuple[float, ...]:
    with torch.random.fork_rng(devices=[]):
        return tuple(_reference_receptive_field(gating, s) for s in REFERENCE_SEEDS)


@task("ch09.receptive_field", points=3)
def check_receptive_field(fn):
    """The fraction of input pixels that reach the finest gate's centre, within the reference's range."""
    gen, _ = fresh_generator()
    seed = int(torch.randint(10, 1000, (1,), generator=gen))
    got = {}
    for gating in ("isolated", "medusa"):
        with case():
            ref = torch.tensor(_reference_fields(gating))
            # max-pooling routes the gradient through one pixel per window, so the fraction moves a
            # little with the weights and the image: accept 4 spreads of the reference, at least 0.03
            margin = max(4 * ref.std().item(), 0.03)
            low, high = ref.min().item() - margin, ref.max().item() + margin
            what = f"receptive_field({gating!r}, {seed})"
            got[gating] = value = expect_number(
                fn(gating, seed), what, expected="a fraction of the image's pixels, in [0, 1]", low=0, high=1
            )
            if not low <= value <= high:
                raise CheckFailed(
                    f"{what} = {value:.3f}; the reference reaches {ref.min():.3f} to {ref.max():.3f} over "
                    f"seeds {REFERENCE_SEEDS}, so expect {low:.3f} to {high:.3f}",
                    hint="back-propagate from the centre values net.maps[0][:, 0, h // 2, w // 2].sum() "
                    "after net(image), and count the (y, x) positions where image.grad is not exactly 0 "
                    "in any image",
                )
    with case():
        if len(got) == 2 and not got["medusa"] > got["isolated"]:
            raise CheckFailed(
                f"the shared body's finest head reads {got['medusa']:.3f} of the image and the isolated gate "
                f"{got['isolated']:.3f}: the body's bottleneck should make its heads see more",
                hint="MedusaNet(gating, ...) with the gating passed on; read net.maps[0] after the forward",
            )
