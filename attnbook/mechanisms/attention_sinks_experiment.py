r"""Chapter 13's miniature: the object-captions toy with a planted massive activation.

The recipe of the chapter's experiment, kept apart from the mechanism
(:mod:`attnbook.mechanisms.attention_sinks`): the toy's settings :data:`CAPTIONS`, the training
run :func:`train_captioner`, the score :func:`caption_accuracy`, and :func:`replaced_values`,
which mean-replaces chosen tokens' values in every layer (the dispensability test).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .attention_sinks import mean_replace_values

__all__ = ["CAPTIONS", "replaced_values", "train_captioner", "caption_accuracy"]

# the chapter's toy: one pair of objects per image, one register, 12 slots (N = 17)
CAPTIONS = dict(n_objects=8, n_slots=12, pairs_per_image=1, n_registers=1)


@contextlib.contextmanager
def replaced_values(model: nn.Module, tokens: Tensor):
    """Within the block, every layer of ``model`` mean-replaces the values of ``tokens`` (B, M) bool.

    Sets each block's ``attn.value_transform`` to :func:`mean_replace_values` and restores it after.
    """
    layers = [block.attn for block in model.blocks]
    saved = [layer.value_transform for layer in layers]
    try:
        for layer in layers:
            layer.value_transform = lambda v: mean_replace_values(v, tokens)
        yield model
    finally:
        for layer, value_transform in zip(layers, saved):
            layer.value_transform = value_transform


def train_captioner(
    seed: int,
    *,
    D: int = 64,
    H: int = 4,
    layers: int = 3,
    mlp_ratio: int = 1,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 4e-3,
    sink_dim: int = 5,
    spike: float = 30.0,
) -> nn.Module:
    """Train a TinyTransformer on object captions (``CAPTIONS``) with a planted massive activation.

    The register token's embedding holds ``spike`` on dimension ``sink_dim``, frozen during
    training (its gradient there is zeroed); everything else trains. ``seed`` fixes the initial
    weights and the batches. Returns the model in eval mode.
    """
    import torch.nn.functional as F

    from ..models import ModelConfig, TinyTransformer
    from ..tasks.object_captions import IGNORE, object_captions
    from ..train import train

    vocab = object_captions(1, **CAPTIONS).vocab
    N = CAPTIONS["n_slots"] + 2 * CAPTIONS["pairs_per_image"] + 3
    torch.manual_seed(seed)
    config = ModelConfig(D=D, H=H, layers=layers, vocab=vocab.size, max_len=N, mlp_ratio=mlp_ratio)
    model = TinyTransformer(config)
    with torch.no_grad():
        model.embed.weight[vocab.register, sink_dim] = spike
    frozen = torch.ones_like(model.embed.weight)
    frozen[vocab.register, sink_dim] = 0.0
    handle = model.embed.weight.register_hook(lambda grad: grad * frozen)

    def loss_fn(m, batch):
        logits = m(batch.tokens)  # (B, N, vocab)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    batches = lambda step, g: object_captions(batch_size, generator=g, **CAPTIONS)  # noqa: E731
    train(model, batches, loss_fn, steps=steps, lr=lr, seed=seed, progress=False)
    handle.remove()
    return model.eval()


def caption_accuracy(logits: Tensor, batch) -> float:
    """Fraction of caption positions (targets != IGNORE) whose argmax is the target; logits (B, N, V)."""
    answer = batch.targets != -100
    return (logits.argmax(-1)[answer] == batch.targets[answer]).float().mean().item()
