"""Per-class confidence thresholds that hold false detections on background under a stated rate.

The recorder turns a window into a detection of class c when the vote's winner is c and its
confidence reaches ``thresholds[c]`` (``edgemon.events.apply_thresholds``). Here the thresholds are
chosen on windows of background clips the models never trained on (the grouped-CV folds): the
rate budget is split evenly over the call classes, and each class gets the lowest threshold that
keeps its share, so no more calls are lost than the budget needs.
"""

from __future__ import annotations

import numpy as np


def choose_thresholds(winner: np.ndarray, confidence: np.ndarray, is_background: np.ndarray,
                      labels: tuple[str, ...], background: int, max_false_rate: float) -> dict[str, float]:
    """Thresholds per label from held-out windows: ``winner``/``confidence`` per window and
    ``is_background`` (the window comes from a background clip)."""
    n_background = int(is_background.sum())
    if n_background == 0:
        raise ValueError("no background windows to choose thresholds on")
    allowed = int(np.floor(max_false_rate / (len(labels) - 1) * n_background))
    thresholds = {labels[background]: 0.0}
    for c, label in enumerate(labels):
        if c == background:
            continue
        false = np.sort(confidence[is_background & (winner == c)])[::-1]  # most confident first
        if len(false) <= allowed:
            thresholds[label] = 0.0
        else:  # just above the (allowed+1)-th most confident false detection
            thresholds[label] = float(np.nextafter(np.float32(false[allowed]), np.float32(1)))
    return thresholds


def false_detection_rate(winner: np.ndarray, confidence: np.ndarray, is_background: np.ndarray,
                         labels: tuple[str, ...], background: int, thresholds: dict[str, float]) -> float:
    """Share of background windows that would be stored as a call at ``thresholds``."""
    minimum = np.array([thresholds.get(label, 0.0) for label in labels])
    detected = (winner != background) & (confidence >= minimum[winner])
    return float(detected[is_background].mean()) if is_background.any() else 0.0
