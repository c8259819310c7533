"""IoU, Dice and the interval over seeds, on masks small enough to count by hand."""
import math

import numpy as np
import pytest

from samhw.metrics import dice, iou, mean_interval


def masks():
    truth = np.zeros((4, 6), bool)
    truth[1:3, 1:5] = True  # 8 px
    pred = np.zeros((4, 6), bool)
    pred[1:4, 3:6] = True  # 9 px, 4 of them on the truth
    return pred, truth


def test_iou_and_dice_by_hand():
    pred, truth = masks()
    assert iou(pred, truth) == pytest.approx(4 / 13)
    assert dice(pred, truth) == pytest.approx(8 / 17)
    assert iou(truth, truth) == 1.0 and dice(truth, truth) == 1.0
    assert iou(np.zeros_like(truth), truth) == 0.0 and dice(np.zeros_like(truth), truth) == 0.0


def test_both_empty_counts_as_perfect():
    empty = np.zeros((3, 3), bool)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0


def test_shape_mismatch_is_an_error_not_a_broadcast():
    pred, truth = masks()
    with pytest.raises(ValueError, match="does not match"):
        iou(pred.T, truth)
    with pytest.raises(ValueError, match="does not match"):
        dice(pred[:, :1], truth)


def test_mean_interval_is_student_t():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd 1 / sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    mean, lo, hi = mean_interval([0.5])
    assert mean == 0.5 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        mean_interval([])
