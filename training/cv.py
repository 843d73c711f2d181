"""``edgemon-train cv``: cross-validation over train + devel with folds grouped by recorder.

No recorder is in both training and validation, so the score says how a recipe does on a recorder
it never heard; folds are stratified by class as far as the groups allow. For network recipes the
epoch is chosen once per recipe, where the mean validation UAR over folds peaks, and every fold is
scored at that epoch (the pooled confusion matrix too). Test is not touched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from training import baseline
from training.augment import AugmentConfig
from training.data import Split
from training.evaluate import confusion, per_class_recall, plot_confusion, uar
from training.model import ModelConfig
from training.train import OptimConfig, train


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A way to train: the baseline, or a network with its three configs."""

    name: str
    model: ModelConfig | None = None
    optim: OptimConfig | None = None
    augment: AugmentConfig | None = None


def merge(a: Split, b: Split) -> Split:
    return Split(f"{a.name}+{b.name}", a.clips + b.clips, a.features + b.features,
                 np.concatenate([a.targets, b.targets]), a.labels)


def grouped_folds(split: Split, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; each recorder falls in exactly one validation fold."""
    groups = [c.recorder or c.path.name for c in split.clips]
    if len(set(groups)) < 2:  # one recorder only (an inner split of a small fold): plain stratified
        folder = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(folder.split(np.zeros(len(split)), split.targets))
    folder = StratifiedGroupKFold(n_splits=min(k, len(set(groups))), shuffle=True, random_state=seed)
    return list(folder.split(np.zeros(len(split)), split.targets, groups))


def run_fold(recipe: Recipe, train_split: Split, val: Split) -> list[np.ndarray]:
    """Validation predictions: one array for the baseline, one per epoch for a network."""
    if recipe.model is None:  # C chosen on an inner split grouped by recorder, never on ``val``
        inner_train, inner_val = grouped_folds(train_split, 3)[0]
        chosen = baseline.fit_baseline(train_split.subset(inner_train), train_split.subset(inner_val)).c
        final = baseline.fit_baseline(train_split, train_split, c_grid=(chosen,))
        return [baseline.predict(final, val)]
    predictions: list[np.ndarray] = []
    model = dataclasses.replace(recipe.model, n_classes=len(train_split.labels))
    train(model, recipe.optim, recipe.augment, train_split, val, progress=False, log_epochs=False,
          on_epoch=lambda epoch, record: predictions.append(record["predictions"]))
    return predictions


def cross_validate(recipes: list[Recipe], data: Split, k: int, out: Path, seed: int = 0) -> dict:
    """Score every recipe on the same grouped folds; write ``cv.json`` and pooled confusions."""
    out.mkdir(parents=True, exist_ok=True)
    folds = grouped_folds(data, k, seed)
    n_classes = len(data.labels)
    results = {}
    for recipe in recipes:
        per_fold = [run_fold(recipe, data.subset(tr), data.subset(va)) for tr, va in folds]
        epochs = min(len(p) for p in per_fold)
        curve = [np.mean([uar(data.targets[va], p[e], n_classes) for (_, va), p in zip(folds, per_fold)])
                 for e in range(epochs)]
        chosen = int(np.argmax(curve))
        scores = [uar(data.targets[va], p[chosen], n_classes) for (_, va), p in zip(folds, per_fold)]
        pooled = sum(confusion(data.targets[va], p[chosen], n_classes) for (_, va), p in zip(folds, per_fold))
        plot_confusion(pooled, data.labels, out / f"cv_confusion_{recipe.name}.png",
                       f"{recipe.name}: grouped CV, pooled")
        results[recipe.name] = {
            "uar_mean": float(np.mean(scores)), "uar_std": float(np.std(scores)), "fold_uar": scores,
            "epoch": chosen + 1 if recipe.model is not None else None,
            "recall": dict(zip(data.labels, map(float, per_class_recall(pooled)))),
            "confusion": pooled.tolist(), "mean_curve": [float(c) for c in curve]}
    folds_info = [{"validation_recorders": sorted({data.clips[i].recorder for i in va}), "n": int(len(va))}
                  for _, va in folds]
    summary = {"k": k, "seed": seed, "folds": folds_info, "recipes": results}
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
