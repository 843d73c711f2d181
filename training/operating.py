"""A field operating point chosen on held-out folds: per class, the threshold and the evidence an
event needs (fewest windows; optionally a summed window confidence or one confident window, as
``RuleGrid`` allows), for a target number of false events per hour of background.

Each class's events depend only on its own windows (any other label, background or call, ends its
runs), so each class's candidates are scored on their own: false events on the held-out
background, calls found on the assembled recordings. The budget — the target times the hours of
held-out background, in whole events — is then shared out where it finds most calls (an exact
search over the classes), rather than split evenly: with under an hour of held-out background an
even split of 5 per hour allows no class a single event. Within what a class is given, its
candidate finds most calls; of equal recall, the most precise, then the strictest (highest
threshold, more windows, more evidence), which buys margin against false alarms the short held-out
background could not show, at no measured cost. So every class gets a real threshold, rare ones
too, unless raising it would lose one of its calls.

A point measured on the votes that chose it is optimistic; ``crossfit`` chooses on all folds but
one and measures on that one, which is what the point does on recorders it was not chosen on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from edgemon.analysis.decisions import OperatingPoint
from training.calibration import as_calibration, calibrate
from training.errors import DataError
from training.evaluate import uar
from training.event_gate import GateChooser, GateRules
from training.field import NOTHING, ScoredEvents, assembled_events, clip_predictions, measure, poisson_interval
from training.field_votes import FieldVotes

log = logging.getLogger(__name__)

DEFAULT_TARGET_FALSE_PER_HOUR = 5.0
CANDIDATES = 48
TRADEOFF = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)
SUMMARY = ("false_per_hour", "false_per_hour_95", "false_events", "background_hours", "precision", "recall",
           "clip_uar")


@dataclasses.dataclass(frozen=True)
class RuleGrid:
    """The evidence rules the chooser tries for each class, beside its window threshold: up to
    ``max_windows`` consecutive windows, each summed window confidence in ``evidence`` (an
    accumulated-evidence rule) and each opening level in ``opening`` (hysteresis: one window at
    that level opens the event, the threshold extends it); none of the last two is always tried."""

    max_windows: int = 4
    evidence: tuple[float, ...] = ()
    opening: tuple[float, ...] = ()


# Named rules, as ``cv-ensemble --rules`` takes them; what each gave on grouped CV is in docs/results.md.
RULES: dict[str, "RuleGrid | GateRules"] = {
    "windows": RuleGrid(4),
    "windows6": RuleGrid(6),
    "evidence": RuleGrid(6, tuple(np.round(np.arange(0.5, 5.01, 0.25), 2))),
    "hysteresis": RuleGrid(6, (), tuple(np.round(np.arange(0.46, 0.641, 0.02), 2))),
    "evidence+hysteresis": RuleGrid(6, tuple(np.round(np.arange(0.5, 5.01, 0.5), 2)),
                                    tuple(np.round(np.arange(0.48, 0.641, 0.04), 2))),
    "gate": GateRules(),       # an event gate on runs over a low threshold (training.event_gate)
}
DEFAULT_RULES = "hysteresis"   # best held-out figures of the grids tried (docs/results.md)


def _candidates(votes: FieldVotes, c: int) -> np.ndarray:
    """Thresholds worth trying for class ``c``: quantiles of its windows' confidences (each just
    at a vote, so it is let through), 0 and a level no vote reaches."""
    confidences = np.concatenate([s.confidence[s.winner == c] for s in votes.background_streams + votes.assembled])
    if len(confidences) == 0:
        return np.array([0.0, NOTHING])
    levels = np.unique(np.quantile(confidences, np.linspace(0, 1, CANDIDATES)))
    return np.concatenate([[0.0], levels, [NOTHING]])


def _runs(events: list) -> np.ndarray:
    """``[n, 3]``: each event's windows, summed window confidence and highest window confidence."""
    rows = [(len(w), sum(w), max(w)) for w in map(json_windows, events)]
    return np.array(rows, float).reshape(-1, 3)


def _call_of(events: list, calls: np.ndarray, offset: int) -> np.ndarray:
    """For each event the (global) index of the call of its class it overlaps most, -1 for none.
    Calls lie far apart on assembled recordings (95 % background between), so an event overlaps
    at most one and the one-to-one match of ``match`` reduces to this; ``measure`` stays exact."""
    out = np.full(len(events), -1)
    for i, e in enumerate(events):
        if len(calls):
            overlap = np.minimum(calls[:, 1], e.end_s) - np.maximum(calls[:, 0], e.start_s)
            if (overlap > 0).any():
                out[i] = offset + int(np.argmax(overlap))
    return out


