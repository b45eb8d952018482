"""Chapter 18 solutions: Shifted windows.

SCAFFOLD: the chapter is a draft; a function raises NotImplementedError until it is solved
(`attnbook grade 18 --solutions` fails it, as CI will once the chapter is written).
"""

from torch import Tensor


def attention_weights(q: Tensor, k: Tensor) -> Tensor:
    raise NotImplementedError("ch18.attention_weights")
