"""Chapter 05 solutions: Relative convolutional attention (RCMHA)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_dwconv(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    B, H, N, d = x.shape
    kernel = w.shape[1]
    # (B*H, d, N): the heads share the taps; k - 1 zeros before the first token only
    seq = F.pad(x.reshape(B * H, N, d).transpose(1, 2), (kernel - 1, 0))
    # conv1d correlates, so flip the taps: w'_s = w_{k-1-s}
    out = F.conv1d(seq, w.flip(-1)[:, None, :], b, groups=d)  # (B*H, d, N)
    return out.transpose(1, 2).reshape(B, H, N, d)


def relative_scores(q: Tensor, k: Tensor, r: Tensor, beta: Tensor, u: Tensor) -> Tensor:
    N, M, d = q.shape[-2], k.shape[-2], q.shape[-1]
    P = r.shape[1] // 2
    # delta_ij = j - p_i with p_i = i + M - N, as table rows P + delta
    delta = torch.arange(M, device=q.device)[None, :] - (torch.arange(N, device=q.device)[:, None] + M - N)
    rows = P + delta  # (N, M)
    r_ij = r[:, rows]  # (H, N, M, d)
    positional = torch.einsum("bhnd,hnmd->bhnm", q, r_ij) + beta[:, rows]  # (B, H, N, M)
    content = (q + u[None, :, None, :]) @ k.transpose(-2, -1)  # (B, H, N, M)
    return (content + positional) / math.sqrt(d)


def rel_shift(x: Tensor, M: int) -> Tensor:
    N = x.shape[-2]
    lead = x.shape[:-2]
    # one zero column on the right, flattened: rows of width M + N
    flat = F.pad(x, (0, 1)).reshape(*lead, N * (M + N))
    # re-read rows of width M + N - 1 from element N - 1: row i then starts N - 1 - i columns later
    skew = flat[..., N - 1 : N - 1 + N * (M + N - 1)].reshape(*lead, N, M + N - 1)
    return skew[..., :M]


def length_drop(variant: str, seed: int) -> float:
    from attnbook.mechanisms.relative_convolutional import train_stream
    from attnbook.tasks import markov_period

    N = 16
    model = train_stream(variant, seed, N=N, steps=60, D=16, H=2, lr=2e-2)
    test = markov_period(400, 2 * N, generator=torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        correct = (model(test.tokens).argmax(-1) == test.targets).float()  # (400, 2N)
    # accuracy on the training length minus accuracy beyond it
    return correct[:, :N].mean().item() - correct[:, N:].mean().item()
