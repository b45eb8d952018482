"""Triton kernels of attnbook, importable as ``attnbook.kernels``.

Install the ``kernels`` extra (``pip install 'attnbook[kernels]'``) for Triton.
"""
try:
    import triton  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "attnbook.kernels needs Triton: install it with pip install 'attnbook[kernels]' "
        "(on a machine without a GPU, set TRITON_INTERPRET=1 to run kernels on the CPU)."
    ) from err
