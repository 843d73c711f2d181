"""Site adaptation from reviews, per Borneo recorder: false events per hour of background and event
recall on the recorder's unreviewed audio, for the parent bundle, the thresholds-only baseline,
the site head, and what ``adapt`` chose.

    PYTHONPATH=. python bench/adapt_site.py [--recorders S11,S12,...] [--reviews 100] [--work DIR]

Each recorder's clips that the shipped bundle never trained on (test and pool) are laid end to end
into recordings of 8 clips; alternate recordings are the review pool and the evaluation set. The
shipped bundle analyses the pool; up to ``--reviews`` detections are judged from the true labels in
the review page's 'teach' order; ``adapt`` runs; every bundle then analyses the evaluation
recordings. A detection is a false event unless it overlaps a call of its label; a call is found
when a detection of its label overlaps it. The shipped bundle was trained on every recorder's
train and devel clips, so a recorder is held out only in its clips, not as a site.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.review import reviews
from tests.test_adapt import analyse_into, lay_recordings, true_label, unseen_clips
from training.adapt import AdaptConfig, AdaptError, _write_adapted, adapt_bundle, fit_candidate, reviewed_windows

BORNEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "borneo"


def review_in_teach_order(db: Path, truth: dict, pool: set[str], budget: int) -> dict:
    counts: dict[str, int] = {}
    for _ in range(budget):
        rows = [r for r in reviews.list_detections(db, unreviewed_only=True, limit=100_000) if r["source"] in pool]
        if not rows:
            break
        row = rows[0]
        label = true_label(truth[row["source"]], row["start_s"], row["end_s"])
        verdict = "correct" if label == row["label"] else "wrong" if label == "background" else "relabel"
        reviews.add_verdict(db, row["id"], verdict, "simulated", label if verdict == "relabel" else None)
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def field_scores(bundle_path: Path, recordings: list[Path], truth: dict) -> dict:
    analyzer = Analyzer(load_bundle(bundle_path))
    false_events, found, calls, background_s = 0, 0, 0, 0.0
    for path in recordings:
        events = analyzer.analyse_file(path).events
        spans = truth[path.name]
        background_s += sum(b - a for a, b, label in spans if label == "background")
        for e in events:
            if not any(label == e.label and a < e.end_s and e.start_s < b for a, b, label in spans):
                false_events += 1
        for a, b, label in spans:
            if label != "background":
                calls += 1
                found += any(e.label == label and a < e.end_s and e.start_s < b for e in events)
    return {"false_events": false_events, "background_h": background_s / 3600, "calls": calls, "found": found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorders", default="S11,S12,S14,S16,S18,S19")
    parser.add_argument("--reviews", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapt_site_bench"))
    args = parser.parse_args()
    parent_path = default_bundle_path()
    parent = load_bundle(parent_path)
    results = {}
    for recorder in args.recorders.split(","):
        root = args.work / recorder
        shutil.rmtree(root, ignore_errors=True)
        (root / "recordings").mkdir(parents=True)
        truth = lay_recordings(BORNEO, unseen_clips(BORNEO, recorder), root / "recordings", per_recording=8)
        names = sorted(truth)
        pool, evaluation = set(names[0::2]), [root / "recordings" / n for n in names[1::2]]
        db = root / "site.db"
        analyse_into(db, root / "recordings", parent_path)
        counts = review_in_teach_order(db, truth, pool, args.reviews)
        row = {"reviews": counts}
        started = time.monotonic()
        try:
            summary = adapt_bundle(parent_path, db, root / "recordings", root / "adapted")
            row.update(method=summary["method"], held_out=summary["held_out"])
        except AdaptError as exc:
            row.update(method="refused", error=str(exc))
        row["adapt_wall_s"] = round(time.monotonic() - started, 1)
        ensemble = Ensemble(parent)
        data = reviewed_windows(parent, ensemble, db, root / "recordings")
        bundles = {"parent": parent_path}
        for name in ("thresholds", "head"):
            head, thresholds = fit_candidate(name, parent, ensemble, data, AdaptConfig())
            bundles[name] = _write_adapted(parent, head, root / name, {"parent_bundle": parent.bundle_id}, thresholds).path
        if (root / "adapted").exists():
            bundles["adapted"] = root / "adapted"
        row["field"] = {name: field_scores(path, evaluation, truth) for name, path in bundles.items()}
        results[recorder] = row
        print(recorder, json.dumps(row), flush=True)
    pooled = {}
    for name in ("parent", "thresholds", "head", "adapted"):
        rows = [r["field"][name] if name in r["field"] else r["field"]["parent"] for r in results.values()]
        fe, bh = sum(r["false_events"] for r in rows), sum(r["background_h"] for r in rows)
        found, calls = sum(r["found"] for r in rows), sum(r["calls"] for r in rows)
        per_recorder = [r["false_events"] / r["background_h"] for r in rows if r["background_h"]]
        pooled[name] = {"false_events_per_background_h": round(fe / bh, 2), "event_recall": round(found / max(calls, 1), 3),
                        "false_events": fe, "background_h": round(bh, 3), "calls": calls,
                        "per_recorder_fe_per_h_min_max": [round(min(per_recorder), 1), round(max(per_recorder), 1)]}
    print("pooled", json.dumps(pooled, indent=1))


if __name__ == "__main__":
    main()
