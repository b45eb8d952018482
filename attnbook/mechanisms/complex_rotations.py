r"""Complex rotations of queries and keys: RoPE, its polar (Euler) form, adaptive rotations.

Notation of the book (book/notation.md): query i sits at position p_i, key j at position j;
pair ν = 0 ... d/2 - 1 of a head's d coordinates; ρ, ψ the magnitude and phase of a pair;
γ_ν, b_ν the adaptive scale and bias; θ_ν the rotary frequencies; i (upright) the imaginary unit.

Derivation (chapter 04). Start from one head of chapter 00, S_ij = q_i · k_j / sqrt(d), and
read the d coordinates of a query as d/2 complex numbers ("pairs"),

    q^C_{i,ν} = q_{i,2ν} + i q_{i,2ν+1},   ν = 0 ... d/2 - 1        (interleaved pairing)

so that q_i · k_j = Σ_ν Re[ q^C_{i,ν} (k^C_{j,ν})* ].

RoPE (Su et al.) multiplies pair ν of the token at position p by e^{i p θ_ν},
θ_ν = base^{-2ν/d}. Because |e^{i p θ}| = 1 and e^{i p_i θ} (e^{i j θ})* = e^{i (p_i - j) θ},

    S_ij = Σ_ν Re[ q^C_{i,ν} (k^C_{j,ν})* e^{i (p_i - j) θ_ν} ] / sqrt(d),

which depends on the positions only through p_i - j (the relative-position property).

Euler (polar) form (EulerFormer, Tian et al.): q^C = ρ^q e^{i ψ^q} with ρ = |q^C| and
ψ = atan2(Im, Re). Then

    S_ij = Σ_ν ρ^q_{i,ν} ρ^k_{j,ν} cos( (ψ^q_{i,ν} - ψ^k_{j,ν}) + (p_i - j) θ_ν ) / sqrt(d):

a *semantic* angle difference plus a *positional* one, weighted by the magnitudes.

Adaptive differential rotation (EulerFormer): replace the semantic difference by
γ (ψ^q - ψ^k) + b, with a learnable scale γ and a bias b added to the QUERY angle only
(added to both, it would cancel in the difference):

    S_ij = Σ_ν ρ^q ρ^k cos( γ_ν (ψ^q_{i,ν} - ψ^k_{j,ν}) + b_ν + (p_i - j) θ_ν ) / sqrt(d).

Because the map is linear in the angles it factorises per token: rotate every query to angle
γ ψ^q + p_i θ + b and every key to γ ψ^k + j θ, keep the magnitudes, and take an ordinary dot
product (:func:`euler_rotate`). γ = 1, b = 0 is RoPE; θ = 0 as well is plain attention.
Per-head γ_{h,ν}, b_{h,ν} is the book's reading of ComplexFormer (a withdrawn paper): one set
of adaptation parameters per head instead of one per layer.

Pitfall: ψ lives in (-π, π]. When a pair crosses the negative real axis, γ ψ jumps by 2π γ,
a full turn only for integer γ; for other γ the rotated vector is discontinuous in the input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..attention import MultiHeadAttention, scaled_dot_product_attention
from ..models import ModelConfig, TinyTransformer
from ..validate import require_int, require_tensor

__all__ = [
    "rope_frequencies",
    "split_pairs",
    "merge_pairs",
    "rope",
    "euler_transform",
    "euler_rotate",
    "complex_rotation_scores",
    "adaptive_rotation_attention",
    "RotaryTransform",
    "rotary_attention",
    "rotary_transformer",
    "MODES",
]

PAIRINGS = ("interleaved", "half")
MODES = ("nope", "rope", "shared", "per_head")


def rope_frequencies(
    d: int,
    base: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""θ_ν = base^{-2ν/d} for ν = 0 ... d/2 - 1, shape (d/2,): fast pairs first, slow last."""
    if d < 2 or d % 2:
        raise ValueError(f"the head width d must be even and >= 2 (pairs of coordinates), got d={d}")
    nu = torch.arange(d // 2, dtype=torch.float64, device=device)
    return (base ** (-2.0 * nu / d)).to(dtype)  # (d/2,)


def split_pairs(x: Tensor, pairing: str = "interleaved") -> tuple[Tensor, Tensor]:
    r"""(..., d) -> real parts Re and imaginary parts Im, each (..., d/2).

    ``"interleaved"`` pairs coordinates (2ν, 2ν+1) (RoFormer, EulerFormer's recommender code);
    ``"half"`` pairs (ν, ν + d/2) (the GPT-NeoX / LLaMA layout). Both are valid conventions,
    but queries, keys and any reference must use the same one.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    d = x.shape[-1]
    if d % 2:
        raise ValueError(
            f"the last dimension of x (head width d) must be even to form pairs, got shape {tuple(x.shape)}"
        )
    if pairing == "interleaved":
        return x[..., 0::2], x[..., 1::2]  # (..., d/2) each
    return x[..., : d // 2], x[..., d // 2 :]


def merge_pairs(re: Tensor, im: Tensor, pairing: str = "interleaved") -> Tensor:
    """Inverse of :func:`split_pairs`: (..., d/2) twice -> (..., d)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if pairing == "interleaved":
        return torch.stack([re, im], dim=-1).flatten(-2)  # (..., d/2, 2) -> (..., d)
    return torch.cat([re, im], dim=-1)


def _check_rotation_args(x: Tensor, pos: Tensor, theta: Tensor, name: str = "x") -> None:
    require_tensor(x, name, min_ndim=2, floating=True, shape="(..., N, d)")
    N, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(
            f"the head width of {name} must be even (pairs of coordinates), "
            f"got {name} of shape {tuple(x.shape)}"
        )
    if pos.shape != (N,):
        raise ValueError(
            f"pos must have shape (N,) = ({N},) for {name} of shape {tuple(x.shape)}, got {tuple(pos.shape)}"
        )
    if theta.shape != (d // 2,):
        raise ValueError(f"theta must have shape (d/2,) = ({d // 2},), got {tuple(theta.shape)}")


def _work_dtype(x: Tensor) -> torch.dtype:
    # atan2, sqrt and the eps below need at least float32 (1e-12 underflows in float16)
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rope(x: Tensor, pos: Tensor, theta: Tensor, pairing: str = "interleaved") -> Tensor:
    r"""Rotary position embedding: pair ν of the token at position p times e^{i p θ_ν}, as complex numbers.

    Args:
        x: queries or keys (..., N, d), d even.
        pos: positions (N,), integer or float.
        theta: frequencies (d/2,), e.g. :func:`rope_frequencies`.
    Returns:
        (..., N, d), same dtype as x.
    """
    pos, theta = torch.as_tensor(pos, device=x.device), torch.as_tensor(theta, device=x.device)
    _check_rotation_args(x, pos, theta)
    work = _work_dtype(x)
    re, im = split_pairs(x.to(work), pairing)
    z = torch.complex(re, im)  # (..., N, d/2): q^C = Re + i Im
    angle = pos.to(work)[:, None] * theta.to(work)  # (N, d/2): p θ_ν
    # q^C' = q^C · e^{i p θ_ν}
    z = z * torch.polar(torch.ones_like(angle), angle)
    return merge_pairs(z.real, z.imag, pairing).to(x.dtype)


def euler_transform(x: Tensor, eps: float = 1e-12, pairing: str = "interleaved") -> tuple[Tensor, Tensor]:
    r"""Polar form of the pairs: ρ = sqrt(Re² + Im² + eps), ψ = atan2(Im, Re) ∈ (-π, π].

    eps keeps the gradient of ρ finite at a zero pair (d sqrt(u)/du is infinite at u = 0).
    Returns (ρ, ψ), each (..., d/2), in float32 or float64.
    """
    work = _work_dtype(x)
    re, im = split_pairs(x.to(work), pairing)
    # ρ = |q^C|, ψ = arg q^C
    return torch.sqrt(re * re + im * im + eps), torch.atan2(im, re)


def euler_rotate(
    x: Tensor,
    pos: Tensor,
    theta: Tensor,
    gamma: Tensor | float = 1.0,
    bias: Tensor | float = 0.0,
    *,
    eps: float = 1e-12,
    pairing: str = "interleaved",
) -> Tensor:
    r"""Adaptive rotation of one side (queries or keys): angle γ ψ + pos θ + b, magnitude kept.

    Args:
        x: (..., N, d), e.g. (B, H, N, d); d even.
        pos: positions (N,).
        theta: frequencies (d/2,).
        gamma: semantic-angle scale, broadcastable to (..., N, d/2): a float, (d/2,) shared by
            the heads, or (H, 1, d/2) per head.
        bias: semantic-angle bias, same shapes as gamma. Pass it for the QUERIES only.
        eps: added under the square root of ρ.
    Returns:
        (..., N, d), same dtype as x (computed in float32 at least).
    """
    pos, theta = torch.as_tensor(pos, device=x.device), torch.as_tensor(theta, device=x.device)
    _check_rotation_args(x, pos, theta)
    work = _work_dtype(x)
    rho, psi = euler_transform(x, eps, pairing)  # (..., N, d/2) each
    gamma = torch.as_tensor(gamma, dtype=work, device=x.device)
    bias = torch.as_tensor(bias, dtype=work, device=x.device)
    for name, t in (("gamma", gamma), ("bias", bias)):
        try:
            torch.broadcast_shapes(t.shape, psi.shape)
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(t.shape)} does not broadcast to the pairs' shape "
                f"{tuple(psi.shape)} (..., N, d/2); use a float, (d/2,) or (H, 1, d/2)"
            ) from None
    # angle = γ ψ + p θ + b
    angle = gamma * psi + pos.to(work)[:, None] * theta.to(work) + bias  # (..., N, d/2)
    # x' = ρ e^{i angle}
    return merge_pairs(rho * torch.cos(angle), rho * torch.sin(angle), pairing).to(x.dtype)


