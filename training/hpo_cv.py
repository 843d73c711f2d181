"""The search's grouped-CV objective: how a trial's setting does on recorders it never heard.

``edgemon-train hpo --objective cv``. Each trial trains one model per fold of ``cv``'s grouped
folds over train + devel (pool clips join the training side, less the fold's held-out recorders),
averaging the last epochs' weights as the shipped members are trained, and scores the held-out
clips as the recorder cuts them: windows of ``window_s`` every ``hop_s``, each classified alone.
The value is the mean over folds of that window UAR, in which background's recall is the share of
background windows not called a call; after each fold the running mean goes to the pruner, so the
median rule stops a setting that loses on the first folds. The devel-UAR objective picks settings
that fit one 117-clip split (docs/results.md, "Search and ensemble"); this one cannot see the recorders it
is scored on. Events per background hour need the audio itself (``training.field``): a setting
the search finds is then scored so by ``edgemon-train cv`` and ``cv-ensemble``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import optuna

from edgemon.analysis.windows import WindowSpec, window_starts
from training.cv import fold_training, grouped_folds, held_out_with_pool, validation_recorders
from training.data import BACKGROUND, Split
from training.evaluate import uar
from training.train import OptimConfig, predict, train


def clip_windows(features: list[np.ndarray], spec: WindowSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """Each clip cut as the recorder cuts it (``window_starts``: every hop, plus one window ending
    on the last frame; a clip shorter than a window is one window); the windows and their clips."""
    windows, owner = [], []
    for i, f in enumerate(features):
        for start in window_starts(len(f), spec):
            windows.append(f[start:start + spec.frames])
            owner.append(i)
    return windows, np.array(owner, dtype=np.int64)


def window_scores(probs: np.ndarray, owner: np.ndarray, targets: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Window UAR of held-out clips, and the share of background windows called a call."""
    truth, winner = targets[owner], probs.argmax(1)
    background = truth == labels.index(BACKGROUND)
    return {"window_uar": uar(truth, winner, len(labels)),
            "background_called": float(np.mean(winner[background] != truth[background])) if background.any() else 0.0}


class CvObjective:
    """One trial: the grouped folds trained and scored; ``search`` is ``training.hpo.SearchConfig``."""

    def __init__(self, search, data: Split, pool: Split | None, suggest, folds: int = 5, seed: int = 0):
        self.search, self.data, self.pool, self.suggest = search, data, pool, suggest
        self.folds = grouped_folds(data, folds, seed)
        self.held_out = validation_recorders(data, self.folds)
        # Scored, like the field measure, on the held-out recorders' pool clips too (train + devel + pool).
        self.measured, self.measured_folds = held_out_with_pool(data, pool, self.folds)
        self.spec = WindowSpec.from_seconds(search.window_s, search.hop_s, data.frontend)
        if search.average_last < 1:  # else train() keeps the epoch that scored best on the held-out fold
            raise ValueError("the cv objective averages the last epochs' weights (--average-last 1 or more): "
                             "choosing an epoch on the fold it is scored on would leak")

    def __call__(self, trial: optuna.Trial) -> float:
        model, optim, aug = self.suggest(trial, self.search.space, self.data.frontend, self.search.window_s)
        model = dataclasses.replace(model, n_classes=len(self.data.labels), n_mels=self.data.frontend.n_features,
                                    centre_bands=self.search.centre_bands)
        optim = OptimConfig(**optim, epochs=self.search.max_epochs, seed=trial.number, device=self.search.device,
                            average_last=min(self.search.average_last, self.search.max_epochs))
        started, scores = time.perf_counter(), []
        for n, ((tr, _), (_, va), recorders) in enumerate(zip(self.folds, self.measured_folds, self.held_out)):
            training = fold_training(self.data.subset(tr), self.pool, recorders)
            held_out = self.measured.subset(va)
            result = train(model, optim, aug, training, held_out, progress=False, log_epochs=False)
            windows, owner = clip_windows(held_out.features, self.spec)
            probs, _ = predict(result.model, windows)
            scores.append({**window_scores(probs, owner, held_out.targets, self.data.labels),
                           "clip_uar": result.best_uar})
            running = float(np.mean([s["window_uar"] for s in scores]))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            trial.report(running, n)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {n + 1}: mean held-out window UAR {running:.3f}")
        for key in ("window_uar", "background_called", "clip_uar"):
            trial.set_user_attr(f"fold_{key}", [s[key] for s in scores])
        return float(np.mean([s["window_uar"] for s in scores]))
