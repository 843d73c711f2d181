"""From per-window votes to decisions: thresholds, the operating point (thresholds and the evidence
an event needs), the calibration of an event's confidence, and one label for a whole clip."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from edgemon.analysis.event_gate import EventGate


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
    as in bundles made before that rule. With an event ``gate``, a run of a class the gate models
    is stored only when the gate's probability that it is a call reaches ``min_gate``; a gate at
    level 0 for every class stores every run and only scores it (what a calibration may read:
    ``decides_by_gate``)."""

    thresholds: dict[str, float]
    min_windows: dict[str, int] = dataclasses.field(default_factory=dict)
    min_evidence: dict[str, float] = dataclasses.field(default_factory=dict)
    open_threshold: dict[str, float] = dataclasses.field(default_factory=dict)
    min_gate: dict[str, float] = dataclasses.field(default_factory=dict)
    gate: EventGate | None = None

    def __post_init__(self):
        # A rule entry that holds nothing (its lowest value: one window, no evidence, no opening
        # level) is the same as none: drop it, so that two points that store the same events compare equal.
        for name, _, idle, _ in RULES:
            object.__setattr__(self, name, {k: v for k, v in getattr(self, name).items() if v > idle})

    def never_stored(self, labels) -> list[str]:
        """The classes of ``labels`` this point can never store: a threshold no vote reaches (a
        mean of softmax outputs stays under 1) or an event gate level no probability reaches."""
        return [label for label in labels
                if self.thresholds.get(label, 0.0) >= 1.0 or self.min_gate.get(label, 0.0) > 1.0]

    @property
    def decides_by_gate(self) -> bool:
        """Whether the event gate drops any run: a level above 0 for some class. A gate at level 0
        everywhere keeps what the other rules keep; its probability is the event's calibrated
        confidence (``training.calibration``'s run-feature fit)."""
        return self.gate is not None and any(level > 0 for level in self.min_gate.values())

    def windows_needed(self, label: str) -> int:
        return max(1, int(self.min_windows.get(label, 1)))

    def keeps(self, label: str, confidences: list[float], gate: float | None = None, whole: bool = False) -> bool:
        """Whether a run of windows of ``label`` with these confidences (in [0, 1]) is stored;
        ``gate`` its event gate probability (None: the class is not gated). ``whole``: the run is
        every window of its recording, which may hold fewer windows than the class needs (a
        triggered or cut recording of 6 s has two): the run stands for the windows the recording
        cannot hold, and its summed confidence is asked for that share of ``min_evidence``."""
        needed = self.windows_needed(label)
        share = min(1.0, len(confidences) / needed) if whole else 1.0
        return ((len(confidences) >= needed or whole)
                # a small tolerance: the chooser sums the stored (rounded) window confidences
                and sum(confidences) >= self.min_evidence.get(label, 0.0) * share - 1e-9
                and max(confidences, default=0.0) >= self.open_threshold.get(label, 0.0)
                and (gate is None or gate >= self.min_gate.get(label, 0.0)))

    @classmethod
    def from_manifest(cls, manifest: dict, thresholds: dict[str, float]) -> "OperatingPoint":
        """The manifest's ``operating_point`` when it has one, else the bundle's plain
        ``thresholds`` with single-window events (bundles made before operating points); its
        ``min_evidence``, ``open_threshold`` and the event gate are optional (points made before them)."""
        point = manifest.get("operating_point")
        if not point:
            return cls(dict(thresholds))
        gate, levels = EventGate.from_manifest(point.get("event_gate")), _per_class(point, "min_gate", float)
        _check_gate_levels(gate, levels)
        rules = {key: _per_class(point, key, kind) for key, kind, _, _ in RULES}
        _check_rules(rules)
        return cls(_per_class(point, "thresholds", float, thresholds), rules["min_windows"],
                   rules["min_evidence"], rules["open_threshold"], levels, gate)


# The evidence rules of a point: name, type of its values, lowest value (which holds nothing), highest.
RULES = (("min_windows", int, 1, None), ("min_evidence", float, 0.0, None), ("open_threshold", float, 0.0, 1.0))


