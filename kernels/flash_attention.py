r"""Fused attention (FlashAttention-2 style) in Triton: forward and backward kernels.

For one head, with scale s (default 1/sqrt(d)), queries q_i, keys k_j and values v_j:

    S = s · Q Kᵀ ∈ R^{N×M},   P = softmax_row(S),   O = P V ∈ R^{N×d},   L_i = log Σ_j e^{S_ij}.

**Memory traffic.** Unfused, as three kernels (S = QKᵀ, P = softmax(S), O = PV), one head with
M = N moves 3·N·d (read Q, K, V) + N² (write S) + 2·N² (read S, write P) + N² (read P) + N·d
(write O) elements: 4·N² + 4·N·d, and for d ≪ N the N² terms dominate. Fused, one program per
(query block, batch·head) keeps its S and P tiles on chip: HBM sees Q, O and L once and K, V once
per query block (mostly L2 hits), 4·N·d elements of compulsory traffic per head.

**Forward (online softmax).** A program owns BLOCK_M query rows and walks the keys in blocks
of BLOCK_N, keeping per row the running max m, running sum l and unnormalised output acc:

    m'   = max(m, max_j S_ij)
    l'   = l · e^{m − m'} + Σ_j e^{S_ij − m'}
    acc' = acc · e^{m − m'} + Σ_j e^{S_ij − m'} v_j

and at the end O_i = acc_i / l_i and L_i = m_i + log l_i. We compute e^x as 2^{x·log2 e} and fold
log2 e into the scale (`qk_scale = s · log2 e`), so m lives in base-2 units inside the kernel; the
stored L is converted back to natural log.

**Backward.** With L stored, P is recomputed from Q, K instead of being stored (N² bytes saved):

    P_ij = exp(S_ij − L_i),   D_i = rowsum(dO ∘ O)_i   (= Σ_j P_ij dP_ij),
    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − D),   dQ = s · dS K,   dK = s · dSᵀ Q.

We use three launches and no atomics: (1) a preprocess kernel computes D; (2) one program per
key block accumulates dK, dV over the query blocks that see it; (3) one program per query block
accumulates dQ over the key blocks it sees. Compared with a single kernel that adds dQ with
atomics, this recomputes S and dP once more (7 block matmuls instead of 5), but every output
tile has exactly one writer: no fp32 dQ scratch, no atomics, and a deterministic result.

**Causal.** With N ≤ M the queries are the *last* N of M positions (as when decoding with a
cache; chapter 00's convention): query i sees keys j ≤ i + (M − N). Key blocks entirely in the
future are skipped; blocks entirely in the past run an unmasked loop; only the few blocks on
the diagonal (and the ragged last block of a sequence) run a loop with masks.

Shapes: B batch, H heads, N queries, M keys, d head width (16, 32, 64 or 128).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["flash_attention", "attention_reference", "HEAD_DIMS"]

# Triton chooses between compiling and interpreting when @triton.jit runs, i.e. when this module
# is imported: read the switch once, here.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# ATTNBOOK_AUTOTUNE=0 runs the first config of each list below instead of timing all of them.
AUTOTUNE = os.environ.get("ATTNBOOK_AUTOTUNE", "1") != "0" and not INTERPRET
# Forward loads through tensor descriptors (Hopper's bulk tensor copy engine) where supported;
# ATTNBOOK_TMA=0 forces plain pointer loads. Read at call time, so a benchmark may flip it.
USE_TMA = os.environ.get("ATTNBOOK_TMA", "1") != "0"

HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log2(e): e^x = 2^(x·log2 e)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _load_rows(src, row0, n_rows, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
               MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """Rows [row0, row0 + BLOCK) of one head's (n_rows, HEAD_DIM) matrix; rows >= n_rows read 0.

    `src` is a tensor descriptor (USE_TMA; the copy engine zero-fills out-of-range rows) or the
    head's base pointer (rows are HEAD_DIM apart; MASKED adds the bounds check).
    """
    if USE_TMA:
        return src.load([row0, 0])
    else:
        rows = row0 + tl.arange(0, BLOCK)
        ptrs = src + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        if MASKED:
            return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            return tl.load(ptrs)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, start, end, offs_m, N_KV, diag, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """Fold key blocks [start, end) into the online-softmax state (acc, l_i, m_i) of BLOCK_M rows."""
    # Per iteration: read one K and one V tile, 2·BLOCK_N·d elements (L2 hits for most programs);
    # compute 2 matmuls of BLOCK_M·BLOCK_N·d multiply-adds each. Nothing is written.
    for start_n in range(start, end, BLOCK_N):
        k = _load_rows(k_src, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, USE_TMA)  # (BLOCK_N, d)
        # S_ij / s = q_i · k_j   (fp32 accumulate; the scale goes into the exponent below)
        qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N)
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            keep = offs_n[None, :] < N_KV  # keys past the end of the sequence
            if CAUSAL:
                # query i sees key j iff j <= i + (M - N)
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        # m' = max(m, max_j S_ij)   (base-2 units: S·log2 e)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # p_ij = e^{S_ij − m'} = 2^{qk·s·log2 e − m'}
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        # e^{m − m'}: rescales what was accumulated under the old max
        alpha = tl.math.exp2(m_i - m_new)
        # l' = l·e^{m − m'} + Σ_j p_ij
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_src, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, USE_TMA)  # (BLOCK_N, d)
        # acc' = acc·e^{m − m'} + p V   (p rounded to the input dtype for the tensor cores)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["N_Q", "N_KV"])
def _attn_fwd(Q, K, V, O, LSE, qk_scale, N_Q, N_KV,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, USE_TMA: tl.constexpr):
    """O = softmax(s·QKᵀ)V and L = logsumexp(s·QKᵀ) for BLOCK_M queries of one (batch, head).

    Q, O: (B·H, N_Q, d); K, V: (B·H, N_KV, d), contiguous; LSE: (B·H, N_Q) float32.
    Grid: (cdiv(N_Q, BLOCK_M), B·H).
    """
    pid_m = tl.program_id(0)
    if CAUSAL:
        # Later query blocks see more keys: launch them first so the short ones fill the tail.
        pid_m = tl.num_programs(0) - 1 - pid_m
    bh = tl.program_id(1).to(tl.int64)  # int64: B·H·N·d may exceed 2^31
    m0 = pid_m * BLOCK_M
    q_base = Q + bh * N_Q * HEAD_DIM
    k_base = K + bh * N_KV * HEAD_DIM
    v_base = V + bh * N_KV * HEAD_DIM
    o_base = O + bh * N_Q * HEAD_DIM
    if USE_TMA:
        # One descriptor per head: its shape bounds the copies, so ragged tails are zero-filled
        # on load and clipped on store, and nothing spills into the next head.
        q_src = tl.make_tensor_descriptor(q_base, [N_Q, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_M, HEAD_DIM])
        k_src = tl.make_tensor_descriptor(k_base, [N_KV, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(v_base, [N_KV, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_N, HEAD_DIM])
    else:
        q_src = q_base
        k_src = k_base
        v_src = v_base

    offs_m = m0 + tl.arange(0, BLOCK_M)
    # HBM traffic of this program: read BLOCK_M·d of Q once ...
    q = _load_rows(q_src, m0, N_Q, HEAD_DIM, BLOCK_M, True, USE_TMA)  # (BLOCK_M, d)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    diag = N_KV - N_Q  # causal: query i sees keys j <= i + diag
    if CAUSAL:
        # keys j <= m0 + diag are visible to every row: unmasked up to that block boundary
        full_end = tl.minimum((m0 + diag + 1) // BLOCK_N * BLOCK_N, N_KV // BLOCK_N * BLOCK_N)
        # the block's last row sees keys j <= m0 + BLOCK_M - 1 + diag: later blocks are skipped
        masked_end = tl.minimum(m0 + BLOCK_M + diag, N_KV)
    else:
        full_end = N_KV // BLOCK_N * BLOCK_N
        masked_end = N_KV
    # ... K and V, all blocks up to masked_end (a causal program reads about half) ...
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, 0, full_end, offs_m, N_KV, diag,
                               qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_src, v_src, full_end, masked_end, offs_m, N_KV,
                               diag, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True, USE_TMA)

    # O_i = acc_i / l_i
    out = (acc / l_i[:, None]).to(O.dtype.element_ty)
    # L_i = log Σ_j e^{S_ij} = (m_i + log2 l_i) · ln 2
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    # ... and write BLOCK_M·d of O and BLOCK_M floats of L once.
    tl.store(LSE + bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
    if USE_TMA:
        o_dst = tl.make_tensor_descriptor(o_base, [N_Q, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_M, HEAD_DIM])
        o_dst.store([m0, 0], out)
    else:
        o_ptrs = o_base + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
        tl.store(o_ptrs, out, mask=offs_m[:, None] < N_Q)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N_Q"])
def _attn_bwd_preprocess(O, DO, DELTA, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """D = rowsum(dO ∘ O): (B·H, N_Q) float32 from O, dO: (B·H, N_Q, d). Grid (cdiv(N_Q, BLOCK_M), B·H)."""
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs = bh * N_Q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    rows = offs_m[:, None] < N_Q
    # Traffic: read 2·BLOCK_M·d, write BLOCK_M floats.
    o = tl.load(O + offs, mask=rows, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=rows, other=0.0).to(tl.float32)
    # D_i = Σ_c dO_ic O_ic   (equals Σ_j P_ij dP_ij, but needs no P)
    tl.store(DELTA + bh * N_Q + offs_m, tl.sum(o * do, 1), mask=offs_m < N_Q)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, start, end, offs_n, N_Q,
                    diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    CAUSAL: tl.constexpr, MASKED: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [start, end).

    Keys sit on the rows (the transposed problem), so Pᵀ and dSᵀ come out of one matmul already
    shaped as the left operand of the next. Query rows >= N_Q load as zeros (q = dO = 0, L = D = 0),
    which makes their contributions to dV = Pᵀ dO and dK = dSᵀ Q exactly zero.
    """
    # Per iteration: read q, dO tiles (2·BLOCK_M·d elements) and 2·BLOCK_M floats of L, D;
    # compute 4 matmuls (Sᵀ, dPᵀ, dV, dK) of BLOCK_N·BLOCK_M·d multiply-adds each.
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
        if MASKED:
            lse = tl.load(lse_ptr + offs_m, mask=offs_m < N_Q, other=0.0)
        else:
            lse = tl.load(lse_ptr + offs_m)
        # Sᵀ_ji / s = k_j · q_i
        qkT = tl.dot(k, tl.trans(q))  # (BLOCK_N, BLOCK_M)
        # Pᵀ_ji = e^{S_ij − L_i} = 2^{qk·s·log2 e − L_i·log2 e}
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :] * 1.4426950408889634)
        if MASKED:
            if CAUSAL:
                pT = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, pT, 0.0)
        do = _load_rows(do_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
        # dV_j += Σ_i P_ij dO_i
        dv = tl.dot(pT.to(do.dtype), do, dv)
        if MASKED:
            delta = tl.load(delta_ptr + offs_m, mask=offs_m < N_Q, other=0.0)
        else:
            delta = tl.load(delta_ptr + offs_m)
        # dPᵀ_ji = v_j · dO_i
        dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        # dSᵀ_ji = P_ij (dP_ij − D_i)
        dsT = pT * (dpT - delta[None, :])
        # dK_j += Σ_i dS_ij q_i   (times s, once, at the end)
        dk = tl.dot(dsT.to(q.dtype), q, dk)
    return dk, dv


@triton.jit(do_not_specialize=["N_Q", "N_KV"])
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale, qk_scale, N_Q, N_KV,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   CAUSAL: tl.constexpr):
    """dK, dV for BLOCK_N keys of one (batch, head). Shapes as in _attn_fwd; dO like O, dK, dV like K.

    Grid: (cdiv(N_KV, BLOCK_N), B·H).
    """
    bh = tl.program_id(1).to(tl.int64)
    n0 = tl.program_id(0) * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    kv_off = bh * N_KV * HEAD_DIM
    q_base = Q + bh * N_Q * HEAD_DIM
    do_base = DO + bh * N_Q * HEAD_DIM
    lse_ptr = LSE + bh * N_Q
    delta_ptr = DELTA + bh * N_Q
    # Traffic: read BLOCK_N·d of K and V once, then stream Q and dO (L2 hits for most programs);
    # write BLOCK_N·d of dK and dV once. Key rows >= N_KV load as 0 and are never stored.
    k = _load_rows(K + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
    v = _load_rows(V + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag = N_KV - N_Q
    q_full_end = N_Q // BLOCK_M * BLOCK_M  # end of the complete query blocks
    q_end = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M
    if CAUSAL:
        # query i sees key j iff i >= j − diag: the first query block to see key n0 ...
        lo = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
        # ... and the first block whose every row sees all BLOCK_N keys (no mask needed)
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
    else:
        lo = 0
        full_lo = 0
    # the diagonal blocks, with the causal mask
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, lo,
                             tl.minimum(full_lo, q_end), offs_n, N_Q, diag, qk_scale,
                             HEAD_DIM, BLOCK_M, CAUSAL, True)
    # the blocks every row of which sees every key: no masks at all
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, full_lo,
                             q_full_end, offs_n, N_Q, diag, qk_scale,
                             HEAD_DIM, BLOCK_M, CAUSAL, False)
    # the ragged last query block, if any, with bounds checks
    dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr,
                             tl.maximum(full_lo, q_full_end), q_end, offs_n, N_Q, diag, qk_scale,
                             HEAD_DIM, BLOCK_M, CAUSAL, True)

    # dK = s · dSᵀ Q
    dk = dk * sm_scale
    ptrs = kv_off + offs_n[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    tl.store(DK + ptrs, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < N_KV)
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < N_KV)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, start, end, offs_m, N_KV, diag, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                  MASKED: tl.constexpr):
    """Accumulate dQ of one query block over key blocks [start, end)."""
    # Per iteration: read K and V tiles (2·BLOCK_N·d elements); 3 matmuls (S, dP, dQ).
    for start_n in range(start, end, BLOCK_N):
        k = _load_rows(k_base, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, False)  # (BLOCK_N, d)
        v = _load_rows(v_base, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, False)  # (BLOCK_N, d)
        # S_ij / s = q_i · k_j
        qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N)
        # P_ij = 2^{qk·s·log2 e − L_i·log2 e}
        p = tl.math.exp2(qk * qk_scale - lse[:, None])
        if MASKED:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            keep = offs_n[None, :] < N_KV
            if CAUSAL:
                keep = keep & (offs_n[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        # dP_ij = dO_i · v_j
        dp = tl.dot(do, tl.trans(v))  # (BLOCK_M, BLOCK_N)
        # dS_ij = P_ij (dP_ij − D_i)
        ds = p * (dp - delta[:, None])
        # dQ_i += Σ_j dS_ij k_j   (times s at the end)
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit(do_not_specialize=["N_Q", "N_KV"])
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, sm_scale, qk_scale, N_Q, N_KV,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 CAUSAL: tl.constexpr):
    """dQ for BLOCK_M queries of one (batch, head). Grid: (cdiv(N_Q, BLOCK_M), B·H)."""
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest rows first, as in the forward
    bh = tl.program_id(1).to(tl.int64)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    q_off = bh * N_Q * HEAD_DIM
    # Traffic: read q, dO (2·BLOCK_M·d) and L, D once; stream K, V; write dQ (BLOCK_M·d) once.
    q = _load_rows(Q + q_off, m0, N_Q, HEAD_DIM, BLOCK_M, True, False)  # (BLOCK_M, d)
    do = _load_rows(DO + q_off, m0, N_Q, HEAD_DIM, BLOCK_M, True, False)  # (BLOCK_M, d)
    lse = tl.load(LSE + bh * N_Q + offs_m, mask=offs_m < N_Q, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh * N_Q + offs_m, mask=offs_m < N_Q, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    k_base = K + bh * N_KV * HEAD_DIM
    v_base = V + bh * N_KV * HEAD_DIM

    diag = N_KV - N_Q
    if CAUSAL:  # the same key ranges as the forward
        full_end = tl.minimum((m0 + diag + 1) // BLOCK_N * BLOCK_N, N_KV // BLOCK_N * BLOCK_N)
        masked_end = tl.minimum(m0 + BLOCK_M + diag, N_KV)
    else:
        full_end = N_KV // BLOCK_N * BLOCK_N
        masked_end = N_KV
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, 0, full_end, offs_m, N_KV, diag,
                       qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, full_end, masked_end, offs_m, N_KV,
                       diag, qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True)
    # dQ = s · dS K
    dq = dq * sm_scale
    ptrs = q_off + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    tl.store(DQ + ptrs, dq.to(DQ.dtype.element_ty), mask=offs_m[:, None] < N_Q)


# ---------------------------------------------------------------------------------------------
# Tile configurations and launching
# ---------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M counts queries, BLOCK_N keys, in every kernel.
# The first entry of each list is the one used without autotuning (ATTNBOOK_AUTOTUNE=0).
# The interpreter ignores warps and stages; its blocks stay >= 16 (a GPU's tl.dot minimum) and
# mirror the GPU's shapes (forward and dQ: more queries than keys; dK/dV: the reverse).
INTERPRETER_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}

_HOPPER = {  # sm_90: 228 KB shared memory per SM; wgmma wants 4·k warps. Chosen to stay under
    # 255 registers without spills (ptxas report of a local sm_90 compile; see NOTES.md).
    ("fwd", 128): [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 64, 8, 5), (128, 128, 8, 2),
                   (64, 64, 4, 3)],
    ("fwd", 64): [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 4, 3), (64, 64, 4, 3)],
    ("fwd", 32): [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 4, 3)],
    ("dkdv", 128): [(32, 128, 8, 3), (64, 64, 8, 3), (32, 128, 8, 4), (32, 64, 4, 3), (32, 64, 4, 4),
                    (16, 128, 8, 3), (64, 128, 8, 2)],
    ("dkdv", 64): [(64, 128, 8, 3), (32, 128, 8, 3), (64, 64, 4, 4), (32, 64, 4, 3), (32, 128, 4, 5)],
    ("dkdv", 32): [(32, 128, 4, 4), (64, 64, 4, 3)],
    ("dq", 128): [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 3), (64, 32, 4, 4), (64, 64, 4, 3),
                  (64, 64, 4, 4)],
    ("dq", 64): [(128, 64, 8, 3), (128, 32, 4, 5), (64, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 4)],
    ("dq", 32): [(128, 32, 4, 4), (64, 64, 4, 3)],
}
_AMPERE = {  # sm_80..89: 100-164 KB shared memory, mma.sync (not timed here: an untuned guess)
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 2), (128, 32, 4, 3)],
    "dkdv": [(32, 64, 4, 3), (64, 64, 4, 2), (32, 128, 8, 2)],
    "dq": [(64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2)],
}
_TURING = {  # sm_75 (Colab's T4): 64 KB shared memory, fp16 only; Triton's dot runs without
    # tensor cores there, so small tiles and 8 warps keep registers (mostly) from spilling
    "fwd": [(32, 32, 8, 2), (32, 16, 4, 2)],
    "dkdv": [(16, 32, 8, 1), (16, 16, 4, 1)],
    "dq": [(32, 32, 8, 1), (16, 32, 8, 1)],
}


