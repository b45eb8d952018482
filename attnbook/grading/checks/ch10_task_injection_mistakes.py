"""Chapter 10: wrong answers of optimize_alpha and embedding_error, each declared once with its hint.

tests/exercises/test_ch10_task_injection.py checks that every one fails its task with its own hint.
"""

import torch

from ...models import ModelConfig, TinyTransformer
from ...tasks import task_prompts
from ..core import mistake


def _optimize(
    loss_fn,
    shape,
    batches,
    lr,
    val_loss_fn,
    eval_every,
    *,
    keep_last=False,
    backward=False,
    direct=False,
    start=0.0,
):
    if direct:  # Adam on α itself, clamped into [0, 1]
        alpha = torch.full(shape, 0.5, requires_grad=True)
        opt = torch.optim.Adam([alpha], lr=lr)
        for batch in batches:
            (alpha.grad,) = torch.autograd.grad(loss_fn(alpha, batch), [alpha])
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0, 1)
        return alpha.detach()
    logits = torch.full(shape, start, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    best, best_value = None, float("inf")
    for step, batch in enumerate(batches, start=1):
        loss = loss_fn(torch.sigmoid(logits), batch)
        if backward:
            opt.zero_grad()
            loss.backward()
        else:
            (logits.grad,) = torch.autograd.grad(loss, [logits])
        opt.step()
        if val_loss_fn is not None and step % eval_every == 0:
            with torch.no_grad():
                value = float(val_loss_fn(torch.sigmoid(logits)))
            if value < best_value and not keep_last:
                best, best_value = logits.detach().clone(), value
    return torch.sigmoid(logits.detach() if best is None else best)


@mistake(
    "ch10.optimize_alpha",
    "return the α with the LOWEST validation loss, and update that lowest value when you keep a new α "
    "(the reference code never updates it, so it keeps the last α)",
)
def optimize_alpha_keeps_last(loss_fn, shape, batches, lr=0.2, val_loss_fn=None, eval_every=50):
    return _optimize(loss_fn, shape, batches, lr, val_loss_fn, eval_every, keep_last=True)


@mistake(
    "ch10.optimize_alpha",
    "differentiate with respect to the logits only, torch.autograd.grad(loss, [a]), instead of "
    "loss.backward(): the model stays frozen",
)
def optimize_alpha_backward(loss_fn, shape, batches, lr=0.2, val_loss_fn=None, eval_every=50):
    return _optimize(loss_fn, shape, batches, lr, val_loss_fn, eval_every, backward=True)


@mistake(
    "ch10.optimize_alpha",
    "learn the logits a and use α = sigmoid(a): Adam on α itself (clamped to [0, 1]) takes other steps",
)
def optimize_alpha_directly(loss_fn, shape, batches, lr=0.2, val_loss_fn=None, eval_every=50):
    return _optimize(loss_fn, shape, batches, lr, val_loss_fn, eval_every, direct=True)


@mistake("ch10.optimize_alpha", "start from logits a = 0, so α = sigmoid(0) = 0.5 for every head")
def optimize_alpha_starts_small(loss_fn, shape, batches, lr=0.2, val_loss_fn=None, eval_every=50):
    return _optimize(loss_fn, shape, batches, lr, val_loss_fn, eval_every, start=-3.0)


def _embedding_error(M, seed, *, ignore_m=False):
    torch.manual_seed(seed)
    model = TinyTransformer(ModelConfig(D=32, H=4, layers=2, vocab=20, n_out=10, max_len=11)).eval()
    g = torch.Generator().manual_seed(seed)

    def embedding(n):
        with torch.no_grad():
            _, records = model(task_prompts(0, n, 5, g).tokens, return_intermediates=True)
        heads = torch.stack([r.heads for r in records], dim=1)  # (n, L, H, N, d)
        return heads[:, :, :, -1].mean(dim=0)  # (L, H, d)

    reference = embedding(400)
    error = (embedding(20 if ignore_m else M) - reference).norm()
    return float(error / reference.norm())


@mistake("ch10.embedding_error", "t_M is the mean over M fresh prompts: use M")
def embedding_error_ignores_m(M, seed):
    return _embedding_error(M, seed, ignore_m=True)
