"""Chapter 17 · Object-level attention: object tokens, a Gaussian grid encoding, a pointer over objects.

OAT (Fang et al., 2024, ECCV; arXiv:2407.13335) predicts where a person looks next during visual
search. Its tokens are the N objects of a scene (products on a shelf grid), not pixels or patches.
Starting from chapter 00's attention, S = Q K^T / sqrt(d), A = softmax(S) over the keys, three
things change:

1. The token. Object i is e_i = [a_i ; p_i]: an appearance vector a_i concatenated (not added) with a
   position vector p_i = [W[r_i] ; W[c_i]] read from one table W (R, C) at the object's grid row r_i and
   column c_i. With concatenation, a query-key product splits into appearance-appearance,
   position-position and cross terms.

2. The position table. W is fitted so that cos(W_a, W_b) ≈ exp(-(a - b)² / (2σ²)), plus a penalty that
   keeps the row norms equal; then the position-position term of a dot product decays with grid distance
   like a Gaussian kernel (a sinusoidal table's similarity oscillates instead; see ``sinusoidal_pe``).
   The Gaussian kernel is positive semi-definite, so an exact fit needs C ≥ R.

3. The output. The decoder state d_t (after the objects fixated so far) points at the next object with
   C "heads" of single-query attention scores s^c_{t,i} = (m_i W_e^c)·(d_t W_d^c)/sqrt(d_k) over the
   encoder outputs m_i, combined by a learned readout, plus a fixed logit 0 for "stop" at index N; the
   softmax over the N + 1 entries *is* the prediction (a pointer network). The weights are never applied
   to values, which is why ``pointer_logits`` stands alone instead of plugging into
   MultiHeadAttention: its per-head scores are exactly the pre-softmax scores MultiHeadAttention
   computes in cross-attention (the library tests assert it), and the encoder and decoder themselves are
   plain multi-head attention.

Readings implemented here (details the paper's description leaves open):
- The fitting loss follows the authors' public script: the mean over all R² pairs (diagonal included) of
  (cos_ab - K_ab)², plus the variance of the row norms, divided by R(R - 1); Adam, rows initialised
  from a standard normal. The authors fit R = 14 rows of width 86, σ = 2, lr 0.01, 10 000 steps.
- The table has a third index in the authors' code whose meaning is not documented; only row and column
  are used here, p_i = [W[r_i] ; W[c_i]].
- The readout is a weight vector (C,) without bias, logits_{t,i} = Σ_c r_c s^c_{t,i}; the stop logit is
  the constant 0 appended after the readout (so it is 0 both before and after it). Padded objects get
  -inf.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnbook.validate import require_int, require_tensor

__all__ = [
    "gaussian_kernel",
    "sinusoidal_pe",
    "fit_gaussian_pe",
    "cosine_gram",
    "object_tokens",
    "pointer_logits",
    "ObjectPointer",
]


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def gaussian_kernel(n_pos: int, sigma: float, *, dtype=torch.float64, device=None) -> Tensor:
    """The target similarity K_ab = exp(-(a - b)² / (2σ²)) between grid indices a, b = 0 … R-1.

    Args:
        n_pos: R, the number of index values.
        sigma: σ > 0, in grid units.
    Returns:
        (R, R) symmetric kernel with ones on the diagonal.
    """
    R = require_int(n_pos, "n_pos", minimum=1)
    sigma = _positive(sigma, "sigma")
    idx = torch.arange(R, dtype=dtype, device=device)
    # K_ab = exp(-(a - b)² / (2σ²))
    return torch.exp(-((idx[:, None] - idx[None, :]) ** 2) / (2 * sigma**2))


def sinusoidal_pe(n_pos: int, dim: int, *, base: float = 10000.0, dtype=torch.float64, device=None) -> Tensor:
    """The sinusoidal table of Vaswani et al. (2017), for comparison with the Gaussian one.

    Args:
        n_pos: R index values; dim: an even width.
    Returns:
        (R, dim) with [2ν] = sin(a ω_ν), [2ν+1] = cos(a ω_ν), ω_ν = base^(-2ν/dim).
    """
    R = require_int(n_pos, "n_pos", minimum=1)
    dim = require_int(dim, "dim", minimum=2)
    if dim % 2:
        raise ValueError(f"dim must be even for sin/cos pairs, got {dim}")
    a = torch.arange(R, dtype=dtype, device=device)[:, None]  # (R, 1)
    # ω_ν = base^(-2ν/dim)
    omega = base ** (-torch.arange(0, dim, 2, dtype=dtype, device=device) / dim)  # (dim/2,)
    pe = torch.empty(R, dim, dtype=dtype, device=device)
    pe[:, 0::2] = torch.sin(a * omega)
    pe[:, 1::2] = torch.cos(a * omega)
    return pe


def cosine_gram(table: Tensor) -> Tensor:
    """cos(W_a, W_b) for every pair of rows: (R, C) -> (R, R)."""
    require_tensor(table, "table", ndim=2, floating=True, shape="(R, C)")
    unit = table / table.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # G_ab = W_a·W_b / (|W_a| |W_b|)
    return unit @ unit.T


def fit_gaussian_pe(
    n_pos: int, dim: int, sigma: float, steps: int = 1500, lr: float = 0.01, seed: int = 0
) -> Tensor:
    """Fit a position table whose cosine similarities follow a Gaussian kernel of the index distance.

    Args:
        n_pos: R index values (grid rows or columns).
        dim: C, the width of one row; an exact fit needs C ≥ R.
        sigma: σ > 0 of the kernel, in grid units.
        steps: Adam steps; lr: Adam's learning rate; seed: the seed of the N(0, 1) initial table.
    Returns:
        (R, C) float32 table W with cos(W_a, W_b) ≈ exp(-(a - b)² / (2σ²)) and equal row norms.
    """
    R = require_int(n_pos, "n_pos", minimum=1)
    C = require_int(dim, "dim", minimum=1)
    steps = require_int(steps, "steps", minimum=0)
    lr = _positive(lr, "lr")
    target = gaussian_kernel(R, sigma)  # (R, R) float64
    gen = torch.Generator().manual_seed(require_int(seed, "seed"))
    W = torch.randn(R, C, generator=gen, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([W], lr=lr)
    pairs = max(R * (R - 1), 1)
    for _ in range(steps):
        opt.zero_grad()
        norms = W.norm(dim=-1)  # (R,)
        # L = [Σ_ab (cos_ab - K_ab)² + mean_a (|W_a| - mean |W|)²] / (R (R - 1))
        loss = (((cosine_gram(W) - target) ** 2).sum() + ((norms - norms.mean()) ** 2).mean()) / pairs
        loss.backward()
        opt.step()
    return W.detach().float()


def object_tokens(app: Tensor, rc: Tensor, pe: Tensor) -> Tensor:
    """Object tokens e_i = [a_i ; W[r_i] ; W[c_i]].

    Args:
        app: (B, N, Da) appearance features, float.
        rc: (B, N, 2) integer grid indices (row, column), each in 0 … R-1.
        pe: (R, dp) position table, same dtype as app.
    Returns:
        (B, N, Da + 2 dp) in app's dtype: appearance first, then the row's and the column's encodings.
    """
    require_tensor(app, "app", ndim=3, floating=True, shape="(B, N, Da)")
    require_tensor(rc, "rc", ndim=3, shape="(B, N, 2)")
    require_tensor(pe, "pe", ndim=2, floating=True, shape="(R, dp)")
    if rc.dtype.is_floating_point or rc.dtype == torch.bool:
        raise TypeError(f"rc must hold integer grid indices, got {rc.dtype}")
    if rc.shape != (*app.shape[:2], 2):
        raise ValueError(f"rc must have shape {(*app.shape[:2], 2)} (B, N, 2), got {tuple(rc.shape)}")
    if rc.numel() and (rc.min() < 0 or rc.max() >= pe.shape[0]):
        raise ValueError(f"rc holds indices outside 0 … {pe.shape[0] - 1} (the rows of pe)")
    pe = pe.to(app.dtype)
    # e_i = [a_i ; W[r_i] ; W[c_i]]
    return torch.cat([app, pe[rc[..., 0]], pe[rc[..., 1]]], dim=-1)


def pointer_logits(
    enc: Tensor, dec: Tensor, We: Tensor, Wd: Tensor, readout: Tensor, pad: Tensor | None = None
) -> Tensor:
    """The next-object logits over N objects and "stop".

    Args:
        enc: (B, N, D) encoder outputs m_i (one per object).
        dec: (B, T, D) decoder states d_t (one per step).
        We: (C, D, dk) key projections, one per pointer head; Wd: (C, D, dk) query projections.
        readout: (C,) weights that combine the heads.
        pad: optional (B, N) bool, True where an object is padding.
    Returns:
        (B, T, N + 1) logits in enc's dtype: column i < N is Σ_c r_c (m_i W_e^c)·(d_t W_d^c)/sqrt(dk)
        (-inf where padded), column N (stop) is 0. Softmax over the last axis gives the prediction.
    """
    require_tensor(enc, "enc", ndim=3, floating=True, shape="(B, N, D)")
    require_tensor(dec, "dec", ndim=3, floating=True, shape="(B, T, D)")
    require_tensor(We, "We", ndim=3, floating=True, shape="(C, D, dk)")
    require_tensor(Wd, "Wd", ndim=3, floating=True, shape="(C, D, dk)")
    require_tensor(readout, "readout", ndim=1, floating=True, shape="(C,)")
    B, N, D = enc.shape
    if dec.shape[0] != B or dec.shape[2] != D:
        raise ValueError(f"dec must have shape (B={B}, T, D={D}), got {tuple(dec.shape)}")
    if We.shape[1] != D or Wd.shape != We.shape or readout.shape != We.shape[:1]:
        raise ValueError(
            f"We and Wd must both have shape (C, D={D}, dk) and readout (C,), got We {tuple(We.shape)}, "
            f"Wd {tuple(Wd.shape)}, readout {tuple(readout.shape)}"
        )
    if pad is not None:
        require_tensor(pad, "pad", ndim=2, shape="(B, N)")
        if pad.dtype != torch.bool:
            raise TypeError(f"pad must be a bool tensor, got {pad.dtype}")
        if pad.shape != (B, N):
            raise ValueError(f"pad must have shape (B={B}, N={N}), got {tuple(pad.shape)}")
    k = torch.einsum("bnd,cde->bcne", enc, We.to(enc.dtype))  # (B, C, N, dk)
    q = torch.einsum("btd,cde->bcte", dec, Wd.to(enc.dtype))  # (B, C, T, dk)
    # s^c_{t,i} = (d_t W_d^c)·(m_i W_e^c) / sqrt(dk)
    scores = q @ k.transpose(-2, -1) / math.sqrt(We.shape[-1])  # (B, C, T, N)
    # logit_{t,i} = Σ_c r_c s^c_{t,i}
    logits = torch.einsum("bctn,c->btn", scores, readout.to(enc.dtype))  # (B, T, N)
    if pad is not None:
        logits = logits.masked_fill(pad[:, None, :].to(logits.device), float("-inf"))
    # the stop logit is the constant 0, appended as column N
    return torch.cat([logits, logits.new_zeros(B, dec.shape[1], 1)], dim=-1)  # (B, T, N + 1)


class ObjectPointer(nn.Module):
    """``pointer_logits`` with learned W_e, W_d (C, D, dk) and readout (C,).

    Args:
        D: model width; C: pointer heads (2 in the paper's code); dk: the key width.
    """

    def __init__(self, D: int, C: int = 2, dk: int | None = None):
        super().__init__()
        D, C = require_int(D, "D", minimum=1), require_int(C, "C", minimum=1)
        dk = D if dk is None else require_int(dk, "dk", minimum=1)
        self.We = nn.Parameter(torch.randn(C, D, dk) / math.sqrt(D))
        self.Wd = nn.Parameter(torch.randn(C, D, dk) / math.sqrt(D))
        self.readout = nn.Parameter(torch.full((C,), 1.0 / C))

    def forward(self, enc: Tensor, dec: Tensor, pad: Tensor | None = None) -> Tensor:
        """(B, N, D), (B, T, D), (B, N) bool -> (B, T, N + 1) logits."""
        return pointer_logits(enc, dec, self.We, self.Wd, self.readout, pad)
