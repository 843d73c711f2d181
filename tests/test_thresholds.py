"""Per-class thresholds from held-out background windows, on constructed cases."""

import numpy as np
import pytest

from training.thresholds import choose_thresholds, false_detection_rate

LABELS = ("background", "a", "b")


def test_thresholds_hold_the_rate_and_cost_no_more_than_needed():
    rng = np.random.default_rng(0)
    n = 1000
    winner = rng.choice(3, size=n, p=[0.7, 0.2, 0.1])
    confidence = rng.uniform(0.34, 1.0, size=n).astype(np.float32)
    is_background = np.ones(n, bool)
    for rate in (0.0, 0.01, 0.05, 0.2):
        t = choose_thresholds(winner, confidence, is_background, LABELS, 0, rate)
        assert t["background"] == 0.0
        assert false_detection_rate(winner, confidence, is_background, LABELS, 0, t) <= rate
        for c, label in ((1, "a"), (2, "b")):  # lowering any threshold a notch breaks the class share
            false = confidence[(winner == c)]
            allowed = int(np.floor(rate / 2 * n))
            assert (false >= t[label]).sum() <= allowed
            if t[label] > 0:
                assert (false >= np.nextafter(np.float32(t[label]), np.float32(0))).sum() > allowed


def test_a_class_already_under_its_share_keeps_threshold_zero():
    winner = np.array([0] * 98 + [1, 2])
    confidence = np.full(100, 0.9, np.float32)
    t = choose_thresholds(winner, confidence, np.ones(100, bool), LABELS, 0, 0.04)
    assert t == {"background": 0.0, "a": 0.0, "b": 0.0}


def test_only_background_windows_count():
    winner = np.array([1, 1, 1, 1])
    confidence = np.array([0.5, 0.6, 0.7, 0.8], np.float32)
    is_background = np.array([True, True, False, False])  # the call windows must not raise a
    t = choose_thresholds(winner, confidence, is_background, LABELS, 0, 0.0)
    assert 0.6 < t["a"] < 0.7
    assert false_detection_rate(winner, confidence, is_background, LABELS, 0, t) == 0.0


def test_no_background_windows_is_an_error():
    with pytest.raises(ValueError, match="no background windows"):
        choose_thresholds(np.array([1]), np.array([0.9]), np.array([False]), LABELS, 0, 0.01)
