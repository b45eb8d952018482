"""Chapter 10 solutions: Task injection into heads."""

import torch
from torch import Tensor


def task_embedding(records: list, last_idx: Tensor) -> Tensor:
    heads = torch.stack([r.heads for r in records], dim=1)  # (M, L, H, N, d)
    # z^l_{T_m,h}: position T_m of prompt m (advanced indices first: (M, L, H, d))
    last = heads[torch.arange(heads.shape[0]), :, :, last_idx]
    # t = mean over the M prompts
    return last.mean(dim=0)  # (L, H, d)


def soft_inject(z: Tensor, t: Tensor, alpha: Tensor, last_idx: Tensor) -> Tensor:
    out = z.clone()
    rows = torch.arange(z.shape[0])
    a = alpha[:, None]  # (H, 1): one weight per head, shared by the d coordinates
    # z̃_T = (1 − α) z_T + α t, at T = last_idx[b] of each row
    out[rows, :, last_idx] = (1 - a) * z[rows, :, last_idx] + a * t  # (B, H, d)
    return out
