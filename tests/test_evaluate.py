"""UAR, per-class recall and confusion matrices (training/evaluate.py, on scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import confusion, metrics, per_class_recall, uar


def test_uar_averages_recall_over_the_classes_present():
    targets, predictions = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 3])
    # recalls 0.5, 1.0, 0.0; class 3 has no examples (only a wrong prediction) and is left out
    assert uar(targets, predictions, 4) == pytest.approx(0.5)
    matrix = confusion(targets, predictions, 4)
    assert matrix.dtype == np.int64 and matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    m = metrics(targets, predictions, ("a", "b", "c", "d"))
    assert m["recall"] == {"a": 0.5, "b": 1.0, "c": 0.0, "d": None}
    assert m["uar"] == pytest.approx(0.5) and m["confusion"] == matrix.tolist() and m["n"] == 5


def test_uar_and_confusion_agree_with_counting_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(20):
        targets, predictions = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
        counted = np.zeros((5, 5), dtype=np.int64)
        np.add.at(counted, (targets, predictions), 1)
        assert np.array_equal(confusion(targets, predictions, 5), counted)
        assert uar(targets, predictions, 5) == pytest.approx(np.nanmean(per_class_recall(counted)))


def test_a_class_index_out_of_range_is_an_error_not_a_dropped_example():
    with pytest.raises(ValueError, match="0..2"):
        confusion(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="0..2"):
        uar(np.array([0, 1]), np.array([0, 5]), 3)
