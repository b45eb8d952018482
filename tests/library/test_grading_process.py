import pytest
import torch
import torch.nn.functional as F
from torch.nn.functional import scaled_dot_product_attention as sdpa_alias

from attnbook.grading.core import CheckFailed
from attnbook.grading.process import forbid, largest_intermediate, no_autograd

q = k = v = torch.randn(1, 2, 8, 4)


def test_forbid_catches_any_binding():
    with pytest.raises(CheckFailed, match="scaled_dot_product_attention"):
        with forbid(F.scaled_dot_product_attention, reason="r"):
            sdpa_alias(q, k, v)
    with pytest.raises(CheckFailed, match="softmax"):
        with forbid(torch.softmax, torch.Tensor.softmax, reason="r"):
            (q @ k.mT).softmax(-1)
    with forbid(F.scaled_dot_product_attention, reason="r"):
        torch.softmax(q @ k.mT / 2, -1) @ v  # allowed


def test_no_autograd():
    x = torch.randn(3, requires_grad=True)
    with pytest.raises(CheckFailed, match="autograd"):
        with no_autograd():
            torch.autograd.grad((x * 2).sum(), x)
    with pytest.raises(CheckFailed, match="autograd|requires_grad"):
        with no_autograd():
            y = x.detach().requires_grad_()
            (y * 2).sum().backward()
    assert torch.autograd.grad is not None and torch.is_grad_enabled()
    torch.autograd.grad((x * 2).sum(), x)  # restored


def test_watch():
    with largest_intermediate() as seen:
        s = q @ k.mT
        torch.softmax(s, -1)
    assert seen.first(lambda sh: sh[-2:] == (8, 8)) is not None and seen.largest == 128


def test_a_forbidden_call_is_a_failed_check_not_an_error_of_the_learner():
    from attnbook.grading import run_task

    def calls_torch(q, k, v, mask=None):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out, out

    result = run_task("ch00.scaled_dot_product_attention", calls_torch)
    assert result.status == "failed", result
    assert result.message.startswith("your function calls torch.nn.functional.scaled_dot_product_attention")