def _config_list(kind: str, head_dim: int, capability: tuple[int, int]) -> list[tuple]:
    if capability >= (9, 0):
        return _HOPPER[(kind, max(head_dim, 32))]
    table = _AMPERE if capability >= (8, 0) else _TURING
    return table[kind]


_TUNED: dict = {}  # (kernel, configs) -> triton Autotuner (shares the kernel's compile cache)


def _launch(kernel, kind: str, grid, args: tuple, meta: dict, device: torch.device,
            variants: tuple = ({},)):
    """Run `kernel[grid](*args, **meta)` with the tile config for this GPU, or the interpreter's.

    `variants`: constexpr settings the autotuner may choose between besides the tiles (the
    forward's load path); without autotuning, or in the interpreter, the first one is used.
    """
    if INTERPRET:
        block_m, block_n = INTERPRETER_BLOCKS[kind]
        return kernel[grid](*args, **meta, **variants[0], BLOCK_M=block_m, BLOCK_N=block_n)
    configs = _config_list(kind, meta["HEAD_DIM"], torch.cuda.get_device_capability(device))
    if not AUTOTUNE:
        configs, variants = configs[:1], variants[:1]
    configs = tuple((c, tuple(v.items())) for v in variants for c in configs)
    if (kernel, configs) not in _TUNED:
        _TUNED[(kernel, configs)] = triton.autotune(
            configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, **dict(v)}, num_warps=w, num_stages=s)
                     for (bm, bn, w, s), v in configs],
            key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"],
        )(kernel)
    try:
        return _TUNED[(kernel, configs)][grid](*args, **meta)
    except Exception as err:  # a compiler failure deep inside Triton: say what it means here
        if not type(err).__module__.startswith("triton"):
            raise
        name = torch.cuda.get_device_name(device)
        raise RuntimeError(
            f"Triton could not compile or run the flash-attention {kind} kernel on {name} "
            f"(head dim {meta['HEAD_DIM']}): {type(err).__name__}: {err}. Try float16, a smaller "
            "head dim, or run on the CPU with TRITON_INTERPRET=1 set before importing triton."
        ) from err


