"""Can more of an event than its score say whether it is right? Exploration, not a product path.

The events a cv-ensemble JSON's operating point stores on the grouped-CV assembled recordings,
each with nine features (highest, second-highest and mean window confidence, summed confidence,
windows, member agreement, the lower member's probability (highest and mean), lowest background
probability) and its class; a logistic regression per feature set, each fold's events scored by a
fit on the other folds. Prints the cross-fitted expected calibration error, the area under the ROC
curve, and what ``--min-confidence`` 0.5 / 0.7 / 0.9 would export.

    PYTHONPATH=. .venv/bin/python scripts/explore_event_calibration.py VOTES.npz CV_ENSEMBLE.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from edgemon.analysis.decisions import OperatingPoint
from training.calibration import at_levels, reliability
from training.field import match
from training.field_votes import FieldVotes

FEATURE_SETS = (("score",), ("evidence",), ("score", "windows"), ("score", "windows", "mean", "agreement"),
                ("score", "windows", "lower_member", "lower_member_mean", "background", "second"),
                ("score", "windows", "mean", "agreement", "lower_member", "lower_member_mean", "background", "second",
                 "evidence"))


def event_features(votes: FieldVotes, point: OperatingPoint) -> dict[str, np.ndarray]:
    """Per stored event: its class, fold, whether it is right, and the features above."""
    merger = votes.merger(point)
    rows = []
    for stream in votes.assembled:
        events = stream.events(merger)
        right, _ = match(events, stream.calls, votes.labels)
        for event, is_right in zip(events, right):
            detail = json.loads(event.votes)
            windows = np.array(detail["window_confidence"])
            first = int(np.searchsorted(stream.start, round(event.start_s / votes.frame_s)))
            c = votes.labels.index(event.label)
            probs = stream.probs[first:first + len(windows)]            # [windows, members, classes]
            lower = probs[:, :, c].min(axis=1)
            rows.append({"label": c, "fold": stream.fold, "right": int(is_right), "score": windows.max(),
                         "evidence": windows.sum(), "windows": np.log(len(windows)), "mean": windows.mean(),
                         "agreement": np.mean(detail["member_votes"]) / len(windows), "lower_member": lower.max(),
                         "lower_member_mean": lower.mean(), "background": probs[:, :, votes.background].mean(axis=1).min(),
                         "second": np.sort(windows)[-2] if len(windows) > 1 else 0.0})
    return {key: np.array([r[key] for r in rows]) for key in rows[0]}


def cross_fitted(events: dict, names: tuple[str, ...], n_classes: int, background: int, c: float) -> np.ndarray:
    """Each fold's events scored by a logistic fit (features, class, class x score) on the others."""
    x = np.stack([events[n] for n in names], axis=1)
    onehot = np.eye(n_classes)[events["label"]][:, [k for k in range(n_classes) if k != background]]
    x = np.hstack([x, onehot, x[:, :1] * onehot])
    out = np.zeros(len(x))
    for fold in np.unique(events["fold"]):
        held = events["fold"] == fold
        mean, scale = x[~held].mean(axis=0), x[~held].std(axis=0) + 1e-9
        fit = LogisticRegression(C=c, max_iter=2000).fit((x[~held] - mean) / scale, events["right"][~held])
        out[held] = fit.predict_proba((x[held] - mean) / scale)[:, 1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("votes", type=Path)
    parser.add_argument("point_json", type=Path, help="cv-ensemble JSON whose field operating point stores the events")
    args = parser.parse_args()
    votes = FieldVotes.load(args.votes)
    point = OperatingPoint.from_manifest(json.loads(args.point_json.read_text())["field"], {})
    events = event_features(votes, point)
    right = events["right"]
    print(f"{len(right)} events, {right.mean():.3f} right; per fold:",
          {int(f): round(float(right[events['fold'] == f].mean()), 3) for f in np.unique(events["fold"])})
    for names in FEATURE_SETS:
        for c in (0.1, 1.0, 100.0):
            p = cross_fitted(events, names, len(votes.labels), votes.background, c)
            levels = {k: (v["events"], v["precision"] and round(v["precision"], 2), v["right_kept"] and round(v["right_kept"], 2))
                      for k, v in at_levels(p, right).items()}
            print(f"{'+'.join(names)} C={c}: ECE {reliability(p, right)['ece']:.3f}, AUC {roc_auc_score(right, p):.3f}, "
                  f"levels (events, precision, right kept) {levels}")


if __name__ == "__main__":
    main()
