"""Chapter 13 checks: sink detection, image-centric heads and VAR redistribution.

Each @task grades one function of exercises/ch13_attention_sinks.py on fresh random inputs against an
independent reference, written here one row at a time with Python floats (float64), apart from
attnbook.mechanisms.attention_sinks. The chapter's common mistakes (the @mistake declarations) live
in the companion module ``ch13_attention_sinks_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_accuracy, expect_close, fresh_generator, one_thread


def _unchanged(before: dict, after: dict, what: str) -> None:
    for name, tensor in before.items():
        if not torch.equal(tensor, after[name]):
            raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


# ---- sink_mask ---------------------------------------------------------------------------------


def _phi_reference(h, dims, eps):
    """MA per token with Python floats: max_{d ∈ dims} |h_d| / sqrt(mean(h²) + eps)."""
    B, N, D = h.shape
    out = torch.zeros(B, N, dtype=torch.float64)
    rows = h.double().tolist()
    for b in range(B):
        for t in range(N):
            x = rows[b][t]
            rms = math.sqrt(sum(v * v for v in x) / D + eps)
            out[b, t] = max(abs(x[d]) for d in dims) / rms
    return out


def _sink_inputs(g, B, N, D, dims, scale, dtype):
    """Gaussian tokens times ``scale``; a third of them get a spike (10·RMS) on a sink dimension,
    a few others get one on a NON-sink dimension."""
    h = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    spikes = torch.rand(B, N, generator=g) < 0.35
    decoys = ~spikes & (torch.rand(B, N, generator=g) < 0.3)
    others = [d for d in range(D) if d not in dims]
    for b in range(B):
        for t in range(N):
            if spikes[b, t]:
                h[b, t, dims[(b + t) % len(dims)]] = 10.0 * (1 if (b + t) % 2 else -1)
            elif decoys[b, t]:
                h[b, t, others[(b * N + t) % len(others)]] = 12.0
    return (scale * h).to(dtype)


# (B, N, D, dims, tau, scale, dtype): a large scale (raw values far above χ_MA), a small one (raw
# values far below), odd sizes, float16 whose squares overflow unless the norm is upcast
SINK_CASES = (
    (2, 7, 24, [3, 17], 4.0, 40.0, torch.float32),
    (1, 5, 16, [0], 3.0, 0.05, torch.float64),
    (3, 4, 33, [30, 2, 9], 3.5, 1.0, torch.float64),
    (2, 6, 20, [11], 2.5, 60.0, torch.float16),
)


@task("ch13.sink_mask", points=2)
def check_sink_mask(fn):
    """MA = max over the sink dims of |RMSNorm(h)| (no weight), sink iff MA > χ_MA (strict), (B, N) bool."""
    g, _ = fresh_generator()
    for B, N, D, dims, tau, scale, dtype in SINK_CASES:
        h = _sink_inputs(g, B, N, D, dims, scale, dtype)
        what = f"sink_mask({describe({'B': B, 'N': N, 'D': D, 'dims': dims, 'tau': tau, 'dtype': dtype})})"
        with case():
            before = {"h": h.clone()}
            answer = fn(h, torch.tensor(dims), tau)
            _unchanged(before, {"h": h}, what)
            phi = _phi_reference(h, dims, 1e-6)
            expect_close(answer, phi > tau, what=what, hint="divide h by sqrt(mean(h²) + eps) over D first")
    with case():  # a token exactly at the threshold is not a sink
        h = torch.zeros(1, 2, 16, dtype=torch.float64)
        h[0, 0, :8] = torch.tensor([3.0, 1, 1, 1, 1, 1, 1, 1])  # mean(h²) = 1: MA = 3 exactly
        h[0, 1, 3] = 5.0  # one-hot: MA = sqrt(16) = 4
        what = (
            "sink_mask(h=[[3, 1, 1, 1, 1, 1, 1, 1, 0, ...], [0, 0, 0, 5, 0, ...]], dims=[0, 3], tau=3, eps=0)"
        )
        answer = fn(h, torch.tensor([0, 3]), 3.0, eps=0.0)
        expect_close(answer, torch.tensor([[False, True]]), what=what)


# ---- image_centric -----------------------------------------------------------------------------


def _softmax_rows(g, B, H, N, M, dtype, temperature=3.0):
    s = temperature * torch.randn(B, H, N, M, generator=g, dtype=torch.float64)
    causal = torch.ones(N, M, dtype=torch.bool).tril(M - N)
    return torch.softmax(s.masked_fill(~causal, float("-inf")), -1).to(dtype)


def _image_centric_reference(A, img, sink, rho, summ):
    B, H, N, M = A.shape
    out = torch.zeros(B, H, N, dtype=torch.bool)
    rows = A.double().tolist()
    for b in range(B):
        vis = [j for j in range(img.start, img.stop) if sink[b, j]]
        if not vis:  # no visual sink in the sequence: nothing is selected
            continue
        for h in range(H):
            for q in range(N):
                row = rows[b][h][q]
                nu = sum(row[img.start : img.stop])
                share = sum(row[j] for j in vis) / nu if nu > 0 else 0.0
                out[b, h, q] = nu >= summ and share <= rho
    return out


# (B, H, N, M, image span, rho, summ, dtype)
CENTRIC_CASES = (
    (2, 3, 6, 10, (1, 7), 0.5, 0.2, torch.float32),
    (3, 2, 5, 9, (2, 8), 0.3, 0.4, torch.float64),
    (1, 4, 7, 7, (0, 4), 0.6, 0.1, torch.float64),
)


def _centric_inputs(g, B, H, N, M, span, dtype):
    A = _softmax_rows(g, B, H, N, M, dtype)
    sink = torch.rand(B, M, generator=g) < 0.3
    sink[:, 0] = True  # a text sink (BOS) outside the image when the image starts at 1
    sink[0, slice(*span)] = False  # sequence 0: no visual sink
    sink[-1, span[0] + 1] = True  # the last sequence: at least one
    return A, sink


@task("ch13.image_centric", points=2)
def check_image_centric(fn):
    """VR = Σ_I A ≥ summ and SR = Σ_{I ∩ sinks} A / VR ≤ χ_SR (SR = 0 when VR = 0); no visual sink: none."""
    g, _ = fresh_generator()
    for B, H, N, M, span, rho, summ, dtype in CENTRIC_CASES:
        A, sink = _centric_inputs(g, B, H, N, M, span, dtype)
        img = slice(*span)
        sizes = {"B": B, "H": H, "N": N, "M": M, "img": img, "rho": rho, "summ": summ}
        what = f"image_centric({describe(sizes)})"
        with case():
            before = {"A": A.clone(), "sink": sink.clone()}
            answer = fn(A, img, sink, rho, summ)
            _unchanged(before, {"A": A, "sink": sink}, what)
            expect_close(answer, _image_centric_reference(A, img, sink, rho, summ), what=what)
    with case():  # row 0: SR = 0.3 / 0.4 > χ_SR (0.3 of the whole row); row 1: BOS is no visual sink
        A = torch.tensor([[[[0.6, 0.3, 0.1, 0.0, 0.0, 0.0], [0.5, 0.1, 0.2, 0.2, 0.0, 0.0]]]])
        sink = torch.tensor([[True, True, False, False, False, False]])
        what = "image_centric(rows [0.6, 0.3, 0.1, 0, 0, 0] and [0.5, 0.1, 0.2, 0.2, 0, 0], img=slice(1, 5))"
        expect_close(fn(A, slice(1, 5), sink, 0.5, 0.2), torch.tensor([[[False, True]]]), what=what)
    with case():  # rows with no weight on the image: VR = 0, no division by zero
        A = torch.zeros(1, 1, 3, 6)
        A[..., 0] = 1.0
        sink = torch.tensor([[True, False, True, False, False, False]])
        what = "image_centric(all weight on token 0, img=slice(1, 5), summ=0.0)"
        expect_close(fn(A, slice(1, 5), sink, 0.5, 0.0), torch.ones(1, 1, 3, dtype=torch.bool), what=what)


# ---- redistribute ------------------------------------------------------------------------------


def _redistribute_reference(A, sink, img, sel, p):
    """Row by row: sinks keep p of their weight, the budget goes to the non-sink image tokens ∝ weight."""
    B, H, N, M = A.shape
    out = A.double().clone()
    rows = A.double().tolist()
    for b in range(B):
        sinks = [j for j in range(M) if sink[b, j]]
        others = [j for j in range(img.start, img.stop) if not sink[b, j]]
        for h in range(H):
            for q in range(N):
                row = rows[b][h][q]
                m_ns = sum(row[j] for j in others)
                if not sel[b, h, q] or m_ns == 0:
                    continue
                omega = (1 - p) * sum(row[j] for j in sinks)
                for j in sinks:
                    out[b, h, q, j] = p * row[j]
                for j in others:
                    out[b, h, q, j] = row[j] + omega * row[j] / m_ns
    return out.to(A.dtype)


# (B, H, N, M, image span, p, dtype)
REDISTRIBUTE_CASES = (
    (2, 3, 6, 11, (1, 8), 0.6, torch.float32),
    (1, 2, 7, 7, (1, 5), 0.25, torch.float64),
    (3, 2, 4, 9, (2, 7), 0.0, torch.float64),
)


def _redistribute_inputs(g, B, H, N, M, span, dtype):
    A = _softmax_rows(g, B, H, N, M, dtype, temperature=2.0)
    sink = torch.rand(B, M, generator=g) < 0.3
    sink[:, 0] = True  # a text sink
    sink[:, span[0]] = True  # a visual sink
    sink[:, span[0] + 1] = False  # and a non-sink image token
    sel = torch.rand(B, H, N, generator=g) < 0.7
    return A, sink, sel


@task("ch13.redistribute", points=3)
def check_redistribute(fn):
    """A'_qj = p A_qj on sinks; + (1-p)·(sink mass)·A_qj / m_ns on non-sink image tokens; rest kept."""
    g, _ = fresh_generator()
    for B, H, N, M, span, p, dtype in REDISTRIBUTE_CASES:
        A, sink, sel = _redistribute_inputs(g, B, H, N, M, span, dtype)
        img = slice(*span)
        what = (
            f"redistribute({describe({'B': B, 'H': H, 'N': N, 'M': M, 'img': img, 'p': p, 'dtype': dtype})})"
        )
        with case():
            before = {"A": A.clone(), "sink": sink.clone(), "sel": sel.clone()}
            answer = fn(A, sink, img, sel, p)
            _unchanged(before, {"A": A, "sink": sink, "sel": sel}, what)
            expect_close(answer, _redistribute_reference(A, sink, img, sel, p), what=what)
    with case():  # an all-sink image: nowhere to send the budget, the rows stay as they are
        A = _softmax_rows(g, 1, 2, 3, 6, torch.float64)
        sink = torch.tensor([[True, True, True, True, False, False]])
        what = "redistribute(every image token of slice(1, 4) is a sink, p=0.5)"
        expect_close(fn(A, sink, slice(1, 4), torch.ones(1, 2, 3, dtype=torch.bool), 0.5), A, what=what)


