"""Evaluation metrics that several chapters share."""

from __future__ import annotations

from torch import Tensor

__all__ = ["roc_auc"]


def roc_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count ½.

    Args:
        scores: (B,) float; labels: (B,) with 1 for a positive and 0 for a negative (both present).
    """
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        raise ValueError("roc_auc needs at least one positive and one negative")
    # AUC = mean over (positive, negative) pairs of 1[s_+ > s_-] + ½·1[s_+ = s_-]
    greater = (pos[:, None] > neg[None]).double().mean() + 0.5 * (pos[:, None] == neg[None]).double().mean()
    return float(greater)
