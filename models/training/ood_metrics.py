"""Detection figures of an out-of-distribution score (higher = more unusual): pure functions.

Convention of the OOD literature (Hendrycks & Gimpel 2017; Liang et al. 2018): AUROC of
telling OOD images (positives) from in-distribution ones, and the false-positive rate at
95 % true positives, where "positive" there means *accepted as in distribution*: the
share of OOD images still accepted at the threshold that keeps 95 % of in-distribution
images.
"""

from __future__ import annotations

import numpy as np


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """P(score of a random OOD image > score of a random in-distribution one); ties 1/2."""
    if not len(in_scores) or not len(out_scores):
        raise ValueError("AUROC needs in-distribution and OOD scores")
    scores = np.concatenate([in_scores, out_scores]).astype(np.float64)
    # Mid-ranks, so tied scores (e.g. identical blank images) count one half each way.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mid[inverse]
    n_out = len(out_scores)
    u = ranks[len(in_scores):].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (len(in_scores) * n_out))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of OOD images scored at or below the ``tpr`` quantile of in-distribution scores
    (the threshold that accepts ``tpr`` of the in-distribution images)."""
    if not len(in_scores) or not len(out_scores):
        raise ValueError("FPR needs in-distribution and OOD scores")
    threshold = np.quantile(np.asarray(in_scores, np.float64), tpr)
    return float(np.mean(np.asarray(out_scores) <= threshold))


def flagged(scores: np.ndarray, threshold: float) -> float:
    """Share of images above ``threshold`` (flagged out of distribution)."""
    return float(np.mean(np.asarray(scores) > threshold)) if len(scores) else 0.0