def _check_rules(rules: dict[str, dict]) -> None:
    """Each rule's values in its range: an event needs at least one window, no negative evidence,
    an opening level within [0, 1]; NaN in none (it would silently hold nothing, or everything)."""
    for key, _, low, high in RULES:
        for label, value in rules[key].items():
            # math.isfinite, not np.isfinite: an int past numpy's (1e300 windows) is no error here
            if not (math.isfinite(value) and value >= low and (high is None or value <= high)):
                bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
                raise ValueError(f"operating_point.{key} of {label!r} must be a finite number {bounds}, got {value}")


def _check_gate_levels(gate: EventGate | None, levels: dict[str, float]) -> None:
    """An event gate comes with a level for each of its classes, and levels only with a gate."""
    if gate is None and levels:
        raise ValueError("operating_point.min_gate is given without an event_gate")
    if gate is not None and set(levels) != set(gate.classes):
        raise ValueError(f"operating_point.min_gate must give a level for each class of the event_gate "
                         f"({sorted(gate.classes)}), got {sorted(levels)}")
    if not all(np.isfinite(v) and v >= 0 for v in levels.values()):
        raise ValueError("operating_point.min_gate levels must be finite and not negative")


def check_point(point: OperatingPoint, calibration: "Calibration", labels) -> None:
    """What the point and calibration hold together: an event gate only for the bundle's
    ``labels``, and a gate for every class a calibration that reads the gate maps (else the
    recorder would read another number on those curves)."""
    unknown = sorted(set(point.gate.classes if point.gate else ()) - set(labels))
    if unknown:
        raise ValueError(f"operating_point.event_gate has classes the bundle lacks: {unknown}")
    if calibration.input == "gate" and calibration.curves:
        missing = sorted(set(calibration.curves) - set(point.gate.classes if point.gate else ()))
        if missing:
            raise ValueError(f"calibration_input gate, but the event gate has no model for {missing}")


def _per_class(point: dict, key: str, kind, default: dict | None = None) -> dict:
    """``point[key]`` as ``{label: kind(value)}``; ``ValueError`` naming the key when it is not one."""
    values = point.get(key, {} if default is None else default)
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(f"operating_point.{key} must map labels to numbers, got {type(values).__name__}")
    out = {}
    for k, v in values.items():
        try:
            out[str(k)] = kind(v)
        except (TypeError, ValueError, OverflowError) as exc:   # int(inf): OverflowError
            raise ValueError(f"operating_point.{key} of {str(k)!r}: {exc}") from None
    return out


CALIBRATION_INPUTS = ("score", "evidence", "gate")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per-class maps from an event's raw score to the probability that the event is right,
    piecewise-linear through ``(x, y)`` points; a label without a map keeps its raw score (bundles
    made before calibration). ``input`` is what the maps read: ``score``, the event's highest
    window confidence, ``evidence``, the sum of its window confidences (longer, steadier events
    weigh more), or ``gate``, the event gate's probability (points with a gate)."""

    curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = dataclasses.field(default_factory=dict)
    input: str = "score"

    def __call__(self, label: str, score: float, evidence: float | None = None, gate: float | None = None) -> float:
        curve = self.curves.get(label)
        if curve is None:
            return float(score)
        x = {"score": score, "evidence": evidence, "gate": gate}[self.input]
        return float(np.interp(score if x is None else x, curve[0], curve[1]))

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Calibration":
        """``manifest["calibration"]``: ``{label: {"x": [...], "y": [...]}}``, x increasing,
        y in [0, 1], read from ``manifest["calibration_input"]`` (default ``score``); both absent
        in older bundles. ``ValueError`` names what is malformed."""
        curves = {}
        for label, curve in (manifest.get("calibration") or {}).items():
            x, y = tuple(map(float, curve["x"])), tuple(map(float, curve["y"]))
            # NaN passes every comparison's "not": x is checked finite (a NaN there loaded, and
            # stored NaN confidences, a review).
            if not x or len(x) != len(y) or not all(math.isfinite(v) for v in x) \
                    or any(b < a for a, b in zip(x, x[1:])) or not all(0.0 <= v <= 1.0 for v in y):
                raise ValueError(f"calibration of {label!r} needs increasing finite x and y in [0, 1] of one length")
            curves[label] = (x, y)
        source = manifest.get("calibration_input", "score")
        if source not in CALIBRATION_INPUTS:
            raise ValueError(f"calibration_input {source!r} is not one of {CALIBRATION_INPUTS}")
        return cls(curves, source)
