"""Check that a mechanism's functions create their tensors on the inputs' device and dtype.

    @on_devices_and_dtypes
    def test_created_tensors_follow_the_inputs(device, dtype):
        x = ... .to(device, dtype)
        with tensors_without_device_go_to_meta():
            results = [f(x), g(x)]
        assert_follow(results, x.device, dtype)

Inside :func:`tensors_without_device_go_to_meta` torch's default device is "meta", so a
tensor made with ``torch.zeros(...)`` and no ``device=`` lands on the meta device: mixing it
with the real inputs raises, or the result comes back on meta. On a machine with a CUDA GPU
the same tests also run with the inputs on the GPU.
"""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def on_devices_and_dtypes(test):
    """Parametrise a test over ``device`` (cpu, and cuda when present) and ``dtype`` (float32, float64)."""
    test = pytest.mark.parametrize("dtype", [torch.float32, torch.float64])(test)
    return pytest.mark.parametrize("device", DEVICES)(test)


def tensors_without_device_go_to_meta():
    """A context in which a tensor created without ``device=`` lands on the meta device."""
    return torch.device("meta")


def assert_follow(results, device: torch.device, dtype: torch.dtype) -> None:
    """Every result is on ``device`` with ``dtype``."""
    for i, r in enumerate(results):
        assert r.device == device and r.dtype == dtype, f"result {i}: {r.dtype} on {r.device}"
