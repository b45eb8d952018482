"""Checks for chapter 09's exercises (MEDUSA's heads and gates).

The references are written here, independently of the learner's code and of
attnbook.mechanisms.multi_scale_heads: the bilinear resize (align_corners=False) as two explicit
interpolation matrices built from the half-pixel rule, and the heads as a channel sum and
1 / (1 + e^{-z}) in float64.
"""

from __future__ import annotations

import math

import torch

from ..core import CheckFailed, case, mistake, task
from ..expect import describe, expect_close, fresh_generator

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


def bilinear_reference(A: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, H, W) float64: R_y A R_xᵀ."""
    return interpolation_matrix(H, A.shape[-2]) @ A.double() @ interpolation_matrix(W, A.shape[-1]).T


def gate_reference(F_s: torch.Tensor, A: torch.Tensor, mode: str) -> torch.Tensor:
    a = bilinear_reference(A, *F_s.shape[-2:])
    # F ⊙ A  or  F ⊙ (1 + A)
    return (F_s.double() * (a if mode == "mul" else 1 + a)).to(F_s.dtype)


GATE_HINT = (
    "resize A with F.interpolate(A, size=(H, W), mode='bilinear', align_corners=False), then "
    "F_s * a ('mul') or F_s * (1 + a) ('residual'); a broadcasts over the channels"
)


@task("ch09.gate", points=2)
def check_gate(fn):
    """F ⊙ resize(A) or F ⊙ (1 + resize(A)), bilinear with align_corners=False, any (h, w) -> (H, W)."""
    g, _ = fresh_generator()
    for B, C, hw, HW, dtype in GATE_CASES:
        for mode in ("mul", "residual"):
            with case():
                F_s = torch.randn(B, C, *HW, generator=g, dtype=torch.float64).to(dtype)
                A = torch.rand(B, 1, *hw, generator=g, dtype=torch.float64).to(dtype)
                what = f"gate({describe({'F_s': F_s, 'A': A, 'mode': mode, 'dtype': dtype})})"
                before = A.clone()
                answer = fn(F_s, A, mode)
                if not torch.equal(A, before):
                    raise CheckFailed(f"{what} changed its input A in place")
                expect_close(answer, gate_reference(F_s, A, mode), what=what, hint=GATE_HINT)
    for mode, fill in (("mul", 1.0), ("residual", 0.0)):
        with case():  # the backbone limit: A ≡ 1 (mul) or A ≡ 0 (residual) returns F_s itself
            F_s = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
            A = torch.full((2, 1, 3, 4), fill, dtype=torch.float64)
            expect_close(
                fn(F_s, A, mode),
                F_s,
                what=f"gate(mode={mode!r}) with A ≡ {fill:g} (must return F_s unchanged)",
                hint="A is already a probability map: use it as given, with no second sigmoid",
            )


HEAD_CASES = [
    ([(5, 6, 7), (3, 3, 4), (9, 1, 2)], 2, torch.float64),
    ([(4, 8, 8)], 1, torch.float32),
    ([(2, 5, 3), (6, 2, 9)], 3, torch.float32),
    ([(7, 4, 6), (3, 2, 3), (1, 1, 1)], 2, torch.float64),
]


def heads_reference(dec, weights, biases):
    maps = []
    for D, w, b in zip(dec, weights, biases):
        z = (D.double() * w.double()[None, :, None, None]).sum(dim=1, keepdim=True) + b.double()
        maps.append((1 / (1 + torch.exp(-z))).to(D.dtype))  # σ(z)
    return maps


@task("ch09.medusa_heads", points=2)
def check_medusa_heads(fn):
    """A_s = σ(Σ_c w_{s,c} D_{s,c} + b_s) for each decoder map: S maps (B, 1, h_s, w_s) in [0, 1]."""
    g, _ = fresh_generator()
    for sizes, B, dtype in HEAD_CASES:
        with case():
            dec = [torch.randn(B, c, h, w, generator=g, dtype=torch.float64).to(dtype) for c, h, w in sizes]
            weights = [torch.randn(c, generator=g, dtype=torch.float64).to(dtype) for c, _, _ in sizes]
            biases = [torch.randn((), generator=g, dtype=torch.float64).to(dtype) for _ in sizes]
            what = (
                f"medusa_heads with maps {[tuple(D.shape) for D in dec]}, {str(dtype).replace('torch.', '')}"
            )
            answer = fn(list(dec), list(weights), list(biases))
            if not isinstance(answer, (list, tuple)) or len(answer) != len(dec):
                raise CheckFailed(f"{what}: return a list of {len(dec)} maps, one per decoder map")
            for s, (got, expected) in enumerate(zip(answer, heads_reference(dec, weights, biases))):
                expect_close(
                    got,
                    expected,
                    what=f"{what}: map {s}",
                    hint="a head is a 1×1 convolution to one channel, Σ_c w[c] D[:, c] + b, then a "
                    "sigmoid at each position; keep the channel axis: (B, 1, h_s, w_s)",
                )


@mistake("ch09.gate", "nearest-neighbour resize; the maps are resized bilinearly (mode='bilinear')")
def gate_nearest(F_s, A, mode="mul"):
    a = torch.nn.functional.interpolate(A, size=F_s.shape[-2:], mode="nearest")
    return F_s * a if mode == "mul" else F_s * (1 + a)


@mistake(
    "ch09.gate",
    "bilinear with align_corners=True; this book (and torch's default) uses align_corners=False, "
    "pixel centres at half-pixel positions",
)
def gate_align_corners(F_s, A, mode="mul"):
    a = torch.nn.functional.interpolate(A, size=F_s.shape[-2:], mode="bilinear", align_corners=True)
    return F_s * a if mode == "mul" else F_s * (1 + a)


@mistake(
    "ch09.gate",
    "the map's orientation is wrong (H and W swapped: resized to (W, H) and transposed); resize to "
    "size=(H, W) = F_s.shape[-2:] and never transpose",
)
def gate_swapped(F_s, A, mode="mul"):
    H, W = F_s.shape[-2:]
    a = torch.nn.functional.interpolate(A, size=(W, H), mode="bilinear", align_corners=False).transpose(
        -1, -2
    )
    return F_s * a if mode == "mul" else F_s * (1 + a)


@mistake("ch09.gate", "a second sigmoid is applied to A, which is already a probability map in [0, 1]")
def gate_sigmoid_twice(F_s, A, mode="mul"):
    a = torch.nn.functional.interpolate(torch.sigmoid(A), size=F_s.shape[-2:], mode="bilinear")
    return F_s * a if mode == "mul" else F_s * (1 + a)


@mistake("ch09.gate", "the residual form adds the map, F + A; it multiplies, F ⊙ (1 + A)")
def gate_residual_adds(F_s, A, mode="mul"):
    a = torch.nn.functional.interpolate(A, size=F_s.shape[-2:], mode="bilinear")
    return F_s * a if mode == "mul" else F_s + a


@mistake(
    "ch09.medusa_heads",
    "a softmax over the positions (as in QK attention); a head is a sigmoid at each position, "
    "independent of the others",
)
def heads_spatial_softmax(dec, weights, biases):
    out = []
    for D, w, b in zip(dec, weights, biases):
        z = torch.einsum("bchw,c->bhw", D, w) + b
        out.append(torch.softmax(z.flatten(1), dim=-1).view_as(z)[:, None])
    return out


@mistake("ch09.medusa_heads", "the sigmoid is applied twice: σ(σ(z))")
def heads_sigmoid_twice(dec, weights, biases):
    return [
        torch.sigmoid(torch.sigmoid(torch.einsum("bchw,c->bhw", D, w) + b))[:, None]
        for D, w, b in zip(dec, weights, biases)
    ]


@mistake("ch09.medusa_heads", "the bias b_s is missing")
def heads_no_bias(dec, weights, biases):
    return [
        torch.sigmoid(torch.einsum("bchw,c->bhw", D, w))[:, None] for D, w, _ in zip(dec, weights, biases)
    ]


@mistake("ch09.medusa_heads", "the logits are returned without the sigmoid; the maps must lie in [0, 1]")
def heads_no_sigmoid(dec, weights, biases):
    return [(torch.einsum("bchw,c->bhw", D, w) + b)[:, None] for D, w, b in zip(dec, weights, biases)]
