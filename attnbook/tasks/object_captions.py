r"""Object captions: a two-modality toy with an "image" of slots and a caption that lists its objects.

One sequence reads

    [BOS]  s_1 ... s_S  [DESC]  name(o_1) ... name(o_k)  [EOS]  [PAD] ...
           └─ image ─┘         └──── caption: the present objects, sorted ────┘

Each image slot s_i holds one image token: an object token o ∈ [0, n_objects), the background
token, or a register token. The objects come in co-occurring pairs (0, 1), (2, 3), ...: an image
draws ``pairs_per_image`` distinct pairs and keeps each member independently with probability
``p_pair``, so a model can learn the prior "if 0 is there, 1 is there too". With
``counterfactual=True`` exactly one member of each drawn pair is kept: the prior is then wrong
for every pair, and naming the missing partner is a hallucination (chapter 14).
``n_registers`` register tokens sit in every image at random slots and carry no information
about the caption (chapter 13 gives them a planted massive activation).

Text and image use separate ids (an object's image token differs from its name), laid out by
:class:`CaptionVocab`. The targets are next-token targets on the caption: the [DESC] position
predicts the first name, each name the next one, the last name [EOS]; every other position is
``IGNORE`` (-100), which ``torch.nn.functional.cross_entropy`` skips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import require_int

__all__ = ["IGNORE", "KIND_NAMES", "CaptionVocab", "CaptionBatch", "object_captions"]

IGNORE = -100
# kinds of tokens, one per position: kinds == KIND_NAMES.index("object") marks the object slots
KIND_NAMES = ("text", "object", "background", "register", "pad")
TEXT, OBJECT, BACKGROUND, REGISTER, PAD = range(5)


@dataclass(frozen=True)
class CaptionVocab:
    """Token ids of the toy: image tokens first, then text.

    ids 0 ... n-1: object image tokens; n: background; n+1: register;
    n+2 ... 2n+1: object names; then BOS, DESC, EOS, PAD (``size`` ids in all).
    """

    n_objects: int

    @property
    def background(self) -> int:
        return self.n_objects

    @property
    def register(self) -> int:
        return self.n_objects + 1

    def name(self, obj: int | Tensor) -> int | Tensor:
        """The text id that names object ``obj`` (an int or a tensor of object ids)."""
        return obj + self.n_objects + 2

    @property
    def bos(self) -> int:
        return 2 * self.n_objects + 2

    @property
    def desc(self) -> int:
        return 2 * self.n_objects + 3

    @property
    def eos(self) -> int:
        return 2 * self.n_objects + 4

    @property
    def pad(self) -> int:
        return 2 * self.n_objects + 5

    @property
    def size(self) -> int:
        return 2 * self.n_objects + 6


@dataclass
class CaptionBatch:
    tokens: Tensor  # (B, N) int64 ids of CaptionVocab
    targets: Tensor  # (B, N) int64: the next token on the caption positions, IGNORE elsewhere
    kinds: Tensor  # (B, N) int64 in [0, 5): TEXT, OBJECT, BACKGROUND, REGISTER, PAD
    present: Tensor  # (B, n_objects) bool: object o is in the image
    pairs: Tensor  # (B, n_objects // 2) bool: pair (2i, 2i+1) was drawn for the image
    image: slice  # the image slots' positions, 1 ... n_slots (the same for every row)
    vocab: CaptionVocab

    @property
    def desc_position(self) -> int:
        """Position of [DESC]: the first query that answers about the image."""
        return self.image.stop


def object_captions(
    batch_size: int,
    *,
    n_objects: int = 8,
    n_slots: int = 16,
    pairs_per_image: int = 2,
    p_pair: float = 0.97,
    counterfactual: bool = False,
    n_registers: int = 0,
    generator: torch.Generator | None = None,
) -> CaptionBatch:
    """Draw a batch of images and their captions (see the module docstring).

    Args:
        batch_size: B.
        n_objects: number of object types, even (they form n_objects / 2 pairs).
        n_slots: image slots S; N = S + 2 * pairs_per_image + 3 positions in all.
        pairs_per_image: distinct pairs drawn per image.
        p_pair: probability that each member of a drawn pair is kept (ignored when counterfactual).
        counterfactual: keep exactly one member of each drawn pair, chosen uniformly.
        n_registers: register tokens per image, at random slots.
        generator: a seeded torch.Generator for reproducible batches.
    Returns:
        a :class:`CaptionBatch`; tokens, targets and kinds are (B, N) with N = S + 2·pairs + 3.
    """
    B = require_int(batch_size, "batch_size", minimum=1)
    n_obj = require_int(n_objects, "n_objects", minimum=2)
    S = require_int(n_slots, "n_slots", minimum=1)
    k_pairs = require_int(pairs_per_image, "pairs_per_image", minimum=1)
    n_reg = require_int(n_registers, "n_registers", minimum=0)
    if n_obj % 2:
        raise ValueError(f"n_objects must be even (objects come in pairs), got {n_obj}")
    if k_pairs > n_obj // 2:
        raise ValueError(f"pairs_per_image={k_pairs} exceeds the {n_obj // 2} pairs of {n_obj} objects")
    if S < 2 * k_pairs + n_reg:
        raise ValueError(
            f"n_slots={S} cannot hold {2 * k_pairs} objects and {n_reg} registers: "
            f"need n_slots >= {2 * k_pairs + n_reg}"
        )
    if not 0.0 <= float(p_pair) <= 1.0:
        raise ValueError(f"p_pair must be a probability in [0, 1], got {p_pair}")
    vocab = CaptionVocab(n_obj)
    n_pairs = n_obj // 2
    # which pairs: k distinct pairs per image
    pair_ids = torch.rand(B, n_pairs, generator=generator).argsort(dim=-1)[:, :k_pairs]  # (B, k)
    pairs = torch.zeros(B, n_pairs, dtype=torch.bool).scatter_(1, pair_ids, True)
    # which members: both independently with p_pair, or exactly one (counterfactual)
    if counterfactual:
        first = torch.rand(B, n_pairs, generator=generator) < 0.5
        keep = torch.stack([first, ~first], dim=-1)  # (B, n_pairs, 2)
    else:
        keep = torch.rand(B, n_pairs, 2, generator=generator) < float(p_pair)
    present = (keep & pairs[..., None]).reshape(B, n_obj)  # (B, n_objects): object 2i+m is keep[i, m]

    N = S + 2 * k_pairs + 3
    tokens = torch.full((B, N), vocab.pad, dtype=torch.long)
    kinds = torch.full((B, N), PAD, dtype=torch.long)
    tokens[:, 0], kinds[:, 0] = vocab.bos, TEXT
    # the image: a random slot order; the first slots of it take the objects, then the registers
    slot_order = torch.rand(B, S, generator=generator).argsort(dim=-1)  # (B, S)
    image = torch.full((B, S), vocab.background, dtype=torch.long)
    image_kinds = torch.full((B, S), BACKGROUND, dtype=torch.long)
    n_present = present.sum(-1)  # (B,)
    for b in range(B):
        objects = present[b].nonzero().flatten()  # sorted object ids
        slots = slot_order[b]
        image[b, slots[: len(objects)]] = objects
        image_kinds[b, slots[: len(objects)]] = OBJECT
        registers = slots[len(objects) : len(objects) + n_reg]
        image[b, registers], image_kinds[b, registers] = vocab.register, REGISTER
        # the caption: sorted names, then EOS
        start = S + 2
        tokens[b, start : start + len(objects)] = vocab.name(objects)
        tokens[b, start + len(objects)] = vocab.eos
        kinds[b, start : start + len(objects) + 1] = TEXT
    tokens[:, 1 : S + 1], kinds[:, 1 : S + 1] = image, image_kinds
    tokens[:, S + 1], kinds[:, S + 1] = vocab.desc, TEXT
    # targets: position t predicts token t+1 for DESC ... last name (t+1 runs to the EOS)
    targets = torch.full((B, N), IGNORE, dtype=torch.long)
    t = torch.arange(N)
    answer = (t[None, :] >= S + 1) & (t[None, :] <= S + 1 + n_present[:, None])  # (B, N)
    targets[:, :-1] = torch.where(answer[:, :-1], tokens[:, 1:], targets[:, :-1])
    return CaptionBatch(tokens, targets, kinds, present, pairs, slice(1, S + 1), vocab)
