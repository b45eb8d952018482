"""Chapter 02: grade the target (solutions by default) and check that every declared mistake fails."""

import torch

from attnbook.grading import run_task
from tests.exercises.grading import chapter_tests

test_task, test_mistake = chapter_tests("02")


def test_centring_y_instead_of_x_is_the_same_predictor():
    """Σ_ℓ (y_ℓ - ȳ) x_ℓ = Σ_ℓ y_ℓ (x_ℓ - x̄): centring the labels is NOT a mistake, so it must pass."""

    def centre_labels(Z, zq, eta):
        x, y, xq = Z[..., :-1], Z[..., -1], zq[..., :-1]
        return eta * torch.einsum("bl,bld,bd->b", y - y.mean(1, keepdim=True), x, xq) / x.shape[1]

    assert run_task("ch02.debiased_gd", centre_labels).passed
