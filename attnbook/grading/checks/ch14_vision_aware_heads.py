"""Chapter 14 checks: VHD, the selection of vision-aware heads, CHAIR_I and one VHR step.

Each @task grades one function of exercises/ch14_vision_aware_heads.py on fresh random inputs against an
independent reference, written here with Python floats (one head or one row at a time) or, for VHR,
with one full forward per layer, apart from attnbook.mechanisms.vision_aware_heads. The chapter's common
mistakes (the @mistake declarations) live in the companion module ``ch14_vision_aware_heads_mistakes.py``.
"""

from __future__ import annotations

import functools
import math
import statistics

import torch

from ..core import CheckFailed, case, task
from ..expect import describe, expect_close, expect_number, fresh_generator, one_thread


def _unchanged(before: dict, after: dict, what: str) -> None:
    for name, tensor in before.items():
        if not torch.equal(tensor, after[name]):
            raise CheckFailed(f"{what} changed its input {name} in place; work on a copy")


# ---- vhd ---------------------------------------------------------------------------------------


def _vhd_reference(a_img, v_img, a_txt, v_txt, metric):
    """Head outputs o = Σ_j a_j v_j and their distance, one head at a time with Python floats."""
    B, H = a_img.shape[:2]
    out = torch.zeros(B, H, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            zs = []
            for a, v in ((a_img, v_img), (a_txt, v_txt)):
                w, vals = a[b, h].double().tolist(), v[b, h].double().tolist()
                zs.append([sum(w[j] * vals[j][i] for j in range(len(w))) for i in range(len(vals[0]))])
            x, y = zs
            if metric == "l2":
                out[b, h] = math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y)))
            else:
                dot = sum(p * q for p, q in zip(x, y))
                out[b, h] = 1 - dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))
    return out


def _vhd_inputs(g, B, H, M1, M2, d, scale, dtype):
    """Weights of the last query and values of both branches; without the image the values move too."""
    a_img = torch.softmax(2 * torch.randn(B, H, M1, generator=g, dtype=torch.float64), -1)
    a_txt = torch.softmax(2 * torch.randn(B, H, M2, generator=g, dtype=torch.float64), -1)
    v_img = scale * torch.randn(B, H, M1, d, generator=g, dtype=torch.float64)
    v_txt = v_img[:, :, -M2:] + 0.3 * scale * torch.randn(B, H, M2, d, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (a_img, v_img, a_txt, v_txt)]


# (B, H, M1, M2, d, scale, dtype, metric): same lengths (the image replaced) first, float16 with
# values whose squared distance overflows float16, then a text-only branch shorter than the image one
VHD_CASES = (
    (2, 3, 7, 7, 4, 1.0, torch.float64, "l2"),
    (3, 5, 6, 6, 8, 1.0, torch.float32, "cos"),
    (1, 4, 9, 9, 5, 1.0, torch.float64, "cos"),
    (2, 2, 5, 5, 8, 150.0, torch.float16, "l2"),
    (2, 3, 10, 6, 4, 1.0, torch.float64, "l2"),
)


@task("ch14.vhd", points=2)
def check_vhd(fn):
    """VHD = dist(o_img, o_txt) with o = Σ_j a_j v_j, l2 or 1 - cos; float16 computed in float32."""
    g, _ = fresh_generator()
    for B, H, M1, M2, d, scale, dtype, metric in VHD_CASES:
        inputs = _vhd_inputs(g, B, H, M1, M2, d, scale, dtype)
        sizes = {"B": B, "H": H, "M_img": M1, "M_txt": M2, "d": d, "dtype": dtype, "metric": metric}
        what = f"vhd({describe(sizes)})"
        with case():
            names = ("a_img", "v_img", "a_txt", "v_txt")
            before = {n: t.clone() for n, t in zip(names, inputs)}
            answer = fn(*inputs, metric=metric)
            _unchanged(before, dict(zip(names, inputs)), what)
            out_dtype = torch.float32 if dtype == torch.float16 else dtype
            expected = _vhd_reference(*inputs, metric).to(out_dtype)
            expect_close(
                answer, expected, what=what, hint="o_h = a_h @ v_h for each branch, then the distance"
            )
    with case():  # identical branches: 0 for both metrics
        a, v = _vhd_inputs(g, 2, 3, 5, 5, 4, 1.0, torch.float64)[:2]
        for metric in ("l2", "cos"):
            expect_close(
                fn(a, v, a.clone(), v.clone(), metric=metric),
                torch.zeros(2, 3, dtype=torch.float64),
                what=f"vhd(the same a and v twice, metric={metric!r})",
            )


# ---- select_vision_heads -----------------------------------------------------------------------