# ---- var_heads: the layer end to end ----------------------------------------------------------


def _var_heads_inputs(g, B, H, N, d, D, span, dims, dtype):
    q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(3))
    h = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    h[:, 0, dims[0]] = 40.0  # BOS: a text sink
    for b in range(B):  # one or two visual sinks per sequence, at different slots
        for j in range(b + 1):
            h[b, span[0] + 2 * j + b, dims[-1]] = -40.0
    return q.to(dtype), k.to(dtype), v.to(dtype), h.to(dtype)


def _var_heads_reference(q, k, v, h, dims, tau, img, rho, summ, p):
    N = q.shape[-2]
    sink = _phi_reference(h, dims, 1e-6) > tau
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    A = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
    sel = _image_centric_reference(A, img, sink, rho, summ)
    sel[..., : img.stop] = False  # only the text after the image
    return _redistribute_reference(A, sink, img, sel, p) @ v.double(), sel


# (B, H, N, d, D, image span, dims, tau, rho, summ, p, dtype)
VAR_HEADS_CASES = (
    (2, 3, 12, 4, 16, (1, 8), [2, 9], 3.0, 0.5, 0.2, 0.6, torch.float32),
    (1, 2, 10, 8, 24, (1, 6), [5], 4.0, 0.6, 0.1, 0.3, torch.float64),
)


