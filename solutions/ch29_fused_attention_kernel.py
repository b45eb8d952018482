"""Chapter 29 solutions: fused attention, from the online softmax to a Triton kernel.

Grade them with ``attnbook grade 29 --solutions``. Without a GPU the Triton kernel runs in
Triton's CPU interpreter, switched on below before triton is imported (the interpreter is
chosen when @triton.jit runs).
"""

import math
import os

import torch
from torch import Tensor

from attnbook.mechanisms.fused_attention_memory import naive_attention, peak_memory

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
    # m' = max(m, max_j s_j); every row has a finite score, so m' is finite
    m_new = torch.maximum(m, s_block.amax(dim=-1))
    alpha = torch.exp(m - m_new)  # e^{m - m'}: 0 for the start state m = -inf
    p = torch.exp(s_block - m_new[..., None])  # (..., N, Bn), every exponent <= 0
    l_new = l * alpha + p.sum(dim=-1)  # l' = l e^{m - m'} + Σ_j e^{s_j - m'}
    acc_new = acc * alpha[..., None] + p @ v_block  # acc' = acc e^{m - m'} + Σ_j e^{s_j - m'} v_j
    return m_new, l_new, acc_new


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, block: int) -> tuple[Tensor, Tensor]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    M = k.shape[-2]
    m = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (B, H, N)
    l = torch.zeros(q.shape[:-1], dtype=q.dtype, device=q.device)  # (B, H, N)
    acc = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)  # (B, H, N, d_v)
    for start in range(0, M, block):  # the last block may hold fewer than `block` keys
        stop = min(start + block, M)
        s = q @ k[..., start:stop, :].transpose(-2, -1) * scale  # (B, H, N, <=block)
        m, l, acc = online_softmax_update(m, l, acc, s, v[..., start:stop, :])
    # O = õ / ℓ and LSE = m + log ℓ
    return acc / l[..., None], m + torch.log(l)


def attention_backward(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, do: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    scale = 1.0 / math.sqrt(q.shape[-1])
    a = torch.exp(q @ k.transpose(-2, -1) * scale - lse[..., None])  # A = exp(S - LSE), (B, H, N, M)
    dv = a.transpose(-2, -1) @ do  # dV = Aᵀ dO
    da = do @ v.transpose(-2, -1)  # dA = dO Vᵀ
    delta = (do * o).sum(dim=-1, keepdim=True)  # Δ = rowsum(dO ∘ O) = rowsum(A ∘ dA)
    ds = a * (da - delta)  # dS = A ∘ (dA - Δ)
    return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, dv  # dQ = τ dS K, dK = τ dSᵀ Q


@triton.jit
def attention_forward_block_kernel(
    Q, K, V, O, L, N, M, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr
):
    start_m = tl.program_id(0)  # which query block
    bh = tl.program_id(1)  # which (batch, head)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_ok = offs_m < N
    # the query block: loaded once, kept on chip for the whole loop
    q = tl.load(Q + bh * N * D + offs_m[:, None] * D + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, M, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < M
        kv = bh * M * D + cols[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + kv, mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(col_ok[None, :], s, float("-inf"))  # keys beyond M get no weight
        m_new = tl.maximum(m_i, tl.max(s, 1))  # m' = max(m, max_j s_j)
        alpha = tl.exp(m_i - m_new)  # e^{m - m'}
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)  # l' = l e^{m - m'} + Σ_j p_j
        acc = acc * alpha[:, None] + tl.dot(p, v)  # acc' = acc e^{m - m'} + P V
        m_i = m_new
    tl.store(O + bh * N * D + offs_m[:, None] * D + offs_d[None, :], acc / l_i[:, None], mask=row_ok[:, None])
    tl.store(L + bh * N + offs_m, m_i + tl.log(l_i), mask=row_ok)


def triton_attention_forward(
    q: Tensor, k: Tensor, v: Tensor, block_m: int = 16, block_n: int = 16
) -> tuple[Tensor, Tensor]:
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
    q, k, v = (torch.randn(1, 1, N, 32) for _ in range(3))  # float32 (1, 1, N, d = 32)
    _, naive_bytes = peak_memory(naive_attention, q, k, v)  # S and A: two (N, N) tensors
    _, blocked_bytes = peak_memory(blocked_attention, q, k, v, block)  # (N, block) tiles
    return naive_bytes, blocked_bytes