def class_table(votes: FieldVotes, c: int, grid: RuleGrid = RULES[DEFAULT_RULES]) -> list[dict]:
    """For class ``c``, the best candidate (threshold, min windows, min evidence, opening level)
    for each number of false events on background (of equal recall the most precise, then the
    strictest): events, right ones and calls found on the assembled recordings. Only these rows
    matter to ``choose_point``, which takes the best within a budget of false events."""
    label = votes.labels[c]
    hours = sum(s.duration_s for s in votes.background_streams) / 3600
    mine = [s.calls[s.calls[:, 2] == c] if len(s.calls) else s.calls.reshape(0, 3) for s in votes.assembled]
    offsets = np.cumsum([0] + [len(m) for m in mine])
    calls = int(offsets[-1])
    others = {l: NOTHING for l in votes.labels}
    best: dict[int, dict] = {}
    for threshold in _candidates(votes, c):
        # Runs, not events: the recorder keeps or drops each run on its own before it bridges kept ones
        merger = dataclasses.replace(votes.merger(OperatingPoint({**others, label: float(threshold)})), bridge=0)
        false = _runs([e for s in votes.background_streams for e in s.events(merger, c)])
        events = [s.events(merger, c) for s in votes.assembled]
        runs = _runs([e for es in events for e in es])
        call = np.concatenate([_call_of(es, m, o) for es, m, o in zip(events, mine, offsets)] + [np.zeros(0, int)])
        for k in range(1, grid.max_windows + 1):
            # a level every run of k windows over the threshold already reaches holds nothing more
            for evidence in [0.0] + [e for e in grid.evidence if e > k * threshold]:
                for opening in [0.0] + [o for o in grid.opening if o > threshold]:
                    def kept(r):   # OperatingPoint.keeps over all runs at once (the chooser's hot loop)
                        return (r[:, 0] >= k) & (r[:, 1] >= evidence - 1e-9) & (r[:, 2] >= opening)
                    n_false, keep = int(kept(false).sum()), kept(runs)
                    found = len(np.unique(call[keep & (call >= 0)]))
                    row = {"threshold": float(threshold), "min_windows": k, "min_evidence": float(evidence),
                           "open_threshold": float(opening), "false_events": n_false,
                           "false_per_hour": n_false / hours, "events": int(keep.sum()), "right": found,
                           "found": found, "calls": calls,
                           "precision": found / keep.sum() if keep.any() else 1.0,
                           "recall": found / calls if calls else 0.0}
                    if n_false not in best or _key(row) > _key(best[n_false]):
                        best[n_false] = row
    return [best[f] for f in sorted(best)]


def json_windows(event) -> list:
    """The window confidences of an event (one per window), from its votes JSON."""
    return json.loads(event.votes)["window_confidence"]


def class_tables(votes: FieldVotes, grid: RuleGrid = RULES[DEFAULT_RULES]) -> dict[str, list[dict]]:
    """``class_table`` of every call class, by label."""
    return {votes.labels[c]: class_table(votes, c, grid) for c in range(len(votes.labels)) if c != votes.background}


def _key(row: dict) -> tuple:
    """Most calls found, then most precise, then the strictest (margin against false alarms the
    short held-out background could not show)."""
    return (row["recall"], row["precision"], row["threshold"], row["min_windows"], row["min_evidence"],
            row["open_threshold"])


def _best(rows: list[dict]) -> dict:
    return max(rows, key=_key)


def choose_point(votes: FieldVotes, target_false_per_hour: float = DEFAULT_TARGET_FALSE_PER_HOUR,
                 tables: dict[str, list[dict]] | None = None) -> OperatingPoint:
    """The operating point for ``target_false_per_hour`` (``tables``: ``class_tables(votes)``):
    the classes' candidates that together find most calls within the budget of false events."""
    if not target_false_per_hour > 0:
        raise DataError(f"target false events per hour must be positive, got {target_false_per_hour}")
    tables = tables or class_tables(votes)
    hours = sum(s.duration_s for s in votes.background_streams) / 3600
    budget = int(np.floor(target_false_per_hour * hours + 1e-9))
    # per class, the best candidate for each number of false events it may spend (0..budget)
    options = {label: [_best([r for r in table if r["false_events"] <= f]) for f in range(budget + 1)]
               for label, table in tables.items()}
    plans = {0: (0, ())}  # false events spent -> (calls found, chosen rows), best first
    for label in tables:
        grown = {}
        for spent, (found, chosen) in plans.items():
            for row in {id(r): r for r in options[label][:budget - spent + 1]}.values():
                total, plan = spent + row["false_events"], (found + row["found"], chosen + (row,))
                if total not in grown or plan[0] > grown[total][0]:
                    grown[total] = plan
        plans = grown
    _, chosen = max(plans.values(), key=lambda plan: (plan[0], -sum(r["false_events"] for r in plan[1]),
                                                      sum(r["precision"] for r in plan[1])))
    thresholds, min_windows, min_evidence, opening = {votes.labels[votes.background]: 0.0}, {}, {}, {}
    for label, row in zip(tables, chosen):
        thresholds[label], min_windows[label] = row["threshold"], row["min_windows"]
        min_evidence[label], opening[label] = row.get("min_evidence", 0.0), row.get("open_threshold", 0.0)
    return OperatingPoint(thresholds, min_windows, min_evidence, opening)


