"""Run directories: train or fit the baseline on the splits, evaluate, and write every artifact.

A run directory holds ``config.json``, ``history.json``, ``metrics.json`` (devel and test),
confusion-matrix PNGs, ``checkpoint.pt`` (weights + configs + labels + frontend) and
``model.onnx``. Test is evaluated once, after the model is chosen on devel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import torch

from edgemon.analysis.bundle import Bundle, load_bundle, write_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.windows import WindowSpec, cut_windows
from training import baseline as baseline_mod
from training.augment import AugmentConfig
from training.data import BACKGROUND, Split, data_identity, load_pool, load_split, merge
from training.errors import DataError
from training.evaluate import metrics, write_report
from training.export import export_onnx
from training.model import ModelConfig, count_parameters
from training.thresholds import clip_labels, field_scores
from training.train import OptimConfig, predict, train

log = logging.getLogger(__name__)

DEFAULT_WINDOW_S = 4.0
DEFAULT_HOP_S = 2.0


@dataclasses.dataclass
class Splits:
    train: Split
    devel: Split
    test: Split

    @classmethod
    def load(cls, data_dir: Path, frontend: FrontendConfig = FrontendConfig()) -> "Splits":
        train = load_split(data_dir, "train", frontend=frontend)
        return cls(train, load_split(data_dir, "devel", train.labels, frontend),
                   load_split(data_dir, "test", train.labels, frontend))


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def bundle_votes(bundle: Bundle, split: Split) -> dict[str, np.ndarray]:
    """The bundle's ensemble vote on every recorder window of every clip: clip index, winner,
    confidence (as the recorder computes them, before thresholds)."""
    ensemble = Ensemble(bundle)
    spec = WindowSpec.from_seconds(bundle.window_s, bundle.hop_s, bundle.frontend)
    clip, winner, confidence = [], [], []
    for i, features in enumerate(split.features):
        votes = ensemble.vote(cut_windows(features, spec)[0])
        clip.append(np.full(len(votes.winner), i))
        winner.append(votes.winner)
        confidence.append(votes.confidence)
    return {"clip": np.concatenate(clip), "winner": np.concatenate(winner),
            "confidence": np.concatenate(confidence)}


def windowed_metrics(bundle: Bundle, split: Split) -> dict:
    """UAR as the recorder sees it: the bundle's windows, the ensemble's vote, one label per clip."""
    windows = bundle_votes(bundle, split)
    background = bundle.labels.index(bundle.background_label)
    predictions = clip_labels(windows["winner"], windows["confidence"], windows["clip"], len(split), background)
    return metrics(split.targets, predictions, split.labels)


def score_bundle(bundle_dir: Path, data_dir: Path, split_name: str = "test") -> dict:
    """A bundle scored as the recorder runs it, on one split: its windows, the ensemble's vote,
    the bundle's thresholds, one label per clip; plus the share of background windows stored as
    a call. Scores without thresholds too, to show what they cost. ``field``: the field measure
    at the bundle's own operating point and calibration (``training.field.score_field``)."""
    from training.field import field_votes, score_field, windows_of

    bundle = load_bundle(bundle_dir)
    split = load_split(data_dir, split_name, tuple(bundle.labels), bundle.frontend)
    votes = field_votes([bundle], split, [(None, np.arange(len(split)))])  # one fold: the split, in order
    windows = windows_of(votes)
    return {"bundle_id": bundle.bundle_id, "split": split_name, "clips": len(split),
            "thresholds": bundle.thresholds,
            "at_thresholds": field_scores(windows, split.targets, split.labels, bundle.thresholds),
            "untuned": field_scores(windows, split.targets, split.labels, {}),
            "field": score_field(bundle, votes)}


