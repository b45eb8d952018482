"""Triton kernels of attnbook, importable as ``attnbook.kernels``.

Install the ``kernels`` extra (``pip install 'attnbook[kernels]'``) for Triton. Without a GPU,
set ``TRITON_INTERPRET=1`` before importing triton (and this package) to run the kernels in
Triton's CPU interpreter.

- :func:`flash_attention` (chapter 29, module ``attnbook.kernels.fused_attention``, backward in
  ``fused_attention_backward``): fused softmax attention, forward and backward (FlashAttention-2
  style), ``(B, H, N, d)`` tensors, causal or not; its plain PyTorch specification is
  :func:`attention_reference`. Benchmark: ``python -m attnbook.kernels.bench``.
- ``attnbook.kernels.fused_attention_hopper``: v4, the forward on Hopper (sm_90) in Triton's Gluon
  layer, warp-specialized; flash_attention runs it at d = 128 on large enough calls and v2 elsewhere.
- ``attnbook.kernels.launch``: the launch layer every kernel shares (tile tables, autotuning,
  load path, dtype policy, input checks).

``attnbook.kernels.flash_attention`` is the function; reach a module by its own name, e.g.
``import attnbook.kernels.fused_attention as fa``.
"""

try:
    import triton  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "attnbook.kernels needs Triton: install it with pip install 'attnbook[kernels]' "
        "(on a machine without a GPU, set TRITON_INTERPRET=1 to run kernels on the CPU)."
    ) from err

from .fused_attention import attention_reference, flash_attention  # noqa: E402

__all__ = ["flash_attention", "attention_reference"]
