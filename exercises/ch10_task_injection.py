"""Chapter 10 exercises: Task injection into heads.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 10

or, in a notebook, ``check("ch10.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.task_injection (it solves these).
"""

from torch import Tensor


def task_embedding(records: list, last_idx: Tensor) -> Tensor:
    """The task embedding t^l_h = (1/M) Σ_m z^l_{T_m,h}: the mean last-token head activation.

    Args:
        records: L records (one per layer, first layer first) of one run of M right-padded
            few-shot prompts, as ``TinyTransformer(..., return_intermediates=True)`` returns
            them. ``record.heads`` (M, H, N, d) holds the head activations z (the per-head
            input to W_O); ``record.contributions`` (M, H, N, D) holds z_h W_O^h.
        last_idx: (M,) int64, T_m = the position of prompt m's last real token (the prompts
            are right-padded, so T_m can be smaller than N − 1).

    Returns:
        (L, H, d) in the records' dtype.
    """
    raise NotImplementedError("ch10.task_embedding")


def soft_inject(z: Tensor, t: Tensor, alpha: Tensor, last_idx: Tensor) -> Tensor:
    """Soft injection of one layer: z̃_{T,h} = (1 − α_h) z_{T,h} + α_h t_h at T = last_idx[b] only.

    Args:
        z: (B, H, N, d) head activations of one layer; float16, float32 or float64.
        t: (H, d) the layer's task embedding, same dtype.
        alpha: (H,) one mixing weight in [0, 1] per head, same dtype.
        last_idx: (B,) int64, the last real prompt token of each row (right padding).

    Returns:
        (B, H, N, d), a new tensor in z's dtype (z itself unchanged); every position other than
        T_b equals z.
    """
    raise NotImplementedError("ch10.soft_inject")
