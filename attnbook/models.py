r"""One tiny transformer for every chapter: a config, a Block, and TinyTransformer(attn=...).

    x_0 = embed(inputs) (+ P, a learned position embedding when max_len > 0)     (B, N, D)
    x_{l+1/2} = x_l + Attn_l(LN(x_l))                                            pre-norm
    x_{l+1}   = x_{l+1/2} + MLP(LN(x_{l+1/2}))                                   (skipped when mlp_ratio = 0)
    logits    = LN(x_L) W_out + b_out                                            (B, N, n_out)

A chapter changes the attention and nothing else: ``attn`` builds one attention layer per
block from the config, e.g. ``attn=lambda cfg: MultiHeadAttention(cfg.D, cfg.H,
qk_transform=Rotary(cfg.D // cfg.H))``. Any layer with MultiHeadAttention's call signature
(``layer(x, causal=..., mask=..., return_intermediates=...)``) fits. ``embed`` replaces the
token embedding for inputs that are not token ids (pairs of embeddings, image patches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from .attention import Intermediates, MultiHeadAttention
from .validate import require_int, require_tensor

__all__ = ["ModelConfig", "Block", "TinyTransformer"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of :class:`TinyTransformer`.

    Attributes:
        D: model width.
        H: number of heads (D divisible by H).
        layers: number of blocks.
        vocab: number of input token ids (needed unless a custom ``embed`` is given).
        n_out: width of the readout (classes); defaults to ``vocab``.
        max_len: > 0 adds a learned absolute position embedding for up to max_len tokens.
        mlp_ratio: the MLP's hidden width is mlp_ratio · D; 0 gives attention-only blocks.
        norm: pre-norm LayerNorms in each block and before the readout.
        causal: every attention layer hides future keys.
    """

    D: int = 32
    H: int = 4
    layers: int = 1
    vocab: int | None = None
    n_out: int | None = None
    max_len: int = 0
    mlp_ratio: int = 4
    norm: bool = True
    causal: bool = True

    def __post_init__(self):
        for name in ("D", "H", "layers"):
            require_int(getattr(self, name), name, minimum=1)
        for name in ("max_len", "mlp_ratio"):
            require_int(getattr(self, name), name, minimum=0)
        if self.D % self.H:
            raise ValueError(f"model width D={self.D} must be divisible by the number of heads H={self.H}")
        if self.n_out is None and self.vocab is None:
            raise ValueError("give n_out (the readout width) or vocab (then n_out = vocab)")

    @property
    def readout_width(self) -> int:
        return self.vocab if self.n_out is None else self.n_out


AttentionFactory = Callable[[ModelConfig], nn.Module]


def _norm(config: ModelConfig) -> nn.Module:
    return nn.LayerNorm(config.D) if config.norm else nn.Identity()


class Block(nn.Module):
    r"""x + Attn(LN(x)), then x + MLP(LN(x)): one pre-norm transformer block.

    Args:
        config: the model's sizes.
        attn: the attention layer (MultiHeadAttention or one with its call signature).
    """

    def __init__(self, config: ModelConfig, attn: nn.Module):
        super().__init__()
        self.config = config
        self.norm1 = _norm(config)
        self.attn = attn
        self.norm2 = _norm(config) if config.mlp_ratio else None
        hidden = config.mlp_ratio * config.D
        self.mlp = (
            nn.Sequential(nn.Linear(config.D, hidden), nn.GELU(), nn.Linear(hidden, config.D))
            if config.mlp_ratio
            else None
        )

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, Intermediates]:
        """x (B, N, D) -> (B, N, D); with ``return_intermediates`` also the attention's record."""
        a, inter = self.attn(self.norm1(x), mask=mask, causal=self.config.causal, return_intermediates=True)
        x = x + a  # (B, N, D)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return (x, inter) if return_intermediates else x


class TinyTransformer(nn.Module):
    r"""Embedding, ``layers`` blocks with the chapter's attention, a final norm and a readout.

    Args:
        config: a :class:`ModelConfig`.
        attn: ``attn(config) -> nn.Module``, called once per block; default plain
            :class:`~attnbook.attention.MultiHeadAttention`.
        embed: a module mapping the model's inputs to (B, N, D); default an
            ``nn.Embedding(config.vocab, config.D)`` of integer token ids (B, N).
    """

    def __init__(
        self, config: ModelConfig, attn: AttentionFactory | None = None, embed: nn.Module | None = None
    ):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        if embed is None and config.vocab is None:
            raise ValueError("the default token embedding needs config.vocab (or pass embed=...)")
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.D) if embed is None else embed
        self.pos = nn.Embedding(config.max_len, config.D) if config.max_len else None
        make = attn or (lambda cfg: MultiHeadAttention(cfg.D, cfg.H))
        self.blocks = nn.ModuleList(Block(config, make(config)) for _ in range(config.layers))
        self.norm = _norm(config)
        self.readout = nn.Linear(config.D, config.readout_width)

    def forward(
        self, inputs, *, mask: Tensor | None = None, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, list[Intermediates]]:
        """inputs (B, N) token ids (or what ``embed`` takes) -> logits (B, N, n_out).

        With ``return_intermediates`` also each block's :class:`Intermediates`, first block first.
        """
        x = self.embed(inputs)  # (B, N, D)
        require_tensor(x, "embed(inputs)", ndim=3, floating=True, shape=f"(B, N, D={self.config.D})")
        if x.shape[-1] != self.config.D:
            raise ValueError(f"embed(inputs) must have shape (B, N, D={self.config.D}), got {tuple(x.shape)}")
        if self.pos is not None:
            N = x.shape[1]
            if N > self.config.max_len:
                raise ValueError(f"{N} tokens exceed the position embedding's max_len={self.config.max_len}")
            x = x + self.pos.weight[:N]  # (B, N, D)
        records = []
        for block in self.blocks:
            x, inter = block(x, mask=mask, return_intermediates=True)
            records.append(inter)
        logits = self.readout(self.norm(x))  # (B, N, n_out)
        return (logits, records) if return_intermediates else logits
