"""Chapter 06 exercises: Spectral mixing before attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 06

or, in a notebook, ``check("ch06.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.spectral_mixing (it solves these).
"""

from torch import Tensor


def spectral_gating(x: Tensor, weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """GFNet's global filter on the token grid: irfft2(rfft2(x) ⊙ W, s=(Ny, Nx)), ortho norm in both.

    Args:
        x: (B, N, D) tokens, N = Ny·Nx in row-major order; float16, float32 or float64.
        weight: (Ny, Nx//2+1, D, 2) real; weight[..., 0] + i·weight[..., 1] is the complex filter W.
        hw: the token grid (Ny, Nx); Nx may be odd.

    Returns:
        (B, N, D): float64 for float64 input, float32 otherwise (compute half precision in float32).
        x is not changed.
    """
    raise NotImplementedError("ch06.spectral_gating")


def filter_kernel(weight: Tensor, hw: tuple[int, int]) -> Tensor:
    """The spatial kernel of a filter: the layer is a circular convolution by it, channel by channel.

    Args:
        weight: (Ny, Nx//2+1, D, 2) float64; weight[..., 0] + i·weight[..., 1] is the complex filter W.
        hw: the token grid (Ny, Nx); Nx may be odd.

    Returns:
        (D, Ny, Nx) float64 taps W_conv such that, for every channel c and grid cell (y, x),
        spectral_gating(x)[y, x, c] = sum_{dy, dx} W_conv[c, dy, dx] · x[(y - dy) mod Ny, (x - dx) mod Nx, c].
        Mind the normalisation: the layer's two ortho factors multiply to 1/(Ny·Nx).
    """
    raise NotImplementedError("ch06.filter_kernel")


def shift_filter(hw: tuple[int, int], D: int, shift: tuple[int, int]) -> Tensor:
    """The phase ramp that makes spectral_gating a roll of the token grid.

    Args:
        hw: the token grid (Ny, Nx).
        D: the number of channels (every channel gets the same filter).
        shift: (s_y, s_x), integers (negative allowed).

    Returns:
        (Ny, Nx//2+1, D, 2) float64 filter W (real and imaginary parts in the last axis) with
        W[k_y, k_x] = exp(-2πi (k_y s_y / Ny + k_x s_x / Nx)), k_y the row frequency in fftfreq order
        (0, 1, ..., -1) and k_x = 0 .. Nx//2, so that spectral_gating(x, W, hw) equals
        torch.roll(x as (B, Ny, Nx, D), shifts=(s_y, s_x), dims=(1, 2)).
    """
    raise NotImplementedError("ch06.shift_filter")


def frequency_accuracy(n_spectral: int, seed: int) -> float:
    """EXPERIMENT: train one small SpectFormer and measure how well it reads the grating's frequency.

    The recipe (the chapter's miniature, scaled down to about a second of training):

        from attnbook.mechanisms.spectral_mixing import factor_accuracy, train_classifier
        from attnbook.tasks.grating_squares import grating_squares

        DATA = dict(size=8, patch=2, low=1.0, high=2.0, amplitude=0.3, jitter=2.5, noise=0.1, n_colours=2)
        train_set = grating_squares(1000, generator=torch.Generator().manual_seed(100 + seed), **DATA)
        test_set = grating_squares(500, generator=torch.Generator().manual_seed(1000 + seed), **DATA)
        model = train_classifier(n_spectral, seed, train_set, grid=4, patch=2, D=16, H=2, layers=2,
                                 steps=120, batch_size=32, lr=5e-3)

    (train_classifier builds spectformer(...) with its first n_spectral blocks spectral and trains
    it with cross-entropy on batches of train_set; read it, or write the loop yourself.)
    Return the accuracy on the FREQUENCY factor of test_set (the predicted class c gives the
    frequency c // 2; compare with test_set.frequency), as a Python float.

    Args:
        n_spectral: L_spec, the number of spectral blocks placed first (0, 1 or 2).
        seed: seeds the data, the model and the training batches.

    The check calls it with n_spectral = 2 and a seed of its own, and accepts a value within the
    spread that its own runs of the recipe, over three other seeds, give. Then try n_spectral = 0.
    """
    raise NotImplementedError("ch06.frequency_accuracy")
