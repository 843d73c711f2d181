"""From per-window votes to decisions: thresholds, the operating point (thresholds and the evidence
an event needs), the calibration of an event's confidence, and one label for a whole clip."""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """What turns window votes into stored events, per class: the minimum window confidence
    (``thresholds``: a window below it is background, and ends a run), and the evidence a run of
    windows needs to be stored — at least ``min_windows`` windows, a summed window confidence of
    at least ``min_evidence``, and at least one window at ``open_threshold`` or above (hysteresis:
    an event is opened by a confident window and extended by windows over the lower threshold).
    A class absent from a rule's dict is not held by it (1 window, no evidence, no opening level),
    as in bundles made before that rule."""

    thresholds: dict[str, float]
    min_windows: dict[str, int] = dataclasses.field(default_factory=dict)
    min_evidence: dict[str, float] = dataclasses.field(default_factory=dict)
    open_threshold: dict[str, float] = dataclasses.field(default_factory=dict)

    def windows_needed(self, label: str) -> int:
        return max(1, int(self.min_windows.get(label, 1)))

    def keeps(self, label: str, confidences: list[float]) -> bool:
        """Whether a run of windows of ``label`` with these confidences (in [0, 1]) is stored."""
        return (len(confidences) >= self.windows_needed(label)
                # a small tolerance: the chooser sums the stored (rounded) window confidences
                and sum(confidences) >= self.min_evidence.get(label, 0.0) - 1e-9
                and max(confidences, default=0.0) >= self.open_threshold.get(label, 0.0))

    @classmethod
    def from_manifest(cls, manifest: dict, thresholds: dict[str, float]) -> "OperatingPoint":
        """The manifest's ``operating_point`` when it has one, else the bundle's plain
        ``thresholds`` with single-window events (bundles made before operating points); its
        ``min_evidence`` and ``open_threshold`` are optional (points made before them)."""
        point = manifest.get("operating_point")
        if not point:
            return cls(dict(thresholds))
        return cls(_per_class(point, "thresholds", float, thresholds), _per_class(point, "min_windows", int),
                   _per_class(point, "min_evidence", float), _per_class(point, "open_threshold", float))


def _per_class(point: dict, key: str, kind, default: dict | None = None) -> dict:
    """``point[key]`` as ``{label: kind(value)}``; ``ValueError`` naming the key when it is not one."""
    values = point.get(key, {} if default is None else default)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"operating_point.{key} must map labels to numbers, got {type(values).__name__}")
    return {str(k): kind(v) for k, v in values.items()}


CALIBRATION_INPUTS = ("score", "evidence")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per-class maps from an event's raw score to the probability that the event is right,
    piecewise-linear through ``(x, y)`` points; a label without a map keeps its raw score (bundles
    made before calibration). ``input`` is what the maps read: ``score``, the event's highest
    window confidence, or ``evidence``, the sum of its window confidences (longer, steadier events
    weigh more)."""

    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = dataclasses.field(default_factory=dict)
    input: str = "score"

    def __call__(self, label: str, score: float, evidence: float | None = None) -> float:
        curve = self.curves.get(label)
        if curve is None:
            return float(score)
        x = score if self.input == "score" or evidence is None else evidence
        return float(np.interp(x, curve[0], curve[1]))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Calibration":
        """``manifest["calibration"]``: ``{label: {"x": [...], "y": [...]}}``, x increasing,
        y in [0, 1], read from ``manifest["calibration_input"]`` (default ``score``); both absent
        in older bundles. ``ValueError`` names what is malformed."""
        curves = {}
        for label, curve in (manifest.get("calibration") or {}).items():
            x, y = tuple(map(float, curve["x"])), tuple(map(float, curve["y"]))
            if not x or len(x) != len(y) or any(b < a for a, b in zip(x, x[1:])) \
                    or not all(0.0 <= v <= 1.0 for v in y):
                raise ValueError(f"calibration of {label!r} needs increasing x and y in [0, 1] of one length")
            curves[label] = (x, y)
        source = manifest.get("calibration_input", "score")
        if source not in CALIBRATION_INPUTS:
            raise ValueError(f"calibration_input {source!r} is not one of {CALIBRATION_INPUTS}")
        return cls(curves, source)
