"""Every way of adapting tried on the held-out-recorder protocol, kept or not, with pooled figures:
false events per hour of background (Poisson 95 %) and event recall on each recorder's evaluation
recordings.

    PYTHONPATH=. python bench/adapt_attempts.py [--work /tmp/adapt_heldout]

Run after ``bench/adapt_heldout.py`` (same ``--work``): it reuses each recorder's recordings, truth,
reviews and fold parent. Each attempt is fitted on the reviews (and, where said, the background
windows ``adapt`` takes beside them) and decided exactly as the recorder decides, from the members'
outputs on every evaluation window (``training.adapt.recording_windows``, same windows and
batches as ``Analyzer``; the parent's and thresholds' counts are checked against
``adapt_heldout``'s Analyzer runs). Two rows are bounds, not adaptations: a head trained on the true
label of every window of the review half, and one trained on the evaluation half itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from edgemon.analysis.merging import BRIDGE, EventMerger, WindowVote
from edgemon.analysis.windows import WindowSpec
from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.decisions import OperatingPoint, apply_thresholds
from edgemon.analysis.ensemble import Ensemble, majority_vote
from training.adapt import AdaptConfig, AdaptError, reviewed_windows
from training.adapt_fit import fit_candidate, fit_correction, fit_head, fit_operating_point, fit_veto
from training.adapt_decisions import decide, event_scores, grouped_folds
from training.adapt_windows import recording_windows
from training.adapted_bundle import parent_point

from adapt_heldout import pooled   # noqa: E402  (bench/ is on sys.path when run as a script)


SUMMED = tuple(np.round(np.arange(0.5, 3.01, 0.25), 2).tolist())      # summed window confidence an event needs
OPENING = tuple(np.round(np.arange(0.30, 0.661, 0.02), 2).tolist())    # the level one of its windows must reach


def counts(windows, member_probs, bundle, point: OperatingPoint, spans) -> dict:
    """The recorder's events from one recording's window outputs, scored as ``site_sim.field_counts``."""
    background = bundle.labels.index(bundle.background_label)
    votes = majority_vote(member_probs)
    labels = apply_thresholds(votes.winner, votes.confidence, bundle.labels, point.thresholds, background)
    frame_s = bundle.frontend.hop_length / bundle.frontend.sample_rate
    # The recorder's merger (``Analyzer``): its hop and bridge, and each window's member
    # probabilities, which an event gate reads (the default's run-feature calibration rides in one).
    merger = EventMerger(bundle.labels, background, frame_s, point,
                         hop_frames=WindowSpec.from_seconds(bundle.window_s, bundle.hop_s, bundle.frontend).hop,
                         bridge=BRIDGE)
    events = merger.merge([WindowVote(int(s), int(n), int(label), float(c), tuple(int(m) for m in ml),
                                      tuple(tuple(map(float, m[w])) for m in member_probs))
                           for w, (s, n, label, c, ml) in enumerate(zip(windows.starts, windows.lengths, labels,
                                                                        votes.confidence, votes.member_labels.T))],
                          windows.duration_s)
    false = sum(not any(lab == e.label and a < e.end_s and e.start_s < b for a, b, lab in spans) for e in events)
    calls = [(a, b, lab) for a, b, lab in spans if lab != "background"]
    found = sum(any(e.label == lab and a < e.end_s and e.start_s < b for e in events) for a, b, lab in calls)
    return {"false_events": false, "background_h": sum(b - a for a, b, lab in spans if lab == "background") / 3600,
            "calls": len(calls), "found": found}


def window_truth(windows, spans, labels, frame_s) -> np.ndarray:
    """Each window's true class: the clip it overlaps most."""
    out = []
    for s, n in zip(windows.starts, windows.lengths):
        overlap = [(min((s + n) * frame_s, b) - max(s * frame_s, a), lab) for a, b, lab in spans]
        out.append(labels.index(max(overlap)[1]))
    return np.array(out)


