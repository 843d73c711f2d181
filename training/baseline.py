"""The ComParE-style reference: functionals of the log-mel -> standardisation -> linear SVM."""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from training.data import Split
from training.evaluate import uar

C_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def functionals(logmel: np.ndarray) -> np.ndarray:
    """Per-band statistics of ``[frames, n_mels]`` and of its frame-to-frame deltas -> ``[11 * n_mels]``."""
    delta = np.diff(logmel, axis=0) if len(logmel) > 1 else np.zeros_like(logmel)
    stats = [logmel.mean(0), logmel.std(0), logmel.min(0), logmel.max(0),
             *np.percentile(logmel, [10, 25, 50, 75, 90], axis=0), delta.mean(0), delta.std(0)]
    return np.concatenate(stats).astype(np.float32)


def feature_matrix(split: Split) -> np.ndarray:
    return np.stack([functionals(f) for f in split.features])


@dataclasses.dataclass
class BaselineResult:
    model: object
    c: float
    devel_uar_by_c: dict[float, float]


def fit_baseline(train: Split, devel: Split, c_grid=C_GRID, seed: int = 0) -> BaselineResult:
    """Linear SVM with balanced class weights; C chosen by devel UAR (first best on ties)."""
    x_train, x_devel = feature_matrix(train), feature_matrix(devel)
    scores, models = {}, {}
    for c in c_grid:
        model = make_pipeline(StandardScaler(), LinearSVC(C=c, class_weight="balanced", max_iter=20000,
                                                          random_state=seed))
        model.fit(x_train, train.targets)
        scores[c] = uar(devel.targets, model.predict(x_devel), len(train.labels))
        models[c] = model
    best_c = max(c_grid, key=lambda c: scores[c])
    return BaselineResult(model=models[best_c], c=best_c, devel_uar_by_c=scores)


def predict(result: BaselineResult, split: Split) -> np.ndarray:
    return result.model.predict(feature_matrix(split))
