"""Run directories: train or fit the baseline on the splits, evaluate, and write every artifact.

A run directory holds ``config.json``, ``history.json``, ``metrics.json`` (devel and test),
confusion-matrix PNGs, ``checkpoint.pt`` (weights + configs + labels + frontend) and
``model.onnx``. Test is evaluated once, after the model is chosen on devel. ``save_run`` writes
the model's part of it for ``fit`` and for every trial of the search; ``save_model`` the ONNX
file alone (with its config), as ``cv`` keeps its fold models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import pickle
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.frontend import FrontendConfig
from training import baseline as baseline_mod
from training.augment import AugmentConfig
from training.data import BACKGROUND, Split, check_train_labels, data_identity, load_pool, load_split, merge
from training.errors import DataError
from training.out_dirs import as_out_error, check_out_dir, holding_out_dir, write_whole
from training.evaluate import metrics, write_report
from training.field import score_field, windows_of
from training.field_votes import field_votes
from training.model import ModelConfig, PrimateBiLSTM, count_parameters
from training.onnx_export import export_onnx
from training.recipes import HOP_S, WINDOW_S
from training.recorder_votes import windowed_metrics
from training.thresholds import field_scores
from training.train import OptimConfig, predict, train

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Splits:
    train: Split
    devel: Split
    test: Split

    @classmethod
    def load(cls, data_dir: Path, frontend: FrontendConfig = FrontendConfig(), pool: bool = False) -> "Splits":
        """``pool``: lab/pool.csv will join training (checked against devel and test)."""
        check_train_labels(data_dir, ("devel", "test"), pool)
        train = load_split(data_dir, "train", frontend=frontend)
        return cls(train, load_split(data_dir, "devel", train.labels, frontend),
                   load_split(data_dir, "test", train.labels, frontend))


def _write_json(path: Path, data) -> None:
    write_whole(path, (json.dumps(data, indent=2, default=str) + "\n").encode())


def run_config(model_config: ModelConfig, optim: OptimConfig, aug: AugmentConfig, frontend: FrontendConfig,
               labels: tuple[str, ...], window_s: float, hop_s: float, **extra) -> dict:
    """What a model was trained with and for which recorder window, plus ``extra``: its
    ``config.json``, and its ONNX file's ``hyperparameters``."""
    return {"model": dataclasses.asdict(model_config), "optim": dataclasses.asdict(optim),
            "augment": dataclasses.asdict(aug), "frontend": frontend.to_dict(), "window_s": window_s,
            "hop_s": hop_s, "labels": list(labels), **extra}


def save_model(path: Path, model: PrimateBiLSTM, config: dict, provenance: dict) -> Path:
    """``model`` as ONNX at ``path``; its metadata carry ``provenance`` and ``config`` (a
    ``run_config``) as its hyper-parameters. Returns ``path``."""
    return export_onnx(model, path, tuple(config["labels"]), FrontendConfig.from_dict(config["frontend"]),
                       {**provenance, "hyperparameters": config})


def save_run(run_dir: Path, model: PrimateBiLSTM, config: dict, best_epoch: int, provenance: dict) -> Path:
    """A trained model as a run directory: ``config.json``, ``checkpoint.pt`` (weights, config and
    best epoch) and ``model.onnx`` (``save_model``). Returns the ONNX file's path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", config)
    checkpoint = io.BytesIO()   # written whole: torch.save into a full disk left a cut-short file, a traceback
    torch.save({"state_dict": model.state_dict(), "config": config, "best_epoch": best_epoch}, checkpoint)
    write_whole(run_dir / "checkpoint.pt", checkpoint.getvalue())
    return save_model(run_dir / "model.onnx", model, config, provenance)


def score_bundle(bundle_dir: Path, data_dir: Path, split_name: str = "test") -> dict:
    """A bundle scored as the recorder runs it, on one split: its windows, the ensemble's vote,
    the bundle's thresholds, one label per clip; plus the share of background windows stored as
    a call. Scores without thresholds too, to show what they cost. ``field``: the field measure
    at the bundle's own operating point and calibration (``training.field.score_field``)."""
    bundle = load_bundle(bundle_dir)
    split = load_split(data_dir, split_name, tuple(bundle.labels), bundle.frontend)
    votes = field_votes([bundle], split, [(None, np.arange(len(split)))])  # one fold: the split, in order
    windows = windows_of(votes)
    trained_on = bundle.manifest.get("trained_on") or []
    seen = [m for m in trained_on if split_name in str(m).split("+")]
    if seen:   # a newcomer read a devel score of members trained on devel as a held-out one
        log.warning("%s: %d of the bundle's %d member(s) were trained on %s: these scores are not held out",
                    bundle.bundle_id, len(seen), len(trained_on), split_name)
    return {"bundle_id": bundle.bundle_id, "split": split_name, "clips": len(split),
            **({"note": f"members trained on {split_name}: not a held-out score"} if seen else {}),
            "thresholds": bundle.thresholds,
            "at_thresholds": field_scores(windows, split.targets, split.labels, bundle.thresholds),
            "untuned": field_scores(windows, split.targets, split.labels, {}),
            "field": score_field(bundle, votes)}


