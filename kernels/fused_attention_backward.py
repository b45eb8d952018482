r"""Chapter 29's fused attention in Triton: the backward kernels (see ``fused_attention.py``).

With the forward's log-sum-exp L stored, P is recomputed from Q, K instead of being stored:

    P_ij = exp(S_ij − L_i),   D_i = rowsum(dO ∘ O)_i   (= Σ_j P_ij dP_ij),
    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − D),   dQ = s · dS K,   dK = s · dSᵀ Q.

Three launches and no atomics: (1) :func:`_attn_bwd_preprocess` computes D; (2)
:func:`_attn_bwd_dkdv`, one program per key block, accumulates dK, dV over the query blocks that
see it; (3) :func:`_attn_bwd_dq`, one program per query block, accumulates dQ over the key blocks
it sees. Causal as in the forward: query i sees keys j ≤ i + diag, diag = N_KV − N_Q
(:func:`attnbook.masks.causal_mask`). Launching goes through the shared ``launch.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .launch import INTERPRET, LOG2E, load_rows


# The kernels keep one block operation per line, to read as the equations above.
# fmt: off
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
        q = load_rows(q_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
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
        do = load_rows(do_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
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
    k = load_rows(K + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
    v = load_rows(V + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
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
        k = load_rows(k_base, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, False)  # (BLOCK_N, d)
        v = load_rows(v_base, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, False)  # (BLOCK_N, d)
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
    q = load_rows(Q + q_off, m0, N_Q, HEAD_DIM, BLOCK_M, True, False)  # (BLOCK_M, d)
    do = load_rows(DO + q_off, m0, N_Q, HEAD_DIM, BLOCK_M, True, False)  # (BLOCK_M, d)
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
@triton.jit
def _bwd_fused_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, dq_dst, start, end, offs_n, N_Q,
                     diag, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                     MASKED: tl.constexpr, TMA_REDUCE: tl.constexpr):
    """_bwd_dkdv_inner plus a fifth matmul: each query block's share of dQ, added to float32 dQ."""
    # Per iteration: read q, dO tiles and L, D as in _bwd_dkdv_inner; 5 matmuls; add BLOCK_M·d
    # floats into dQ (in L2: atomics or the copy engine's reduce-add).
    for start_m in range(start, end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = load_rows(q_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
        if MASKED:
            lse = tl.load(lse_ptr + offs_m, mask=offs_m < N_Q, other=0.0)
            delta = tl.load(delta_ptr + offs_m, mask=offs_m < N_Q, other=0.0)
        else:
            lse = tl.load(lse_ptr + offs_m)
            delta = tl.load(delta_ptr + offs_m)
        # Sᵀ_ji / s = k_j · q_i
        qkT = tl.dot(k, tl.trans(q))  # (BLOCK_N, BLOCK_M)
        # Pᵀ_ji = e^{S_ij − L_i} = 2^{qk·s·log2 e − L_i·log2 e}
        pT = tl.math.exp2(qkT * qk_scale - lse[None, :] * 1.4426950408889634)
        if MASKED:
            if CAUSAL:
                pT = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, pT, 0.0)
        do = load_rows(do_base, start_m, N_Q, HEAD_DIM, BLOCK_M, MASKED, False)  # (BLOCK_M, d)
        # dV_j += Σ_i P_ij dO_i
        dv = tl.dot(pT.to(do.dtype), do, dv)
        # dPᵀ_ji = v_j · dO_i
        dpT = tl.dot(v, tl.trans(do))  # (BLOCK_N, BLOCK_M)
        # dSᵀ_ji = P_ij (dP_ij − D_i)
        dsT = (pT * (dpT - delta[None, :])).to(q.dtype)
        # dK_j += Σ_i dS_ij q_i   (times s, once, at the end)
        dk = tl.dot(dsT, q, dk)
        # this key block's share of dQ_i = Σ_j dS_ij k_j   (times s when converted)
        dq = tl.dot(tl.trans(dsT), k)  # (BLOCK_M, d) float32
        if TMA_REDUCE:
            dq_dst.atomic_add([start_m, 0], dq)  # rows >= N_Q are clipped by the descriptor
        else:
            ptrs = dq_dst + offs_m[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
            if MASKED:
                tl.atomic_add(ptrs, dq, mask=offs_m[:, None] < N_Q, sem="relaxed")
            else:
                tl.atomic_add(ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["N_Q", "N_KV"])
def _attn_bwd_fused(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, sm_scale, qk_scale, N_Q, N_KV,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    CAUSAL: tl.constexpr, TMA_REDUCE: tl.constexpr):
    """dK, dV for BLOCK_N keys of one (batch, head), and their dQ shares added into DQ_ACC.

    Shapes as in _attn_bwd_dkdv; DQ_ACC: (B·H, N_Q, d) float32, zeroed, receives dS K (without s).
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
    dq_base = DQ_ACC + bh * N_Q * HEAD_DIM
    if TMA_REDUCE:
        dq_dst = tl.make_tensor_descriptor(dq_base, [N_Q, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_M, HEAD_DIM])
    else:
        dq_dst = dq_base
    k = load_rows(K + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
    v = load_rows(V + kv_off, n0, N_KV, HEAD_DIM, BLOCK_N, True, False)  # (BLOCK_N, d)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag = N_KV - N_Q
    q_full_end = N_Q // BLOCK_M * BLOCK_M
    q_end = tl.cdiv(N_Q, BLOCK_M) * BLOCK_M
    if CAUSAL:  # the same query ranges as _attn_bwd_dkdv
        lo = tl.maximum(n0 - diag, 0) // BLOCK_M * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
    else:
        lo = 0
        full_lo = 0
    dk, dv = _bwd_fused_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, dq_dst, lo,
                              tl.minimum(full_lo, q_end), offs_n, N_Q, diag, qk_scale,
                              HEAD_DIM, BLOCK_M, CAUSAL, True, TMA_REDUCE)
    dk, dv = _bwd_fused_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, dq_dst, full_lo,
                              q_full_end, offs_n, N_Q, diag, qk_scale,
                              HEAD_DIM, BLOCK_M, CAUSAL, False, TMA_REDUCE)
    dk, dv = _bwd_fused_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, dq_dst,
                              tl.maximum(full_lo, q_full_end), q_end, offs_n, N_Q, diag, qk_scale,
                              HEAD_DIM, BLOCK_M, CAUSAL, True, TMA_REDUCE)
    # dK = s · dSᵀ Q
    dk = dk * sm_scale
    ptrs = kv_off + offs_n[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :]
    tl.store(DK + ptrs, dk.to(DK.dtype.element_ty), mask=offs_n[:, None] < N_KV)
    tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < N_KV)
# fmt: on


def _backward(q, k, v, o, lse, do, causal: bool, scale: float, deterministic: bool = True):
    """Gradients (dq, dk, dv), shaped like (q, k, v), from dO: (B, H, N, d).

    deterministic=True: three launches, no atomics, 7 block matmuls (every output has one writer).
    deterministic=False: one launch per key block adds dQ with float32 atomics: 5 block matmuls,
    but the order of the additions into dQ, hence its last bits, changes from run to run.
    """
    B, H, N, d = q.shape
    M = k.shape[2]
    delta = torch.empty_like(lse)  # (B, H, N) float32
    pre_block = 64 if INTERPRET else 128
    _attn_bwd_preprocess[(triton.cdiv(N, pre_block), B * H)](o, do, delta, N, HEAD_DIM=d, BLOCK_M=pre_block)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    args = (q, k, v, do, lse, delta)
    meta = dict(HEAD_DIM=d, CAUSAL=causal)
    grid_kv = lambda meta: (triton.cdiv(M, meta["BLOCK_N"]), B * H)  # noqa: E731
    if not deterministic:
        dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32)  # receives dS K
        # the copy engine's reduce-add where descriptors work, else atomics (the autotuner picks)
        variants = ({"TMA_REDUCE": False},)
        if launch.use_tma(dq_acc):
            variants = ({"TMA_REDUCE": True}, {"TMA_REDUCE": False})
        launch.run(
            _attn_bwd_fused,
            "bwd",
            grid_kv,
            (*args, dk, dv, dq_acc, scale, scale * LOG2E, N, M),
            meta,
            q.device,
            variants,
            reset_to_zero=("DQ_ACC",),
        )
        # dQ = s · dS K
        return (dq_acc * scale).to(q.dtype), dk, dv
    dq = torch.empty_like(q)
    launch.run(_attn_bwd_dkdv, "dkdv", grid_kv, (*args, dk, dv, scale, scale * LOG2E, N, M), meta, q.device)
    grid_q = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    launch.run(_attn_bwd_dq, "dq", grid_q, (*args, dq, scale, scale * LOG2E, N, M), meta, q.device)
    return dq, dk, dv
