"""Chapter 00: grade the target (solutions by default) and check that known mistakes fail."""
import math

import torch

from attnbook.attention import merge_heads, split_heads
from tests.exercises.grading import graded_task_test, rejects_test

test_task = graded_task_test("00")


# --- common wrong answers the checks must reject ------------------------------------------
def _scores(q, k, mask, scale):
    s = q @ k.transpose(-2, -1) * scale
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def sdpa_softmax_over_queries(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1])), dim=-2)
    return w @ v, w


def sdpa_scaled_by_sqrt_model_width(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(q.shape[-1] * 4)), dim=-1)
    return w @ v, w


def sdpa_no_scale(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, mask, 1.0), dim=-1)
    return w @ v, w


def sdpa_mask_after_softmax(q, k, v, mask=None):
    w = torch.softmax(_scores(q, k, None, 1 / math.sqrt(q.shape[-1])), dim=-1)
    if mask is not None:
        w = w * mask
    return w @ v, w


def sdpa_nan_from_inf_times_zero(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + (~mask) * float("-inf")  # 0 * -inf = NaN on visible keys
    w = torch.softmax(s, dim=-1)
    return w @ v, w


def sdpa_assumes_square(q, k, v, mask=None):
    k = k[..., : q.shape[-2], :]
    v = v[..., : q.shape[-2], :]
    w = torch.softmax(_scores(q, k, None if mask is None else mask[:, : q.shape[-2]], 1 / math.sqrt(q.shape[-1])), dim=-1)
    return w @ v, w


def sdpa_returns_float32(q, k, v, mask=None):
    w = torch.softmax(_scores(q.float(), k.float(), mask, 1 / math.sqrt(q.shape[-1])), dim=-1)
    return w @ v.float(), w


def sdpa_raises(q, k, v, mask=None):
    raise RuntimeError("boom")


def split_view_without_transpose(x, H):
    B, N, D = x.shape
    return x.reshape(B, H, N, D // H)


def merge_reshape_without_transpose(x):
    B, H, N, d = x.shape
    return x.reshape(B, N, H * d)


def _heads(x, params, H, mask, scale_width):
    B, N, D = x.shape
    d = D // H
    q, k, v = (split_heads(x @ params[n], H) for n in ("w_q", "w_k", "w_v"))
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(scale_width(D, d))), dim=-1)
    return w @ v  # (B, H, N, d)


def mha_sqrt_model_width(x, params, H, mask=None):
    heads = _heads(x, params, H, mask, lambda D, d: D)
    return merge_heads(heads) @ params["w_o"]


def mha_forgets_w_o(x, params, H, mask=None):
    return merge_heads(_heads(x, params, H, mask, lambda D, d: d))


def mha_heads_in_wrong_order(x, params, H, mask=None):
    heads = _heads(x, params, H, mask, lambda D, d: d).flip(1)
    return merge_heads(heads) @ params["w_o"]


def mha_scrambled_split(x, params, H, mask=None):
    B, N, D = x.shape
    q, k, v = (split_view_without_transpose(x @ params[n], H) for n in ("w_q", "w_k", "w_v"))
    w = torch.softmax(_scores(q, k, mask, 1 / math.sqrt(D // H)), dim=-1)
    return merge_reshape_without_transpose(w @ v) @ params["w_o"]


def causal_off_by_one(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M, dtype=torch.bool).tril(M - N - 1)


def causal_queries_at_start(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M, dtype=torch.bool).tril(0)


def causal_float_mask(N, M=None):
    M = N if M is None else M
    return torch.ones(N, M).tril(M - N)


def causal_hangs(N, M=None):
    while True:
        pass


WRONG_ANSWERS = {
    "ch00.scaled_dot_product_attention": [
        sdpa_softmax_over_queries, sdpa_scaled_by_sqrt_model_width, sdpa_no_scale, sdpa_mask_after_softmax,
        sdpa_nan_from_inf_times_zero, sdpa_assumes_square, sdpa_returns_float32, sdpa_raises,
    ],
    "ch00.split_heads": [split_view_without_transpose],
    "ch00.merge_heads": [merge_reshape_without_transpose],
    "ch00.multi_head_attention": [mha_sqrt_model_width, mha_forgets_w_o, mha_heads_in_wrong_order, mha_scrambled_split],
    "ch00.causal_mask": [causal_off_by_one, causal_queries_at_start, causal_float_mask],
}
test_rejects_wrong_answer = rejects_test(WRONG_ANSWERS)


def test_hanging_code_is_reported_as_timeout(monkeypatch):
    from attnbook.grading import REGISTRY, run_task
    from attnbook.grading.core import Task

    t = REGISTRY["ch00.causal_mask"]
    monkeypatch.setitem(REGISTRY, t.id, Task(t.id, t.points, t.check, t.summary, time_limit=0.5))
    result = run_task(t.id, causal_hangs)
    assert result.status == "timeout" and "did not finish" in result.message
