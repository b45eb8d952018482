"""Chapter 29 exercises: fused attention, from the online softmax to a Triton kernel.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 29

or, in a notebook, ``check("ch29.<function name>", your_function)`` from attnbook.grading.
The first three tasks use only torch; do not call torch.softmax on a whole row of scores or
torch.nn.functional.scaled_dot_product_attention (the grader compares you with them). The
fourth is a Triton kernel: without a GPU it runs in Triton's CPU interpreter, which this file
switches on before it imports triton (the interpreter is chosen when @triton.jit runs).
"""

import math
import os

import torch
from torch import Tensor

# for measured_peak_memory, the experiment at the end
from attnbook.mechanisms.fused_attention_memory import naive_attention, peak_memory  # noqa: F401

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU: run the kernel in the CPU interpreter

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the torch tasks still work; the Triton task reports that Triton is missing
    from types import SimpleNamespace

    triton, tl, HAVE_TRITON = SimpleNamespace(jit=lambda fn: fn), SimpleNamespace(constexpr=int), False


def online_softmax_update(
    m: Tensor, l: Tensor, acc: Tensor, s_block: Tensor, v_block: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold one block of scores and values into the running online-softmax state.

    Args:
        m: running maximum of the scores seen so far, (..., N); -inf before the first block.
        l: running sum of exp(s_j - m) over the scores seen so far, (..., N); 0 at first.
        acc: running sum of exp(s_j - m) v_j, (..., N, d_v); 0 at first (NOT divided by l).
        s_block: the next block of scores, (..., N, Bn). An entry may be -inf (a hidden key),
            but every row has at least one finite score.
        v_block: the values of that block, (..., Bn, d_v).

    Returns:
        (m', l', acc'), same shapes and dtype as (m, l, acc):
            m'   = max(m, max_j s_j)
            l'   = l * exp(m - m') + Σ_j exp(s_j - m')
            acc' = acc * exp(m - m') + Σ_j exp(s_j - m') v_j
    """
    raise NotImplementedError("ch29.online_softmax_update")


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """Softmax attention computed over key blocks of ``block`` keys with the online softmax.

    Args:
        q: (B, H, N, d); k: (B, H, M, d); v: (B, H, M, d_v), float32 or float64. M may differ
            from N and need not be a multiple of ``block`` (the last block is shorter).
        block: number of keys per block (1 <= block; it may exceed M).

    Returns:
        out: (B, H, N, d_v) = softmax(q kᵀ / sqrt(d)) v over the keys.
        lse: (B, H, N), the natural log-sum-exp of each query's scores: log Σ_j exp(s_j).
        Both in q's dtype. Never build the whole (N, M) score matrix: one (N, block) block at a
        time, starting from m = -inf, l = 0, acc = 0 (the grader watches every tensor your
        function produces, and tries rows whose scores are all near -1800 or +1800).
    """
    raise NotImplementedError("ch29.blocked_attention")


def attention_backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, do: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of out = softmax(q kᵀ / sqrt(d)) v, from the forward's output and log-sum-exp.

    Args:
        q: (B, H, N, d); k: (B, H, M, d); v: (B, H, M, d_v).
        o: (B, H, N, d_v), the forward's output; lse: (B, H, N), its log-sum-exp.
        do: (B, H, N, d_v), the gradient of the loss with respect to o.

    Returns:
        (dq, dk, dv) with the shapes of (q, k, v). Recompute the weights A = exp(S - lse) with
        S = τ q kᵀ, τ = 1/sqrt(d); then dV = Aᵀ dO, dA = dO Vᵀ, Δ = rowsum(dO ∘ O),
        dS = A ∘ (dA - Δ), dQ = τ dS K, dK = τ dSᵀ Q. No autograd: the grader turns it off
        and fails a function that calls it.
    """
    raise NotImplementedError("ch29.attention_backward")


@triton.jit
def attention_forward_block_kernel(
    Q, K, V, O, L, N, M, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr
):
    # One program computes BLOCK_M query rows of one (batch, head): program_id(0) is the query
    # block, program_id(1) = b * H + h. The tensors are contiguous float32:
    #   Q, O: (B*H, N, D), element (bh, i, c) at  bh*N*D + i*D + c
    #   K, V: (B*H, M, D), element (bh, j, c) at  bh*M*D + j*D + c
    #   L:    (B*H, N),    element (bh, i)    at  bh*N + i
    # 1. Load the query block (rows >= N masked), start m_i = -inf, l_i = 0, acc = 0 (float32).
    # 2. For each key block start in range(0, M, BLOCK_N): load K and V blocks (rows >= M
    #    masked), s = tl.dot(q, tl.trans(k)) * scale, set s = -inf where the key index >= M,
    #    then the online-softmax update of m_i, l_i, acc (tl.maximum, tl.max, tl.exp, tl.sum, tl.dot).
    # 3. Store acc / l_i into O and m_i + tl.log(l_i) into L, for the rows < N only.
    pass  # your kernel here


def triton_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, block_m: int = 16, block_n: int = 16
) -> tuple[Tensor, Tensor]:
    """Launch attention_forward_block_kernel: non-causal softmax attention, one query block per program.

    Args:
        q: (B, H, N, d); k, v: (B, H, M, d); float32, on the GPU or (interpreter) the CPU.
            d is a power of two >= 16; N and M are any sizes.
        block_m, block_n: query and key block sizes (powers of two >= 16).

    Returns:
        out (B, H, N, d) and lse (B, H, N), float32: the attention output and the natural
        log-sum-exp of each query's scores (q·k / sqrt(d)).
    """
    # This launcher is complete: write the kernel above, then delete the next line.
    raise NotImplementedError("ch29.triton_attention_forward")
    if not HAVE_TRITON:
        raise ImportError("triton_attention_forward needs Triton: pip install 'attnbook[kernels]'")
    B, H, N, d = q.shape
    M = k.shape[2]
    q, k, v = (t.contiguous().float() for t in (q, k, v))
    out = torch.empty_like(q)  # (B, H, N, d)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(N, block_m), B * H)  # one program per (query block, b·h)
    attention_forward_block_kernel[grid](
        q, k, v, out, lse, N, M, 1.0 / math.sqrt(d), BLOCK_M=block_m, BLOCK_N=block_n, D=d
    )
    return out, lse


def measured_peak_memory(N: int, block: int) -> tuple[int, int]:
    """Experiment: measure the peak memory of naive attention and of YOUR blocked attention.

    Make float32 q, k, v of shape (1, 1, N, 32) (torch.randn), then measure each computation with
    ``peak_memory`` from attnbook.mechanisms.fused_attention_memory, which returns
    (result, peak bytes of the tensors it held at once, the inputs not counted):

        naive_attention(q, k, v)              # from the same module: the (N, N) scores and weights
        blocked_attention(q, k, v, block)     # your function above, key blocks of ``block``

    Args:
        N: number of queries and keys (N = M), larger than ``block``.
        block: keys per block.

    Returns:
        (naive_bytes, blocked_bytes), two positive numbers of bytes. Try N = 256, 512, ..., 4096:
        which one grows as N², which as N?
    """
    raise NotImplementedError("ch29.measured_peak_memory")