def _select_reference(v, c):
    """Row by row: not above mean + c·stdev (Bessel) and strictly above the median."""
    out = torch.zeros(v.shape, dtype=torch.bool)
    for b, row in enumerate(v.double().tolist()):
        if len(row) < 2:
            continue
        ceiling = statistics.mean(row) + c * statistics.stdev(row)
        med = statistics.median(row)
        out[b] = torch.tensor([ceiling >= x > med for x in row])
    return out


def _select_inputs(g, B, H, dtype):
    v = torch.rand(B, H, generator=g, dtype=torch.float64) ** 2
    v = v * torch.logspace(-2, 2, B, dtype=torch.float64)[:, None]  # rows on very different scales
    if H >= 4:
        v[0, int(torch.randint(H, (1,), generator=g))] = 50.0  # a surge outlier
    return v.to(dtype)


# (B, H, outlier_std, dtype)
SELECT_CASES = ((4, 8, 1.0, torch.float64), (3, 5, 0.5, torch.float32), (5, 32, 1.0, torch.float64))


@task("ch14.select_vision_heads", points=2)
def check_select_vision_heads(fn):
    """Per row: v <= mean + c·std (Bessel) and v > median (strict); H = 1 selects nothing."""
    g, _ = fresh_generator()
    for B, H, c, dtype in SELECT_CASES:
        v = _select_inputs(g, B, H, dtype)
        what = f"select_vision_heads({describe({'B': B, 'H': H, 'outlier_std': c, 'dtype': dtype})})"
        with case():
            before = {"v": v.clone()}
            answer = fn(v, c)
            _unchanged(before, {"v": v}, what)
            expect_close(answer, _select_reference(v, c), what=what)
    rows = {
        "[[0.1, 0.2, 0.35, 0.37], [0.3, 0.3, 0.3, 0.3]]": torch.tensor([[0.1, 0.2, 0.35, 0.37], [0.3] * 4]),
        "[[0.7], [0.2]] (H = 1)": torch.tensor([[0.7], [0.2]]),
        "[[0.1, 0.5, 0.2, 0.4, 0.3]]": torch.tensor([[0.1, 0.5, 0.2, 0.4, 0.3]]),
    }
    for text, v in rows.items():
        with case():
            expect_close(fn(v, 1.0), _select_reference(v, 1.0), what=f"select_vision_heads({text})")


# ---- chair_i -----------------------------------------------------------------------------------


def _chair_reference(objects, present):
    bad = total = 0
    for b, row in enumerate(objects.tolist()):
        mentioned = {o for o in row if o >= 0}
        total += len(mentioned)
        bad += sum(1 for o in mentioned if not present[b, o])
    return bad / total if total else 0.0


def _chair_inputs(g, B, T, n_obj):
    objects = torch.randint(-1, n_obj, (B, T), generator=g)
    objects[0, 1] = objects[0, 0] = max(int(objects[0, 0]), 0)  # a repeated mention
    objects[-1] = -1  # a caption that names nothing
    present = torch.rand(B, n_obj, generator=g) < 0.5
    return objects, present


@task("ch14.chair_i", points=1)
def check_chair_i(fn):
    """CHAIR_I = Σ_b |C_b ∖ P_b| / Σ_b |C_b| with C_b a set; 0 when nothing is mentioned."""
    g, _ = fresh_generator()
    for B, T, n_obj in ((6, 5, 8), (10, 7, 6), (3, 4, 4)):
        objects, present = _chair_inputs(g, B, T, n_obj)
        what = f"chair_i({describe({'B': B, 'T': T, 'n_objects': n_obj})})"
        with case():
            before = {"objects": objects.clone(), "present": present.clone()}
            answer = expect_number(fn(objects, present), what, expected="a float in [0, 1]", low=0, high=1)
            _unchanged(before, {"objects": objects, "present": present}, what)
            expected = _chair_reference(objects, present)
            if abs(answer - expected) > 1e-9:
                raise CheckFailed(f"{what} = {answer:.4f}, expected {expected:.4f}")
    with case():
        what = "chair_i(no caption names an object)"
        answer = expect_number(
            fn(torch.full((2, 3), -1), torch.ones(2, 4, dtype=torch.bool)), what, low=0, high=1
        )
        if answer != 0.0:
            raise CheckFailed(f"{what} = {answer}, expected 0.0")


# ---- vhr_step ----------------------------------------------------------------------------------


class _Scale(torch.nn.Module):
    """Scale the head outputs (B, H, N, d) by scales (B, H): the last position, or every position.

    A module: once a layer's head_transform has held a module, torch accepts only modules there.
    """

    def __init__(self, scales, every_position):
        super().__init__()
        self.scales, self.every_position = scales, every_position

    def forward(self, z):
        s = self.scales[:, :, None, None]
        if self.every_position:
            return z * s
        return torch.cat([z[:, :, :-1], z[:, :, -1:] * s], 2)


