"""Overlap metrics and the intervals the study reports. numpy and scipy only."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["iou", "dice", "scores_from_counts", "mean_interval"]


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {truth.shape}")
    return pred.astype(bool), truth.astype(bool)


def scores_from_counts(intersection: int, area_pred: int, area_true: int) -> tuple[float, float]:
    """(IoU, Dice) from pixel counts; both 1.0 when both masks are empty."""
    union = area_pred + area_true - intersection
    total = area_pred + area_true
    return (1.0 if union == 0 else intersection / union), (1.0 if total == 0 else 2.0 * intersection / total)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    p, t = _pair(pred, truth)
    return np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks; 1.0 when both are empty."""
    return scores_from_counts(*_counts(pred, truth))[0]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of two binary masks; 1.0 when both are empty."""
    return scores_from_counts(*_counts(pred, truth))[1]


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval ``(mean, low, high)`` of independent replicates.

    With one value the interval is undefined and returned as NaN on both sides.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half
