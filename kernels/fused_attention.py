r"""Chapter 29's fused attention (FlashAttention-2 style) in Triton: the forward, the public function.

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

**Backward** (``fused_attention_backward.py``). With L stored, P is recomputed from Q, K
instead of being stored (N² bytes saved). By default in three launches and no atomics: compared
with a single kernel that adds dQ with atomics, this recomputes S and dP once more (7 block
matmuls instead of 5), but every output tile has exactly one writer: no fp32 dQ scratch, no
atomics, and a deterministic result. ``deterministic=False`` runs that single kernel instead.

**Causal.** With N ≤ M the queries are the *last* N of M positions (as when decoding with a
cache): query i sits at p_i = i + (M − N) and sees keys j ≤ p_i. That rule is defined once, in
:func:`attnbook.masks.query_positions` and :func:`attnbook.masks.causal_mask`; Triton cannot call
them, so the kernels restate it as ``diag = N_KV − N_Q`` and are tested against the masks.
Key blocks entirely in the future are skipped; blocks entirely in the past run an unmasked loop;
only the few blocks on the diagonal (and the ragged last block of a sequence) run a loop with
masks.

Shapes: B batch, H heads, N queries, M keys, d head width (16, 32, 64 or 128). Tile tables,
autotuning, the load path, dtypes and input checks come from the shared launch layer,
``launch.py``; the plain PyTorch specification, :func:`attention_reference`, is
:func:`attnbook.attention.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnbook.attention import scaled_dot_product_attention

from . import fused_attention_hopper as hopper
from . import launch
from .fused_attention_backward import (  # noqa: F401 - the backward kernels, for readers of this module
    _attn_bwd_dkdv,
    _attn_bwd_dq,
    _attn_bwd_fused,
    _attn_bwd_preprocess,
    _backward,
    _bwd_dkdv_inner,
    _bwd_dq_inner,
    _bwd_fused_inner,
)
from .launch import INTERPRET, INTERPRETER_BLOCKS, LOG2E, load_rows  # noqa: F401 - INTERPRET*: for readers

__all__ = ["flash_attention", "attention_reference", "HEAD_DIMS"]

HEAD_DIMS = (16, 32, 64, 128)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
# The kernels keep one block operation per line, to read as the equations above.
# fmt: off
@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_src, v_src, start, end, offs_m, N_KV, diag, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """Fold key blocks [start, end) into the online-softmax state (acc, l_i, m_i) of BLOCK_M rows."""
    # Per iteration: read one K and one V tile, 2·BLOCK_N·d elements (L2 hits for most programs);
    # compute 2 matmuls of BLOCK_M·BLOCK_N·d multiply-adds each. Nothing is written.
    for start_n in range(start, end, BLOCK_N):
        k = load_rows(k_src, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, USE_TMA)  # (BLOCK_N, d)
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
        v = load_rows(v_src, start_n, N_KV, HEAD_DIM, BLOCK_N, MASKED, USE_TMA)  # (BLOCK_N, d)
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
    q = load_rows(q_src, m0, N_Q, HEAD_DIM, BLOCK_M, True, USE_TMA)  # (BLOCK_M, d)
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
# fmt: on


def _forward(q, k, v, causal: bool, scale: float):
    """q: (B, H, N, d), k, v: (B, H, M, d), contiguous -> out (B, H, N, d), lse (B, H, N) float32.

    On an sm_90 GPU at d = 128 this runs v4, the warp-specialized forward of
    ``fused_attention_hopper.py`` (the same outputs; 1.2–1.3× v2's speed there, NOTES.md run 8)
    when the call is large enough for it to pay off (``hopper.worth_it``); everywhere else, and
    with ``ATTNBOOK_WS=0``, v2 below.
    """
    if (  # the arithmetic first: small calls, where the host's time counts, skip the device query
        launch.USE_WARP_SPECIALIZED
        and hopper.worth_it(*q.shape[:3], k.shape[2], q.shape[3], causal)
        and hopper.available(q, k, v)
    ):
        return hopper.forward(q, k, v, causal, scale)
    B, H, N, d = q.shape
    M = k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    # On Hopper the autotuner times both load paths (tensor descriptors and plain pointers) and
    # keeps the faster per shape: on the H200 they are within a few percent (see NOTES.md).
    variants = ({"USE_TMA": False},)
    if launch.use_tma(q, k, v, o):
        variants = ({"USE_TMA": True}, {"USE_TMA": False})
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    launch.run(
        _attn_fwd,
        "fwd",
        grid,
        (q, k, v, o, lse, scale * LOG2E, N, M),
        dict(HEAD_DIM=d, CAUSAL=causal),
        q.device,
        variants,
    )
    return o, lse


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward saves (q, k, v, out, lse); Triton backward recomputes P."""

    @staticmethod
    def forward(ctx, q, k, v, causal: bool, scale: float, deterministic: bool):
        o, lse = _forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale, ctx.deterministic = causal, scale, deterministic
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do.contiguous(), ctx.causal, ctx.scale, ctx.deterministic)
        return dq, dk, dv, None, None, None


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------
def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    scale: float | None = None,
    *,
    deterministic: bool = True,
) -> torch.Tensor:
    """Fused softmax attention, softmax(scale · q kᵀ) v, with a Triton forward and backward.

    Args:
        q: (B, H, N, d) queries; k, v: (B, H, M, d) keys and values; d in (16, 32, 64, 128).
            On a GPU: float16 or bfloat16 (bfloat16 needs sm_80+). In Triton's CPU interpreter
            (TRITON_INTERPRET=1 set before triton is imported): float32 or float16, and
            bfloat16 / float64 inputs computed in float32 and returned in their own dtype.
        causal: hide future keys. With N < M the queries are the LAST N of the M positions
            (decoding with a cache; :func:`attnbook.masks.causal_mask`): query i sees keys
            j <= i + M - N. Needs M >= N.
        scale: positive score scale; None means 1/sqrt(d).
        deterministic: the backward in three launches with one writer per output (7 block
            matmuls; the same bits on every run; the default), or, with False, one launch per key
            block that adds dQ in float32 with atomics (5 block matmuls; dQ's last bits vary from
            run to run). On the H200 the second is 2–6% faster at d = 128, N >= 4096, and slower
            at N = 1024 and at d = 64 (NOTES.md, run 5).

    Returns:
        (B, H, N, d) in q's dtype; differentiable with respect to q, k and v.

    Raises:
        TypeError for a non-tensor or an unsupported dtype, ValueError for shapes, devices, d,
        scale <= 0 or causal with M < N, RuntimeError when neither a GPU nor the interpreter
        can run it (:mod:`attnbook.kernels.launch`).
    """
    scale = launch.check_attention_inputs(q, k, v, causal=causal, scale=scale, head_dims=HEAD_DIMS)
    launch.require_runnable(q, "flash_attention")
    dtype = launch.compute_dtype(q.dtype, q.device)
    q_, k_, v_ = (t.to(dtype).contiguous() for t in (q, k, v))
    out = FlashAttentionFunction.apply(q_, k_, v_, bool(causal), scale, bool(deterministic))
    return out.to(q.dtype)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """The kernel's specification in plain PyTorch: the book's softmax attention, which
    materialises the (N, M) weights (:func:`attnbook.attention.scaled_dot_product_attention`,
    causal as in :func:`attnbook.masks.causal_mask`).

    q: (B, H, N, d); k, v: (B, H, M, d) -> (B, H, N, d).
    """
    out, _ = scaled_dot_product_attention(q, k, v, causal=causal, scale=scale)  # (B, H, N, d)
    return out
