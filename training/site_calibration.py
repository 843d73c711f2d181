"""Confidence recalibrated to a site from its reviews (``edgemon-train adapt``).

A bundle's calibration is fitted on grouped-CV held-out events pooled over recorders, but how
often a detection is right depends on the site: at the shipped point the share of right events
ranges from 0.19 to 0.68 between CV folds. Reviews say it for this site. The site's map is the
parent's, shifted: ``P(right) = sigmoid(a + b * logit(parent confidence))``, one intercept and one
slope for every class (a handful of wrong reviews cannot fit a curve per class), penalised toward
the parent's map (a = 0, b = 1) so that a few reviews move it a little. It is written as the
same piecewise-linear curves per class (``edgemon.analysis.decisions.Calibration``), on the
parent's input, so the recorder needs nothing new.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgemon.analysis.decisions import Calibration
from training.calibration import reliability

PENALTY = 2.0        # on (a, b - 1): as strong as a few reviews, so a handful barely moves the map
MIN_SLOPE = 0.05     # the map stays increasing in the parent's confidence
MIN_DETECTIONS = 10  # kept detections needed to fit a shift at all
EPS = 1e-4
GRID = 33            # points of a curve written for a class the parent leaves uncalibrated


@dataclasses.dataclass(frozen=True)
class Scored:
    """Reviewed detections as a candidate decides them: label, score and evidence (``decide_scored``)
    and the class each truly is, ``[D]`` each; ``gate`` their event gate probability (a gated point)."""

    label: np.ndarray
    score: np.ndarray
    evidence: np.ndarray
    target: np.ndarray
    gate: np.ndarray | None = None

    def kept(self, background: int) -> np.ndarray:
        return self.label != background

    def right(self) -> np.ndarray:
        return self.label == self.target


@dataclasses.dataclass(frozen=True)
class Shift:
    """``sigmoid(a + b * logit(p))`` of the parent's confidence ``p``, fitted on ``detections``."""

    a: float = 0.0
    b: float = 1.0
    detections: int = 0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a + self.b * _logit(p))


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _sigmoid(z) -> np.ndarray:
    # clipped: the fit's search tries steep shifts, where exp overflowed (a warning in every adapt run)
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -700.0, 700.0)))


def confidences(calibration: Calibration, labels: tuple[str, ...], scored: Scored, keep: np.ndarray) -> np.ndarray:
    """What the recorder stores as confidence for the detections ``keep`` selects."""
    gate = scored.gate[keep] if scored.gate is not None else np.full(int(keep.sum()), np.nan)
    if calibration.input == "gate" and calibration.curves and np.isnan(gate).any():
        raise ValueError("this calibration reads the event gate, which these detections do not carry")
    return np.array([calibration(labels[c], s, e, None if np.isnan(g) else float(g)) for c, s, e, g in
                     zip(scored.label[keep], scored.score[keep], scored.evidence[keep], gate)], np.float64)


def site_calibration(parent: Calibration, labels: tuple[str, ...], background: int, scored: Scored) -> tuple[Calibration, Shift]:
    """The parent's map shifted to fit ``scored``'s kept detections (unshifted when they are fewer
    than ``MIN_DETECTIONS``), as the recorder will read it."""
    keep = scored.kept(background)
    shift = Shift()
    if keep.sum() >= MIN_DETECTIONS:
        shift = fit_shift(confidences(parent, labels, scored, keep), scored.right()[keep])
    return Calibration.from_manifest({"calibration": shifted_curves(parent, labels, background, shift),
                                      "calibration_input": parent.input}), shift


def fit_shift(parent_confidence: np.ndarray, right: np.ndarray, penalty: float = PENALTY) -> Shift:
    """Penalised logistic regression of ``right`` on the logit of the parent's confidence (Newton's
    method; the penalty makes it converge even when every detection is right)."""
    x = np.stack([np.ones(len(right)), _logit(parent_confidence)], axis=1)
    y = np.asarray(right, np.float64)
    prior = np.array([0.0, 1.0])
    w = prior.copy()
    for _ in range(100):
        p = _sigmoid(x @ w)
        gradient = x.T @ (p - y) + penalty * (w - prior)
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return Shift(float(w[0]), max(float(w[1]), MIN_SLOPE), len(y))


def shifted_curves(parent: Calibration, labels: tuple[str, ...], background: int, shift: Shift) -> dict:
    """The manifest's per-class curves of the parent's map after ``shift``. A class the parent
    stores raw gets a curve on its score when the parent's maps read the score (else it keeps its
    raw score: a curve on the evidence would read something else)."""
    curves = {}
    for c, label in enumerate(labels):
        if c == background:
            continue
        if label in parent.curves:
            x, y = (np.asarray(v, np.float64) for v in parent.curves[label])
            dense = np.union1d(x, np.linspace(x[0], x[-1], GRID))
            x, y = dense, np.interp(dense, x, y)
        elif parent.input == "score":
            x = np.linspace(0.0, 1.0, GRID)
            y = x
        else:
            continue
        curves[label] = {"x": [float(v) for v in x], "y": [float(v) for v in np.clip(shift(y), 0.0, 1.0)]}
    return curves


def quality(confidence: np.ndarray, right: np.ndarray) -> dict:
    """Brier score and expected calibration error (``calibration.reliability``) of stored confidences."""
    if not len(right):
        return {"detections": 0, "brier": None, "ece": None}
    right = np.asarray(right, np.float64)
    return {"detections": int(len(right)), "brier": round(float(np.mean((confidence - right) ** 2)), 4),
            "ece": round(reliability(confidence, right)["ece"], 4)}
