"""Fitting and choosing an event gate (``edgemon.analysis.event_gate``) on grouped-CV field votes.

Candidates are every run of windows over a low base threshold, on the held-out background streams
(all false) and the assembled recordings (right when it overlaps a call of its class). Per class a
logistic regression on the run's ``FEATURES`` (standardised, L2) says how likely a run is a call.
The gate stored in a bundle is fitted on all folds' candidates; its per-class levels (``min_gate``)
are chosen for the target false events per background hour on **cross-fitted** probabilities (each
fold's from a gate fitted on the other folds), so the levels are not set on scores the gate has
learnt. Within the budget of false events an exact search over the classes (as
``training.operating.choose_point``'s) takes the levels that keep the most classes, then find the
most calls.

Fallbacks, stated in ``how``: a class with fewer than ``MIN_EVENTS`` candidates, or under
``MIN_EACH`` right or false ones, takes the gate fitted on all classes' candidates pooled; when
the pool is short too, there is no gate to fit and a ``DataError`` says so.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.linear_model import LogisticRegression

from edgemon.analysis.decisions import OperatingPoint
from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate, run_features
from training.errors import DataError
from training.field_votes import FieldVotes

MIN_EVENTS, MIN_EACH = 30, 5
NEVER = 1.01          # a gate level no probability reaches


@dataclasses.dataclass(frozen=True)
class GateRules:
    """``cv-ensemble --rules gate``: windows over ``base_threshold`` form candidate runs, which the
    event gate (L2 strength ``1 / C``) then keeps or drops."""

    base_threshold: float = 0.30
    C: float = 0.5


@dataclasses.dataclass
class Candidates:
    """Every candidate run of the field votes at the base threshold: its fold, class, whether it lies
    on a background stream, the global index of the call of its class it overlaps (-1: none), and
    its features; with the calls (fold, class) and the hours of background per fold."""

    fold: np.ndarray
    label: np.ndarray
    on_background: np.ndarray
    call: np.ndarray
    features: np.ndarray
    call_fold: np.ndarray
    call_label: np.ndarray
    hours: dict[int, float]

    @property
    def right(self) -> np.ndarray:
        return self.call >= 0


def base_point(votes: FieldVotes, rules: GateRules) -> OperatingPoint:
    return OperatingPoint({label: (0.0 if c == votes.background else rules.base_threshold)
                           for c, label in enumerate(votes.labels)})


def candidates(votes: FieldVotes, rules: GateRules) -> Candidates:
    if any(s.probs is None and len(s.winner) for s in votes.background_streams + votes.assembled):
        raise DataError("these field votes hold no member probabilities, which the event gate reads: "
                        "run cv-ensemble again without --votes")
    merger = votes.merger(base_point(votes, rules))
    rows, call_rows, offset = [], [], 0
    for on_background, streams in ((True, votes.background_streams), (False, votes.assembled)):
        for stream in streams:
            calls = stream.calls
            call_rows += [(stream.fold, int(c[2])) for c in calls]
            for run in merger.runs(stream.window_votes(merger)):
                start = run[0].start_frame * votes.frame_s
                end = (run[-1].start_frame + run[-1].frames) * votes.frame_s
                call = -1
                if len(calls):
                    overlap = np.minimum(calls[:, 1], end) - np.maximum(calls[:, 0], start)
                    mine = (overlap > 0) & (calls[:, 2] == run[0].label)
                    if mine.any():
                        call = offset + int(np.argmax(np.where(mine, overlap, -np.inf)))
                rows.append((stream.fold, run[0].label, on_background, call, run_features(run, votes.background)))
            offset += len(calls)
    cols = list(zip(*rows)) if rows else [[]] * 5
    call_cols = list(zip(*call_rows)) if call_rows else [[]] * 2
    hours = {f: sum(s.duration_s for s in votes.background_streams if s.fold == f) / 3600 for f in votes.folds()}
    return Candidates(np.array(cols[0], int), np.array(cols[1], int), np.array(cols[2], bool), np.array(cols[3], int),
                      np.array(cols[4], float).reshape(-1, len(FEATURES)), np.array(call_cols[0], int),
                      np.array(call_cols[1], int), hours)


def _usable(right: np.ndarray) -> bool:
    return len(right) >= MIN_EVENTS and right.sum() >= MIN_EACH and (~right).sum() >= MIN_EACH


def _fit(x: np.ndarray, right: np.ndarray, C: float) -> ClassGate:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(C=C, max_iter=5000).fit((x - mean) / scale, right.astype(int))
    return ClassGate(tuple(map(float, mean)), tuple(map(float, scale)), tuple(map(float, model.coef_[0])),
                     float(model.intercept_[0]))


def fit_gate(cands: Candidates, mask: np.ndarray, labels: tuple[str, ...], background: int,
             rules: GateRules) -> tuple[EventGate, dict[str, str]]:
    """The gate fitted on the candidates of ``mask``, and how each class's was made."""
    pooled = _fit(cands.features[mask], cands.right[mask], rules.C) if _usable(cands.right[mask]) else None
    classes, how = {}, {}
    for c, label in enumerate(labels):
        if c == background:
            continue
        mine = mask & (cands.label == c)
        n = int(mine.sum())
        if _usable(cands.right[mine]):
            classes[label], how[label] = _fit(cands.features[mine], cands.right[mine], rules.C), f"own fit on {n} runs"
        elif pooled is not None:
            classes[label], how[label] = pooled, (f"pooled fit over all classes (only {n} runs of its own, "
                                                  f"{int(cands.right[mine].sum())} of them right)")
        else:
            raise DataError(f"too few held-out runs to fit an event gate ({int(mask.sum())} in all, "
                            f"{int(cands.right[mask].sum())} right): choose another --rules")
    return EventGate(classes), how


