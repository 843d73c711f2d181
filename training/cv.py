"""``edgemon-train cv``: cross-validation over train + devel with folds grouped by recorder.

No recorder is in both training and validation, so the score says how a recipe does on a recorder
it never heard; folds are stratified by class as far as the groups allow. For network recipes the
epoch is chosen once per recipe, where the mean validation UAR over folds peaks, and every fold is
scored at that epoch (the pooled confusion matrix too). A recipe that averages its last epochs'
weights (``OptimConfig.average_last``) chooses nothing on the folds: each fold's averaged model is
scored, exported (``<out>/<recipe>/foldN.onnx``) and run over its validation clips in the
recorder's windows, and those held-out windows choose the per-class thresholds. The fold models
are then an ensemble selected by grouped CV (``training.bundling.bundle_cv``). Test is not touched.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from edgemon.frontend import FrontendConfig
from edgemon.segmenter import WindowSpec, cut_windows
from training import baseline
from training.augment import AugmentConfig
from training.data import Split
from training.evaluate import confusion, per_class_recall, plot_confusion, uar
from training.export import export_onnx
from training.model import ModelConfig, PrimateBiLSTM
from training.thresholds import field_summary
from training.train import OptimConfig, predict, train

DEFAULT_MAX_FALSE_RATE = 0.1  # of background windows (4 s, 2 s hop) stored as a call


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A way to train: the baseline, or a network with its three configs and its frontend."""

    name: str
    model: ModelConfig | None = None
    optim: OptimConfig | None = None
    augment: AugmentConfig | None = None
    frontend: FrontendConfig = FrontendConfig()

    @property
    def averaged(self) -> bool:
        return self.optim is not None and self.optim.average_last > 0


@dataclasses.dataclass
class FoldResult:
    per_epoch: list[np.ndarray]            # validation predictions after each epoch (one for the baseline)
    model: PrimateBiLSTM | None = None     # the averaged model, for averaged recipes
    final: np.ndarray | None = None        # its validation predictions


