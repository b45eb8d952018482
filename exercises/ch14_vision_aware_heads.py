"""Chapter 14 exercises: VHD, head selection, CHAIR_I, one VHR step and an experiment.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 14

or, in a notebook, ``check("ch14.<function name>", your_function)`` from attnbook.grading.
Use only torch for the first four; do not import attnbook.mechanisms.vision_aware_heads there (it
solves them). The experiment, filter_experiment, uses the library's helpers its docstring names.
"""

from torch import Tensor, nn


def vhd(a_img: Tensor, v_img: Tensor, a_txt: Tensor, v_txt: Tensor, metric: str = "l2") -> Tensor:
    """★ (10 min) The vision-aware head divergence of every head, for the token being generated.

    Each branch gives the attention weights of the last query (the token being generated) and the
    values of every head; its head output is o_h = sum_j a_hj v_hj (before W_O). The image branch
    sees the image tokens; the text-only branch does not (its sequence may be shorter).

    Args:
        a_img: (B, H, M1) weights of the last query with the image; each row sums to 1.
        v_img: (B, H, M1, d) values with the image.
        a_txt: (B, H, M2) weights without the image.
        v_txt: (B, H, M2, d) values without the image. All four share one float dtype
            (float16, float32 or float64).
        metric: "l2" for the Euclidean distance ||o_img - o_txt||_2 over d, or "cos" for
            1 - cosine similarity of the two head outputs.

    Returns:
        (B, H) divergences: float32 for float16 inputs (compute in float32: a float16 squared
        distance overflows at 65504), otherwise the inputs' dtype. Identical branches give 0.
    """
    raise NotImplementedError("ch14.vhd")


def select_vision_heads(v: Tensor, outlier_std: float = 1.0) -> Tensor:
    """★★ (15 min) The heads VHR reinforces in one layer, for each row of v separately.

    A head is selected when it is not a "surge" outlier, VHD <= mean + outlier_std * std,
    and its VHD is strictly above the median of the row. mean, std (with Bessel's correction,
    torch.std's default) and median are taken over the H heads of the same row. With H = 1
    nothing is selected.

    Args:
        v: (B, H) VHD of the H heads of one layer, B rows (tokens or sequences); float dtype.
        outlier_std: the number of standard deviations above the mean that marks an outlier.

    Returns:
        (B, H) bool, True for the selected heads.
    """
    raise NotImplementedError("ch14.select_vision_heads")


def chair_i(objects: Tensor, present: Tensor) -> float:
    """★ (10 min) CHAIR_I: the share of mentioned objects that are not in the image.

    Each caption b mentions a SET of objects C_b (naming an object twice counts once);
    CHAIR_I = sum_b |C_b minus present_b| / sum_b |C_b| over all captions together; 0.0 when
    no caption mentions any object.

    Args:
        objects: (B, T) int64, the object id each caption token names, or -1 for a token that
            names no object.
        present: (B, n_objects) bool, True when object o is in image b.

    Returns:
        a Python float in [0, 1].
    """
    raise NotImplementedError("ch14.chair_i")


def vhr_step(model: nn.Module, tokens_img: Tensor, tokens_txt: Tensor, alpha: float) -> Tensor:
    """★★★ (35 min) One step of vision-aware head reinforcement, layer by layer.

    model is an attnbook TinyTransformer: x = model.embed(tokens) + model.pos.weight[:N], then
    each block of model.blocks, then model.readout(model.norm(x)). A block computes
    x + attn(LN(x)) (+ MLP) and its attention layer block.attn (a MultiHeadAttention) applies
    block.attn.head_transform, when it is set, to the head outputs o (B, H, N, d) before W_O;
    block(x, return_intermediates=True) returns (x, record) with record.heads = o.

    For each layer l in order:
      1. run block l on the text-only branch (no reinforcement) and keep its head outputs at
         the LAST position, o_txt (B, H, d);
      2. run block l on the image branch with a head_transform that takes the head outputs at
         the last position o_img, computes v = ||o_img - o_txt||_2 (B, H), selects heads with
         your select_vision_heads(v) rule (outlier_std = 1), and multiplies the selected heads'
         last-position outputs by g_VHR = alpha (all other positions and heads unchanged);
    so the VHD of layer l is measured on an image branch that already carries the
    reinforcements of layers < l. Restore every head_transform you set. Make your head_transform
    a small nn.Module (a forward(o) method): once that slot has held a module, torch refuses a
    plain function there.

    Args:
        model: a TinyTransformer in eval mode (float64 in the checks).
        tokens_img: (B, N1) int64 token ids of the prompt with the image.
        tokens_txt: (B, N2) int64 token ids of the prompt without it (same last token).
        alpha: g_VHR, the factor g_lh of the selected heads (1 elsewhere); alpha = 1 gives the
            base model.

    Returns:
        (B, V) the logits of the image branch at its last position.
    """
    raise NotImplementedError("ch14.vhr_step")


def filter_experiment(seed: int) -> dict[str, float]:
    """★★ (20 min) EXPERIMENT: does VHR's outlier filter help when a layer has only 4 heads?

    Recipe (the chapter's miniature, scaled down to run in a few seconds):

        import torch
        from attnbook.mechanisms.vision_aware_heads import caption_objects, vhr_generate
        from attnbook.mechanisms.vision_aware_heads_experiment import TOY, train_captioner
        from attnbook.tasks import object_captions

        model = train_captioner(seed, D=64, steps=100, batch_size=32, lr=2e-3)
        test = object_captions(200, counterfactual=True,
                               generator=torch.Generator().manual_seed(1000 + seed), **TOY)
        prompt = test.tokens[:, : test.desc_position + 1]          # [BOS] image [DESC]

    Build the text-only branch yourself: the prompt with every image slot (test.image) replaced
    by the background token (test.vocab.background). Caption the 200 images greedily with
    vhr_generate(model, prompt, text_only, alpha, max_new=5, outlier_std=...) three times:

        "base":      alpha = 1 (the base model);
        "filter":    alpha = 2, outlier_std = 1 (the paper's outlier filter);
        "no_filter": alpha = 2, outlier_std = float("inf") (heads above the median only).

    Score each with CHAIR_I: caption_objects(generated, test.vocab) gives the object ids the
    captions name, and test.present (B, n_objects) the objects in each image (your chair_i above
    does the rest). Work under torch.no_grad().

    Returns:
        {"base": float, "filter": float, "no_filter": float}, each CHAIR_I in [0, 1].
    """
    raise NotImplementedError("ch14.filter_experiment")