def probabilities(gate: EventGate, cands: Candidates, mask: np.ndarray, labels: tuple[str, ...]) -> np.ndarray:
    """The gate's probability of each candidate in ``mask``, rounded as the recorder stores it
    (computed by the recorder's own ``ClassGate.probability``, so chooser and recorder agree)."""
    return np.array([round(gate.classes[labels[c]].probability(x), 4)
                     for c, x in zip(cands.label[mask], cands.features[mask])], float)


def cross_fitted(cands: Candidates, folds, labels: tuple[str, ...], background: int, rules: GateRules) -> np.ndarray:
    """Each candidate of ``folds``' probability from a gate fitted on the other ones of ``folds``
    (NaN outside ``folds``)."""
    out = np.full(len(cands.label), np.nan)
    for f in folds:
        fit_on = np.isin(cands.fold, [g for g in folds if g != f])
        mine = cands.fold == f
        out[mine] = probabilities(fit_gate(cands, fit_on, labels, background, rules)[0], cands, mine, labels)
    return out


def choose_levels(cands: Candidates, scores: np.ndarray, folds, labels: tuple[str, ...], background: int,
                  target_false_per_hour: float) -> dict[str, float]:
    """Per class the gate level, all together within the budget of false events on ``folds``'
    background: first the plan that keeps some calls of the most classes, then the one that finds
    most calls, then the fewest false events and the highest levels. A class is switched off
    (level ``NEVER``) only when the budget cannot afford it beside the others (a newcomer found
    helmeted hornbills switched off at 10 / h, where one false event kept 40 of 50)."""
    hours = sum(cands.hours[f] for f in folds)
    budget = int(np.floor(target_false_per_hour * hours + 1e-9))
    within = np.isin(cands.fold, folds)
    tables = {}
    for c, label in enumerate(labels):
        if c == background:
            continue
        mine = within & (cands.label == c)
        best: dict[int, tuple[int, float]] = {}
        for level in np.unique(np.concatenate([scores[mine], [NEVER]])):
            kept = mine & (scores >= level)
            false = int((kept & cands.on_background).sum())
            found = len(np.unique(cands.call[kept & (cands.call >= 0)]))
            if false <= budget and (false not in best or (found, level) > best[false]):
                best[false] = (found, float(level))
        tables[label] = sorted(best.items())
    # An exact search over the classes: false events spent -> ((classes kept, calls found), levels).
    # The value adds up class by class and is compared in that order, so the best per spend suffices.
    plans: dict[int, tuple[tuple[int, int], dict[str, float]]] = {0: ((0, 0), {})}
    for label, table in tables.items():
        grown = {}
        for spent, ((kept, found), levels) in plans.items():
            for false, (more, level) in table:
                total = spent + false
                value = (kept + (more > 0), found + more)
                if total <= budget and (total not in grown or (value, sum(levels.values()) + level)
                                        > (grown[total][0], sum(grown[total][1].values()))):
                    grown[total] = (value, {**levels, label: level})
        plans = grown
    return max(plans.items(), key=lambda kv: (kv[1][0], -kv[0]))[1][1]


class GateChooser:
    """The gate fitted on ``votes`` (all its folds) and cross-fitted probabilities to choose levels
    on: ``point(target)`` is the gated operating point for a target of false events per hour."""

    def __init__(self, votes: FieldVotes, rules: GateRules = GateRules()):
        self.votes, self.rules = votes, rules
        self.cands = candidates(votes, rules)
        folds = votes.folds()
        everything = np.ones(len(self.cands.label), bool)
        self.gate, self.how = fit_gate(self.cands, everything, votes.labels, votes.background, rules)
        # With one fold there is nothing to cross-fit on: the levels are chosen on the gate's own
        # (optimistic) probabilities, and describe() says so.
        self.cross_fitted = len(folds) > 1
        self.scores = cross_fitted(self.cands, folds, votes.labels, votes.background, rules) if self.cross_fitted \
            else probabilities(self.gate, self.cands, everything, votes.labels)

    def point(self, target_false_per_hour: float) -> OperatingPoint:
        if not target_false_per_hour > 0:
            raise DataError(f"target false events per hour must be positive, got {target_false_per_hour}")
        levels = choose_levels(self.cands, self.scores, self.votes.folds(), self.votes.labels, self.votes.background,
                               target_false_per_hour)
        base = base_point(self.votes, self.rules)
        return OperatingPoint(base.thresholds, min_gate=levels, gate=self.gate)

    def describe(self) -> dict:
        return {"kind": "gate", **dataclasses.asdict(self.rules), "fits": self.how,
                "candidates": int(len(self.cands.label)), "right": int(self.cands.right.sum()),
                "levels_chosen_on": "cross-fitted probabilities" if self.cross_fitted
                else "the gate's own probabilities (one fold: nothing to cross-fit on)"}