def grouped_folds(split: Split, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; each recorder falls in exactly one validation fold."""
    groups = [c.recorder or c.path.name for c in split.clips]
    if len(set(groups)) < 2:  # one recorder only (an inner split of a small fold): plain stratified
        folder = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(folder.split(np.zeros(len(split)), split.targets))
    folder = StratifiedGroupKFold(n_splits=min(k, len(set(groups))), shuffle=True, random_state=seed)
    return list(folder.split(np.zeros(len(split)), split.targets, groups))


def validation_recorders(split: Split, folds) -> list[list[str]]:
    """Each fold's held-out recorders, as cv.json records them (and cv-ensemble checks them)."""
    return [sorted({split.clips[i].recorder for i in va}) for _, va in folds]


def run_fold(recipe: Recipe, train_split: Split, val: Split,
             on_epoch: Callable[[int, dict], None] | None = None) -> FoldResult:
    """Train on one fold; validation predictions per epoch (and of the averaged model).
    ``on_epoch(epoch, record)`` hears each epoch, as ``train`` tells it."""
    if recipe.model is None:  # C chosen on an inner split grouped by recorder, never on ``val``
        inner_train, inner_val = grouped_folds(train_split, 3)[0]
        chosen = baseline.fit_baseline(train_split.subset(inner_train), train_split.subset(inner_val)).c
        final = baseline.fit_baseline(train_split, train_split, c_grid=(chosen,))
        return FoldResult([baseline.predict(final, val)])
    predictions: list[np.ndarray] = []
    model = dataclasses.replace(recipe.model, n_classes=len(train_split.labels),
                                n_mels=train_split.frontend.n_features)
    def keep(epoch: int, record: dict) -> None:
        predictions.append(record["predictions"])
        if on_epoch is not None:
            on_epoch(epoch, record)

    result = train(model, recipe.optim, recipe.augment, train_split, val, progress=False, log_epochs=False,
                   on_epoch=keep)
    if not recipe.averaged:
        return FoldResult(predictions)
    probs, _ = predict(result.model, val.features)
    return FoldResult(predictions, result.model, probs.argmax(1))


def held_out_windows(model: PrimateBiLSTM, val: Split, spec: WindowSpec) -> dict[str, np.ndarray]:
    """The model's vote on each recorder window of each validation clip: clip index, winner, confidence."""
    clip, winner, confidence = [], [], []
    for i, features in enumerate(val.features):
        windows, _ = cut_windows(features, spec)
        probs, _ = predict(model, list(windows))
        clip.append(np.full(len(probs), i))
        winner.append(probs.argmax(1))
        confidence.append(probs.max(1))
    return {"clip": np.concatenate(clip), "winner": np.concatenate(winner),
            "confidence": np.concatenate(confidence).astype(np.float32)}


def cross_validate(recipes: list[Recipe], data: Split, k: int, out: Path, seed: int = 0,
                   load=None, window_s: float = 4.0, hop_s: float = 2.0,
                   max_false_rate: float = DEFAULT_MAX_FALSE_RATE,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Score every recipe on the same grouped folds; write ``cv.json`` and pooled confusions.

    ``load(frontend)`` gives ``data`` computed by another frontend, for recipes that need one.
    ``progress(event)`` hears every epoch and the end of every fold: ``{"recipe", "fold"`` (from 1),
    ``"folds", "epoch", "epochs"`` (both None at a fold's end), ``"uar"`` (the fold's validation
    UAR after that epoch; None at a fold's end)``}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    folds = grouped_folds(data, k, seed)
    n_classes = len(data.labels)
    inputs = {data.frontend: data}
    results = {}
    for recipe in recipes:
        if recipe.frontend not in inputs:
            inputs[recipe.frontend] = load(recipe.frontend)
        split = inputs[recipe.frontend]
        per_fold = [_fold_with_progress(recipe, split, tr, va, n, len(folds), progress)
                    for n, (tr, va) in enumerate(folds, 1)]
        epochs = min(len(f.per_epoch) for f in per_fold)
        curve = [np.mean([uar(data.targets[va], f.per_epoch[e], n_classes) for (_, va), f in zip(folds, per_fold)])
                 for e in range(epochs)]
        chosen = int(np.argmax(curve))
        scored = [f.final if recipe.averaged else f.per_epoch[chosen] for f in per_fold]
        scores = [uar(data.targets[va], p, n_classes) for (_, va), p in zip(folds, scored)]
        pooled = sum(confusion(data.targets[va], p, n_classes) for (_, va), p in zip(folds, scored))
        plot_confusion(pooled, data.labels, out / f"cv_confusion_{recipe.name}.png",
                       f"{recipe.name}: grouped CV, pooled")
        results[recipe.name] = {
            "uar_mean": float(np.mean(scores)), "uar_std": float(np.std(scores)), "fold_uar": scores,
            "epoch": None if recipe.model is None or recipe.averaged else chosen + 1,
            "averaged_last": recipe.optim.average_last if recipe.averaged else None,
            "frontend": recipe.frontend.kind,
            "recall": dict(zip(data.labels, map(float, per_class_recall(pooled)))),
            "confusion": pooled.tolist(), "mean_curve": [float(c) for c in curve]}
        if recipe.averaged:
            results[recipe.name].update(_keep_fold_models(
                recipe, split, folds, per_fold, out / recipe.name, window_s, hop_s, max_false_rate))
    folds_info = [{"validation_recorders": recorders, "n": int(len(va))}
                  for recorders, (_, va) in zip(validation_recorders(data, folds), folds)]
    summary = {"k": k, "seed": seed, "folds": folds_info, "recipes": results}
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _fold_with_progress(recipe: Recipe, split: Split, tr: np.ndarray, va: np.ndarray, fold: int, folds: int,
                        progress: Callable[[dict], None] | None) -> FoldResult:
    """``run_fold`` on one fold, telling ``progress`` (when given) of each epoch and of the end."""
    if progress is None:
        return run_fold(recipe, split.subset(tr), split.subset(va))
    event = {"recipe": recipe.name, "fold": fold, "folds": folds}
    epochs = recipe.optim.epochs if recipe.optim is not None else None
    result = run_fold(recipe, split.subset(tr), split.subset(va), lambda epoch, record: progress(
        {**event, "epoch": epoch, "epochs": epochs, "uar": record["devel_uar"]}))
    progress({**event, "epoch": None, "epochs": None, "uar": None})
    return result


def _keep_fold_models(recipe: Recipe, split: Split, folds, per_fold: list[FoldResult], out: Path,
                      window_s: float, hop_s: float, max_false_rate: float) -> dict:
    """Export the fold models; choose thresholds on their held-out windows; score them there."""
    out.mkdir(parents=True, exist_ok=True)
    spec = WindowSpec.from_seconds(window_s, hop_s, split.frontend)
    windows = {"clip": [], "winner": [], "confidence": []}
    members = []
    for n, ((_, va), fold) in enumerate(zip(folds, per_fold)):
        path = export_onnx(fold.model, out / f"fold{n}.onnx", split.labels, split.frontend,
                           {"selected_by": "grouped cross-validation", "recipe": recipe.name,
                            "validation_uar": uar(split.targets[va], fold.final, len(split.labels))})
        members.append(path.name)
        held = held_out_windows(fold.model, split.subset(va), spec)
        windows["clip"].append(va[held["clip"]])
        windows["winner"].append(held["winner"])
        windows["confidence"].append(held["confidence"])
    windows = {k: np.concatenate(v) for k, v in windows.items()}
    np.savez(out / "held_out_windows.npz", target=split.targets[windows["clip"]], **windows)
    return {"members": members, "window_s": window_s, "hop_s": hop_s, "frontend_config": split.frontend.to_dict(),
            "labels": list(split.labels),
            **field_summary(windows, split.targets, split.labels, max_false_rate)}