@task("ch13.var_heads", points=3)
def check_var_heads(fn):
    """Sinks on h, causal softmax, image-centric rows after the image only, redistribute, A' v."""
    g, _ = fresh_generator()
    for B, H, N, d, D, span, dims, tau, rho, summ, p, dtype in VAR_HEADS_CASES:
        q, k, v, h = _var_heads_inputs(g, B, H, N, d, D, span, dims, dtype)
        img = slice(*span)
        sizes = {"B": B, "H": H, "N": N, "d": d, "D": D, "img": img, "dims": dims, "tau": tau, "p": p}
        what = f"var_heads({describe(sizes)}, dtype={dtype})"
        with case():
            before = {"q": q.clone(), "k": k.clone(), "v": v.clone(), "h": h.clone()}
            answer = fn(q, k, v, h, torch.tensor(dims), tau, img, rho, summ, p)
            _unchanged(before, {"q": q, "k": k, "v": v, "h": h}, what)
            expected, sel = _var_heads_reference(q, k, v, h, dims, tau, img, rho, summ, p)
            assert sel.any(), "the case must select some rows"
            expect_close(
                answer,
                expected.to(dtype),
                what=what,
                hint="sinks from h, causal softmax, image_centric on rows i >= img.stop, redistribute, @ v",
            )


# ---- the experiment: mean-replacing values -------------------------------------------------------

