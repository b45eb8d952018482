"""Chapter 14 solutions: VHD, head selection, CHAIR_I and one layer-by-layer VHR step."""

import torch
from torch import Tensor, nn


def _head_outputs(a: Tensor, v: Tensor) -> Tensor:
    # o_h = Σ_j a_hj v_hj: the last query's head output, (B, H, d)
    return (a[..., None, :] @ v).squeeze(-2)


def vhd(a_img: Tensor, v_img: Tensor, a_txt: Tensor, v_txt: Tensor, metric: str = "l2") -> Tensor:
    work = a_img.dtype if a_img.dtype in (torch.float32, torch.float64) else torch.float32
    o_im = _head_outputs(a_img.to(work), v_img.to(work))
    o_tx = _head_outputs(a_txt.to(work), v_txt.to(work))
    if metric == "l2":
        # VHD_h = ||o_h(img) - o_h(txt)||_2
        return (o_im - o_tx).norm(dim=-1)
    # VHD_h = 1 - <o_h(img), o_h(txt)> / (|o_h(img)| |o_h(txt)|)
    return 1 - (o_im * o_tx).sum(-1) / (o_im.norm(dim=-1) * o_tx.norm(dim=-1)).clamp_min(1e-12)


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
    # Σ_b |C_b ∖ P_b| / Σ_b |C_b|
    return float((mentioned & ~present).sum()) / total if total else 0.0


class _Reinforce(nn.Module):
    # a module, not a function: once head_transform has held a module, torch accepts only modules there
    def __init__(self, o_txt: Tensor, alpha: float):
        super().__init__()
        self.o_txt, self.alpha = o_txt, alpha

    def forward(self, o: Tensor) -> Tensor:
        keep = select_vision_heads((o[:, :, -1] - self.o_txt).norm(dim=-1))  # (B, H)
        scale = torch.where(keep, self.alpha, 1.0).to(o.dtype)
        return torch.cat([o[:, :, :-1], o[:, :, -1:] * scale[..., None, None]], dim=2)


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


def filter_experiment(seed: int) -> dict[str, float]:
    from attnbook.mechanisms.vision_aware_heads import caption_objects, vhr_generate
    from attnbook.mechanisms.vision_aware_heads_experiment import TOY, train_captioner
    from attnbook.tasks import object_captions

    model = train_captioner(seed, D=64, steps=100, batch_size=32, lr=2e-3)
    test = object_captions(
        200, counterfactual=True, generator=torch.Generator().manual_seed(1000 + seed), **TOY
    )
    prompt = test.tokens[:, : test.desc_position + 1]
    text_only = prompt.clone()
    text_only[:, test.image] = test.vocab.background  # the image slots become background
    arms = {"base": (1.0, 1.0), "filter": (2.0, 1.0), "no_filter": (2.0, float("inf"))}
    result = {}
    with torch.no_grad():
        for name, (alpha, outlier_std) in arms.items():
            gen = vhr_generate(model, prompt, text_only, alpha, max_new=5, outlier_std=outlier_std)
            result[name] = chair_i(caption_objects(gen, test.vocab), test.present)
    return result
