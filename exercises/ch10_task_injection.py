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


def optimize_alpha(loss_fn, shape: tuple, batches, lr: float = 0.2, val_loss_fn=None, eval_every: int = 50):
    """Learn the soft head selection α = sigmoid(a) (L, H) with Adam; the model stays frozen.

    Args:
        loss_fn: ``loss_fn(alpha, batch) -> scalar tensor``, differentiable in alpha (L, H); it may
            close over a model whose parameters require gradients: they must receive none.
        shape: (L, H).
        batches: an iterable, one batch per step (pass each batch to loss_fn as it is).
        lr: Adam's learning rate (default betas and eps).
        val_loss_fn: ``val_loss_fn(alpha) -> float`` or None. When given, evaluate it (without
            gradients) after every ``eval_every``-th step and return the α with the LOWEST value.
        eval_every: steps between validations.

    Returns:
        α (L, H) float32 in (0, 1), detached: the best-validation one, or the final one when
        val_loss_fn is None.

    The logits a start at 0 (α = 0.5 everywhere); each step computes α = sigmoid(a), the loss,
    its gradient with respect to a only, and one Adam step on a.
    """
    raise NotImplementedError("ch10.optimize_alpha")


def embedding_error(M: int, seed: int) -> float:
    """EXPERIMENT: how many few-shot prompts does a task embedding need?

    1. ``torch.manual_seed(seed)``; build a frozen (untrained) model
       ``TinyTransformer(ModelConfig(D=32, H=4, layers=2, vocab=20, n_out=10, max_len=11))``.
    2. With ``g = torch.Generator().manual_seed(seed)``, draw 400 prompts of task 0 (add-1) with 5
       demonstrations, ``task_prompts(0, 400, 5, g)`` (attnbook.tasks), and compute their task
       embedding t_ref (L, H, d) from the head activations at the last prompt token.
    3. Draw M fresh prompts the same way (same generator, after the 400) and compute t_M.
    4. Return the relative error ‖t_M − t_ref‖ / ‖t_ref‖ (Frobenius norms over all of L, H, d)
       as a float.

    Run it for M = 5, 20, 50: how does the error shrink with M?
    """
    raise NotImplementedError("ch10.embedding_error")
