"""The event gate: per class, a logistic model of whether a run of windows is a real call, from a few
features of the run (its length, its confidences, how the members agree), fitted on grouped-CV
held-out events (``training.event_gate``). An event is stored when its probability reaches the
class's ``min_gate`` of the operating point.

Why: the hysteresis rules see one number per window and a length; the false events left are runs of
the confidence of real calls. What tells them apart is more than one number: a real call is heard
by both members, steadily, with little left for other calls or background. On grouped CV the gate
finds the same calls with fewer false events at the quiet points (docs/results.md, "The event gate").

Its own module, numpy only: the recorder runs it on every run of windows it closes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# What the gate reads of a run; the manifest names them, and a bundle naming others is refused.
FEATURES = ("log_windows", "max_confidence", "log_evidence", "least_member_mean", "most_member_mean",
            "all_members_agree", "other_call_probability", "background_probability", "second_confidence")


def run_features(run, background: int) -> np.ndarray:
    """``FEATURES`` of a run of ``WindowVote``s of one class (each with its members' probabilities)."""
    label = run[0].label
    confidence = np.array([v.confidence for v in run], float)
    probs = np.array([v.member_probs for v in run], float)          # [windows, members, classes]
    if probs.ndim != 3:
        raise ValueError("the event gate needs each window's member probabilities")
    mine = probs[:, :, label].mean(axis=0)                           # per member, over the run
    others = np.delete(probs, [label, background], axis=2)
    agree = np.mean([all(m == label for m in v.member_labels) for v in run])
    return np.array([math.log(len(run)), confidence.max(), math.log(max(confidence.sum(), 1e-6)), mine.min(),
                     mine.max(), agree, others.max(axis=2).mean() if others.shape[2] else 0.0,
                     probs[:, :, background].mean(), np.sort(confidence)[-min(2, len(run))]])


@dataclasses.dataclass(frozen=True)
class ClassGate:
    """One class's logistic model on standardised features."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def probability(self, features: np.ndarray) -> float:
        z = float(np.dot((features - np.array(self.mean)) / np.array(self.scale), self.coef)) + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclasses.dataclass(frozen=True)
class EventGate:
    """Per class label its ``ClassGate``; a class without one is not held by the gate."""

    classes: dict[str, ClassGate]

    def probability(self, label: str, run, background: int) -> float | None:
        gate = self.classes.get(label)
        return None if gate is None else gate.probability(run_features(run, background))

    def to_manifest(self) -> dict:
        return {"features": list(FEATURES),
                "classes": {label: {"mean": list(g.mean), "scale": list(g.scale), "coef": list(g.coef),
                                    "intercept": g.intercept} for label, g in self.classes.items()}}

    @classmethod
    def from_manifest(cls, entry: dict | None) -> "EventGate | None":
        """``operating_point.event_gate`` (absent in bundles made before the gate: None).
        ``ValueError`` names what is malformed."""
        if not entry:
            return None
        if list(entry.get("features", ())) != list(FEATURES):
            raise ValueError(f"event_gate reads features {entry.get('features')}, "
                             f"this edgemon computes {list(FEATURES)}")
        classes = {}
        for label, g in (entry.get("classes") or {}).items():
            try:
                gate = ClassGate(*(tuple(map(float, g[key])) for key in ("mean", "scale", "coef")),
                                 float(g["intercept"]))
            except KeyError as exc:
                raise ValueError(f"event_gate of {label!r} lacks {exc}") from None
            except (TypeError, ValueError) as exc:
                raise ValueError(f"event_gate of {label!r}: {exc}") from None
            numbers = gate.mean + gate.scale + gate.coef + (gate.intercept,)
            if not (len(gate.mean) == len(gate.scale) == len(gate.coef) == len(FEATURES)) \
                    or not all(s > 0 for s in gate.scale) or not all(map(math.isfinite, numbers)):
                raise ValueError(f"event_gate of {label!r} needs {len(FEATURES)} finite means, "
                                 "positive scales and coefficients")
            classes[str(label)] = gate
        return cls(classes)
