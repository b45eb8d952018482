"""TinyTransformer: the one model every chapter plugs its attention into."""

import pytest
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention
from attnbook.models import ModelConfig, TinyTransformer


def test_shapes_and_intermediates_per_layer():
    config = ModelConfig(D=16, H=4, layers=3, vocab=11, max_len=20)
    model = TinyTransformer(config)
    tokens = torch.randint(11, (2, 9))
    logits, records = model(tokens, return_intermediates=True)
    assert logits.shape == (2, 9, 11) and len(records) == 3
    assert all(r.weights.shape == (2, 4, 9, 9) for r in records)
    assert all(torch.equal(r.weights.triu(1), torch.zeros(2, 4, 9, 9)) for r in records)  # causal by default
    torch.testing.assert_close(model(tokens), logits)


def test_attention_factory_is_called_once_per_block():
    built = []

    def attn(cfg):
        layer = MultiHeadAttention(cfg.D, cfg.H, score_mod=lambda s, q, k: s)
        built.append(layer)
        return layer

    model = TinyTransformer(ModelConfig(D=8, H=2, layers=2, vocab=5), attn=attn)
    assert [b.attn for b in model.blocks] == built and built[0] is not built[1]


def test_attention_only_block_is_x_plus_attention():
    torch.manual_seed(0)
    config = ModelConfig(D=8, H=2, layers=1, n_out=3, mlp_ratio=0, norm=False, causal=False)
    embed = nn.Linear(4, 8)
    model = TinyTransformer(config, embed=embed).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    h = embed(x)
    expected = model.readout(h + model.blocks[0].attn(h))
    torch.testing.assert_close(model(x), expected)


def test_position_embedding_breaks_permutation_equivariance():
    torch.manual_seed(0)
    tokens = torch.randint(7, (1, 6))
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    no_pos = TinyTransformer(ModelConfig(D=8, H=2, vocab=7, causal=False))
    torch.testing.assert_close(no_pos(tokens[:, perm]), no_pos(tokens)[:, perm])
    with_pos = TinyTransformer(ModelConfig(D=8, H=2, vocab=7, causal=False, max_len=6))
    assert not torch.allclose(with_pos(tokens[:, perm]), with_pos(tokens)[:, perm])


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: ModelConfig(D=10, H=4, vocab=3), ValueError, "divisible"),
        (lambda: ModelConfig(D=8, H=2), ValueError, "n_out"),
        (lambda: ModelConfig(D=8, H=2, vocab=3, layers=0), ValueError, "layers must be >= 1"),
        (lambda: ModelConfig(D=8.0, H=2, vocab=3), TypeError, "D must be an integer"),
        (lambda: TinyTransformer({"D": 8}), TypeError, "ModelConfig"),
        (lambda: TinyTransformer(ModelConfig(D=8, H=2, n_out=3)), ValueError, "vocab"),
        (
            lambda: TinyTransformer(ModelConfig(D=8, H=2, vocab=3, max_len=4))(
                torch.zeros(1, 5, dtype=torch.long)
            ),
            ValueError,
            "max_len",
        ),
        (
            lambda: TinyTransformer(ModelConfig(D=8, H=2, n_out=3), embed=nn.Identity())(
                torch.zeros(1, 5, 4)
            ),
            ValueError,
            "embed",
        ),
    ],
)
def test_bad_config_and_input(call, error, message):
    with pytest.raises(error, match=message):
        call()