def fit_run(data_dir: Path, run_dir: Path, model_config: ModelConfig, optim: OptimConfig,
            aug: AugmentConfig, window_s: float = DEFAULT_WINDOW_S, hop_s: float = DEFAULT_HOP_S,
            frontend: FrontendConfig = FrontendConfig(), progress: bool = True,
            with_devel: bool = False, pool: bool = False) -> dict:
    """Train one model on train, choose its epoch on devel, evaluate devel and test, export.

    ``with_devel`` trains on train + devel (a recipe already chosen by grouped CV, weights averaged,
    so nothing is chosen on devel): more recorders heard; devel's scores then say nothing."""
    if with_devel and not optim.average_last:
        raise DataError("training on train + devel needs --average-last: no epoch can be chosen on devel")
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = Splits.load(data_dir, frontend)
    training_split = merge(splits.train, splits.devel) if with_devel else splits.train
    extra = load_pool(data_dir, splits.train.labels, frontend) if pool else None
    if extra is not None:  # train-only clips: never cut from a devel or test recording
        training_split = merge(training_split, extra)
    model_config = dataclasses.replace(model_config, n_classes=len(splits.train.labels),
                                       n_mels=frontend.n_features)
    config = {"model": dataclasses.asdict(model_config), "optim": dataclasses.asdict(optim),
              "augment": dataclasses.asdict(aug), "frontend": frontend.to_dict(),
              "window_s": window_s, "hop_s": hop_s, "labels": splits.train.labels,
              "trained_on": training_split.name, "data": data_identity(data_dir)}
    _write_json(run_dir / "config.json", config)
    result = train(model_config, optim, aug, training_split, splits.devel, progress=progress)
    _write_json(run_dir / "history.json", result.history)
    results = {}
    for split in (splits.devel, splits.test):
        probs, _ = predict(result.model, split.features)
        results[split.name] = metrics(split.targets, probs.argmax(1), split.labels)
    write_report(run_dir, results)
    torch.save({"state_dict": result.model.state_dict(), "config": config,
                "best_epoch": result.best_epoch}, run_dir / "checkpoint.pt")
    provenance = {"devel_uar": results["devel"]["uar"], "test_uar": results["test"]["uar"],
                  "best_epoch": result.best_epoch, "hyperparameters": config, "data": config["data"]}
    onnx_path = export_onnx(result.model, run_dir / "model.onnx", splits.train.labels, frontend, provenance)
    bundle = write_bundle(run_dir / "bundle", [onnx_path], list(splits.train.labels), frontend=frontend,
                          window_s=window_s, hop_s=hop_s, devel_uars=[results["devel"]["uar"]],
                          test_uars=[results["test"]["uar"]], background_label=BACKGROUND)
    windowed = {s.name: windowed_metrics(bundle, s) for s in (splits.devel, splits.test)}
    write_report(run_dir, windowed, prefix="windowed_")
    summary = {"run_dir": str(run_dir), "parameters": count_parameters(result.model),
               "best_epoch": result.best_epoch,
               "clip": {k: v["uar"] for k, v in results.items()},
               "windowed": {k: v["uar"] for k, v in windowed.items()},
               "recall": {k: v["recall"] for k, v in results.items()}}
    _write_json(run_dir / "summary.json", summary)
    return summary


def baseline_run(data_dir: Path, run_dir: Path, frontend: FrontendConfig = FrontendConfig()) -> dict:
    """Functionals + linear SVM with C chosen on devel; devel and test metrics and plots."""
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = Splits.load(data_dir, frontend)
    result = baseline_mod.fit_baseline(splits.train, splits.devel)
    results = {s.name: metrics(s.targets, baseline_mod.predict(result, s), s.labels)
               for s in (splits.devel, splits.test)}
    write_report(run_dir, results)
    with open(run_dir / "baseline.pkl", "wb") as f:
        pickle.dump(result.model, f)
    summary = {"run_dir": str(run_dir), "C": result.c,
               "devel_uar_by_C": {str(k): v for k, v in result.devel_uar_by_c.items()},
               "clip": {k: v["uar"] for k, v in results.items()},
               "recall": {k: v["recall"] for k, v in results.items()}}
    _write_json(run_dir / "summary.json", summary)
    return summary
