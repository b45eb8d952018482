r"""v4: chapter 29's forward on Hopper with warp specialization and a ping-pong schedule, in Gluon.

The same math as :func:`fused_attention._attn_fwd` (online softmax in base 2, L saved for the
backward); what changes is **who does what, and when**. v2's loop is serial inside every warp:

    issue QKᵀ, wait  →  exp2 on the special-function units  →  issue PV, wait

so the tensor cores idle while the exponentials run (the ~500 TFLOP/s "serial ceiling" of
NOTES.md at d = 128). FlashAttention-3 (Shah et al., 2024) hides the exponentials under the
matmuls with three moves, all expressed here with Triton's lower-level Gluon layer, which exposes
warpgroup matmuls (wgmma), mbarriers and warp specialization directly:

1. **Producer / consumers.** One *loader* warp only issues bulk copies (TMA) of K and V tiles into
   a ring of STAGES shared-memory slots; an mbarrier per slot says "full", another "empty". Two
   *consumer warpgroups* (4 warps each; three with ``consumers=3``) own 64 query rows each.
2. **Ping-pong.** The consumers take turns at the tensor cores: warpgroup 0 issues its matmuls,
   passes the turn, and runs its softmax while warpgroup 1's matmuls execute, and so on (round
   robin). One mbarrier per consumer (``turn``) hands the turn over.
3. **Inside a warpgroup** (intra-warpgroup pipelining): the loop issues S_j = Q K_jᵀ and
   O += P_{j−1} V_{j−1} back to back, waits for S_j only, and computes the softmax of block j
   while P_{j−1}V_{j−1} still runs:

       iteration j:  issue S_j;  issue O += P_{j−1}V_{j−1};  wait S_j;  P_j = softmax(S_j);
                     wait PV;  O *= e^{m_{j−1} − m_j}

   The invariant: at the start of iteration j, O holds blocks < j−1 at the running max m_{j−1}
   and P_{j−1} = 2^{S_{j−1}·s·log2 e − m_{j−1}}; adding P_{j−1}V_{j−1} and then rescaling by
   α_j = 2^{m_{j−1} − m_j} leaves blocks ≤ j−1 at m_j.

Shapes: one program per (64 query rows per consumer, batch·head); q, o: (B, H, N, d), k, v: (B, H, M, d),
contiguous, d in {64, 128}, float16 or bfloat16, sm_90 only. The tensor descriptors are made on
the host and are 3-d, (B·H, rows, d), so a copy never crosses into the next head: ragged tails are
zero-filled on load and clipped on store. Causal follows
:func:`attnbook.masks.causal_mask` (query i sees keys j <= i + M − N), as in v2.

Everything else (other GPUs, other head widths, the CPU interpreter, Triton builds without Gluon)
runs v2: :func:`available` says whether this path can run, :func:`worth_it` whether a call is large
enough to hide v4's host cost, :func:`forward` runs it. Measured in ``NOTES.md`` (runs 7 to 9).
"""

from __future__ import annotations

import functools

import torch
import triton

try:  # Gluon is experimental: present in Triton 3.5+, absent or different elsewhere
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    GLUON = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    GLUON = False

from .launch import INTERPRET, LOG2E

__all__ = ["GLUON", "HEAD_DIMS", "MIN_SCORES", "available", "worth_it", "forward"]

HEAD_DIMS = (64, 128)  # what v4 computes (tested at both); flash_attention uses it at d = 128
# (BLOCK_N, STAGES, CONSUMERS, V_EARLY) per head width; a program owns 64 query rows per consumer
# warpgroup. At d = 128 three stages fill 224 KB of the 227 KB of shared memory a program may have
# (Q 32 KB + 3 × (K 32 KB + V 32 KB)); two stages with V released one iteration late were 17–31%
# slower (NOTES.md, run 7). At d = 64 two consumers could not hide the softmax, which costs as much
# there as both warpgroups' matmuls; three could, from 2^31 scores on (run 9).
TILES = {64: (128, 3, 3, False), 128: (128, 3, 2, False)}
# Registers per thread, at most 65536 / (128 × warpgroups): the workers' budgets are set in the
# kernel (2 consumers: 240 for the second, 24 for the loader; 3: 160, 160, 24); the first consumer
# gets the rest.
MAXNREG = {2: 168, 3: 128}


def available(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """True when v4 can run these inputs: Gluon, an sm_90 GPU, fp16/bf16, d in (64, 128)."""
    if not GLUON or INTERPRET or not q.is_cuda:
        return False
    if torch.cuda.get_device_capability(q.device) != (9, 0):
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or q.shape[-1] not in HEAD_DIMS:
        return False
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (q, k, v))


