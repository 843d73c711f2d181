"""Site adaptation on recorders the parent never heard: per Borneo recorder, the grouped-CV fold
bundle that held it out analyses all its clips, 100 of its detections are reviewed (simulated from
the true labels, in the review page's 'teach' order), ``adapt`` runs, and every way of adapting is
measured on the recorder's unreviewed recordings; figures pooled over recorders.

    PYTHONPATH=. python bench/adapt_heldout.py [--recorders S10,S11,...] [--reviews 100] [--work DIR] [--parent-point]
        [--cv LOGMEL_CV_DIR PCEN_CV_DIR]

Parents: fold k's members are the log-mel and PCEN models of grouped-CV fold k (``--cv``), made
into an int8 bundle like the shipped one (its frontend, window, thresholds; with ``--parent-point``
also its operating point's evidence rules and its calibration, as a user's parent has them); fold
k's training never saw a clip of its validation recorders (pool clips of those recorders were kept
out too). A
recorder's audio is all its clips (train, devel, test, pool) laid end to end, 8 per recording, in a
shuffled order; alternate recordings are the review pool and the evaluation set. Every candidate is
written as a bundle and run by the recorder's own ``Analyzer`` on the evaluation recordings. A
detection is a false event unless it overlaps a clip of its label; a call is found when a detection
of its label overlaps it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from devtools.site_sim import analyse_into, field_counts, fold_parent, lay_recordings, recorder_clips, review_in_teach_order
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.review.reviews import wilson_interval
from training.adapt import CANDIDATES, AdaptConfig, AdaptError, adapt_bundle, reviewed_windows
from training.adapt_fit import fit_candidate
from training.adapted_bundle import write_adapted
from training.calibration import at_levels
from training.field import poisson_interval
from training.site_calibration import quality

ROOT = Path(__file__).resolve().parents[1]
BORNEO = ROOT.parent / "shared" / "data" / "borneo"
CV = (Path("/work/field-runs/cv-pool-logmel-cb-h128"), Path("/work/field-runs/cv-pool-pcen-cb-h128"))
RECORDERS = tuple(f"S{n}" for n in range(10, 20))


def fold_models(cv_dirs) -> dict[str, list[Path]]:
    """recorder -> its fold's member models (one per cv directory, in order), from each cv.json."""
    out: dict[str, list[Path]] = {}
    for cv in cv_dirs:
        summary = json.loads((cv / "cv.json").read_text())
        recipe = next(iter(summary["recipes"]))
        for k, fold in enumerate(summary["folds"]):
            for recorder in fold["validation_recorders"]:
                out.setdefault(recorder, []).append(cv / recipe / f"fold{k}.onnx")
    return out


def parent_for(models: list[Path], work: Path, with_point: bool = False) -> Path:
    """The fold's parent bundle, built once per fold and kind of parent."""
    out = work / ("parents-point" if with_point else "parents") / models[0].stem
    if not (out / "manifest.json").is_file():
        fold_parent(models, load_bundle(default_bundle_path()), out, BORNEO, with_point)
    return out


def pooled(rows: list[dict]) -> dict:
    fe, hours = sum(r["false_events"] for r in rows), sum(r["background_h"] for r in rows)
    found, calls = sum(r["found"] for r in rows), sum(r["calls"] for r in rows)
    low, high = poisson_interval(fe, hours)
    r_low, r_high = wilson_interval(found, calls)
    return {"false_per_h": round(fe / hours, 1), "false_per_h_95": [round(low, 1), round(high, 1)],
            "false_events": fe, "background_h": round(hours, 3), "recall": round(found / max(1, calls), 3),
            "recall_95": [round(r_low, 3), round(r_high, 3)], "found": found, "calls": calls,
            **({"stored_confidence": stored_confidence(rows)} if all("confidence" in r for r in rows) else {})}


def stored_confidence(rows: list[dict]) -> dict:
    """How well the stored confidence of every detection estimates that it is right: Brier score,
    expected calibration error, and what ``--min-confidence`` 0.5 / 0.7 / 0.9 exports."""
    confidence = np.array([c for r in rows for c in r["confidence"]], np.float64)
    right = np.array([x for r in rows for x in r["right"]], np.float64)
    levels = {level: {k: None if v is None else round(v, 3) for k, v in figures.items()}
              for level, figures in at_levels(confidence, right).items()}
    return {**quality(confidence, right), "levels": levels}