def _forward(model, tokens, scales, every_position=False):
    """The model's logits at the last position, layer l's heads scaled by scales[:, l] (B, H)."""
    saved = [b.attn.head_transform for b in model.blocks]
    try:
        for l, block in enumerate(model.blocks):
            block.attn.head_transform = _Scale(scales[:, l], every_position)
        logits, records = model(tokens, return_intermediates=True)
    finally:
        for block, t in zip(model.blocks, saved):
            block.attn.head_transform = t
    return logits[:, -1], [r.heads[:, :, -1] for r in records]


def _vhr_reference(model, img, txt, alpha, *, one_shot=False, every_position=False):
    """VHR with one full forward per layer: layer l's VHD with the scales of layers < l in place."""
    B, L, H = img.shape[0], len(model.blocks), model.config.H
    scales = torch.ones(B, L, H, dtype=torch.float64)
    with torch.no_grad():
        _, o_txt = _forward(model, txt, torch.ones_like(scales))
        for l in range(L):
            _, o_img = _forward(model, img, torch.ones_like(scales) if one_shot else scales, every_position)
            v = (o_img[l] - o_txt[l]).norm(dim=-1)  # (B, H)
            scales[:, l] = torch.where(_select_reference(v, 1.0), alpha, 1.0)
        return _forward(model, img, scales, every_position)[0]


def _vhr_model(g, layers, H, D, vocab, N):
    from ...models import ModelConfig, TinyTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=g)))
        model = TinyTransformer(ModelConfig(D=D, H=H, layers=layers, vocab=vocab, max_len=N))
    return model.double().eval()


# (layers, H, D, B, N_img, image slots, alpha)
VHR_CASES = ((2, 8, 32, 16, 9, (1, 5), 4.0), (3, 4, 20, 12, 8, (1, 6), 2.0), (1, 5, 15, 4, 6, (1, 3), 3.0))


@task("ch14.vhr_step", points=3)
def check_vhr_step(fn):
    """Layer by layer: VHD of layer l on the already-reinforced image branch, last position only."""
    g, _ = fresh_generator()
    for layers, H, D, B, N, span, alpha in VHR_CASES:
        model = _vhr_model(g, layers, H, D, 11, N)
        img = torch.randint(0, 11, (B, N), generator=g)
        txt = img.clone()
        txt[:, span[0] : span[1]] = 0  # the image slots replaced by a background token
        sizes = {"layers": layers, "H": H, "D": D, "B": B, "N": N, "alpha": alpha}
        what = f"vhr_step({describe(sizes)}, float64 TinyTransformer)"
        with case():
            before = {"tokens_img": img.clone(), "tokens_txt": txt.clone()}
            with torch.no_grad():
                answer = fn(model, img, txt, alpha)
            _unchanged(before, {"tokens_img": img, "tokens_txt": txt}, what)
            if any(b.attn.head_transform is not None for b in model.blocks):
                raise CheckFailed(f"{what} left a head_transform set on the model; restore the original")
            expect_close(answer, _vhr_reference(model, img, txt, alpha), what=what)
    with case():  # alpha = 1: the base model
        model = _vhr_model(g, 2, 4, 16, 11, 8)
        img = torch.randint(0, 11, (3, 8), generator=g)
        txt = img.clone()
        txt[:, 1:4] = 0
        with torch.no_grad():
            expect_close(
                fn(model, img, txt, 1.0), model(img)[:, -1], what="vhr_step(alpha=1): the base logits"
            )


# ---- filter_experiment -------------------------------------------------------------------------

# The scaled-down recipe of the experiment exercise (2 layers × 4 heads, D = 64, 100 steps of 32).
FILTER_RECIPE = dict(D=64, steps=100, batch_size=32, lr=2e-3)
N_TEST = 200
# A correct run stays within 0.0015 of the reference (another thread count, float64, weights
# perturbed by 1e-5; measured on seeds 100-131), while a wrong test set, g_VHR = 4 or the image
# removed instead of blanked moves some arm by 0.002-0.11 (by more than the tolerance on most seeds).
TOLERANCE = 0.005
# Seeds of 100-135 on which the reference's no-filter CHAIR_I lies at least 0.04 below its base and
# its filter CHAIR_I differs from the base by more than the tolerance (21 of 36 qualify). On all of
# them the filter leaves more hallucination than no filter (by 0.016-0.11), so answers with the
# arms swapped, the filter never switched off, or a filter arm that reinforces nothing all fail.
# One seed of a toy is not evidence.
FILTER_SEEDS = (100, 103, 104, 105, 106, 107, 108, 109, 113, 114, 116, 121, 123, 125, 127, 128, 129)
FILTER_SEEDS += (131, 132, 133, 135)
ARMS = {"base": (1.0, 1.0), "filter": (2.0, 1.0), "no_filter": (2.0, float("inf"))}