if GLUON:
    # The kernels keep one block operation per line, to read as the equations above.
    # fmt: off
    @gluon.jit
    def _softmax_block(s, m_i, l_i, qk_scale, offs_m, start_n, N_KV, diag,
                       BLOCK_N: gl.constexpr, S_LAYOUT: gl.constexpr,
                       CAUSAL: gl.constexpr, MASKED: gl.constexpr):
        """P = 2^{S·s·log2 e − m'} of one (64, BLOCK_N) score tile; returns (P, m', l', α)."""
        if MASKED:
            offs_n = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, S_LAYOUT))
            keep = gl.expand_dims(offs_n, 0) < N_KV  # keys past the end of the sequence
            if CAUSAL:
                # query i sees key j iff j <= i + (M - N)
                keep = keep & (gl.expand_dims(offs_n, 0) <= gl.expand_dims(offs_m, 1) + diag)
            s = gl.where(keep, s, float("-inf"))
        # m' = max(m, max_j S_ij)   (base-2 units: S·s·log2 e)
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        # p_ij = 2^{S_ij·s·log2 e − m'}
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        # α = 2^{m − m'} rescales what was accumulated under the old max
        alpha = gl.exp2(m_i - m_new)
        # l' = l·α + Σ_j p_ij
        l_i = l_i * alpha + gl.sum(p, 1)
        return p, m_new, l_i, alpha

    @gluon.jit
    def _view_3d(slot, desc):
        """A (rows, d) shared-memory slot seen as (1, rows, d), the block of a 3-d descriptor."""
        ROWS: gl.constexpr = slot.type.shape[0]
        D: gl.constexpr = slot.type.shape[1]
        return slot._reinterpret(slot.dtype, [1, ROWS, D], desc.layout)  # the same bytes

    @gluon.jit
    def _take_turn(turn_bars, it, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Wait until it is this warpgroup's turn at the tensor cores (iteration `it`)."""
        if PINGPONG:
            phase = it & 1
            if WG == 0:
                phase = phase ^ 1  # warpgroup 0 goes first: a fresh mbarrier counts phase "1" as complete
            mbarrier.wait(turn_bars.index(WG), phase)

    @gluon.jit
    def _pass_turn(turn_bars, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Hand the turn to the next consumer warpgroup (round robin)."""
        CONSUMERS: gl.constexpr = turn_bars.type.shape[0]
        if PINGPONG:
            mbarrier.arrive(turn_bars.index((WG + 1) % CONSUMERS), count=1)

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, o_desc, q_bars, k_ready, k_empty, v_ready, v_empty,
                  turn_bars, LSE, qk_scale, bh, m0, n_blocks, N_Q, N_KV,
                  HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr,
                  WG: gl.constexpr):
        """One consumer warpgroup: 64 query rows, every key block of the program, O and L out."""
        HALF: gl.constexpr = q_smem.type.shape[1]
        # wgmma accumulators: S (64, BLOCK_N) and O (64, d); P enters the PV matmul from registers
        S_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 16])
        O_LAYOUT: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, HEAD_DIM, 16])
        P_LAYOUT: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_LAYOUT, k_width=2)
        ROW_S: gl.constexpr = gl.SliceLayout(1, S_LAYOUT)
        ROW_O: gl.constexpr = gl.SliceLayout(1, O_LAYOUT)
        dtype: gl.constexpr = q_smem.dtype

        row0 = m0 + WG * HALF
        offs_m = row0 + gl.arange(0, HALF, layout=ROW_S)
        diag = N_KV - N_Q
        # blocks below `full` need no mask: every key exists and (causal) every row sees it
        full = N_KV // BLOCK_N
        if CAUSAL:
            full = gl.minimum((row0 + diag + 1) // BLOCK_N, full)
        full = gl.maximum(full, 1)  # block 0 runs in the (masked) prologue anyway

        m_i = gl.full([HALF], float("-inf"), gl.float32, ROW_S)
        l_i = gl.zeros([HALF], gl.float32, ROW_S)
        acc = gl.zeros([HALF, HEAD_DIM], gl.float32, O_LAYOUT)
        s_zero = gl.zeros([HALF, BLOCK_N], gl.float32, S_LAYOUT)
        q = q_smem.index(WG)
        mbarrier.wait(q_bars.index(WG), 0)

        # Prologue, block 0: S_0 = Q K_0ᵀ, then its softmax (masked: it may be ragged or diagonal).
        mbarrier.wait(k_ready.index(0), 0)
        _take_turn(turn_bars, 0, WG, PINGPONG)
        s_tok = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        _pass_turn(turn_bars, WG, PINGPONG)
        s = warpgroup_mma_wait(0, deps=(s_tok,))
        mbarrier.arrive(k_empty.index(0), count=1)
        p, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, qk_scale, offs_m, 0, N_KV, diag,
                                            BLOCK_N, S_LAYOUT, CAUSAL, True)
        p_op = gl.convert_layout(p.to(dtype), P_LAYOUT)

        # Steady state: blocks [1, full) unmasked, then [full, n_blocks) masked.
        for j in range(1, full):
            p_op, acc, m_i, l_i = _consumer_step(
                q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, turn_bars, p_op, acc, m_i,
                l_i, qk_scale, offs_m, j, N_KV, diag, s_zero, HEAD_DIM, BLOCK_N, STAGES, CAUSAL,
                False, PINGPONG, V_EARLY, WG)
        for j in range(full, n_blocks):
            p_op, acc, m_i, l_i = _consumer_step(
                q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, turn_bars, p_op, acc, m_i,
                l_i, qk_scale, offs_m, j, N_KV, diag, s_zero, HEAD_DIM, BLOCK_N, STAGES, CAUSAL,
                True, PINGPONG, V_EARLY, WG)

        # Epilogue: O += P_last V_last.
        last = n_blocks - 1
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        acc_tok = warpgroup_mma(p_op, v_smem.index(last % STAGES), acc, is_async=True)
        acc, p_op = warpgroup_mma_wait(0, deps=(acc_tok, p_op))
        mbarrier.arrive(v_empty.index(last % STAGES), count=1)

        # O_i = acc_i / l_i ;  L_i = (m_i + log2 l_i) · ln 2
        out = acc / gl.expand_dims(gl.convert_layout(l_i, ROW_O), 1)
        lse = (m_i + gl.log2(l_i)) * 0.6931471805599453
        gl.store(LSE + offs_m, lse, mask=offs_m < N_Q)
        # Q's slot is free now: stage O there and let the copy engine write it (clipped at N).
        q.store(out.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [bh, row0, 0], _view_3d(q, o_desc))
        tma.store_wait(0)

    @gluon.jit
    def _consumer_step(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, turn_bars, p_op, acc,
                       m_i, l_i, qk_scale, offs_m, j, N_KV, diag, s_zero,
                       HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, MASKED: gl.constexpr, PINGPONG: gl.constexpr,
                       V_EARLY: gl.constexpr, WG: gl.constexpr):
        """Iteration j: issue S_j and O += P_{j−1}V_{j−1}; softmax of S_j under the PV matmul."""
        O_LAYOUT: gl.constexpr = acc.type.layout
        S_LAYOUT: gl.constexpr = s_zero.type.layout
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        _take_turn(turn_bars, j, WG, PINGPONG)
        # S_j = Q K_jᵀ   (fp32 accumulate; the scale goes into the exponent)
        s_tok = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
        # O += P_{j−1} V_{j−1}   (P rounded to the input dtype for the tensor cores)
        acc_tok = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        _pass_turn(turn_bars, WG, PINGPONG)
        # wgmma groups retire in order: "1 outstanding" means S_j is done and PV may still run
        s = warpgroup_mma_wait(1, deps=(s_tok,))
        mbarrier.arrive(k_empty.index(slot), count=1)
        if not V_EARLY:
            # V_{j−2}'s matmul retired in the previous iteration: release its slot here
            mbarrier.arrive(v_empty.index((j - 2 + STAGES) % STAGES), count=1, pred=j >= 2)
        p, m_i, l_i, alpha = _softmax_block(s, m_i, l_i, qk_scale, offs_m, j * BLOCK_N, N_KV, diag,
                                            BLOCK_N, S_LAYOUT, CAUSAL, MASKED)
        # P_{j−1} stays alive (a dependency) until the PV matmul that reads it has retired
        acc, p_prev = warpgroup_mma_wait(0, deps=(acc_tok, p_op))
        if V_EARLY:
            mbarrier.arrive(v_empty.index(prev), count=1)
        # O at the new max: O ← O·α
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, O_LAYOUT)), 1)
        p_op = gl.convert_layout(p.to(q.dtype), p_prev.type.layout)
        return p_op, acc, m_i, l_i

    @gluon.jit
    def _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
                v_empty, bh, m0, n_blocks, STAGES: gl.constexpr, BLOCK_N: gl.constexpr):
        """The producer warp: Q once per consumer, then K_j and V_j into the ring of STAGES slots.

        The descriptors are 3-d, (B·H, rows, d), so a copy never crosses into the next head; each
        2-d shared-memory slot is viewed as (1, rows, d) for the copy (the same bytes).
        """
        HALF: gl.constexpr = q_smem.type.shape[1]
        CONSUMERS: gl.constexpr = q_smem.type.shape[0]
        for wg in gl.static_range(CONSUMERS):
            mbarrier.expect(q_bars.index(wg), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [bh, m0 + wg * HALF, 0], q_bars.index(wg),
                                            _view_3d(q_smem.index(wg), q_desc))
        for j in range(n_blocks):
            slot = j % STAGES
            # wait until both consumers released the slot's previous tile (a fresh barrier
            # counts phase "1" as complete, so the first STAGES waits pass at once)
            phase = ((j // STAGES) & 1) ^ 1
            mbarrier.wait(k_empty.index(slot), phase)
            mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [bh, j * BLOCK_N, 0], k_ready.index(slot),
                                            _view_3d(k_smem.index(slot), k_desc))
            mbarrier.wait(v_empty.index(slot), phase)
            mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [bh, j * BLOCK_N, 0], v_ready.index(slot),
                                            _view_3d(v_smem.index(slot), v_desc))

    # warp_specialize gives every worker partition the same arguments: one tuple, unpacked here
    @gluon.jit
    def _loader_partition(args, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr):
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
         v_empty, turn_bars, LSE, qk_scale, bh, m0, n_blocks, N_Q, N_KV) = args
        _loader(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
                v_empty, bh, m0, n_blocks, STAGES, BLOCK_N)

    @gluon.jit
    def _consumer_partition(args, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr, WG: gl.constexpr):
        (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty, v_ready,
         v_empty, turn_bars, LSE, qk_scale, bh, m0, n_blocks, N_Q, N_KV) = args
        _consumer(q_smem, k_smem, v_smem, o_desc, q_bars, k_ready, k_empty, v_ready, v_empty,
                  turn_bars, LSE, qk_scale, bh, m0, n_blocks, N_Q, N_KV, HEAD_DIM, BLOCK_N, STAGES,
                  CAUSAL, PINGPONG, V_EARLY, WG)

    @gluon.jit
    def _consumer0_partition(args, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr):
        _consumer_partition(args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY, 0)

    @gluon.jit
    def _consumer1_partition(args, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr):
        _consumer_partition(args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY, 1)

    @gluon.jit
    def _consumer2_partition(args, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                       CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr):
        _consumer_partition(args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY, 2)

    @gluon.jit(do_not_specialize=["N_Q", "N_KV"])
    def _attn_fwd_ws(q_desc, k_desc, v_desc, o_desc, LSE, qk_scale, N_Q, N_KV,
                     HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                     CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, V_EARLY: gl.constexpr,
                     CONSUMERS: gl.constexpr):
        """O = softmax(s·QKᵀ)V and L = logsumexp(s·QKᵀ) for 64·CONSUMERS queries of one (batch, head).

        q_desc, o_desc: (B·H, N_Q, d) in blocks of (1, 64, d); k_desc, v_desc: (B·H, N_KV, d) in
        blocks of (1, BLOCK_N, d); LSE: (B·H, N_Q) float32.
        Grid: (cdiv(N_Q, 64·CONSUMERS), B·H); 4 warps here (consumer 0), 4 per other consumer
        (CONSUMERS = 2 or 3) and 1 (loader).
        """
        HALF: gl.constexpr = 64
        pid_m = gl.program_id(0)
        if CAUSAL:
            # Later query blocks see more keys: launch them first so the short ones fill the tail.
            pid_m = gl.num_programs(0) - 1 - pid_m
        bh = gl.program_id(1)
        m0 = pid_m * (CONSUMERS * HALF)
        dtype: gl.constexpr = q_desc.dtype
        Q_LAYOUT: gl.constexpr = gl.NVMMASharedLayout.get_default_for([HALF, HEAD_DIM], dtype)
        KV_LAYOUT: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)

        # key blocks this program visits: all of them, or (causal) up to its last row's diagonal
        kv_end = N_KV
        if CAUSAL:
            kv_end = gl.minimum(m0 + CONSUMERS * HALF + N_KV - N_Q, N_KV)
        n_blocks = gl.cdiv(kv_end, BLOCK_N)

        # Shared memory: Q (CONSUMERS × 64 × d), the K and V rings (STAGES × BLOCK_N × d each), barriers.
        q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, HALF, HEAD_DIM], Q_LAYOUT)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], KV_LAYOUT)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], KV_LAYOUT)
        q_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        turn_bars = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(CONSUMERS):
            mbarrier.init(q_bars.index(i), count=1)
            mbarrier.init(turn_bars.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)  # the copy engine completes it
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=CONSUMERS)  # every consumer releases a slot
            mbarrier.init(v_empty.index(i), count=CONSUMERS)

        args = (q_desc, k_desc, v_desc, o_desc, q_smem, k_smem, v_smem, q_bars, k_ready, k_empty,
                v_ready, v_empty, turn_bars, LSE + bh.to(gl.int64) * N_Q, qk_scale, bh, m0, n_blocks,
                N_Q, N_KV)
        # The default partition (this program's 4 warps), then the workers; the constexprs travel
        # one by one (a tuple would turn them into values). Registers per thread: the workers' are
        # set here, the default partition gets the rest of MAXNREG × (number of warpgroups).
        if CONSUMERS == 2:
            gl.warp_specialize([
                (_consumer0_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
                (_consumer1_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
                (_loader_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
            ], [4, 1], [240, 24])  # 3 warpgroups × 168 = 240 + 240 + 24
        else:
            gl.warp_specialize([
                (_consumer0_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
                (_consumer1_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
                (_consumer2_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
                (_loader_partition, (args, HEAD_DIM, BLOCK_N, STAGES, CAUSAL, PINGPONG, V_EARLY)),
            ], [4, 4, 1], [160, 160, 24])  # 4 warpgroups × 128 = 168 + 160 + 160 + 24
    # fmt: on


def worth_it(B: int, H: int, N: int, M: int, d: int, causal: bool) -> bool:
    """Whether flash_attention should run v4: d in MIN_SCORES and at least MIN_SCORES[d] visible
    scores (B·H·N·M, halved when causal).

    On the H200 a v4 call cost 50–100 µs more host time than a v2 call (NOTES.md, run 8), as long
    as the kernel itself at d = 128, N = 1024, causal. At d = 64 v4 with three consumers measured
    faster than v2 from 2^31 scores on and slower below (run 9), but the GPU test suite has not run
    it yet, so d = 64 keeps v2."""
    return d in MIN_SCORES and B * H * N * M // (2 if causal else 1) >= MIN_SCORES[d]


# d = 128: 2^27 (N = 1024, causal, B·H = 256) measured slower than v2, 2^28 faster
MIN_SCORES = {128: 2**28}


@functools.cache
def _smem_layout(rows: int, d: int, bf16: bool):
    """The shared-memory layout of a (1, rows, d) block (computed once: ~10 µs of Python each)."""
    return gl.NVMMASharedLayout.get_default_for([1, rows, d], gl.bfloat16 if bf16 else gl.float16)


def descriptors(q, k, v, o, block_n: int):
    """Host-side tensor descriptors of (B, H, rows, d) tensors, viewed as (B·H, rows, d)."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    d = q.shape[-1]
    bf16 = q.dtype == torch.bfloat16

    def desc(t, rows):
        t3 = t.view(-1, t.shape[2], d)  # (B·H, rows, d)
        return TensorDescriptor.from_tensor(t3, [1, rows, d], _smem_layout(rows, d, bf16))

    return desc(q, 64), desc(k, block_n), desc(v, block_n), desc(o, 64)


def forward(q, k, v, causal: bool, scale: float, *, pingpong=True, stages=None, v_early=None, consumers=None):
    """q: (B, H, N, d), k, v: (B, H, M, d), contiguous, on sm_90 -> out (B, H, N, d), lse (B, H, N).

    Call only where :func:`available` is True (flash_attention does). The keyword knobs default to
    TILES[d]: ``pingpong`` (consumers take turns), ``stages`` (K/V ring slots), ``v_early`` (release
    a V slot right after its matmul), ``consumers`` (2 or 3 warpgroups of 64 query rows).
    """
    B, H, N, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    block_n, default_stages, default_consumers, default_v_early = TILES[d]
    consumers = consumers or default_consumers
    meta = dict(HEAD_DIM=d, BLOCK_N=block_n, STAGES=stages or default_stages, CAUSAL=bool(causal))
    meta.update(PINGPONG=bool(pingpong), V_EARLY=bool(default_v_early if v_early is None else v_early))
    meta.update(CONSUMERS=consumers, num_warps=4, maxnreg=MAXNREG[consumers])
    grid = (triton.cdiv(N, 64 * consumers), B * H)
    _attn_fwd_ws[grid](*descriptors(q, k, v, o, block_n), lse, scale * LOG2E, N, k.shape[2], **meta)
    return o, lse