def head_on(data, config, background, *, extra=True, balanced=False, l2=None, only=None):
    """A site head on the reviews, with or without the background windows, natural or class-balanced,
    correcting every class's logit or ``only`` one."""
    if not extra:
        data = dataclasses.replace(data, whole=None)
    config = dataclasses.replace(config, l2=config.l2 if l2 is None else l2)
    if not balanced and only is None:
        return fit_head(data, data.probs.shape[2], config, background)
    weight = 1.0 / np.bincount(data.detection)[data.detection]
    probs = np.concatenate([data.probs, data.extra_probs], axis=1)
    embeddings = np.concatenate([data.embeddings, data.extra_embeddings], axis=1)
    targets = np.concatenate([data.targets[data.detection], np.full(data.extra_probs.shape[1], background)])
    weight = np.concatenate([weight, np.ones(data.extra_probs.shape[1])])
    for c in np.unique(targets) if balanced else ():
        weight[targets == c] /= weight[targets == c].sum()
    return fit_correction(probs, embeddings, targets, weight, probs.shape[2], config.l2 / len(data.targets), config,
                          only)


def l2_by_inner_cv(data, bundle, config, background, grid=(0.1, 1.0, 10.0)) -> float:
    """The head's penalty that scores best (F1) on held-out reviewed recordings."""
    point, best = parent_point(bundle), None
    for l2 in grid:
        predicted = np.full(len(data.targets), background)
        for held in grouped_folds(data.groups, config.folds):
            train, test = data.subset(~held), data.subset(held)
            if len(train.targets):
                head = head_on(train, config, background, l2=l2)
                predicted[held] = decide(head.member_probs(test.probs, test.embeddings), test.detection,
                                         len(test.targets), bundle.labels, point, background)
        f1 = event_scores(predicted, data.targets, background)["f1"]
        if best is None or f1 > best[0] + 1e-9:
            best = (f1, l2)
    return best[1]


