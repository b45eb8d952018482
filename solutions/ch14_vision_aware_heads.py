"""Chapter 14 solutions: VHD, head selection, CHAIR_i and one layer-by-layer VHR step."""

import torch
from torch import Tensor, nn


def _head_outputs(a: Tensor, v: Tensor) -> Tensor:
    # z_h = Σ_j a_hj v_hj: the last query's head output, (B, H, d)
    return (a[..., None, :] @ v).squeeze(-2)


def vhd(a_img: Tensor, v_img: Tensor, a_txt: Tensor, v_txt: Tensor, metric: str = "l2") -> Tensor:
    work = a_img.dtype if a_img.dtype in (torch.float32, torch.float64) else torch.float32
    z_img = _head_outputs(a_img.to(work), v_img.to(work))
    z_txt = _head_outputs(a_txt.to(work), v_txt.to(work))
    if metric == "l2":
        # VHD_h = ||z_h(img) - z_h(txt)||_2
        return (z_img - z_txt).norm(dim=-1)
    # VHD_h = 1 - <z_img, z_txt> / (|z_img| |z_txt|)
    return 1 - (z_img * z_txt).sum(-1) / (z_img.norm(dim=-1) * z_txt.norm(dim=-1)).clamp_min(1e-12)


def select_vision_heads(v: Tensor, outlier_std: float = 1.0) -> Tensor:
    if v.shape[-1] < 2:
        return torch.zeros(v.shape, dtype=torch.bool, device=v.device)
    # not a surge outlier: v <= mean + c·std (per row)
    ceiling = v.mean(-1, keepdim=True) + outlier_std * v.std(-1, keepdim=True)
    # strictly above the row's median
    median = v.median(-1, keepdim=True).values
    return (v <= ceiling) & (v > median)


def chair_i(objects: Tensor, present: Tensor) -> float:
    n_obj = present.shape[1]
    mentioned = torch.zeros(objects.shape[0], n_obj + 1, dtype=torch.bool, device=objects.device)
    # one column per object, an extra one for -1; scattering twice sets the flag once
    mentioned.scatter_(1, torch.where(objects < 0, n_obj, objects), True)
    mentioned = mentioned[:, :n_obj]
    total = int(mentioned.sum())
    # Σ_b |M_b ∖ P_b| / Σ_b |M_b|
    return float((mentioned & ~present).sum()) / total if total else 0.0


class _Reinforce(nn.Module):
    # a module, not a function: once head_transform has held a module, torch accepts only modules there
    def __init__(self, o_txt: Tensor, alpha: float):
        super().__init__()
        self.o_txt, self.alpha = o_txt, alpha

    def forward(self, z: Tensor) -> Tensor:
        keep = select_vision_heads((z[:, :, -1] - self.o_txt).norm(dim=-1))  # (B, H)
        scale = torch.where(keep, self.alpha, 1.0).to(z.dtype)
        return torch.cat([z[:, :, :-1], z[:, :, -1:] * scale[..., None, None]], dim=2)


def vhr_step(model: nn.Module, tokens_img: Tensor, tokens_txt: Tensor, alpha: float) -> Tensor:
    def embed(tokens):
        return model.embed(tokens) + model.pos.weight[: tokens.shape[1]]

    x_img, x_txt = embed(tokens_img), embed(tokens_txt)
    for block in model.blocks:
        x_txt, record = block(x_txt, return_intermediates=True)
        o_txt = record.heads[:, :, -1]  # (B, H, d)

        reinforce = _Reinforce(o_txt, alpha)
        saved, block.attn.head_transform = block.attn.head_transform, reinforce
        try:
            x_img = block(x_img)
        finally:
            block.attn.head_transform = saved
    return model.readout(model.norm(x_img[:, -1]))
