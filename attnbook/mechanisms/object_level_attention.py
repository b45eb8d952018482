"""Chapter 17 · Object-level attention.

The mechanism: object tokens, spatial encoding, scanpaths (OAT 2024).

SCAFFOLD: derive the mechanism here as the chapter does, from chapter 00's notation
(S = Q K^T / sqrt(d), A = softmax(S) over the keys, out = sum_h A_h V_h W_O^h), changing one
thing at a time; then write its functional form (a pure function of tensors, shapes in the
docstring, the equation in a comment above the line that computes it) and, when it has
parameters, a small nn.Module using it.

Most mechanisms are multi-head attention with one thing changed. Plug that one thing into
attnbook.attention.MultiHeadAttention instead of copying its skeleton:

    qk_transform(q, k, pos_q, pos_k) -> (q, k)   rotate/convolve queries and keys  (B, H, ., d)
    score_mod(scores, q, k) -> scores            add a bias or change the scores   (B, H, N, M)
    mask_mod(N, M, device) -> mask               hide keys, or add to the scores   (N, M)
    head_gate(x) -> gates                        weight each head per query token  (B, N, H)
    value_transform(v) -> v                      change the value path             (B, H, M, d)
    weights_transform(A) -> A                    edit weights after the softmax    (B, H, N, M)
    head_transform(z) -> z                       edit head outputs before W_O      (B, H, N, d)

and build the chapter's model as TinyTransformer(config, attn=...). A mechanism that is a
different computation (pooling, search, a kernel) stands alone and says why.
"""

from __future__ import annotations

__all__: list[str] = []  # SCAFFOLD: the public functions and modules, once written

# SCAFFOLD: the shape a mechanism usually takes, shown on a learned distance bias on the
# scores (replace it with the chapter's own):
#
# import torch
# from torch import Tensor, nn
#
# from attnbook.attention import MultiHeadAttention
# from attnbook.masks import query_positions
# from attnbook.models import ModelConfig, TinyTransformer
#
#
# def distance_bias(scores: Tensor, slopes: Tensor) -> Tensor:
#     """Subtract slope_h * |p_i - j| from the scores.
#
#     Args:
#         scores: (B, H, N, M) scaled scores; the N queries are the last N of M positions.
#         slopes: (H,) one slope per head.
#     Returns:
#         (B, H, N, M) scores, same dtype and device.
#     """
#     N, M = scores.shape[-2:]
#     # |p_i - j| with p_i = i + M - N
#     distance = (query_positions(N, M, device=scores.device)[:, None]
#                 - torch.arange(M, device=scores.device)).abs()                # (N, M)
#     # S'_hij = S_hij - m_h |p_i - j|
#     return scores - slopes.to(scores.dtype)[:, None, None] * distance          # (B, H, N, M)
#
#
# class DistanceBias(nn.Module):
#     """A score_mod with one learned slope per head."""
#
#     def __init__(self, H: int):
#         super().__init__()
#         self.slopes = nn.Parameter(torch.zeros(H))
#
#     def forward(self, scores: Tensor, q: Tensor, k: Tensor) -> Tensor:
#         return distance_bias(scores, self.slopes)
#
#
# config = ModelConfig(D=32, H=4, vocab=16)
# model = TinyTransformer(config, attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H,
#                                                                    score_mod=DistanceBias(cfg.H)))
