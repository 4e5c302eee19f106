"""Segmentation scores from a confusion matrix: IoU per class, mIoU, pixel accuracy.

Rows of the confusion matrix are the true class, columns the predicted one. Pixels whose target
is `ignore_index` are left out. A class absent from both target and prediction has IoU nan and
does not count in the mean (the Cityscapes / OASIS convention).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """int64 [C, C]: cm[t, p] = pixels of true class t predicted as p."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    target = np.asarray(target).reshape(-1).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} pixels, target {target.size}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.size and (target.max() >= num_classes or target.min() < 0):
        raise ValueError(f"target holds ids outside 0..{num_classes - 1} and {ignore_index}")
    if pred.size and (pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"pred holds ids outside 0..{num_classes - 1}")
    cm = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """float64 [C]: TP / (TP + FP + FN); nan for a class absent from target and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in target or prediction (nan if none)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Share of non-void pixels predicted right (nan if there are none)."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def mean_std_ci95(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, 95% t-interval low, high) of a few seed results; nan spread for n < 2."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return mean, std, mean - half, mean + half