def _with_key_axis(t: Tensor) -> Tensor:
    return t if t.ndim == 0 else t.unsqueeze(-2)


def complex_rotation_scores(
    q: Tensor,
    k: Tensor,
    pos_q: Tensor,
    pos_k: Tensor,
    theta: Tensor,
    gamma: Tensor | float = 1.0,
    bias: Tensor | float = 0.0,
    *,
    eps: float = 1e-12,
    pairing: str = "interleaved",
) -> Tensor:
    r"""The explicit pairwise formula, for checking (costs N·M·d/2 cosines):

    S_ij = Σ_ν ρ^q_{i,ν} ρ^k_{j,ν} cos( γ_ν (ψ^q_{i,ν} - ψ^k_{j,ν}) + b_ν + (p_i - j) θ_ν ) / sqrt(d)

    Args:
        q: (..., N, d); k: (..., M, d); pos_q: (N,); pos_k: (M,); theta: (d/2,).
        gamma, bias: broadcastable to (..., 1, d/2) (per head: (H, 1, d/2)).
    Returns:
        scores (..., N, M).
    """
    pos_q, pos_k = torch.as_tensor(pos_q, device=q.device), torch.as_tensor(pos_k, device=q.device)
    theta = torch.as_tensor(theta, device=q.device)
    _check_rotation_args(q, pos_q, theta, "q")
    _check_rotation_args(k, pos_k, theta, "k")
    work = _work_dtype(q)
    lq, fq = euler_transform(q, eps, pairing)  # (..., N, d/2)
    lk, fk = euler_transform(k, eps, pairing)  # (..., M, d/2)
    # (..., 1, d/2) parameters gain a key axis: (..., 1, 1, d/2), broadcasting over (N, M)
    gamma, bias = (_with_key_axis(torch.as_tensor(t, dtype=work, device=q.device)) for t in (gamma, bias))
    rel = (pos_q.to(work)[:, None] - pos_k.to(work)[None, :])[..., None] * theta.to(
        work
    )  # (N, M, d/2): (p_i - j) θ
    # angle = γ (ψ^q_i - ψ^k_j) + b + (p_i - j) θ, for every (i, j)
    angle = gamma * (fq[..., :, None, :] - fk[..., None, :, :]) + bias + rel  # (..., N, M, d/2)
    scores = (lq[..., :, None, :] * lk[..., None, :, :] * torch.cos(angle)).sum(-1)  # (..., N, M)
    return (scores / math.sqrt(q.shape[-1])).to(q.dtype)


