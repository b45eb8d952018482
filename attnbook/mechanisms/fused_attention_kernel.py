r"""Fused attention (FlashAttention) in plain PyTorch: the algorithm a fused kernel runs.

Notation of the book (book/notation.md). Start from one head of chapter 00, with the scale
τ = 1/sqrt(d) (the book's default):

    S = τ · Q Kᵀ ∈ R^{N×M},   A = softmax_j(S),   O = A V ∈ R^{N×d_v},   LSE_i = log Σ_j e^{S_ij}.

**Memory traffic.** Run as three kernels (S = τQKᵀ, A = softmax(S), O = AV), each kernel
reads its inputs from and writes its output to the GPU's main memory (HBM): Q, K, V, O once,
S and A once written and once read. That is 4·N·M + 2·(N + M)·d elements, quadratic in the
sequence length and dominant when d ≪ N; see :func:`naive_attention_traffic`.

**Online softmax.** Walk the keys of query row i in blocks and keep, after each block, the
running maximum m_i, the running sum ℓ_i of exponentials and the running unnormalised output
õ_i (``acc`` in code). For a new block 𝒥_t of scores s_j with values v_j:

    m_i' = max(m_i, max_{j∈𝒥_t} s_j)
    ℓ_i' = ℓ_i · e^{m_i − m_i'} + Σ_{j∈𝒥_t} e^{s_j − m_i'}
    õ_i' = õ_i · e^{m_i − m_i'} + Σ_{j∈𝒥_t} e^{s_j − m_i'} v_j

Invariant: after the blocks seen so far, ℓ_i = Σ_seen e^{s_j − m_i} and õ_i = Σ_seen e^{s_j − m_i} v_j
with m_i their maximum (multiplying an old term by e^{m − m'} turns e^{s − m} into e^{s − m'}).
At the end õ_i / ℓ_i = Σ_j e^{s_j} v_j / Σ_j e^{s_j} = o_i, since e^{−m_i} cancels, and
LSE_i = m_i + log ℓ_i. Every exponent is ≤ 0, so nothing overflows. The start state is
m_i = −∞, ℓ_i = 0, õ_i = 0 (a start at m_i = 0 would underflow ℓ_i to 0 on rows whose scores are
all far below 0). See :func:`online_softmax_update`.

**Tiling.** One program per (query block ℐ of T_q rows, batch·head) loads Q_ℐ once, streams
the key/value blocks K_𝒥t, V_𝒥t of T_k rows through fast on-chip memory (SRAM) and writes O_ℐ
and LSE_ℐ once: no N×M score or weight tensor is ever stored. See :func:`blocked_attention`
and :func:`fused_attention_traffic` (``block_m`` = T_q, ``block_n`` = T_k).

**Backward.** With LSE stored, A is recomputed as A_ij = exp(τ q_i·k_j − LSE_i). Then

    dV = Aᵀ dO,   dA = dO Vᵀ,   Δ_i = Σ_j A_ij dA_ij = rowsum(dO ∘ O)_i,
    dS = A ∘ (dA − Δ),   dQ = τ · dS K,   dK = τ · dSᵀ Q.

Δ needs no A: Σ_j A_ij (dO_i · v_j) = dO_i · o_i. See :func:`attention_backward`.

**Causal.** With the queries the last N of M positions (the book's convention, defined once in
:mod:`attnbook.masks`), query i sits at position p_i = i + M − N and sees keys j ≤ p_i; this
needs M ≥ N. A (query block, key block) tile is skipped when its first key is beyond the last
query's reach, computed without a mask when its last key is within the first query's reach, and
masked element-wise otherwise (the diagonal). See :func:`causal_tile_schedule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention import attention_scores
from ..masks import apply_mask, causal_mask, query_positions
from ..validate import check_qkv, check_scale, require_int, require_tensor

__all__ = [
    "TILE_SKIPPED",
    "TILE_FULL",
    "TILE_MASKED",
    "Traffic",
    "naive_attention_traffic",
    "fused_attention_traffic",
    "attention_flops",
    "causal_tile_schedule",
    "online_softmax_update",
    "blocked_attention",
    "attention_backward",
]

TILE_SKIPPED, TILE_FULL, TILE_MASKED = 0, 1, 2


# --------------------------------------------------------------------------------------------
# Counting: memory traffic and FLOPs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Traffic:
    """Elements read from and written to main memory (multiply by the element size for bytes)."""

    reads: int
    writes: int

    @property
    def total(self) -> int:
        return self.reads + self.writes

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.reads + other.reads, self.writes + other.writes)


def _positive_ints(**values: object) -> list[int]:
    """Each value as a Python int >= 1 (a TypeError for 3.5 or True, a ValueError for 0)."""
    return [require_int(value, name, minimum=1) for name, value in values.items()]


def naive_attention_traffic(N: int, d: int, M: int | None = None, *, backward: bool = False) -> Traffic:
    """Main-memory traffic of standard attention for one head (FlashAttention's Algorithms 0 and 3).

    Forward, three kernels: S = τ·QKᵀ reads Q, K and writes S; A = softmax(S) reads S and
    writes A; O = AV reads A, V and writes O. Backward, five: dV = Aᵀ dO; dA = dO Vᵀ;
    dS = A ∘ (dA − rowsum(A ∘ dA)) reads A and dA; dQ = τ·dS K; dK = τ·dSᵀ Q.
    """
    N, M, d = _positive_ints(N=N, M=N if M is None else M, d=d)
    # forward: (Q, K) -> S, S -> A, (A, V) -> O
    t = Traffic(reads=N * d + M * d + N * M + N * M + M * d, writes=N * M + N * M + N * d)
    if backward:
        t += Traffic(
            reads=(N * M + N * d) + (N * d + M * d) + 2 * N * M + (N * M + M * d) + (N * M + N * d),
            writes=M * d + N * M + N * M + N * d + M * d,
        )  # dV, dA, dS, dQ, dK
    return t


def fused_attention_traffic(
    N: int,
    d: int,
    M: int | None = None,
    *,
    block_m: int = 64,
    block_n: int = 64,
    causal: bool = False,
    backward: bool = False,
    cache_reuse: bool = False,
) -> Traffic:
    """Main-memory traffic of a tiled (fused) attention kernel for one head.

    Forward: each query block reads its Q rows once, the K and V blocks of every tile it
    computes, and writes its O rows and their log-sum-exp LSE. Backward (two kernels plus a
    preprocessing pass, as in FlashAttention-2 and Triton's tutorial): Δ = rowsum(dO ∘ O);
    per key block, read K, V and, for every computed tile, Q, dO, LSE, Δ, then write dK, dV;
    per query block, read Q, dO, LSE, Δ and, for every computed tile, K, V, then write dQ.

    With ``cache_reuse=True``, a block that several programs read counts once (the book's
    model of reads served by the GPU's L2 cache): what remains is the compulsory O(N·d) traffic.
    """
    N, M, d, block_m, block_n = _positive_ints(
        N=N, M=N if M is None else M, d=d, block_m=block_m, block_n=block_n
    )
    sched = causal_tile_schedule(N, M, block_m, block_n, causal=causal)  # (Tm, Tn)
    rows = torch.tensor([min(block_m, N - i) for i in range(0, N, block_m)])  # (Tm,)
    cols = torch.tensor([min(block_n, M - j) for j in range(0, M, block_n)])  # (Tn,)
    done = sched != TILE_SKIPPED  # tiles computed
    if cache_reuse:  # each block is read once however many tiles use it
        kv_cols = int(cols[done.any(0)].sum())  # keys that some tile needs
        t = Traffic(reads=N * d + 2 * kv_cols * d, writes=N * d + N)
        if backward:
            t += Traffic(reads=2 * N * d, writes=N)  # Δ = rowsum(dO ∘ O)
            t += Traffic(reads=2 * M * d + N * (2 * d + 2), writes=2 * M * d)  # dK, dV
            t += Traffic(reads=N * (2 * d + 2) + 2 * kv_cols * d, writes=N * d)  # dQ
        return t
    kv_reads = int((done * cols[None, :]).sum())  # Σ over computed tiles of the key block's rows
    q_reads = int((done * rows[:, None]).sum())  # Σ over computed tiles of the query block's rows
    t = Traffic(reads=N * d + 2 * d * kv_reads, writes=N * d + N)
    if backward:
        t += Traffic(reads=2 * N * d, writes=N)
        t += Traffic(reads=2 * M * d + (2 * d + 2) * q_reads, writes=2 * M * d)
        t += Traffic(reads=N * (2 * d + 2) + 2 * d * kv_reads, writes=N * d)
    return t


def attention_flops(
    N: int, d: int, M: int | None = None, *, causal: bool = False, mode: str = "fwd"
) -> float:
    """Matmul FLOPs of attention for one head: 4·N·M·d forward (QKᵀ and AV, 2 FLOPs per
    multiply-add), half of it when causal, 2.5× the forward for the backward (five matmuls,
    one of them recomputing S), 3.5× for forward + backward."""
    N, M, d = _positive_ints(N=N, M=N if M is None else M, d=d)
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
    if mode not in factor:
        raise ValueError(f"mode must be one of {sorted(factor)}, got {mode!r}")
    return 4.0 * N * M * d * (0.5 if causal else 1.0) * factor[mode]


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------
def causal_tile_schedule(N: int, M: int, block_m: int, block_n: int, *, causal: bool = True) -> Tensor:
    """What a tiled kernel does with each (query block, key block) tile.

    Returns a (ceil(N / block_m), ceil(M / block_n)) integer tensor: TILE_SKIPPED (no key of
    the tile is visible to any query of it), TILE_FULL (every key visible to every query: no
    mask) or TILE_MASKED (on the diagonal: an element-wise causal mask). Query i sits at
    position p_i (:func:`attnbook.masks.query_positions`) and sees keys j ≤ p_i, as in
    :func:`attnbook.masks.causal_mask`; causal needs M ≥ N. Without ``causal`` every tile is full.
    """
    N, M, block_m, block_n = _positive_ints(N=N, M=M, block_m=block_m, block_n=block_n)
    i0 = torch.arange(0, N, block_m)  # first query of each block  (Tm,)
    j0 = torch.arange(0, M, block_n)  # first key of each block    (Tn,)
    sched = torch.full((len(i0), len(j0)), TILE_FULL, dtype=torch.long)
    if not causal:
        return sched
    p = query_positions(N, M)  # (N,) p_i = i + M - N; a ValueError for M < N, as causal_mask gives
    p_first = p[i0]  # (Tm,) position of each block's first query
    p_last = p[torch.clamp(i0 + block_m, max=N) - 1]  # (Tm,) ... and of its last query
    j1 = torch.clamp(j0 + block_n, max=M) - 1  # (Tn,) last key of each block
    # causal: query i sees key j iff j <= p_i (masks.causal_mask). A tile is skipped when even its
    # last query cannot see its first key, full when even its first query sees its last key.
    skipped = j0[None, :] > p_last[:, None]  # (Tm, Tn)
    full = j1[None, :] <= p_first[:, None]  # (Tm, Tn)
    sched[~full] = TILE_MASKED
    sched[skipped] = TILE_SKIPPED
    return sched


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------
def online_softmax_update(
    m: Tensor, l: Tensor, acc: Tensor, s_block: Tensor, v_block: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """One step of the online softmax: fold a block of scores and values into the running state.

    Args:
        m: running maximum m_i (..., N); −∞ before the first block.
        l: running sum ℓ_i of exponentials (..., N), relative to m; 0 before the first block.
        acc: running unnormalised output õ_i (..., N, d_v), relative to m; 0 before the first block.
        s_block: the new scores (..., N, T_k); −∞ marks a hidden key.
        v_block: the new values (..., T_k, d_v).

    Returns:
        (m', ℓ', õ') with the same shapes. The attention output is õ / ℓ at the end.
    """
    if s_block.shape[:-1] != m.shape or l.shape != m.shape or acc.shape[:-1] != m.shape:
        raise ValueError(
            f"m and l must be (..., N) and acc (..., N, d_v), s_block (..., N, Bn); got m {tuple(m.shape)}, "
            f"l {tuple(l.shape)}, acc {tuple(acc.shape)}, s_block {tuple(s_block.shape)}"
        )
    if v_block.shape[-2] != s_block.shape[-1] or v_block.shape[-1] != acc.shape[-1]:
        raise ValueError(
            f"v_block must be (..., Bn, d_v) = (..., {s_block.shape[-1]}, {acc.shape[-1]}), "
            f"got {tuple(v_block.shape)}"
        )
    # m' = max(m, max_j s_j)
    m_new = torch.maximum(m, s_block.amax(dim=-1))
    # a row that has seen only hidden keys keeps m' = −∞: subtract 0 there (exp gives 0, not NaN)
    m_ref = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    # e^{m − m'} rescales what was accumulated relative to the old maximum
    alpha = torch.exp(m - m_ref)  # (..., N)
    p = torch.exp(s_block - m_ref[..., None])  # (..., N, Bn)
    # ℓ' = ℓ·e^{m − m'} + Σ_j e^{s_j − m'}
    l_new = l * alpha + p.sum(dim=-1)
    # õ' = õ·e^{m − m'} + Σ_j e^{s_j − m'} v_j
    acc_new = acc * alpha[..., None] + p @ v_block  # (..., N, d_v)
    return m_new, l_new, acc_new


def _check_bhnd(q: Tensor, k: Tensor, v: Tensor) -> None:
    """q (B, H, N, d), k (B, H, M, d), v (B, H, M, d_v): attnbook.validate's checks, 4-D."""
    for name, t, shape in (("q", q, "(B, H, N, d)"), ("k", k, "(B, H, M, d)"), ("v", v, "(B, H, M, d_v)")):
        require_tensor(t, name, ndim=4, shape=shape)
    check_qkv(q, k, v)


def _counter(traffic: dict | None) -> dict:
    """The dict that tallies loaded ("reads") and stored ("writes") elements."""
    count = traffic if traffic is not None else {}
    for key in ("reads", "writes"):
        count.setdefault(key, 0)
    return count


def _tile_scores(q_i: Tensor, k_j: Tensor, scale: float, visible: Tensor | None) -> Tensor:
    """τ·Q_ℐ K_𝒥ᵀ for one tile (B, H, bm, bn), −∞ where ``visible`` (bm, bn) is False.

    ``visible`` is the tile's slice of :func:`attnbook.masks.causal_mask` on masked tiles, None
    on full ones.
    """
    # S = τ · Q_ℐ K_𝒥ᵀ, then −∞ where the mask hides a key
    return apply_mask(attention_scores(q_i, k_j, scale), visible)


def blocked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_m: int = 16,
    block_n: int = 16,
    *,
    causal: bool = False,
    scale: float | None = None,
    traffic: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """Softmax attention computed tile by tile with the online softmax, as a fused kernel does.

    Args:
        q: (B, H, N, d); k: (B, H, M, d); v: (B, H, M, d_v).
        block_m, block_n: rows of a query block (T_q) and of a key block (T_k); any N, M (ragged
            last blocks).
        causal: queries are the last N of M positions (needs M >= N, as
            :func:`attnbook.masks.causal_mask`); skipped tiles are never computed.
        scale: multiplies q·k; default 1/sqrt(d).
        traffic: a dict that, when given, receives the elements this loop "loads" and "stores"
            (keys "reads" and "writes"), as if q, k, v, out, lse lived in main memory.

    Returns:
        out (B, H, N, d_v) and lse (B, H, N), the log-sum-exp of each query's scores.
    """
    _check_bhnd(q, k, v)
    B, H, N, d = q.shape
    M = k.shape[2]
    scale = 1.0 / math.sqrt(d) if scale is None else check_scale(scale)
    sched = causal_tile_schedule(N, M, block_m, block_n, causal=causal)
    mask = causal_mask(N, M, device=q.device) if causal else None  # (N, M): sliced on masked tiles
    out = torch.empty(*v.shape[:2], N, v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, N, d_v)
    lse = torch.empty(B, H, N, dtype=q.dtype, device=q.device)
    count = _counter(traffic)
    for ti, i0 in enumerate(range(0, N, block_m)):
        rows = range(i0, min(i0 + block_m, N))
        q_i = q[:, :, i0 : rows.stop]  # (B, H, bm, d): loaded once
        count["reads"] += len(rows) * d
        m = torch.full((B, H, len(rows)), float("-inf"), dtype=q.dtype, device=q.device)
        l = torch.zeros(B, H, len(rows), dtype=q.dtype, device=q.device)
        acc = torch.zeros(B, H, len(rows), v.shape[-1], dtype=q.dtype, device=q.device)
        for tj, j0 in enumerate(range(0, M, block_n)):
            if sched[ti, tj] == TILE_SKIPPED:
                continue
            cols = range(j0, min(j0 + block_n, M))
            k_j, v_j = k[:, :, j0 : cols.stop], v[:, :, j0 : cols.stop]  # (B, H, bn, d), (B, H, bn, d_v)
            count["reads"] += len(cols) * (d + v.shape[-1])
            visible = mask[i0 : rows.stop, j0 : cols.stop] if sched[ti, tj] == TILE_MASKED else None
            s = _tile_scores(q_i, k_j, scale, visible)
            m, l, acc = online_softmax_update(m, l, acc, s, v_j)
        # O = õ / ℓ; LSE = m + log ℓ  (every query sees at least one key: ℓ > 0)
        out[:, :, i0 : rows.stop] = acc / l[..., None]
        lse[:, :, i0 : rows.stop] = m + torch.log(l)
        count["writes"] += len(rows) * (v.shape[-1] + 1)
    return out, lse


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------
def attention_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    do: Tensor,
    lse: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    traffic: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of softmax attention from the forward's output and log-sum-exp alone.

    Args:
        q (B, H, N, d), k (B, H, M, d), v (B, H, M, d_v): the forward's inputs.
        o (B, H, N, d_v), lse (B, H, N): the forward's output and log-sum-exp.
        do (B, H, N, d_v): the gradient of the loss with respect to o.
        causal, scale: as in the forward.
        block_m, block_n: when given, compute tile by tile in two loops, as a kernel does:
            dK, dV per key block (looping over query blocks), then dQ per query block.
        traffic: with blocks, a dict receiving the elements "reads" and "writes".

    Returns:
        dq (B, H, N, d), dk (B, H, M, d), dv (B, H, M, d_v).
    """
    _check_bhnd(q, k, v)
    N, M, d = q.shape[2], k.shape[2], q.shape[-1]
    if o.shape != do.shape or o.shape != (*q.shape[:3], v.shape[-1]) or lse.shape != q.shape[:3]:
        raise ValueError(
            f"o and do must be (B, H, N, d_v) = {(*q.shape[:3], v.shape[-1])} and lse (B, H, N); got "
            f"o {tuple(o.shape)}, do {tuple(do.shape)}, lse {tuple(lse.shape)}"
        )
    scale = 1.0 / math.sqrt(d) if scale is None else check_scale(scale)
    mask = causal_mask(N, M, device=q.device) if causal else None  # (N, M)
    # Δ_i = Σ_j A_ij dA_ij = rowsum(dO ∘ O)
    delta = (do * o).sum(dim=-1)  # (B, H, N)
    if block_m is None or block_n is None:
        s = _tile_scores(q, k, scale, mask)  # (B, H, N, M)
        a = torch.exp(s - lse[..., None])  # A = exp(S − LSE), recomputed
        dv = a.transpose(-2, -1) @ do  # dV = Aᵀ dO
        da = do @ v.transpose(-2, -1)  # dA = dO Vᵀ
        ds = a * (da - delta[..., None])  # dS = A ∘ (dA − Δ)
        return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, dv  # dQ = τ·dS K, dK = τ·dSᵀ Q
    sched = causal_tile_schedule(N, M, block_m, block_n, causal=causal)
    count = _counter(traffic)
    count["reads"] += 2 * N * v.shape[-1]
    count["writes"] += N  # the pass computing Δ
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)

    def tile(i0, j0):
        rows, cols = range(i0, min(i0 + block_m, N)), range(j0, min(j0 + block_n, M))
        qi, kj, vj, doi = (
            q[:, :, i0 : rows.stop],
            k[:, :, j0 : cols.stop],
            v[:, :, j0 : cols.stop],
            do[:, :, i0 : rows.stop],
        )
        masked = sched[i0 // block_m, j0 // block_n] == TILE_MASKED
        s = _tile_scores(qi, kj, scale, mask[i0 : rows.stop, j0 : cols.stop] if masked else None)
        p = torch.exp(s - lse[:, :, i0 : rows.stop, None])  # (B, H, bm, bn)
        ds = p * (doi @ vj.transpose(-2, -1) - delta[:, :, i0 : rows.stop, None])  # A ∘ (dA − Δ)
        return rows, cols, qi, kj, doi, p, ds

    for j0 in range(0, M, block_n):  # kernel 1: one program per key block
        count["reads"] += 2 * min(block_n, M - j0) * d
        for i0 in range(0, N, block_m):
            if sched[i0 // block_m, j0 // block_n] == TILE_SKIPPED:
                continue
            rows, cols, qi, kj, doi, p, ds = tile(i0, j0)
            count["reads"] += len(rows) * (2 * d + 2)  # Q_ℐ, dO_ℐ, LSE_ℐ, Δ_ℐ
            dv[:, :, j0 : cols.stop] += p.transpose(-2, -1) @ doi
            dk[:, :, j0 : cols.stop] += ds.transpose(-2, -1) @ qi * scale
        count["writes"] += 2 * min(block_n, M - j0) * d
    for i0 in range(0, N, block_m):  # kernel 2: one program per query block
        count["reads"] += min(block_m, N - i0) * (2 * d + 2)
        for j0 in range(0, M, block_n):
            if sched[i0 // block_m, j0 // block_n] == TILE_SKIPPED:
                continue
            rows, cols, qi, kj, doi, p, ds = tile(i0, j0)
            count["reads"] += 2 * len(cols) * d  # K_𝒥, V_𝒥
            dq[:, :, i0 : rows.stop] += ds @ kj * scale
        count["writes"] += min(block_m, N - i0) * d
    return dq, dk, dv
