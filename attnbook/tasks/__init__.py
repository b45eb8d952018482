"""Synthetic tasks: every data set in the book is generated, seeded, in a few milliseconds."""

from .associative_recall import RecallBatch, associative_recall
from .drifting_layers import DriftBatch, drifting_layers
from .grating_squares import GratingSquares, grating_squares
from .linear_regression import RegressionPrompts, linear_regression_prompts
from .markov_period import MarkovPeriodBatch, markov_period
from .mixed_lookup import MixedLookupBatch, mixed_lookup
from .object_captions import CaptionBatch, CaptionVocab, object_captions
from .permutation_invariant import SetRegression, permutation_invariant_task
from .radiographs import Radiographs, radiographs
from .shape_patches import SHAPE_NAMES, ShapePatches, shape_patches
from .shortcut_bags import MILBags, shortcut_bags, shortcut_patterns
from .spoken_symbols import SpokenBatch, spoken_symbols
from .task_prompts import TASK_NAMES, TaskPrompts, task_prompts
from .template_images import TEMPLATE_NAMES, TemplateImages, nearest_prototype, template_images
from .two_key_recall import TwoKeyBatch, two_key_recall
from .typed_copy import TypedCopyBatch, typed_copy

__all__ = [
    "RecallBatch",
    "associative_recall",  # ch. 00
    "TwoKeyBatch",
    "two_key_recall",  # ch. 00
    "SetRegression",
    "permutation_invariant_task",  # ch. 01
    "RegressionPrompts",
    "linear_regression_prompts",  # ch. 02
    "DriftBatch",
    "drifting_layers",  # ch. 03
    "MixedLookupBatch",
    "mixed_lookup",  # ch. 04
    "MarkovPeriodBatch",
    "markov_period",  # ch. 05
    "GratingSquares",
    "grating_squares",  # ch. 06
    "TypedCopyBatch",
    "typed_copy",  # ch. 07
    "MILBags",
    "shortcut_patterns",
    "shortcut_bags",  # ch. 08
    "TASK_NAMES",
    "TaskPrompts",
    "task_prompts",  # ch. 10
    "CaptionBatch",
    "CaptionVocab",
    "object_captions",  # ch. 13, 14
    "Radiographs",
    "radiographs",  # ch. 09
    "SHAPE_NAMES",
    "ShapePatches",
    "shape_patches",  # ch. 11
    "SpokenBatch",
    "spoken_symbols",  # ch. 15
    "TEMPLATE_NAMES",
    "TemplateImages",
    "nearest_prototype",
    "template_images",  # ch. 16
]