@functools.cache
def _filter_model(seed: int):
    """The reference captioner of ``seed`` (cached: it trains a model)."""
    from ...mechanisms.vision_aware_heads_experiment import train_captioner

    with torch.random.fork_rng(devices=[]):
        return train_captioner(seed, **FILTER_RECIPE)


def _filter_chairs(seed: int, *, counterfactual: bool = True) -> dict[str, float]:
    """CHAIR_I of the three decoders on the test images of ``seed``, with the reference model."""
    from ...mechanisms.vision_aware_heads import caption_objects, vhr_generate
    from ...mechanisms.vision_aware_heads_experiment import TOY
    from ...tasks.object_captions import object_captions

    model = _filter_model(seed)
    test = object_captions(
        N_TEST, counterfactual=counterfactual, generator=torch.Generator().manual_seed(1000 + seed), **TOY
    )
    prompt = test.tokens[:, : test.desc_position + 1]
    blank = prompt.clone()
    blank[:, test.image] = test.vocab.background
    result = {}
    with torch.no_grad():
        for name, (alpha, c) in ARMS.items():
            gen = vhr_generate(model, prompt, blank, alpha, max_new=5, outlier_std=c)
            result[name] = _chair_reference(caption_objects(gen, test.vocab), test.present)
    return result


@functools.cache
def _reference_filter(seed: int) -> dict[str, float]:
    return _filter_chairs(seed)


RECIPE_HINT = (
    "follow the recipe: train_captioner(seed, D=64, steps=100, batch_size=32, lr=2e-3), 200 "
    "counterfactual test images from manual_seed(1000 + seed), the text-only branch with every image "
    "slot set to the background token, greedy vhr_generate with max_new=5"
)
NO_FILTER_HINT = (
    "the no_filter arm is VHR with alpha = 2 and outlier_std = float('inf'), on counterfactual test "
    "images, with a text-only branch in which every image slot is set to the background token "
    "(identical branches give VHD = 0 everywhere, and nothing is reinforced)"
)
FILTER_HINT = (
    "the filter arm keeps outlier_std = 1 and the no_filter arm sets outlier_std = float('inf'), "
    "both with alpha = 2: on the reference run the filter, which drops the strongest head, leaves "
    "more hallucination than no filter"
)


@task("ch14.filter_experiment", points=3, time_limit=60.0)
def check_filter_experiment(fn):
    """Three CHAIR_I within 0.005 of the reference run of the seed; no_filter < base and < filter."""
    with one_thread():
        gen, _ = fresh_generator()
        seed = FILTER_SEEDS[int(torch.randint(len(FILTER_SEEDS), (1,), generator=gen))]
        what = f"filter_experiment({seed})"
        with case():
            got = fn(seed)
            if not isinstance(got, dict) or set(ARMS) - set(got):
                raise CheckFailed(f"{what}: return a dict with the keys {sorted(ARMS)}, got {got!r}")
            got = {
                name: expect_number(
                    got[name], f"{what}[{name!r}]", expected="a CHAIR_I in [0, 1]", low=0, high=1
                )
                for name in ARMS
            }
            ref = _reference_filter(seed)
            if got["base"] - got["no_filter"] <= 0:
                raise CheckFailed(
                    f"{what}: without the filter CHAIR_I is {got['no_filter']:.3f}, not below the base "
                    f"{got['base']:.3f}; the reference run of this seed gives {ref['no_filter']:.3f} and "
                    f"{ref['base']:.3f}",
                    hint=NO_FILTER_HINT,
                )
            if got["filter"] <= got["no_filter"]:
                raise CheckFailed(
                    f"{what}: with the filter CHAIR_I is {got['filter']:.3f}, not above the "
                    f"{got['no_filter']:.3f} without it; the reference run of this seed gives "
                    f"{ref['filter']:.3f} and {ref['no_filter']:.3f}",
                    hint=FILTER_HINT,
                )
            for name in ARMS:
                if abs(got[name] - ref[name]) > TOLERANCE:
                    raise CheckFailed(
                        f"{what}[{name!r}] = {got[name]:.3f}, but the reference run of this seed gives "
                        f"{ref[name]:.3f} (accepted: ± {TOLERANCE})",
                        hint=RECIPE_HINT,
                    )