def adaptive_rotation_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    pos: Tensor,
    theta: Tensor,
    gamma: Tensor | float = 1.0,
    bias: Tensor | float = 0.0,
    *,
    causal: bool = False,
    mask: Tensor | None = None,
    pairing: str = "interleaved",
) -> tuple[Tensor, Tensor]:
    r"""softmax(q' k'^T / sqrt(d)) v with q' = rot(q; γ, b), k' = rot(k; γ, 0); values untouched.

    Self-attention: q, k, v (..., N, d) share the positions pos (N,). Returns (out, weights).
    """
    q_rot = euler_rotate(q, pos, theta, gamma, bias, pairing=pairing)  # (..., N, d): bias on the query
    k_rot = euler_rotate(k, pos, theta, gamma, 0.0, pairing=pairing)  # (..., N, d): no bias on the key
    return scaled_dot_product_attention(q_rot, k_rot, v, mask, causal=causal)


class RotaryTransform(nn.Module):
    r"""The chapter's one change to multi-head attention: rotate queries and keys.

    A ``qk_transform`` for :class:`~attnbook.attention.MultiHeadAttention`: it receives the
    split heads q (B, H, N, d), k (B, H, M, d) and the token positions, and returns them rotated.

    mode:
        "nope":     no rotation (plain attention, no position information);
        "rope":     RoPE (γ = 1, b = 0, fixed);
        "shared":   learnable γ_ν, b_ν (d/2 each) shared by all heads (EulerFormer);
        "per_head": learnable γ_{h,ν}, b_{h,ν} (H × d/2 each), the book's reading of ComplexFormer.
    γ starts at 1 and b at 0, so every learnable mode starts as RoPE. They are stored as
    γ = 1 + s·u and b = s·w with trainable u, w and a fixed ``angle_scale`` s: with Adam, s
    multiplies the step size of γ and b (EulerFormer's LLaMA code scales them by 100 and 1000).
    """

    def __init__(
        self,
        d: int,
        H: int,
        mode: str = "rope",
        base: float = 10000.0,
        pairing: str = "interleaved",
        angle_scale: float = 1.0,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        d, H = require_int(d, "d", minimum=2), require_int(H, "H", minimum=1)
        if d % 2:
            raise ValueError(f"the head width d={d} must be even (pairs of coordinates)")
        self.d, self.H, self.mode, self.pairing, self.angle_scale = d, H, mode, pairing, angle_scale
        self.register_buffer("theta", rope_frequencies(d, base), persistent=False)  # (d/2,)
        rows = {"shared": 1, "per_head": H}.get(mode)
        if rows is not None:
            self.gamma_u = nn.Parameter(torch.zeros(rows, 1, d // 2))  # (1 or H, 1, d/2)
            self.bias_w = nn.Parameter(torch.zeros(rows, 1, d // 2))

    @property
    def gamma(self) -> Tensor | None:
        """γ (1 or H, 1, d/2) for the learnable modes, else None."""
        return 1.0 + self.angle_scale * self.gamma_u if hasattr(self, "gamma_u") else None

    @property
    def bias(self) -> Tensor | None:
        """b (1 or H, 1, d/2) for the learnable modes, else None."""
        return self.angle_scale * self.bias_w if hasattr(self, "bias_w") else None

    def forward(self, q: Tensor, k: Tensor, pos_q: Tensor, pos_k: Tensor) -> tuple[Tensor, Tensor]:
        """q (B, H, N, d), k (B, H, M, d), positions (N,), (M,) -> rotated q, k (same shapes)."""
        if self.mode == "nope":
            return q, k
        if self.mode == "rope":
            return rope(q, pos_q, self.theta, self.pairing), rope(k, pos_k, self.theta, self.pairing)
        # queries to γ ψ^q + p_i θ + b, keys to γ ψ^k + j θ (the bias on the query only)
        q_rot = euler_rotate(q, pos_q, self.theta, self.gamma, self.bias, pairing=self.pairing)
        k_rot = euler_rotate(k, pos_k, self.theta, self.gamma, 0.0, pairing=self.pairing)
        return q_rot, k_rot


def rotary_attention(
    D: int,
    H: int,
    mode: str = "rope",
    base: float = 10000.0,
    pairing: str = "interleaved",
    angle_scale: float = 1.0,
) -> MultiHeadAttention:
    r"""Multi-head attention whose queries and keys pass through :class:`RotaryTransform`.

    The rotation is the layer's ``qk_transform``; everything else is chapter 00's layer.
    Its parameters are ``layer.qk_transform.gamma`` and ``layer.qk_transform.bias``.
    """
    D, H = require_int(D, "D", minimum=1), require_int(H, "H", minimum=1)
    if D % H or (D // H) % 2:
        raise ValueError(f"D={D} must split into H={H} heads of even width d = D / H")
    return MultiHeadAttention(D, H, qk_transform=RotaryTransform(D // H, H, mode, base, pairing, angle_scale))


def rotary_transformer(
    vocab: int,
    n_out: int,
    D: int = 32,
    H: int = 4,
    layers: int = 1,
    mode: str = "rope",
    base: float = 10000.0,
    angle_scale: float = 1.0,
) -> TinyTransformer:
    r"""The book's causal :class:`~attnbook.models.TinyTransformer` with rotary attention.

    No absolute position embedding: the attention's rotation scheme (``mode``) is the only
    source of position information.
    """
    config = ModelConfig(D=D, H=H, layers=layers, vocab=vocab, n_out=n_out, causal=True)
    return TinyTransformer(
        config, attn=lambda cfg: rotary_attention(cfg.D, cfg.H, mode, base, angle_scale=angle_scale)
    )