class GridChooser:
    """Points of a ``RuleGrid``'s rules for any target, from the class tables computed once."""

    def __init__(self, votes: FieldVotes, grid: RuleGrid = RULES[DEFAULT_RULES]):
        self.votes, self.grid = votes, grid
        self.tables = class_tables(votes, grid)

    def point(self, target_false_per_hour: float) -> OperatingPoint:
        return choose_point(self.votes, target_false_per_hour, self.tables)

    def describe(self) -> dict:
        return self.describe_grid(self.grid)

    @staticmethod
    def describe_grid(grid: RuleGrid) -> dict:
        return {"max_windows": grid.max_windows, "evidence": [float(e) for e in grid.evidence],
                "opening": [float(o) for o in grid.opening]}


Rules = RuleGrid | GateRules


def rules_name(stated: dict | None) -> str | None:
    """The name in ``RULES`` of the rules a point says it was chosen by (its ``rules`` entry), or
    None when it says none (points made before rules were recorded) or names none of them."""
    if not isinstance(stated, dict):
        return None
    if stated.get("kind") == "gate":
        return "gate"
    for name, rules in RULES.items():
        if isinstance(rules, RuleGrid) and GridChooser.describe_grid(rules) == {k: stated.get(k) for k in
                                                                              ("max_windows", "evidence", "opening")}:
            return name
    return None


def chooser(votes: FieldVotes, rules: Rules = RULES[DEFAULT_RULES]):
    """What chooses points on ``votes`` under ``rules``: evidence rules, or the event gate."""
    return GateChooser(votes, rules) if isinstance(rules, GateRules) else GridChooser(votes, rules)


def crossfit(votes: FieldVotes, targets=TRADEOFF, grid: Rules = RULES[DEFAULT_RULES]) -> dict[float, dict]:
    """``held_out``'s figures per target."""
    return held_out(votes, targets, grid)[0]


def held_out(votes: FieldVotes, targets=TRADEOFF, grid: Rules = RULES[DEFAULT_RULES],
             events_at: float | None = None) -> tuple[dict[float, dict], ScoredEvents | None]:
    """Choosing on held-out folds, measured on the fold left out: for each fold, the point for each
    target is chosen on the other folds' votes (their budget of false events) and measured on this
    fold's; counts pooled over folds. The point measured on the votes that chose it is optimistic
    by construction (false events on background are few, and cluster on a few recorders); this is
    what it does on recorders it was not chosen on. Calibration is left out (it has its own
    cross-fit in ``calibration_report``); with ``events_at``, the held-out folds' assembled events
    at the points chosen for that target come back too (a gated point calibrates on them: their
    gate probabilities come from gates that never saw them)."""
    folds = votes.folds()
    if len(folds) < 2:
        raise DataError("choosing on held-out folds needs votes of at least two folds")
    pooled = {t: {"false_events": 0, "hours": 0.0, "events": 0, "right": 0, "calls": 0, "found": 0,
                  "predicted": [], "targets": [], "per_fold": []} for t in targets}
    events = []
    for f in folds:
        chosen_on, held = votes.subset([g for g in folds if g != f]), votes.subset([f])
        choose = chooser(chosen_on, grid)
        for t in targets:
            point = choose.point(t)
            m, acc = measure(held, point), pooled[t]
            for key in ("false_events", "events", "right", "calls", "found"):
                acc[key] += m[key]
            acc["hours"] += m["background_hours"]
            acc["predicted"].append(clip_predictions(held, held.merger(point)))
            acc["targets"].append(held.clip_targets)
            acc["per_fold"].append({"fold": f, "false_events": m["false_events"], "background_hours": m["background_hours"],
                                    "found": m["found"], "calls": m["calls"]})
            if t == events_at:
                events.append(assembled_events(held, held.merger(point))[0])
    out = {}
    for t, acc in pooled.items():
        predicted, truth = np.concatenate(acc["predicted"]), np.concatenate(acc["targets"])
        out[t] = {"false_per_hour": acc["false_events"] / acc["hours"],
                  "false_per_hour_95": list(poisson_interval(acc["false_events"], acc["hours"])),
                  "false_events": acc["false_events"], "background_hours": acc["hours"],
                  "precision": acc["right"] / acc["events"] if acc["events"] else None,
                  "recall": acc["found"] / acc["calls"] if acc["calls"] else None,
                  "clip_uar": uar(truth, predicted, len(votes.labels)), "per_fold": acc["per_fold"]}
    return out, ScoredEvents.concat(events) if events else None


