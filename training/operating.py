"""A field operating point chosen on held-out folds: per class, the threshold and the fewest windows
an event needs, for a target number of false events per hour of background.

Each class's events depend only on its own windows (any other label, background or call, ends its
runs), so each class's candidates (threshold, windows) are scored on their own: false events on
the held-out background, calls found on the assembled recordings. The budget — the target times
the hours of held-out background, in whole events — is then shared out where it finds most calls
(an exact search over the classes), rather than split evenly: with under an hour of held-out
background an even split of 5 per hour allows no class a single event. Within what a class is
given, its candidate finds most calls; of equal recall, the most precise, then the strictest
(highest threshold, more windows), which buys margin against false alarms the short held-out
background could not show, at no measured cost. So every class gets a real threshold, rare ones
too, unless raising it would lose one of its calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgemon.analysis.decisions import OperatingPoint
from training.calibration import as_calibration, calibrate
from training.errors import DataError
from training.field import NOTHING, FieldVotes, assembled_events, match, measure

DEFAULT_TARGET_FALSE_PER_HOUR = 5.0
MAX_WINDOWS = 4
CANDIDATES = 48
TRADEOFF = (1.0, 2.0, 5.0, 10.0, 20.0)
SUMMARY = ("false_per_hour", "false_per_hour_95", "false_events", "background_hours", "precision", "recall",
           "clip_uar")


def _candidates(votes: FieldVotes, c: int) -> np.ndarray:
    """Thresholds worth trying for class ``c``: quantiles of its windows' confidences (each just
    at a vote, so it is let through), 0 and a level no vote reaches."""
    confidences = np.concatenate([s.confidence[s.winner == c] for s in votes.background_streams + votes.assembled])
    if len(confidences) == 0:
        return np.array([0.0, NOTHING])
    levels = np.unique(np.quantile(confidences, np.linspace(0, 1, CANDIDATES)))
    return np.concatenate([[0.0], levels, [NOTHING]])


def class_table(votes: FieldVotes, c: int) -> list[dict]:
    """For class ``c``, every candidate (threshold, min windows): false events on background and
    events, right ones and calls found on the assembled recordings."""
    label = votes.labels[c]
    hours = sum(s.duration_s for s in votes.background_streams) / 3600
    calls = sum(int((s.calls[:, 2] == c).sum()) for s in votes.assembled)
    others = {l: NOTHING for l in votes.labels}
    rows = []
    for threshold in _candidates(votes, c):
        merger = votes.merger(OperatingPoint({**others, label: float(threshold)}))
        false = np.array([len(json_windows(e)) for s in votes.background_streams for e in s.events(merger, c)], int)
        judged = []
        for s in votes.assembled:
            events = s.events(merger, c)
            mine = s.calls[s.calls[:, 2] == c] if len(s.calls) else s.calls
            judged.append((events, mine))
        for k in range(1, MAX_WINDOWS + 1):
            n_false = int((false >= k).sum())
            right = found = events = 0
            for all_events, mine in judged:
                kept = [e for e in all_events if len(json_windows(e)) >= k]
                r, f = match(kept, mine, votes.labels)
                right, found, events = right + int(r.sum()), found + int(f.sum()), events + len(kept)
            rows.append({"threshold": float(threshold), "min_windows": k, "false_events": n_false,
                         "false_per_hour": n_false / hours, "events": events, "right": right,
                         "found": found, "calls": calls,
                         "precision": right / events if events else 1.0,
                         "recall": found / calls if calls else 0.0})
    return rows


def json_windows(event) -> list:
    """The window confidences of an event (one per window), from its votes JSON."""
    return json.loads(event.votes)["window_confidence"]


def class_tables(votes: FieldVotes) -> dict[str, list[dict]]:
    """``class_table`` of every call class, by label."""
    return {votes.labels[c]: class_table(votes, c) for c in range(len(votes.labels)) if c != votes.background}


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: (r["recall"], r["precision"], r["threshold"], r["min_windows"]))


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
    thresholds, min_windows = {votes.labels[votes.background]: 0.0}, {}
    for label, row in zip(tables, chosen):
        thresholds[label], min_windows[label] = row["threshold"], row["min_windows"]
    return OperatingPoint(thresholds, min_windows)


def field_report(votes: FieldVotes, target_false_per_hour: float = DEFAULT_TARGET_FALSE_PER_HOUR,
                 plot: Path | None = None, title: str = "") -> dict:
    """The operating point for the target, its calibration, the field measure untuned and there,
    and the trade-off over other targets: what cv, cv-ensemble and bundles carry."""
    tables = class_tables(votes)
    point = choose_point(votes, target_false_per_hour, tables)
    events, _, _ = assembled_events(votes, votes.merger(point))
    curves, source, calibration_report = calibrate(events, votes.labels, votes.background, plot, title)
    at_point = measure(votes, point, as_calibration(curves, source))
    tradeoff = []
    for target in TRADEOFF:
        m = measure(votes, choose_point(votes, target, tables))
        tradeoff.append({"target_false_per_hour": target, **{k: m[k] for k in SUMMARY}})
    return {
        "operating_point": {"thresholds": point.thresholds, "min_windows": point.min_windows,
                            "target_false_per_hour": target_false_per_hour,
                            "expected": {**{k: at_point[k] for k in SUMMARY},
                                         "calibration_ece": calibration_report["calibrated"]["ece"],
                                         "at_min_confidence_0.9": calibration_report["calibrated"]["levels"]["0.9"]}},
        "calibration_fits": calibration_report["fits"],
        "calibration": curves, "calibration_input": source, "calibration_report": calibration_report,
        "untuned": measure(votes, OperatingPoint({})), "at_point": at_point, "tradeoff": tradeoff,
        "candidates": tables}
