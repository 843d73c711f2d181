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
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from edgemon.analysis.windows import WindowSpec, window_starts
from training.cv import fold_training, grouped_folds, held_out_with_pool, validation_recorders
from training.data import BACKGROUND, Split
from training.errors import DataError
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
        scores, _, _ = self.train_folds(trial)
        return float(np.mean([s["window_uar"] for s in scores]))

    def train_folds(self, trial: optuna.Trial) -> tuple[list[dict], list, tuple]:
        """Each fold trained and its held-out windows scored (the running mean window UAR goes to
        the pruner after each fold): the folds' scores, their (averaged) models, and the trial's
        model, optimiser and augmentation configs."""
        model, optim, aug = self.suggest(trial, self.search.space, self.data.frontend, self.search.window_s)
        model = dataclasses.replace(model, n_classes=len(self.data.labels), n_mels=self.data.frontend.n_features,
                                    centre_bands=self.search.centre_bands)
        optim = OptimConfig(**optim, epochs=self.search.max_epochs, seed=trial.number, device=self.search.device,
                            average_last=min(self.search.average_last, self.search.max_epochs))
        started, scores, models = time.perf_counter(), [], []
        for n, ((tr, _), (_, va), recorders) in enumerate(zip(self.folds, self.measured_folds, self.held_out)):
            training = fold_training(self.data.subset(tr), self.pool, recorders)
            held_out = self.measured.subset(va)
            result = train(model, optim, aug, training, held_out, progress=False, log_epochs=False)
            windows, owner = clip_windows(held_out.features, self.spec)
            probs, _ = predict(result.model, windows)
            scores.append({**window_scores(probs, owner, held_out.targets, self.data.labels),
                           "clip_uar": result.best_uar})
            models.append(result.model)
            running = float(np.mean([s["window_uar"] for s in scores]))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            trial.report(running, n)
            # Not after the last fold: a trial trained on every fold is scored, not thrown away.
            if n < len(self.folds) - 1 and trial.should_prune():
                raise optuna.TrialPruned(f"fold {n + 1}: mean held-out window UAR {running:.3f}")
        for key in ("window_uar", "background_called", "clip_uar"):
            trial.set_user_attr(f"fold_{key}", [s[key] for s in scores])
        return scores, models, (model, optim, aug)


class FieldObjective(CvObjective):
    """``--objective field``: the field measure as the value. The folds are trained as for ``cv``
    (whose running window UAR still goes to the pruner: it is known after each fold, the field
    measure only once every fold is; Optuna's median rule compares it only with other trials'
    window UAR), then each fold's model is run as the recorder runs a bundle over its held-out
    audio (``training.field``), points are chosen for ``CURVE_TARGETS`` and the search's target
    on the other folds and measured on each fold (``training.operating.held_out``, as ``cv``'s
    ``chosen_on_other_folds``), and the value is the event recall that held-out trade-off reaches
    at the target rate of false events (``recall_at``). One member, where the shipped bundle votes
    two; a setting the search finds is then trained as a pair by ``cv`` and ``cv-ensemble``."""

    def __init__(self, search, data: Split, pool: Split | None, suggest, folds: int = 5, seed: int = 0):
        super().__init__(search, data, pool, suggest, folds, seed)
        background = data.labels.index(BACKGROUND)
        for n, (_, va) in enumerate(self.measured_folds):   # said now, not after a trial has trained
            if not (self.measured.targets[va] == background).any():
                raise DataError(f"fold {n + 1} holds out no background clip to count false events on: "
                                f"choose fewer --folds")
        self.targets = tuple(sorted({*CURVE_TARGETS, search.target_false_per_hour}))

    def __call__(self, trial: optuna.Trial) -> float:
        from training.field_votes import fold_field_votes
        from training.operating import held_out
        from training.runs import run_config, save_model

        _, models, (model, optim, aug) = self.train_folds(trial)
        started = time.perf_counter()
        config = run_config(model, optim, aug, self.data.frontend, self.data.labels, self.search.window_s,
                            self.search.hop_s, trial=trial.number, params=trial.params)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [[save_model(Path(tmp) / f"fold{n}.onnx", m, config, {"selected_by": "search trial"})]
                     for n, m in enumerate(models)]
            votes = fold_field_votes(paths, [self.data.frontend], self.measured, self.measured_folds,
                                     self.search.window_s, self.search.hop_s)
        curve, _ = held_out(votes, self.targets)
        rows = [{"target": t, "false_per_hour": curve[t]["false_per_hour"], "false_events": curve[t]["false_events"],
                 "recall": curve[t]["recall"], "clip_uar": curve[t]["clip_uar"]} for t in self.targets]
        trial.set_user_attr("held_out", rows)
        trial.set_user_attr("background_hours", curve[self.targets[0]]["background_hours"])
        trial.set_user_attr("seconds", trial.user_attrs["seconds"] + time.perf_counter() - started)
        return recall_at([(r["false_per_hour"], r["recall"] or 0.0) for r in rows], self.search.target_false_per_hour)


CURVE_TARGETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0)   # false events / h the trade-off is chosen for


def recall_at(points: list[tuple[float, float]], false_per_hour: float) -> float:
    """The event recall a held-out trade-off reaches at ``false_per_hour``. ``points`` are
    (false events / h, recall) as measured on the held-out folds, whatever target chose them.
    The read-off follows the points no other beats (more recall at no more false events), from
    silence (none stored: no false events, no recall), linear between them and flat beyond the
    last. A rate between two points is what storing at one point part of the time and at the
    other the rest would give; below a model's quietest point, storing at it part of the time.
    So a model that never got as quiet as the target still scores by how near it came (without
    that line, every such trial scored 0 and the search learnt nothing from it). Which point
    counts is seen on the held-out figures themselves: slightly kind, and alike for every trial."""
    frontier = [(0.0, 0.0)]
    for rate, recall in sorted(points, key=lambda p: (p[0], -p[1])):
        if recall > frontier[-1][1]:
            if rate == frontier[-1][0]:
                frontier[-1] = (rate, recall)
            else:
                frontier.append((rate, recall))
    rates, recalls = zip(*frontier)
    return float(np.interp(false_per_hour, rates, recalls))