def attempts(ctx) -> dict:
    """name -> (head or None, operating point), each fitted from what ``ctx`` allows it."""
    bundle, ensemble, data, config = ctx["bundle"], ctx["ensemble"], ctx["data"], ctx["config"]
    background, parent = bundle.labels.index(bundle.background_label), parent_point(bundle)
    out = {"parent": (None, parent)}
    if data is None:       # too few reviews: adapt refuses, the recorder keeps the parent
        return out
    out["thresholds re-fitted (baseline)"] = fit_candidate("thresholds", bundle, ensemble, data, config)
    out["evidence rule only"] = (None, fit_operating_point(data.probs, data, bundle.labels, parent, background,
                                                           thresholds=False, evidence=config.evidence))
    out["thresholds + evidence rule"] = fit_candidate("thresholds+evidence", bundle, ensemble, data, config)
    # The same search with another aim: keep the baseline's hits on the reviews, then fewest false alarms.
    base = out["thresholds re-fitted (baseline)"][1]
    base_hits = event_scores(decide(data.probs, data.detection, len(data.targets), bundle.labels, base, background),
                             data.targets, background)["hits"]
    out["thresholds + evidence rule, keeping the baseline's reviewed hits"] = (None, fit_operating_point(
        data.probs, data, bundle.labels, parent, background, evidence=config.evidence,
        objective=lambda s: (min(s["hits"], base_hits), -s["false_alarms"])))
    out["head, reviews only, l2 1000 (first head)"] = (
        head_on(data, config, background, extra=False, l2=1000.0), parent)
    for l2 in (0.1, 1.0, 10.0):
        out[f"head, reviews + background windows, l2 {l2}"] = (head_on(data, config, background, l2=l2), parent)
    out["head, + background windows, class-balanced, l2 1"] = (head_on(data, config, background, balanced=True), parent)
    out["head on the background logit only, l2 1"] = (head_on(data, config, background, only=background), parent)
    out["head, l2 by grouped inner CV"] = (
        head_on(data, config, background, l2=l2_by_inner_cv(data, bundle, config, background)), parent)
    head = fit_head(data, len(bundle.labels), config, background)
    out["head + thresholds"] = fit_candidate("head+thresholds", bundle, ensemble, data, config, head)
    out["head + thresholds + evidence rule"] = (head, fit_operating_point(
        head.member_probs(data.probs, data.embeddings), data, bundle.labels, parent, background,
        evidence=config.evidence))
    veto, point = fit_candidate("veto+thresholds+evidence", bundle, ensemble, data, config)
    out["site veto + thresholds + evidence rule"] = (veto, point)
    out["site veto only (parent's point)"] = (veto, parent)
    out["site veto + thresholds re-fitted (the baseline's point)"] = (veto, out["thresholds re-fitted (baseline)"][1])
    out["site veto + thresholds + evidence rule, keeping the baseline's reviewed hits"] = (
        veto, out["thresholds + evidence rule, keeping the baseline's reviewed hits"][1])
    # The recorder's other evidence rules (summed confidence, an opening level) searched after the
    # threshold and windows, per class (fifth session).
    rules = fit_operating_point(data.probs, data, bundle.labels, parent, background, evidence=config.evidence,
                                summed=SUMMED, opening=OPENING)
    out["thresholds + evidence rule + summed confidence + opening level"] = (None, rules)
    out["site veto + thresholds + evidence rule + summed confidence + opening level"] = (veto, rules)
    for change in ({"veto_k": 1}, {"veto_unconfirmed_similarity": 0.9}, {"veto_min_similarity": 0.7}):
        varied = fit_veto(data, background, dataclasses.replace(config, **change))
        name = ", ".join(f"{k.removeprefix('veto_')} {v}" for k, v in change.items())
        out[f"site veto ({name}) + thresholds + evidence rule"] = (varied, point)
    for name, source in (("bound: head on every review-half window's truth", "pool"),
                         ("bound: head on the evaluation windows' truth (in-sample)", "eval")):
        windows = ctx[source]
        if windows:
            probs = np.concatenate([w.probs for w, _ in windows], axis=1)
            embeddings = np.concatenate([w.embeddings for w, _ in windows], axis=1)
            truth = np.concatenate([t for _, t in windows])
            out[name] = (fit_correction(probs, embeddings, truth, np.ones(len(truth)), len(bundle.labels), 0.01,
                                        config), parent)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapt_heldout"))
    args = parser.parse_args()
    results = json.loads((args.work / "results.json").read_text())["recorders"]
    config = AdaptConfig()
    per_recorder: dict[str, dict] = {}
    for recorder, row in results.items():
        root = args.work / recorder
        truth = json.loads((root / "truth.json").read_text())
        bundle = load_bundle(row["fold_parent"])
        ensemble = Ensemble(bundle)
        frame_s = bundle.frontend.hop_length / bundle.frontend.sample_rate
        names = sorted(truth)
        outputs = {n: recording_windows(ensemble, root / "recordings" / n) for n in names}
        try:
            data = reviewed_windows(bundle, ensemble, root / "site.db", root / "recordings", config)
            data = data if len(data.targets) >= config.min_reviews else None
        except AdaptError:
            data = None
        ctx = {"bundle": bundle, "ensemble": ensemble, "data": data, "config": config,
               **{part: [(outputs[n], window_truth(outputs[n], truth[n], bundle.labels, frame_s)) for n in chosen]
                  for part, chosen in (("pool", names[0::2]), ("eval", names[1::2]))}}
        mine = per_recorder[recorder] = {}
        for name, (head, point) in attempts(ctx).items():
            got = [counts(outputs[n], outputs[n].probs if head is None else
                          head.member_probs(outputs[n].probs, outputs[n].embeddings), bundle, point, truth[n])
                   for n in names[1::2]]
            mine[name] = ({k: sum(g[k] for g in got) for k in got[0]} if got else
                          {"false_events": 0, "background_h": 0.0, "calls": 0, "found": 0})
        checked = mine["parent"]
        if {k: checked[k] for k in ("false_events", "found")} != {k: row["field"]["parent"][k] for k in ("false_events", "found")}:
            raise SystemExit(f"{recorder}: emulated parent {checked} differs from the Analyzer's {row['field']['parent']}")
        print(recorder, "done", flush=True)
    names = list(dict.fromkeys(name for rows in per_recorder.values() for name in rows))
    for name in names:
        # a recorder with too few reviews keeps its parent, whatever the attempt
        p = pooled([rows.get(name, rows["parent"]) for rows in per_recorder.values()])
        print(f"| {name} | {p['false_per_h']} [{p['false_per_h_95'][0]}, {p['false_per_h_95'][1]}] ({p['false_events']}) "
              f"| {p['recall']:.3f} ({p['found']}/{p['calls']}) |")


if __name__ == "__main__":
    main()
