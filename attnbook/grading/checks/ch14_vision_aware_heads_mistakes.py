"""The common mistakes of chapter 14's exercises, declared for the checks of ``ch14_vision_aware_heads``.

Each function has the learner's signature and makes one mistake; its hint is what a learner whose
answer matches it is told. The loader imports this module with the chapter's check module.
"""

from __future__ import annotations

import torch

from ..core import mistake
from .ch14_vision_aware_heads import _filter_chairs, _vhr_reference


def _outputs(a, v, dtype):
    return (a.to(dtype)[..., None, :] @ v.to(dtype)).squeeze(-2)  # (B, H, d)


@mistake(
    "ch14.vhd",
    "VHD compares the head OUTPUTS o_h = a_h @ v_h (what W_O receives), not the attention maps a_h: "
    "two heads can attend alike and write different vectors, and the maps of the two branches "
    "need not even have the same length",
)
def vhd_of_attention_maps(a_img, v_img, a_txt, v_txt, metric="l2"):
    work = torch.float32 if a_img.dtype == torch.float16 else a_img.dtype
    a, b = a_img.to(work), a_txt.to(work)
    if metric == "l2":
        return (a - b).norm(dim=-1)
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)


@mistake(
    "ch14.vhd",
    "compute in float32 when the inputs are float16: the squared distance overflows float16 "
    "(largest value 65504) and the norm comes back infinite",
)
def vhd_in_float16(a_img, v_img, a_txt, v_txt, metric="l2"):
    z_img, z_txt = _outputs(a_img, v_img, a_img.dtype), _outputs(a_txt, v_txt, a_txt.dtype)
    if metric == "l2":
        return (
            (z_img - z_txt)
            .pow(2)
            .sum(-1)
            .sqrt()
            .to(torch.float32 if a_img.dtype == torch.float16 else a_img.dtype)
        )
    return 1 - torch.nn.functional.cosine_similarity(z_img, z_txt, dim=-1)


@mistake(
    "ch14.vhd",
    "the cosine metric is a distance, 1 - cos(o_img, o_txt): identical outputs must give 0, not 1",
)
def vhd_cosine_similarity(a_img, v_img, a_txt, v_txt, metric="l2"):
    work = torch.float32 if a_img.dtype == torch.float16 else a_img.dtype
    z_img, z_txt = _outputs(a_img, v_img, work), _outputs(a_txt, v_txt, work)
    if metric == "l2":
        return (z_img - z_txt).norm(dim=-1)
    return torch.nn.functional.cosine_similarity(z_img, z_txt, dim=-1)


def _select(v, c, *, global_stats=False, at_median=False, no_filter=False, population=False):
    w = v.double()
    if w.shape[-1] < 2:
        return torch.zeros(v.shape, dtype=torch.bool)
    if global_stats:
        mean, std, med = w.mean(), w.std(), w.flatten().median()
    else:
        mean = w.mean(-1, keepdim=True)
        std = w.std(-1, keepdim=True, correction=0 if population else 1)
        med = w.median(-1, keepdim=True).values
    above = w >= med if at_median else w > med
    return above if no_filter else above & (w <= mean + c * std)


@mistake(
    "ch14.select_vision_heads",
    "take the mean, std and median of EACH ROW (each layer's H heads), not of the whole tensor: "
    "one row with large divergences must not decide another row's selection",
)
def select_global_statistics(v, outlier_std=1.0):
    return _select(v, outlier_std, global_stats=True)


@mistake(
    "ch14.select_vision_heads",
    "the median test is strict, VHD > median: the head AT the median is not selected, and a row of "
    "equal divergences selects nothing",
)
def select_at_median(v, outlier_std=1.0):
    return _select(v, outlier_std, at_median=True)


@mistake(
    "ch14.select_vision_heads",
    "drop the surge outliers first: a head with VHD > mean + outlier_std·std is not selected",
)
def select_without_outlier_filter(v, outlier_std=1.0):
    return _select(v, outlier_std, no_filter=True)


@mistake(
    "ch14.select_vision_heads",
    "use the standard deviation with Bessel's correction (divide by H - 1, torch.std's default), not "
    "the population one",
)
def select_population_std(v, outlier_std=1.0):
    return _select(v, outlier_std, population=True)


def _mentioned(objects, n_obj):
    return [{o for o in row if o >= 0} for row in objects.tolist()]


@mistake(
    "ch14.chair_i",
    "an object named twice in one caption counts once: C_b is the SET of objects caption b mentions",
)
def chair_counts_repeats(objects, present):
    real = objects >= 0
    absent = real & ~present.gather(1, objects.clamp_min(0))
    return float(absent.sum()) / max(int(real.sum()), 1)


@mistake(
    "ch14.chair_i",
    "CHAIR_I pools all captions: total hallucinated objects over total mentioned objects, not the mean "
    "of the per-caption ratios",
)
def chair_mean_of_ratios(objects, present):
    ratios = []
    for b, mentioned in enumerate(_mentioned(objects, present.shape[1])):
        if mentioned:
            ratios.append(sum(1 for o in mentioned if not present[b, o]) / len(mentioned))
    return sum(ratios) / len(ratios) if ratios else 0.0


@mistake(
    "ch14.vhr_step",
    "select layer by layer: the VHD of layer l must be measured on the image branch that already carries "
    "the reinforcement of layers < l, not computed for all layers from one unmodified pass",
)
def vhr_one_shot(model, tokens_img, tokens_txt, alpha):
    return _vhr_reference(model, tokens_img, tokens_txt, alpha, one_shot=True)


@mistake(
    "ch14.vhr_step",
    "reinforce only the token being generated (the last position); the earlier positions keep the base "
    "model's head outputs",
)
def vhr_every_position(model, tokens_img, tokens_txt, alpha):
    return _vhr_reference(model, tokens_img, tokens_txt, alpha, every_position=True)


@mistake(
    "ch14.filter_experiment",
    "caption the COUNTERFACTUAL test images (object_captions(..., counterfactual=True)): on ordinary "
    "images each pair's partner is present, the co-occurrence prior is right and there is almost no "
    "hallucination to measure",
)
def filter_experiment_ordinary_images(seed):
    return _filter_chairs(seed, counterfactual=False)
