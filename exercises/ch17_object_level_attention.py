"""Chapter 17 exercises: Object-level attention.

Fill in each function, then grade your work from the repository's root with

    attnbook grade 17

or, in a notebook, ``check("ch17.<function name>", your_function)`` from attnbook.grading.
Use only torch; do not import attnbook.mechanisms.object_level_attention (it solves these).

SCAFFOLD: attention_weights is an example of the form; replace it with the chapter's exercises.
"""

from torch import Tensor


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    """The attention weights of one head: softmax(q k^T / sqrt(d)) over the keys.

    Args:
        q: (..., N, d) queries, float32 or float64.
        k: (..., M, d) keys, same dtype and leading dims.

    Returns:
        (..., N, M) weights in q's dtype; each row (one query) sums to 1.
    """
    raise NotImplementedError("ch17.attention_weights")