def run_recorder(recorder: str, models: list[Path], work: Path, budget: int, config: AdaptConfig,
                 with_point: bool = False) -> dict:
    root = work / recorder
    shutil.rmtree(root, ignore_errors=True)
    recordings = root / "recordings"
    recordings.mkdir(parents=True)
    truth = lay_recordings(BORNEO, recorder_clips(BORNEO, recorder), recordings, per_recording=8)
    (root / "truth.json").write_text(json.dumps(truth))
    names = sorted(truth)
    pool, evaluation = names[0::2], [recordings / n for n in names[1::2]]
    parent_path = parent_for(models, work, with_point)
    db = root / "site.db"
    analyse_into(db, [recordings / n for n in pool], parent_path, device_id=recorder)
    row = {"fold_parent": str(parent_path), "reviews": review_in_teach_order(db, truth, set(pool), budget)}
    started = time.monotonic()
    try:
        summary = adapt_bundle(parent_path, db, recordings, root / "adapted", config)
        row.update(method=summary["method"], held_out=summary["held_out"])
    except AdaptError as exc:
        row.update(method="refused", error=str(exc))
    row["adapt_wall_s"] = round(time.monotonic() - started, 1)
    parent = load_bundle(parent_path)
    bundles = {"parent": parent_path, "adapted": root / "adapted" if (root / "adapted").exists() else parent_path}
    try:
        ensemble = Ensemble(parent)
        data = reviewed_windows(parent, ensemble, db, recordings, config)
        if len(data.targets) < config.min_reviews:
            raise AdaptError(f"{len(data.targets)} usable reviews")
        for name in CANDIDATES:
            head, point = fit_candidate(name, parent, ensemble, data, config)
            bundles[name] = write_adapted(parent, head, root / name, {"parent_bundle": parent.bundle_id}, point).path
    except AdaptError as exc:     # too few reviews: adapt refuses, every candidate is the parent
        row["candidates"] = str(exc)
    row["field"] = {name: field_counts(bundles.get(name, parent_path), evaluation, truth)
                    for name in ("parent", *CANDIDATES, "adapted")}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recorders", default=",".join(RECORDERS))
    parser.add_argument("--reviews", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapt_heldout"))
    parser.add_argument("--folds", type=int, default=AdaptConfig.folds, help="adapt's held-out folds")
    parser.add_argument("--cv", type=Path, nargs=2, default=CV, metavar=("LOGMEL_CV", "PCEN_CV"),
                        help="the grouped-CV runs whose fold models are the parents (default: the shipped recipe's)")
    parser.add_argument("--parent-point", action="store_true",
                        help="fold parents carry the shipped bundle's operating point (evidence rules) and calibration, "
                             "not only its thresholds")
    args = parser.parse_args()
    models = fold_models(args.cv)
    results = {}
    for recorder in args.recorders.split(","):
        results[recorder] = run_recorder(recorder, models[recorder], args.work, args.reviews,
                                         AdaptConfig(folds=args.folds), args.parent_point)
        print(recorder, json.dumps(results[recorder]), flush=True)
    names = ("parent", *CANDIDATES, "adapted")
    table = {name: pooled([r["field"][name] for r in results.values()]) for name in names}
    print("pooled", json.dumps(table, indent=1))
    # Where adapt wrote a bundle (elsewhere "adapted" is the parent itself).
    written = [r for r in results.values() if r["method"] != "refused"]
    where_adapted = {name: pooled([r["field"][name] for r in written]) for name in ("parent", "adapted")} if written else {}
    print(f"pooled where adapt wrote a bundle ({len(written)} recorders)", json.dumps(where_adapted, indent=1))
    (args.work / "results.json").write_text(json.dumps({"recorders": results, "pooled": table,
                                                        "pooled_where_adapted": where_adapted}, indent=1) + "\n")


if __name__ == "__main__":
    main()
