r"""Chapter 14's miniature: prior-driven hallucination in the object-captions toy, and VHR against it.

The recipe of the chapter's experiment, kept apart from the mechanism
(:mod:`attnbook.mechanisms.vision_aware_heads`): the toy's settings :data:`TOY`, the training run
:func:`train_captioner`, and :func:`hallucination`, which captions counterfactual images (each
drawn pair keeps exactly one member, so the co-occurrence prior names an absent partner) with
greedy VHR decoding and scores CHAIR_i, recall and caption length.

"Without the image" is the same prompt with every image slot replaced by the background token,
so both branches have the same positions.
"""

from __future__ import annotations

import torch
from torch import nn

from .vision_aware_heads import caption_objects, chair_i, vhr_generate

__all__ = ["TOY", "train_captioner", "hallucination"]

# 16 image slots, two co-occurring pairs per image, 8 object types (N = 23)
TOY = dict(n_objects=8, n_slots=16, pairs_per_image=2)


def train_captioner(
    seed: int,
    *,
    D: int = 64,
    H: int = 4,
    layers: int = 2,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> nn.Module:
    """Train a TinyTransformer on object captions (``TOY``, pairs kept with p = 0.97).

    ``seed`` fixes the initial weights and the batches. Returns the model in eval mode.
    """
    import torch.nn.functional as F

    from ..models import ModelConfig, TinyTransformer
    from ..tasks.object_captions import IGNORE, object_captions
    from ..train import train

    vocab = object_captions(1, **TOY).vocab
    N = TOY["n_slots"] + 2 * TOY["pairs_per_image"] + 3
    torch.manual_seed(seed)
    model = TinyTransformer(ModelConfig(D=D, H=H, layers=layers, vocab=vocab.size, max_len=N))

    def loss_fn(m, batch):
        logits = m(batch.tokens)  # (B, N, vocab)
        return F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE)

    batches = lambda step, g: object_captions(batch_size, generator=g, **TOY)  # noqa: E731
    train(model, batches, loss_fn, steps=steps, lr=lr, seed=seed, progress=False)
    return model.eval()


@torch.no_grad()
def hallucination(
    model: nn.Module, alpha: float, *, outlier_std: float = 1.0, n_test: int = 500, seed: int = 0
) -> dict[str, float]:
    """Caption ``n_test`` counterfactual images with VHR(α) and score the captions.

    Returns {"chair_i": share of mentioned objects absent from the image, "recall": share of present
    objects mentioned, "length": mean number of distinct objects per caption}. The test images are
    drawn from ``manual_seed(1000 + seed)``; α = 1 is the base model's greedy caption.
    """
    from ..tasks.object_captions import object_captions

    test = object_captions(
        n_test, counterfactual=True, generator=torch.Generator().manual_seed(1000 + seed), **TOY
    )
    vocab = test.vocab
    prompt = test.tokens[:, : test.desc_position + 1]  # [BOS] image [DESC]
    blank = prompt.clone()
    blank[:, test.image] = vocab.background
    gen = vhr_generate(
        model, prompt, blank, alpha, max_new=2 * TOY["pairs_per_image"] + 1, outlier_std=outlier_std
    )
    objects = caption_objects(gen, vocab)  # (B, T)
    n_obj = vocab.n_objects
    mentioned = torch.zeros(n_test, n_obj + 1, dtype=torch.bool)
    mentioned.scatter_(1, torch.where(objects < 0, n_obj, objects), True)
    mentioned = mentioned[:, :n_obj]
    return {
        "chair_i": chair_i(objects, test.present),
        "recall": float((mentioned & test.present).sum() / test.present.sum()),
        "length": float(mentioned.sum(1).double().mean()),
    }