def fit_run(data_dir: Path, run_dir: Path, model_config: ModelConfig, optim: OptimConfig,
            aug: AugmentConfig, window_s: float = WINDOW_S, hop_s: float = HOP_S,
            frontend: FrontendConfig = FrontendConfig(), progress: bool = True,
            with_devel: bool = False, pool: bool = False) -> dict:
    """Train one model on train, choose its epoch on devel, evaluate devel and test, export.

    ``with_devel`` trains on train + devel (a recipe already chosen by grouped CV, weights averaged,
    so nothing is chosen on devel): more recorders heard; devel's scores then say nothing."""
    if with_devel and not optim.average_last:
        raise DataError("training on train + devel needs --average-last: no epoch can be chosen on devel")
    with holding_out_dir(run_dir):
        try:
            return _fit_run(data_dir, run_dir, model_config, optim, aug, window_s, hop_s, frontend, progress,
                            with_devel, pool)
        except OSError as e:   # a full disk while the run is written: named as --out, not a bare errno
            raise as_out_error(e, run_dir) from None


@contextlib.contextmanager
def _signals_held(what: str):
    """SIGINT and SIGTERM held while ``what`` is done, the list of those held given to the body: a
    Ctrl-C once training had ended (while devel and test were scored, the model exported, the
    bundle made) lost the model of a whole training, or left the run without its summary, and
    said nothing (a trial). A second signal interrupts at once."""
    if threading.current_thread() is not threading.main_thread():   # signals reach the main thread only
        yield []
        return
    held: list[int] = []

    def hold(signum, frame):
        if held:
            raise KeyboardInterrupt
        held.append(signum)
        log.warning("signal %d: %s first (again to stop at once, leaving it unfinished)", signum, what)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _fit_run(data_dir: Path, run_dir: Path, model_config: ModelConfig, optim: OptimConfig, aug: AugmentConfig,
             window_s: float, hop_s: float, frontend: FrontendConfig, progress: bool, with_devel: bool,
             pool: bool) -> dict:
    check_out_dir(run_dir)
    splits = Splits.load(data_dir, frontend, pool)
    run_dir.mkdir(parents=True, exist_ok=True)   # after the data: a wrong --data leaves nothing behind
    training_split = merge(splits.train, splits.devel) if with_devel else splits.train
    extra = load_pool(data_dir, splits.train.labels, frontend) if pool else None
    if extra is not None:  # train-only clips: never cut from a devel or test recording
        training_split = merge(training_split, extra)
    model_config = dataclasses.replace(model_config, n_classes=len(splits.train.labels),
                                       n_mels=frontend.n_features)
    config = run_config(model_config, optim, aug, frontend, splits.train.labels, window_s, hop_s,
                        trained_on=training_split.name, data=data_identity(data_dir))
    _write_json(run_dir / "config.json", config)  # before training: a run that fails still says what it was
    # A Ctrl-C or SIGTERM in an epoch keeps what the finished ones gave, written as a whole run.
    result = train(model_config, optim, aug, training_split, splits.devel, progress=progress, keep_on_interrupt=True)
    with _signals_held(f"writing {run_dir}") as held:
        _write_json(run_dir / "history.json", result.history)
        results = {}
        for split in (splits.devel, splits.test):
            probs, _ = predict(result.model, split.features)
            results[split.name] = metrics(split.targets, probs.argmax(1), split.labels)
        write_report(run_dir, results)
        onnx_path = save_run(run_dir, result.model, config, result.best_epoch,
                             {"devel_uar": results["devel"]["uar"], "test_uar": results["test"]["uar"],
                              "best_epoch": result.best_epoch, "data": config["data"]})
        from training.bundling import complete_bundle   # here: bundling reads runs' files, not runs

        # Complete as `bundle` writes one (a review: no label names, a confidence ceiling of 1, no
        # self-check), and saying what it learnt from, so that `score` can tell a held-out split.
        bundle = write_bundle(run_dir / "bundle", [onnx_path], list(splits.train.labels), frontend=frontend,
                              window_s=window_s, hop_s=hop_s, devel_uars=[results["devel"]["uar"]],
                              test_uars=[results["test"]["uar"]], background_label=BACKGROUND,
                              extra={"trained_on": [training_split.name], "source_runs": [run_dir.name]},
                              finish=functools.partial(complete_bundle, data_dir=data_dir))
        windowed = {s.name: windowed_metrics(bundle, s) for s in (splits.devel, splits.test)}
        write_report(run_dir, windowed, prefix="windowed_")
        summary = {"run_dir": str(run_dir), "parameters": count_parameters(result.model),
                   "best_epoch": result.best_epoch,
                   "clip": {k: v["uar"] for k, v in results.items()},
                   "windowed": {k: v["uar"] for k, v in windowed.items()},
                   "recall": {k: v["recall"] for k, v in results.items()},
                   **({"stopped_in_epoch": result.stopped_in, "epochs_done": len(result.history)}
                      if result.stopped_in else {})}
        _write_json(run_dir / "summary.json", summary)
    return {**summary, **({"signal_while_written": held[0]} if held else {})}


def baseline_run(data_dir: Path, run_dir: Path, frontend: FrontendConfig = FrontendConfig()) -> dict:
    """Functionals + linear SVM with C chosen on devel; devel and test metrics and plots."""
    with holding_out_dir(run_dir):
        try:
            return _baseline_run(data_dir, run_dir, frontend)
        except OSError as e:
            raise as_out_error(e, run_dir) from None


def _baseline_run(data_dir: Path, run_dir: Path, frontend: FrontendConfig) -> dict:
    check_out_dir(run_dir)
    splits = Splits.load(data_dir, frontend)
    run_dir.mkdir(parents=True, exist_ok=True)
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
