"""Confidence from more of an event than one number: a logistic model of whether an event is right
on its run's features (``edgemon.analysis.event_gate.FEATURES``: length, confidences, how the
members agree, what they leave for background and other calls), fitted on the operating point's
own held-out events.

Why: the per-class curves read one number (the score or the evidence); on the default's grouped
CV the best of them reached an expected calibration error of 0.12. The run's features tell more,
but a model per class on 64-818 events overfits its rare classes; one model shared by the
classes, with an intercept per class (each class's own share of right events), is steadier.

On the recorder it rides as an event gate at level 0 for every class (it drops nothing, so the
point stores what it stored without it) and the calibration reads its probability through an
identity curve (``calibration_input: gate``): the recorder needs nothing new.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from edgemon.analysis.event_gate import ClassGate, EventGate

MIN_EVENTS = 30           # held-out events needed in all (and some right and some false) to fit at all
STRENGTHS = (0.03, 0.1, 0.3)   # L2 ``C`` tried; the chooser (``training.calibration._rank``) picks one
IDENTITY = {"x": [0.0, 1.0], "y": [0.0, 1.0]}


def usable(right: np.ndarray) -> bool:
    return len(right) >= MIN_EVENTS and 0 < right.sum() < len(right)


def skipped(have_features: bool, gated: bool, right: np.ndarray) -> str | None:
    """Why the run-feature fit is not tried on these events (None: it is), for the report."""
    if not have_features:
        return "the votes hold no member probabilities, which the run's features need"
    if gated:
        return "the point's event gate decides: its own probability is calibrated instead"
    if not usable(right):
        return f"{len(right)} events, {int(right.sum())} right: it needs {MIN_EVENTS}, some right and some false"
    return None


def fit_run_gate(features: np.ndarray, label: np.ndarray, right: np.ndarray, labels: tuple[str, ...],
                 background: int, C: float) -> EventGate:
    """One logistic regression of ``right`` on the standardised ``features [N, F]`` and a one-hot of
    the class, written as a ``ClassGate`` per call class (the shared mean, scale and coefficients;
    the class's own intercept). A class without events here takes the shared intercept."""
    calls = [c for c in range(len(labels)) if c != background]
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    onehot = (label[:, None] == np.array(calls)[None, :]).astype(float)
    model = LogisticRegression(C=C, max_iter=5000).fit(np.hstack([(features - mean) / scale, onehot]),
                                                       right.astype(int))
    n = features.shape[1]
    coef, intercept = model.coef_[0], float(model.intercept_[0])
    return EventGate({labels[c]: ClassGate(tuple(map(float, mean)), tuple(map(float, scale)),
                                           tuple(map(float, coef[:n])), intercept + float(coef[n + i]))
                      for i, c in enumerate(calls)})


def probabilities(gate: EventGate, features: np.ndarray, label: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """Each event's probability as the recorder stores it (the gate's own arithmetic, 4 decimals)."""
    return np.array([round(gate.classes[labels[c]].probability(x), 4) for c, x in zip(label, features)], float)


def cross_fitted(features: np.ndarray, label: np.ndarray, right: np.ndarray, fold: np.ndarray,
                 labels: tuple[str, ...], background: int, C: float) -> np.ndarray | None:
    """Each fold's events' probabilities from a model fitted on the other folds only; None when a
    fold's others hold too few events to fit on."""
    out = np.zeros(len(label))
    for f in np.unique(fold):
        mine = fold == f
        if not usable(right[~mine]):
            return None
        gate = fit_run_gate(features[~mine], label[~mine], right[~mine], labels, background, C)
        out[mine] = probabilities(gate, features[mine], label[mine], labels)
    return out


def describe(C: float, events: int, own: int) -> str:
    """How a class's confidence is made; a class without events of its own says it takes the shared intercept."""
    mine = f"{own} of them its own" if own else "none of them its own: the shared intercept"
    return (f"run-feature logistic fit on {events} events ({mine}), shared by the classes with an intercept "
            f"each (L2 C {C:g}), read through the event gate at level 0")
