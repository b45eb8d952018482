"""Chapter 09 exercises: MEDUSA's multi-scale heads and the gates they drive.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 09

or, in a notebook, ``check("ch09.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.multi_scale_heads (it solves these).
Maps and features are channel-first, (B, C, H, W): H is the height, W the width.
"""

from torch import Tensor


def gate(X: Tensor, g: Tensor, mode: str = "mul") -> Tensor:
    """Gate one backbone stage's features with one head's spatial attention map.

    The map is resized to the features' spatial size by bilinear interpolation with
    align_corners=False, then multiplies every channel at each position:

        "mul":       X̃ = X ⊙ resize(g)        (g ≡ 1 returns X unchanged)
        "residual":  X̃ = X ⊙ (1 + resize(g))  (g ≡ 0 returns X unchanged)

    Args:
        X: (B, C, H, W) stage features, float16, float32 or float64.
        g: (B, 1, h, w) attention map, already in [0, 1] (the head applied its sigmoid), same
            dtype; (h, w) may differ from (H, W), in either direction, and need not be square.
        mode: "mul" or "residual".

    Returns:
        (B, C, H, W) in X's dtype. Do not change g in place.
    """
    raise NotImplementedError("ch09.gate")


def medusa_heads(dec: list[Tensor], weights: list[Tensor], biases: list[Tensor]) -> list[Tensor]:
    """The S heads of the shared body: a 1×1 convolution to one channel, then a sigmoid.

        g_h = sigmoid(Σ_c weights[s][c] · dec[s][:, c] + biases[s])

    Args:
        dec: S decoder maps, dec[s] of shape (B, C_s, h_s, w_s), float32 or float64.
        weights: S tensors, weights[s] of shape (C_s,).
        biases: S 0-d tensors.

    Returns:
        a list of S maps, map s of shape (B, 1, h_s, w_s) with values in [0, 1], in the inputs'
        dtype. Each position is gated on its own: nothing is normalised over the positions.
    """
    raise NotImplementedError("ch09.medusa_heads")


def zscore_image(img: Tensor) -> Tensor:
    """The body's input pre-processing: z-score each image over its own pixels.

        z = (x - mean(x)) / std(x),  mean and std over the last two axes (H, W) of each image

    The std is the population std (divide by H·W, numpy's np.std; torch's .std() divides by
    H·W - 1 unless you pass correction=0). A constant image has std 0: return zeros there, not NaN.

    Args:
        img: (..., H, W) image(s), uint8 or float; leading axes (a batch, a channel) are
            independent images.

    Returns:
        (..., H, W): float64 for integer input, img's dtype for float input.
    """
    raise NotImplementedError("ch09.zscore_image")


def attention_iou(g: Tensor, mask: Tensor, thr: float = 0.5) -> Tensor:
    """How well an attention map covers a region (the lung fields): IoU per image.

    Resize g bilinearly (align_corners=False) to the mask's (H, W), call a position attended
    when g > thr (strictly), and return |attended ∧ mask| / |attended ∨ mask| for each image;
    an empty union (nothing attended, empty mask) gives 1.

    Args:
        g: (B, 1, h, w) maps in [0, 1], float32 or float64.
        mask: (B, H, W) bool, True inside the region.
        thr: the threshold.

    Returns:
        (B,) IoU in g's dtype.
    """
    raise NotImplementedError("ch09.attention_iou")


def receptive_field(gating: str, seed: int) -> float:
    """EXPERIMENT: how much of the image can change one value of the finest gate map?

    A head of MEDUSA's shared body reads the body's bottleneck, which has seen the whole image;
    an isolated gate reads a few convolutions of its own stage. Measure it, at initialisation:

    - ``image = radiographs(4, size=32, generator=torch.Generator().manual_seed(seed)).images``
      (attnbook.tasks.radiographs), (4, 1, 32, 32), with ``requires_grad_()``;
    - ``torch.manual_seed(seed)``, then ``net = MedusaNet(gating, body_width=8, body_size=(16, 16),
      mode="residual")`` (attnbook.mechanisms.multi_scale_heads; you may use it here);
    - run ``net(image)``; ``net.maps[0]`` is then the finest gate g_1, (4, 1, 16, 16);
    - back-propagate from its centre values, ``g_1[:, 0, 8, 8].sum()``, and return the fraction of
      the 32 × 32 pixel positions (y, x) where the gradient is not exactly zero in at least one of
      the 4 images (one image alone can hit a dead ReLU at the centre).

    Compare gating "isolated" and "medusa" (and a few seeds): the check wants both values in the
    reference's range, and the shared body's larger.

    Returns:
        a float in [0, 1].
    """
    raise NotImplementedError("ch09.receptive_field")
