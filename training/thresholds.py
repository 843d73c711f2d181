"""Per-class confidence thresholds that hold false detections on background under a stated rate,
and what the recorder would store at them.

The recorder turns a window into a detection of class c when the vote's winner is c and its
confidence reaches ``thresholds[c]`` (``edgemon.analysis.decisions.apply_thresholds``). Here the thresholds are
chosen on windows of background clips the models never trained on (the grouped-CV folds): the
rate budget is split evenly over the call classes, and each class gets the lowest threshold that
keeps its share, so no more calls are lost than the budget needs.
"""

from __future__ import annotations

import numpy as np

from edgemon.analysis.decisions import apply_thresholds, clip_label
from training.data import BACKGROUND
from training.evaluate import confusion, per_class_recall, uar


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


def thresholds_for(windows: dict[str, np.ndarray], targets: np.ndarray, labels: tuple[str, ...],
                   max_false_rate: float) -> dict[str, float]:
    """``choose_thresholds`` on the windows of clips whose true labels are ``targets``."""
    background = labels.index(BACKGROUND)
    return choose_thresholds(windows["winner"], windows["confidence"], targets[windows["clip"]] == background,
                             labels, background, max_false_rate)


def clip_labels(winner: np.ndarray, confidence: np.ndarray, clip: np.ndarray, n_clips: int,
                background: int) -> np.ndarray:
    """One label per clip from its windows (``edgemon.analysis.decisions.clip_label``)."""
    return np.array([clip_label(winner[clip == i], confidence[clip == i], background) for i in range(n_clips)])


def field_scores(windows: dict[str, np.ndarray], targets: np.ndarray, labels: tuple[str, ...],
                 thresholds: dict[str, float]) -> dict:
    """What the recorder would store at ``thresholds``: clip UAR from the windows (one label per
    clip) and the share of background windows stored as a call."""
    background = labels.index(BACKGROUND)
    winner = apply_thresholds(windows["winner"], windows["confidence"], labels, thresholds, background)
    per_clip = clip_labels(winner, windows["confidence"], windows["clip"], len(targets), background)
    is_background = targets[windows["clip"]] == background
    rate = false_detection_rate(windows["winner"], windows["confidence"], is_background, labels,
                                background, thresholds)
    return {"uar": uar(targets, per_clip, len(labels)),
            "recall": dict(zip(labels, map(float, per_class_recall(confusion(targets, per_clip, len(labels)))))),
            "background_false_rate": rate, "background_windows": int(is_background.sum())}


def threshold_tradeoff(windows: dict[str, np.ndarray], targets: np.ndarray, labels: tuple[str, ...],
                       rates=(0.01, 0.02, 0.05, 0.1, 0.2)) -> list[dict]:
    """Clip UAR and background false rate at thresholds chosen for each allowed rate: the price of
    field precision, to choose ``--max-false-rate`` with."""
    rows = []
    for rate in rates:
        scores = field_scores(windows, targets, labels, thresholds_for(windows, targets, labels, rate))
        rows.append({"max_false_rate": rate, "uar": scores["uar"],
                     "background_false_rate": scores["background_false_rate"]})
    return rows


def field_summary(windows: dict[str, np.ndarray], targets: np.ndarray, labels: tuple[str, ...],
                  max_false_rate: float) -> dict:
    """Thresholds for ``max_false_rate`` chosen on held-out windows, what the recorder would store
    with and without them, and the whole trade-off: what cv and cv-ensemble report."""
    thresholds = thresholds_for(windows, targets, labels, max_false_rate)
    return {"max_false_rate": max_false_rate, "thresholds": thresholds,
            "windows_untuned": field_scores(windows, targets, labels, {}),
            "windows_at_thresholds": field_scores(windows, targets, labels, thresholds),
            # Said beside it: the figure flatters, and read alone it was taken for a held-out one.
            "windows_at_thresholds_note": "thresholds chosen on these same windows (in-sample): cv-ensemble's "
                                          "uar_mean, at thresholds chosen on the other folds, is the held-out figure",
            "tradeoff": threshold_tradeoff(windows, targets, labels)}