ABLATION_RECIPE = dict(D=32, layers=2, steps=40)
# Seeds of the recipe on which the reference's answer is unambiguous: replacing the register and
# background values moves the accuracy by 0.01 or less, replacing the object values drops it by
# 0.1 or more, and a per-sequence mean drops it by 0.02 or less. 31 of the seeds 100-139 qualify;
# on the other 9 the object drop is only 0.08-0.1, or the sink change reaches 0.011-0.025, or a
# per-sequence mean drops the accuracy too (by up to 0.044): one seed of a toy is not evidence.
ABLATION_SEEDS = (
    100,
    102,
    103,
    105,
    106,
    107,
    108,
    109,
    110,
    111,
    112,
    114,
    117,
    118,
    120,
    122,
    123,
    124,
    125,
    126,
    127,
    128,
    129,
    130,
    131,
    132,
    133,
    134,
    136,
    138,
    139,
)
TOLERANCE = 0.03  # the learner's and the reference's runs of one seed agree to this


def _ablation_run(seed: int) -> dict[str, float]:
    from ...mechanisms.attention_sinks_experiment import (
        CAPTIONS,
        caption_accuracy,
        replaced_values,
        train_captioner,
    )
    from ...tasks.object_captions import BACKGROUND, OBJECT, REGISTER, object_captions

    model = train_captioner(seed, **ABLATION_RECIPE)
    test = object_captions(500, generator=torch.Generator().manual_seed(1000 + seed), **CAPTIONS)
    arms = {"sinks": (test.kinds == REGISTER) | (test.kinds == BACKGROUND), "objects": test.kinds == OBJECT}
    with torch.no_grad():
        result = {"intact": caption_accuracy(model(test.tokens), test)}
        for name, tokens in arms.items():
            with replaced_values(model, tokens):
                result[name] = caption_accuracy(model(test.tokens), test)
    return result


@functools.cache
def _reference_ablation(seed: int) -> dict[str, float]:
    """The reference experiment at ``seed`` (cached: it trains a model)."""
    with torch.random.fork_rng(devices=[]):
        return _ablation_run(seed)


def _fraction(result, name: str, what: str) -> float:
    if not isinstance(result, dict) or name not in result:
        raise CheckFailed(f"{what}: return a dict with a float accuracy under {name!r}, got {result!r}")
    return expect_accuracy(result[name], f"{what}[{name!r}]")


RECIPE_HINT = (
    "follow the recipe: train_captioner(seed, D=32, layers=2, steps=40), the test batch of 500 from "
    "manual_seed(1000 + seed), caption_accuracy on the caption positions, values replaced in every layer"
)
SINKS_HINT = (
    "replace the values of the register AND background tokens (test.kinds), in every layer, by their "
    "batch mean per head; leave the object tokens alone"
)
# A mean over one sequence's tokens fails the object-drop test on every seed above (it drops the
# accuracy by 0.02 or less); it is named in that hint rather than declared as a @mistake, whose
# replays would train two more models in the chapter's tests.
PER_SEQUENCE_HINT = (
    "take ONE mean per head over the chosen tokens of the WHOLE batch: a mean over one "
    "sequence's objects still tells which objects that image holds"
)


@task("ch13.ablation_accuracy", points=3, time_limit=60.0)
def check_ablation_accuracy(fn):
    """The learner's three accuracies match the reference run of the same seed; objects drop, sinks do not."""
    with one_thread():
        gen, _ = fresh_generator()
        seed = ABLATION_SEEDS[int(torch.randint(len(ABLATION_SEEDS), (1,), generator=gen))]
        what = f"ablation_accuracy({seed})"
        with case():
            got = fn(seed)
            got = {name: _fraction(got, name, what) for name in ("intact", "sinks", "objects")}
            ref = _reference_ablation(seed)
            if abs(got["intact"] - ref["intact"]) > TOLERANCE:
                raise CheckFailed(
                    f"{what}['intact'] = {got['intact']:.3f}, but the reference run of this seed gives "
                    f"{ref['intact']:.3f} (accepted: ± {TOLERANCE})",
                    hint=RECIPE_HINT,
                )
            if abs(got["sinks"] - got["intact"]) > 0.03:
                raise CheckFailed(
                    f"{what}: mean-replacing the register and background values moved the accuracy from "
                    f"{got['intact']:.3f} to {got['sinks']:.3f}; the reference run moves it by "
                    f"{abs(ref['sinks'] - ref['intact']):.3f}",
                    hint=SINKS_HINT,
                )
            if got["intact"] - got["objects"] < 0.04:
                raise CheckFailed(
                    f"{what}: mean-replacing the object values only moved the accuracy from "
                    f"{got['intact']:.3f} to {got['objects']:.3f}; the reference run drops it by "
                    f"{ref['intact'] - ref['objects']:.3f}",
                    hint=PER_SEQUENCE_HINT,
                )
            for name in ("sinks", "objects"):
                if abs(got[name] - ref[name]) > TOLERANCE:
                    raise CheckFailed(
                        f"{what}[{name!r}] = {got[name]:.3f}, but the reference run of this seed gives "
                        f"{ref[name]:.3f} (accepted: ± {TOLERANCE})",
                        hint=RECIPE_HINT,
                    )
