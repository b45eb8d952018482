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


def optimize_alpha(loss_fn, shape, batches, lr=0.2, val_loss_fn=None, eval_every=50):
    logits = torch.zeros(*shape, requires_grad=True)  # a = 0: α = 0.5 everywhere
    opt = torch.optim.Adam([logits], lr=lr)
    best, best_value = None, float("inf")
    for step, batch in enumerate(batches, start=1):
        # α = sigmoid(a); the gradient reaches a only (the model keeps no .grad)
        (logits.grad,) = torch.autograd.grad(loss_fn(torch.sigmoid(logits), batch), [logits])
        opt.step()
        if val_loss_fn is not None and step % eval_every == 0:
            with torch.no_grad():
                value = float(val_loss_fn(torch.sigmoid(logits)))
            if value < best_value:  # keep the best α, and update the best value too
                best, best_value = logits.detach().clone(), value
    return torch.sigmoid(logits.detach() if best is None else best)


def embedding_error(M, seed):
    from attnbook.models import ModelConfig, TinyTransformer
    from attnbook.tasks import task_prompts

    torch.manual_seed(seed)
    model = TinyTransformer(ModelConfig(D=32, H=4, layers=2, vocab=20, n_out=10, max_len=11)).eval()
    g = torch.Generator().manual_seed(seed)

    def embedding(n):
        prompts = task_prompts(0, n, 5, g)
        with torch.no_grad():
            _, records = model(prompts.tokens, return_intermediates=True)
        # unpadded prompts: the last prompt token is position −1 of every row
        return torch.stack([r.heads[:, :, -1] for r in records], dim=1).mean(dim=0)  # (L, H, d)

    reference = embedding(400)
    return float((embedding(M) - reference).norm() / reference.norm())
