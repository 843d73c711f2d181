"""``edgemon-train ensemble``: the search's top-k trials as one bundle. Select by devel UAR,
score each member's and the majority vote's whole-clip UAR, write the bundle, and score it on the
recorder's windows (``training.recorder_votes``)."""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import optuna

from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.ensemble import Ensemble, majority_vote
from edgemon.analysis.frontend import FrontendConfig
from training.bundling import check_reference_data, complete_bundle, reference_from
from training.data import Split, check_same_labels
from training.errors import DataError
from training.evaluate import metrics, write_report
from training.onnx_export import quantize_int8
from training.recorder_votes import windowed_metrics

log = logging.getLogger(__name__)


def select_members(study: optuna.Study, top: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` completed trials by devel UAR whose saved model is at hand."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("run_dir") and (Path(t.user_attrs["run_dir"]) / "model.onnx").is_file()]
    done.sort(key=lambda t: (-t.value, t.number))
    if not done:
        raise DataError(f"study {study.study_name}: no completed trial with a saved model")
    if len(done) < top:   # said, not refused: a search still running may be bundled early on purpose
        log.warning("study %s: only %d completed trial(s) with a saved model, not the %d asked: the bundle has %d "
                    "member(s)%s", study.study_name, len(done), top, len(done),
                    " (an even number: ties are broken by the mean probability)" if len(done) % 2 == 0 else "")
    return done[:top]


def member_probs(ensemble: Ensemble, split: Split) -> np.ndarray:
    """Whole-clip probabilities of every member: ``[M, n, C]``."""
    return np.stack([ensemble.member_probs(f[None])[:, 0] for f in split.features], axis=1)


def evaluate(ensemble: Ensemble, split: Split) -> dict:
    probs = member_probs(ensemble, split)
    members = [metrics(split.targets, p.argmax(1), split.labels) for p in probs]
    vote = metrics(split.targets, majority_vote(probs).winner, split.labels)
    return {"members": members, "ensemble": vote}


def build_ensemble(study: optuna.Study, out: Path, devel: Split, test: Split, top: int = 5,
                   int8: bool = False, reference_data: Path | None = None) -> dict:
    """Write the bundle of the best ``top`` trials; report members' and vote's devel/test UAR.
    Like ``bundle``'s, it gets label names, its confidence ceiling and, from ``reference_data``,
    the self-check's reference windows (``bundling.complete_bundle``)."""
    check_reference_data(reference_data)
    trials = select_members(study, top)
    dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    config = json.loads((dirs[0] / "config.json").read_text())
    # the members' outputs are scored by index against these splits' classes: another set's (the
    # Borneo default for a search on one's own clips) gave a wrong UAR with exit 0 (a trial)
    check_same_labels(config["labels"], devel.labels, "the search's trials", reference_data)
    reference = reference_from(reference_data, config["labels"], config["window_s"],
                               FrontendConfig.from_dict(config["frontend"]))
    with tempfile.TemporaryDirectory() as tmp:
        files = [quantize_int8(d / "model.onnx", Path(tmp) / f"{i}.onnx") if int8 else d / "model.onnx"
                 for i, d in enumerate(dirs)]
        staging = write_bundle(Path(tmp) / "staging", files, config["labels"],
                               frontend=FrontendConfig.from_dict(config["frontend"]),
                               window_s=config["window_s"], hop_s=config["hop_s"])
        ensemble = Ensemble(staging)
        results = {s.name: evaluate(ensemble, s) for s in (devel, test)}
        bundle = write_bundle(out, files, config["labels"], frontend=staging.frontend,
                              window_s=config["window_s"], hop_s=config["hop_s"],
                              devel_uars=[m["uar"] for m in results["devel"]["members"]],
                              test_uars=[m["uar"] for m in results["test"]["members"]],
                              precision="int8" if int8 else "fp32",
                              extra={"study": study.study_name, "trials": [t.number for t in trials],
                                     "trained_on": [json.loads((d / "config.json").read_text()).get("trained_on", "train")
                                                    for d in dirs],
                                     "ensemble_devel_uar": results["devel"]["ensemble"]["uar"],
                                     "ensemble_test_uar": results["test"]["ensemble"]["uar"]},
                              finish=functools.partial(complete_bundle, reference=reference, names_from=reference_data))
    windowed = {s.name: windowed_metrics(bundle, s) for s in (devel, test)}
    report_dir = out.parent / f"{out.name}-report"
    write_report(report_dir, {k: v["ensemble"] for k, v in results.items()}, prefix="ensemble_")
    write_report(report_dir, {k: v["members"][0] for k, v in results.items()}, prefix="best_")
    write_report(report_dir, windowed, prefix="ensemble_windowed_")
    summary = {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "self_check": bundle.self_check is not None,
               "trials": [t.number for t in trials], "trial_devel_uar": [t.value for t in trials],
               **{f"{split}_uar": {"members": [m["uar"] for m in r["members"]], "ensemble": r["ensemble"]["uar"]}
                  for split, r in results.items()},
               "windowed_uar": {k: v["uar"] for k, v in windowed.items()}}
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