def _tma_allocator(size: int, alignment: int, stream):
    # scratch global memory where kernels write the tensor descriptors they create
    return torch.empty(size, device="cuda", dtype=torch.int8)


def _use_tma(*tensors: torch.Tensor) -> bool:
    if INTERPRET or not USE_TMA or not hasattr(tl, "make_tensor_descriptor"):
        return False
    if torch.cuda.get_device_capability(tensors[0].device) < (9, 0):
        return False
    # the copy engine needs 16-byte-aligned bases (rows are d·2 >= 32 bytes, always aligned)
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _forward(q, k, v, causal: bool, scale: float):
    """q: (B, H, N, d), k, v: (B, H, M, d), contiguous -> out (B, H, N, d), lse (B, H, N) float32."""
    B, H, N, d = q.shape
    M = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    # On Hopper the autotuner times both load paths (tensor descriptors and plain pointers) and
    # keeps the faster per shape: on the H200 they are within a few percent (see NOTES.md).
    variants = ({"USE_TMA": False},)
    if _use_tma(q, k, v, o):
        triton.set_allocator(_tma_allocator)
        variants = ({"USE_TMA": True}, {"USE_TMA": False})
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch(_attn_fwd, "fwd", grid, (q, k, v, o, lse, scale * LOG2E, N, M),
            dict(HEAD_DIM=d, CAUSAL=causal), q.device, variants)
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, scale: float):
    """Gradients (dq, dk, dv), shaped like (q, k, v), from dO: (B, H, N, d)."""
    B, H, N, d = q.shape
    M = k.shape[2]
    delta = torch.empty_like(lse)  # (B, H, N) float32
    pre_block = 64 if INTERPRET else 128
    _attn_bwd_preprocess[(triton.cdiv(N, pre_block), B * H)](o, do, delta, N, HEAD_DIM=d,
                                                             BLOCK_M=pre_block)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    args = (q, k, v, do, lse, delta)
    meta = dict(HEAD_DIM=d, CAUSAL=causal)
    grid_kv = lambda meta: (triton.cdiv(M, meta["BLOCK_N"]), B * H)  # noqa: E731
    _launch(_attn_bwd_dkdv, "dkdv", grid_kv, (*args, dk, dv, scale, scale * LOG2E, N, M), meta, q.device)
    grid_q = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch(_attn_bwd_dq, "dq", grid_q, (*args, dq, scale, scale * LOG2E, N, M), meta, q.device)
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward saves (q, k, v, out, lse); Triton backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float):
        o, lse = _forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do.contiguous(), ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the kernels run in for inputs of `dtype`, or a ValueError explaining why not."""
    if INTERPRET:
        if dtype in (torch.float32, torch.float16):
            return dtype
        if dtype in (torch.bfloat16, torch.float64):
            # numpy (the interpreter's engine) has no bfloat16 matmul and tl.dot no float64 one
            return torch.float32
        raise ValueError(f"q, k, v dtype must be float32, float16, bfloat16 or float64 in the "
                         f"interpreter, got {dtype}")
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v dtype must be torch.float16 or torch.bfloat16 on a GPU, got {dtype} "
                         "(float32 runs on the CPU in Triton's interpreter: TRITON_INTERPRET=1)")
    capability = torch.cuda.get_device_capability(device)
    if dtype == torch.bfloat16 and capability < (8, 0):
        raise ValueError(f"bfloat16 needs a GPU of compute capability >= 8.0; "
                         f"{torch.cuda.get_device_name(device)} is sm_{capability[0]}{capability[1]}: "
                         "use torch.float16")
    return dtype


def _check_inputs(q, k, v, causal: bool, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have shape (B, H, N, d) (4 dimensions), got shape "
                             f"{tuple(t.shape)}")
    B, H, N, d = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != d:
        raise ValueError(f"k must have shape (B, H, M, d) = ({B}, {H}, M, {d}) to match q of shape "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k, (B, H, M, d) = {tuple(k.shape)}, got "
                         f"{tuple(v.shape)}")
    M = k.shape[2]
    if N < 1 or M < 1 or B < 1 or H < 1:
        raise ValueError(f"q and k must have B, H, N, M >= 1, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if d not in HEAD_DIMS:
        raise ValueError(f"head dim d (the last dimension of q, k, v) must be one of {HEAD_DIMS}, "
                         f"got {d}")
    if causal and M < N:
        raise ValueError(f"causal attention aligns the N queries to the end of the M keys and needs "
                         f"M >= N, got N={N}, M={M}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number or None (for 1/sqrt(d)), got {scale!r}")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Fused softmax attention, softmax(scale · q kᵀ) v, with a Triton forward and backward.

    Args:
        q: (B, H, N, d) queries; k, v: (B, H, M, d) keys and values; d in (16, 32, 64, 128).
            On a GPU: float16 or bfloat16 (bfloat16 needs sm_80+). In Triton's CPU interpreter
            (TRITON_INTERPRET=1 set before triton is imported): float32 or float16, and
            bfloat16 / float64 inputs computed in float32 and returned in their own dtype.
        causal: hide future keys. With N < M the queries are the LAST N of the M positions
            (decoding with a cache): query i sees keys j <= i + M - N. Needs M >= N.
        scale: positive score scale; None means 1/sqrt(d).

    Returns:
        (B, H, N, d) in q's dtype; differentiable with respect to q, k and v.
    """
    _check_inputs(q, k, v, causal, scale)
    if not INTERPRET:
        if not torch.cuda.is_available():
            raise RuntimeError("flash_attention needs a CUDA GPU, or Triton's CPU interpreter: set "
                               "TRITON_INTERPRET=1 in the environment before importing triton "
                               "(and attnbook.kernels)")
        if q.device.type != "cuda":
            raise RuntimeError(f"q, k, v are on {q.device}: move them to the GPU, or set "
                               "TRITON_INTERPRET=1 before importing triton to run on the CPU")
    dtype = _compute_dtype(q.dtype, q.device)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    q_, k_, v_ = (t.to(dtype).contiguous() for t in (q, k, v))
    out = FlashAttentionFunction.apply(q_, k_, v_, bool(causal), scale)
    return out.to(q.dtype)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch attention that materialises the (N, M) softmax: the kernel's specification.

    q: (B, H, N, d); k, v: (B, H, M, d) -> (B, H, N, d). Causal aligns queries to the end
    (query i sees keys j <= i + M - N), as flash_attention does.
    """
    N, M = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    # S = s · Q Kᵀ
    s = scale * (q @ k.transpose(-2, -1))  # (B, H, N, M)
    if causal:
        i = torch.arange(N, device=q.device)[:, None]
        j = torch.arange(M, device=q.device)[None, :]
        s = s.masked_fill(j > i + (M - N), float("-inf"))
    # O = softmax(S) V
    return torch.softmax(s, dim=-1) @ v  # (B, H, N, d)
