"""Confusion-matrix IoU on hand-made cases, and the seed statistics of the gain."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.metrics.segmentation import (
    confusion_matrix,
    iou_per_class,
    mean_iou,
    mean_std_ci95,
    pixel_accuracy,
)


def test_perfect_prediction_scores_one():
    target = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    cm = confusion_matrix(target, target, 3, 255)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    assert np.array_equal(cm, np.diag([2, 2, 2]))
    assert mean_iou(cm) == 1.0 and pixel_accuracy(cm) == 1.0


def test_swapped_classes_score_zero_and_rows_are_truth():
    target = np.array([0, 0, 1, 1, 1])
    pred = np.array([1, 1, 0, 0, 0])
    cm = confusion_matrix(pred, target, 2, 255)
    assert cm[0, 1] == 2 and cm[1, 0] == 3  # rows: true class, columns: predicted
    assert np.array_equal(iou_per_class(cm), [0.0, 0.0])
    assert mean_iou(cm) == 0.0 and pixel_accuracy(cm) == 0.0


def test_partial_overlap_matches_hand_count():
    target = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])
    iou = iou_per_class(confusion_matrix(pred, target, 3, 255))
    # class 0: tp 2, fp 0, fn 1 → 2/3; class 1: tp 2, fp 2, fn 0 → 1/2; class 2: 0/1
    assert iou == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert mean_iou(confusion_matrix(pred, target, 3, 255)) == pytest.approx((2 / 3 + 1 / 2) / 3)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 0])
    cm = confusion_matrix(pred, target, 4, 255)  # classes 2 and 3 appear nowhere
    iou = iou_per_class(cm)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_only_predicted_counts_as_zero():
    target = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 2])  # a false positive of a class absent from the target
    iou = iou_per_class(confusion_matrix(pred, target, 3, 255))
    assert iou[2] == 0.0 and np.isnan(iou[1])
    assert mean_iou(confusion_matrix(pred, target, 3, 255)) == pytest.approx((3 / 4 + 0) / 2)


def test_ignore_pixels_count_nowhere():
    target = np.array([0, 255, 255, 1])
    pred = np.array([0, 1, 0, 1])  # wrong on the void pixels only
    cm = confusion_matrix(pred, target, 2, 255)
    assert cm.sum() == 2
    assert mean_iou(cm) == 1.0 and pixel_accuracy(cm) == 1.0


def test_bad_ids_and_shapes_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 3, 255)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3, 255)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3, 255)


def test_mean_std_ci95_is_a_t_interval():
    mean, std, lo, hi = mean_std_ci95([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2)
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))
    m1, s1, lo1, hi1 = mean_std_ci95([0.5])
    assert m1 == 0.5 and math.isnan(s1) and math.isnan(lo1) and math.isnan(hi1)