def field_report(votes: FieldVotes, target_false_per_hour: float = DEFAULT_TARGET_FALSE_PER_HOUR,
                 plot: Path | None = None, title: str = "", grid: Rules = RULES[DEFAULT_RULES],
                 point: OperatingPoint | None = None) -> dict:
    """The operating point for the target (rules of ``grid``), its calibration, the field measure
    untuned and there, and the trade-off over other targets, each also chosen on held-out folds
    (``crossfit``): what cv, cv-ensemble and bundles carry. With ``point`` given (a bundle's own),
    nothing is chosen for the target: the calibration is fitted and the measure taken at that point,
    and ``chosen_on_other_folds`` still says what choosing for the target gives on unseen recorders."""
    if point is not None and point.decides_by_gate != isinstance(grid, GateRules):
        raise DataError("the point carries an event gate: measure it with the gate's rules (--rules gate)"
                        if point.decides_by_gate else
                        "the point has no event gate: measure it with the rules it was chosen by, not --rules gate")
    if point is not None and point.gate is not None and not point.decides_by_gate:
        # a gate at level 0 only scored the events for a run-feature calibration, fitted again below
        point = dataclasses.replace(point, gate=None, min_gate={})
    choose = chooser(votes, grid)
    point = point or choose.point(target_false_per_hour)
    others, unseen_events = held_out(votes, sorted({*TRADEOFF, target_false_per_hour}), grid,
                                     target_false_per_hour) if len(votes.folds()) > 1 else ({}, None)
    if point.decides_by_gate and unseen_events is not None:
        # A gate fitted on these votes has seen these very events: calibrate on the held-out folds'
        # events at the points chosen on the other folds, whose gates never saw them.
        events, calibrated_on = unseen_events, "held-out folds' events at points chosen on the other folds"
    else:
        events, calibrated_on = assembled_events(votes, votes.merger(point))[0], "the point's events on every fold"
    curves, source, calibration_report, scoring_gate = calibrate(events, votes.labels, votes.background, plot, title)
    if scoring_gate is not None:   # a run-feature calibration: a gate that keeps every run, read by the curves
        point = dataclasses.replace(point, gate=scoring_gate, min_gate={label: 0.0 for label in scoring_gate.classes})
    calibration_report["calibrated_on"] = calibrated_on
    at_point = measure(votes, point, as_calibration(curves, source))
    tradeoff = []
    for target in TRADEOFF:
        m = measure(votes, choose.point(target))
        tradeoff.append({"target_false_per_hour": target, **{k: m[k] for k in SUMMARY},
                         **({"chosen_on_other_folds": {k: others[target][k] for k in SUMMARY}} if others else {})})
    expected = {**{k: at_point[k] for k in SUMMARY},
                "calibration_ece": calibration_report["calibrated"]["ece"],
                "at_min_confidence_0.9": calibration_report["calibrated"]["levels"]["0.9"]}
    if others:
        expected["chosen_on_other_folds"] = {k: others[target_false_per_hour][k] for k in SUMMARY}
    calls = [label for c, label in enumerate(votes.labels) if c != votes.background]
    off = point.never_stored(calls)
    if off:
        log.warning("at this point %s %s never stored (a level no vote or gate probability reaches): "
                    "to keep every class, choose a higher --target-false-per-hour or other --rules",
                    ", ".join(off), "is" if len(off) == 1 else "are")
    return {
        "never_stored": off,
        # Every call class spelt out, idle rules included: the bundle id is a digest of this text,
        # so the same choice must write the same dicts (OperatingPoint itself drops idle entries).
        "operating_point": {"thresholds": point.thresholds,
                            "min_windows": {label: point.windows_needed(label) for label in calls},
                            "min_evidence": {label: point.min_evidence.get(label, 0.0) for label in calls},
                            "open_threshold": {label: point.open_threshold.get(label, 0.0) for label in calls},
                            **({"min_gate": point.min_gate, "event_gate": point.gate.to_manifest()}
                               if point.gate is not None else {}),
                            "target_false_per_hour": target_false_per_hour,
                            "rules": choose.describe(), "expected": expected},
        "calibration_fits": calibration_report["fits"],
        "calibration": curves, "calibration_input": source, "calibration_report": calibration_report,
        "untuned": measure(votes, OperatingPoint({})), "at_point": at_point, "tradeoff": tradeoff,
        "chosen_on_other_folds": others, "candidates": getattr(choose, "tables", {})}
