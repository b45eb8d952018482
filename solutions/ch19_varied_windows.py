"""Chapter 19 solutions: Varied windows.

SCAFFOLD: the chapter is a draft; a function raises NotImplementedError until it is solved
(`attnbook grade 19 --solutions` fails it, as CI will once the chapter is written).
"""

from torch import Tensor


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    raise NotImplementedError("ch19.attention_weights")
