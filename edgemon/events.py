"""From per-window votes to decisions: thresholds, and one label for a whole clip."""

from __future__ import annotations

import numpy as np


def apply_thresholds(winner: np.ndarray, confidence: np.ndarray, labels: tuple[str, ...],
                     thresholds: dict[str, float], background: int) -> np.ndarray:
    """Windows whose voted class is below its confidence threshold become background."""
    minimum = np.array([thresholds.get(label, 0.0) for label in labels])
    return np.where(confidence >= minimum[winner], winner, background)


def clip_label(winner: np.ndarray, confidence: np.ndarray, background: int) -> int:
    """One label for a clip cut into windows: the non-background class voted in most windows
    (ties: highest summed confidence), or background when no window holds a call."""
    calls = winner != background
    if not calls.any():
        return background
    classes = np.unique(winner[calls])
    counts = np.array([(winner == c).sum() for c in classes])
    weight = np.array([confidence[winner == c].sum() for c in classes])
    best = np.lexsort((-weight, -counts))[0]
    return int(classes[best])
