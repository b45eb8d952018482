"""Chapter 13 solutions: attention sinks, image-centric heads and VAR redistribution."""

import torch
from torch import Tensor


def _in_image(img: slice, M: int, device) -> Tensor:
    start, stop, _ = img.indices(M)
    keys = torch.arange(M, device=device)
    return (keys >= start) & (keys < stop)  # (M,)


def sink_mask(h: Tensor, dims: Tensor, tau: float, eps: float = 1e-6) -> Tensor:
    x = h if h.dtype == torch.float64 else h.float()
    # RMSNorm(x) = x / sqrt(mean(x²) + eps)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (B, N, D)
    # MA = max_{d ∈ dims} |RMSNorm(x)_d|; sink ⇔ MA > χ_MA
    return normed[..., dims].abs().amax(-1) > tau


def image_centric(A: Tensor, img: slice, sink: Tensor, rho: float, summ: float) -> Tensor:
    in_img = _in_image(img, A.shape[-1], A.device)
    vis = sink & in_img  # (B, M)
    # VR = Σ_{j∈I} A_qj
    nu = (A * in_img).sum(-1)  # (B, H, N)
    mass = (A * vis[:, None, None, :]).sum(-1)
    # SR = visual-sink mass / VR, 0 where VR = 0
    share = torch.where(nu > 0, mass / torch.where(nu > 0, nu, torch.ones_like(nu)), torch.zeros_like(nu))
    return (nu >= summ) & (share <= rho) & vis.any(-1)[:, None, None]


def redistribute(A: Tensor, sink: Tensor, img: slice, sel: Tensor, p: float) -> Tensor:
    s = sink[:, None, None, :]  # (B, 1, 1, M)
    ns = (_in_image(img, A.shape[-1], A.device) & ~sink)[:, None, None, :]
    # budget = (1 - p) Σ_{sinks} A_qj;  m_ns = Σ_{I∖sinks} A_qj
    budget = (1 - p) * (A * s).sum(-1, keepdim=True)
    m_ns = (A * ns).sum(-1, keepdim=True)
    safe = torch.where(m_ns > 0, m_ns, torch.ones_like(m_ns))
    # p A on sinks; A + budget · A / m_ns on the non-sink image tokens
    edited = torch.where(s, p * A, A) + torch.where(ns, budget * A / safe, torch.zeros_like(A))
    return torch.where(sel[..., None] & (m_ns > 0), edited, A)


def var_heads(q, k, v, h, dims, tau, img, rho=0.5, summ=0.2, p=0.6):
    N = q.shape[-2]
    sinks = sink_mask(h, dims, tau)  # (B, N), on the block's input
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, H, N, N)
    causal = torch.ones(N, N, dtype=torch.bool, device=q.device).tril()
    A = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    after_image = torch.arange(N, device=q.device) >= img.indices(N)[1]  # (N,): text after the image
    selected = image_centric(A, img, sinks, rho, summ) & after_image
    return redistribute(A, sinks, img, selected, p) @ v


def _mean_replace(v: Tensor, tokens: Tensor) -> Tensor:
    t = tokens[:, None, :, None]  # (B, 1, M, 1)
    # one mean per head over every chosen token of the batch
    mean = (v * t).sum((0, 2), keepdim=True) / t.sum().clamp(min=1)  # (1, H, 1, d)
    return torch.where(t, mean, v)


def ablation_accuracy(seed: int) -> dict[str, float]:
    from attnbook.mechanisms.attention_sinks_experiment import CAPTIONS, caption_accuracy, train_captioner
    from attnbook.tasks import object_captions
    from attnbook.tasks.object_captions import BACKGROUND, OBJECT, REGISTER

    model = train_captioner(seed, D=32, layers=2, steps=40)
    test = object_captions(500, generator=torch.Generator().manual_seed(1000 + seed), **CAPTIONS)
    arms = {
        "intact": None,
        "sinks": (test.kinds == REGISTER) | (test.kinds == BACKGROUND),
        "objects": test.kinds == OBJECT,
    }
    result = {}
    with torch.no_grad():
        for name, tokens in arms.items():
            for block in model.blocks:
                block.attn.value_transform = (
                    None if tokens is None else (lambda v, t=tokens: _mean_replace(v, t))
                )
            result[name] = caption_accuracy(model(test.tokens), test)
    for block in model.blocks:
        block.attn.value_transform = None
    return result
