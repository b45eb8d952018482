"""Triton kernels of attnbook, importable as ``attnbook.kernels``.

Install the ``kernels`` extra (``pip install 'attnbook[kernels]'``) for Triton. Without a GPU,
set ``TRITON_INTERPRET=1`` before importing triton (and this package) to run the kernels in
Triton's CPU interpreter.

- :func:`flash_attention` (``kernels/flash_attention.py``): fused softmax attention, forward and
  backward (FlashAttention-2 style), ``(B, H, N, d)`` tensors, causal or not; the plain PyTorch
  specification is :func:`attention_reference`. Benchmark: ``python -m attnbook.kernels.bench``.
"""
try:
    import triton  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "attnbook.kernels needs Triton: install it with pip install 'attnbook[kernels]' "
        "(on a machine without a GPU, set TRITON_INTERPRET=1 to run kernels on the CPU)."
    ) from err

# Note: the function `flash_attention` shadows the submodule of the same name as an attribute of
# this package; reach the module itself with importlib.import_module("attnbook.kernels.flash_attention").
from .flash_attention import attention_reference, flash_attention  # noqa: E402

__all__ = ["flash_attention", "attention_reference"]
