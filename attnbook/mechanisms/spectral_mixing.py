r"""Chapter 06 · Spectral mixing before attention (SpectFormer 2023, after GFNet 2021).

Attention mixes the N = Ny·Nx tokens of an image with input-dependent weights,
out_i = sum_j softmax(S)_ij v_j, at O(N²) cost. A spectral gating layer mixes them with
fixed (learned, input-independent) weights instead, one global filter per channel:

    X̂ = rfft2(x)          over the (Ny, Nx) token grid, ortho norm: (B, Ny, Nx//2+1, D) complex
    Ŷ = X̂ ⊙ W             W ∈ ℂ^{Ny × (Nx//2+1) × D}, one complex gain per frequency and channel
    y = irfft2(Ŷ, s=(Ny, Nx))                                       (B, Ny, Nx, D) real

The ortho factors cancel, so y_c = x_c ⊛ W_conv_c is a per-channel circular convolution with the
kernel W_conv_c = irfft2(W_spec,c) (backward norm): global mixing at O(N log N). ``s=(Ny, Nx)`` is needed,
since an odd width Nx cannot be recovered from Nx//2+1 frequency columns. SpectFormer uses these
layers in the first L_spec blocks and ordinary multi-head attention in the rest (the paper's α;
the book writes L_spec, since α is a convex weight elsewhere). In the book's notation the grid is
N_y × N_x and the filter W_spec (``weight``).

The layer is not multi-head attention with one thing changed (there are no scores to modify):
it replaces the whole token mixer, so :func:`spectformer` swaps whole blocks of the core's
TinyTransformer and keeps its attention blocks as they are.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnbook.models import ModelConfig, TinyTransformer
from attnbook.validate import require_int, require_tensor

__all__ = [
    "spectral_gating",
    "filter_kernel",
    "shift_filter",
    "SpectralGating",
    "SpectralBlock",
    "PatchEmbed",
    "spectformer",
    "classify",
    "train_classifier",
    "factor_accuracy",
]


def _grid(hw: object) -> tuple[int, int]:
    if not isinstance(hw, (tuple, list)) or len(hw) != 2:
        raise TypeError(f"hw must be a pair (Ny, Nx) of integers, got {hw!r}")
    return require_int(hw[0], "hw[0] (Ny)", minimum=1), require_int(hw[1], "hw[1] (Nx)", minimum=1)


def _check_weight(weight: object, Ny: int, Nx: int, D: int | None) -> Tensor:
    weight = require_tensor(weight, "weight", ndim=4, floating=True, shape="(Ny, Nx//2+1, D, 2)")
    expected = (Ny, Nx // 2 + 1, weight.shape[2] if D is None else D, 2)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"weight must have shape (Ny, Nx//2+1, D, 2) = {expected} for the grid (Ny, Nx) = ({Ny}, {Nx}), "
            f"got {tuple(weight.shape)}"
        )
    return weight


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """GFNet's global filter on the token grid: irfft2(rfft2(x) ⊙ W, s=(Ny, Nx)), ortho norm.

    Args:
        x: (B, N, D) tokens, N = Ny·Nx in row-major order (token n = row n // Nx, column n % Nx).
        weight: (Ny, Nx//2+1, D, 2) real; weight[..., 0] + i·weight[..., 1] is the complex filter W.
        hw: the token grid (Ny, Nx).
    Returns:
        (B, N, D) mixed tokens, in float64 for float64 input and in float32 otherwise (half
        precision FFTs need power-of-two sizes, so lower precisions are computed in float32).
    """
    Ny, Nx = _grid(hw)
    x = require_tensor(x, "x", ndim=3, floating=True, shape="(B, N, D)")
    B, N, D = x.shape
    if N != Ny * Nx:
        raise ValueError(f"x has N = {N} tokens, but the grid hw = ({Ny}, {Nx}) holds Ny·Nx = {Ny * Nx}")
    weight = _check_weight(weight, Ny, Nx, D)
    if weight.device != x.device:
        raise ValueError(
            f"x and weight must be on one device, got x on {x.device}, weight on {weight.device}"
        )
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    grid = x.to(work).reshape(B, Ny, Nx, D)  # (B, Ny, Nx, D)
    # X̂[k_y, k_x, c] = (1/sqrt(N)) sum_{y,x} x[y, x, c] e^{-2πi(k_y y/Ny + k_x x/Nx)},  k_x = 0 .. Nx//2
    spectrum = torch.fft.rfft2(grid, dim=(1, 2), norm="ortho")  # (B, Ny, Nx//2+1, D) complex
    # W = W_re + i W_im, one complex gain per frequency and channel
    filt = torch.view_as_complex(weight.to(work).contiguous())  # (Ny, Nx//2+1, D)
    # y = irfft2(X̂ ⊙ W) with the output size given: an odd Nx is not recoverable from Nx//2+1 columns
    mixed = torch.fft.irfft2(spectrum * filt, s=(Ny, Nx), dim=(1, 2), norm="ortho")  # (B, Ny, Nx, D)
    return mixed.reshape(B, N, D)


def filter_kernel(weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """The spatial kernel of a filter: spectral_gating(x) = x ⊛ W_conv per channel (circular convolution).

    Args:
        weight: (Ny, Nx//2+1, D, 2) real filter, as in :func:`spectral_gating`.
        hw: the token grid (Ny, Nx).
    Returns:
        (D, Ny, Nx) taps W_conv_c = irfft2(W_spec,c, s=(Ny, Nx)), default ("backward") norm, so that
        y[y0, x0, c] = sum_{dy, dx} W_conv_c[dy, dx] x[(y0 - dy) mod Ny, (x0 - dx) mod Nx, c].
    """
    Ny, Nx = _grid(hw)
    weight = _check_weight(weight, Ny, Nx, None)
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    filt = torch.view_as_complex(weight.to(work).contiguous())  # (Ny, Nx//2+1, D)
    # W_conv_c = irfft2(W_spec,c): ortho forward · ortho inverse = 1/sqrt(N) · 1/sqrt(N) = backward inverse
    return torch.fft.irfft2(filt, s=(Ny, Nx), dim=(0, 1)).permute(2, 0, 1)  # (D, Ny, Nx)


def shift_filter(
    hw: tuple[int, int], D: int, shift: tuple[int, int], *, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The phase ramp W = exp(-2πi(k_y s_y/Ny + k_x s_x/Nx)): spectral_gating then equals torch.roll.

    Args:
        hw: the token grid (Ny, Nx).
        D: the number of channels (every channel gets the same ramp).
        shift: (s_y, s_x), the roll along the grid's rows and columns.
    Returns:
        (Ny, Nx//2+1, D, 2) real filter in ``dtype``.
    """
    Ny, Nx = _grid(hw)
    D = require_int(D, "D", minimum=1)
    s_y, s_x = require_int(shift[0], "shift[0]"), require_int(shift[1], "shift[1]")
    k_y = torch.fft.fftfreq(Ny, d=1.0 / Ny, dtype=torch.float64)[:, None]  # (Ny, 1): 0, 1, .., -1
    k_x = torch.arange(Nx // 2 + 1, dtype=torch.float64)[None, :]  # (1, Nx//2+1)
    # φ = -2π (k_y s_y / Ny + k_x s_x / Nx)
    phase = -2 * math.pi * (k_y * s_y / Ny + k_x * s_x / Nx)  # (Ny, Nx//2+1)
    ramp = torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)  # (Ny, Nx//2+1, 2)
    return ramp[:, :, None, :].expand(Ny, Nx // 2 + 1, D, 2).to(dtype).contiguous()


class SpectralGating(nn.Module):
    """A learned global filter over an (Ny, Nx) token grid: SpectFormer's token mixer in the first blocks.

    Args:
        hw: the token grid (Ny, Nx); the filter's shape is tied to it.
        D: the number of channels.
        init_std: the filter's initial standard deviation (GFNet: 0.02).
    Input (B, Ny·Nx, D), output (B, Ny·Nx, D).
    """

    def __init__(self, hw: tuple[int, int], D: int, *, init_std: float = 0.02):
        super().__init__()
        self.hw = _grid(hw)
        Ny, Nx = self.hw
        D = require_int(D, "D", minimum=1)
        self.weight = nn.Parameter(torch.randn(Ny, Nx // 2 + 1, D, 2) * init_std)

    def forward(self, x: Tensor) -> Tensor:
        return spectral_gating(x, self.weight, self.hw)


class SpectralBlock(nn.Module):
    """GFNet's block: x + MLP(LN2(SpectralGating(LN1(x)))), one residual around filter and MLP.

    Args:
        config: the model's sizes (D channels, mlp_ratio; config.norm switches the LayerNorms).
        hw: the token grid (Ny, Nx).
    Input (B, Ny·Nx, D), output (B, Ny·Nx, D).
    """

    def __init__(self, config: ModelConfig, hw: tuple[int, int]):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.D) if config.norm else nn.Identity()
        self.filter = SpectralGating(hw, config.D)
        self.norm2 = nn.LayerNorm(config.D) if config.norm else nn.Identity()
        hidden = max(config.mlp_ratio, 1) * config.D
        self.mlp = nn.Sequential(nn.Linear(config.D, hidden), nn.GELU(), nn.Linear(hidden, config.D))

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, return_intermediates: bool = False
    ) -> Tensor | tuple[Tensor, None]:
        """x (B, N, D) -> (B, N, D); the signature of :class:`attnbook.models.Block` (no mask, no record)."""
        if mask is not None:
            raise ValueError("a spectral block mixes every token of the grid: it takes no mask")
        # x <- x + MLP(LN2(SGN(LN1(x))))
        x = x + self.mlp(self.norm2(self.filter(self.norm1(x))))  # (B, N, D)
        return (x, None) if return_intermediates else x


class PatchEmbed(nn.Module):
    """Cut images into patch × patch patches and project each to D channels: one token per patch.

    Args:
        channels: image channels (3 for RGB).
        patch: patch side in pixels.
        D: model width.
    Input (B, channels, height, width) with both sides multiples of ``patch``; output (B, N, D),
    N = (height/patch)·(width/patch) tokens in row-major order (the grid (N_y, N_x)).
    """

    def __init__(self, channels: int, patch: int, D: int):
        super().__init__()
        self.patch = require_int(patch, "patch", minimum=1)
        self.proj = nn.Linear(require_int(channels, "channels", minimum=1) * self.patch**2, D)

    def forward(self, images: Tensor) -> Tensor:
        images = require_tensor(images, "images", ndim=4, floating=True, shape="(B, channels, height, width)")
        p = self.patch
        # (B, c, height, width) -> (B, c·p·p, N_y·N_x) -> (B, N, c·p·p): one row of pixels per patch
        patches = nn.functional.unfold(images, kernel_size=p, stride=p).transpose(1, 2)
        return self.proj(patches)  # (B, N, D)


def spectformer(
    config: ModelConfig, hw: tuple[int, int], n_spectral: int, embed: nn.Module
) -> TinyTransformer:
    """The book's TinyTransformer with its first ``n_spectral`` blocks replaced by spectral blocks.

    The attention blocks are the core's :class:`attnbook.models.Block` with
    :class:`attnbook.attention.MultiHeadAttention` (config.H heads); the first ``n_spectral``
    (L_spec) blocks are :class:`SpectralBlock` (GFNet's one-residual wiring). L_spec = 0 is a ViT,
    L_spec = config.layers is GFNet. Use ``config.max_len = Ny·Nx`` for SpectFormer's learned
    absolute positions, ``config.causal = False``.

    Returns a TinyTransformer: images (what ``embed`` takes) -> per-token logits (B, N, n_out);
    :func:`classify` averages them over the tokens.
    """
    n_spectral = require_int(n_spectral, "n_spectral", minimum=0)
    if n_spectral > config.layers:
        raise ValueError(f"n_spectral must be <= config.layers = {config.layers}, got {n_spectral}")
    if config.causal:
        raise ValueError("config.causal must be False: the tokens of an image grid have no order")
    model = TinyTransformer(config, embed=embed)
    for layer in range(n_spectral):
        model.blocks[layer] = SpectralBlock(config, hw)
    return model


def classify(model: TinyTransformer, images: Tensor) -> Tensor:
    """Class logits (B, n_out) of an image model: the per-token logits averaged over the N tokens.

    The readout is affine, so this equals SpectFormer's head(LN(x).mean(1)): global average pooling.
    """
    return model(images).mean(1)  # (B, n_out)


def train_classifier(
    n_spectral: int,
    seed: int,
    train_set,
    *,
    grid: int,
    patch: int,
    D: int = 32,
    H: int = 4,
    layers: int = 2,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> TinyTransformer:
    """Train a :func:`spectformer` classifier on a fixed training set of images (AdamW, cross-entropy).

    Args:
        n_spectral: L_spec, the number of spectral blocks placed first.
        seed: seeds the model's initialisation and the order of the training batches.
        train_set: a batch with ``images`` (n, 3, grid·patch, grid·patch) and ``target`` (n,), e.g.
            :func:`attnbook.tasks.grating_squares`.
        grid, patch: the token grid is grid × grid patches of patch × patch pixels.
    Returns the trained model (in eval mode); :func:`classify` gives its class logits.
    """
    torch.manual_seed(seed)
    config = ModelConfig(
        D=D,
        H=H,
        layers=layers,
        n_out=int(train_set.target.max()) + 1,
        max_len=grid * grid,
        mlp_ratio=2,
        causal=False,
    )
    model = spectformer(config, (grid, grid), n_spectral, PatchEmbed(3, patch, D))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    n = train_set.target.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        loss = nn.functional.cross_entropy(classify(model, train_set.images[idx]), train_set.target[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def factor_accuracy(model: TinyTransformer, test_set) -> dict[str, float]:
    """Accuracy of a grating × squares classifier: on the class and on each factor separately.

    The class is 2·frequency + same, so the predicted class c gives frequency c // 2 and same c % 2.
    Returns {"class": ..., "frequency": ..., "same": ...} as Python floats.
    """
    with torch.no_grad():
        predicted = classify(model, test_set.images).argmax(-1)  # (n,)
    return {
        "class": (predicted == test_set.target).float().mean().item(),
        "frequency": (predicted // 2 == test_set.frequency).float().mean().item(),
        "same": (predicted % 2 == test_set.same).float().mean().item(),
    }
