"""``edgemon-train cv``: cross-validation over train + devel with folds grouped by recorder.

No recorder is in both training and validation, so the score says how a recipe does on a recorder
it never heard; folds are stratified by class as far as the groups allow. For network recipes the
epoch is chosen once per recipe, where the mean validation UAR over folds peaks, and every fold is
scored at that epoch (the pooled confusion matrix too). A recipe that averages its last epochs'
weights (``OptimConfig.average_last``) chooses nothing on the folds: each fold's averaged model is
scored, exported (``<out>/<recipe>/foldN.onnx``) and run as the recorder runs a bundle over its
held-out audio (``training.field``: each clip, the background end to end, recordings assembled
from calls and background); those held-out votes choose the per-class thresholds, a field
operating point (false events per background hour) and the calibration of its confidence. The fold models
are then an ensemble selected by grouped CV (``training.bundling.bundle_cv``). Test is not touched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from edgemon.analysis.frontend import FrontendConfig
from training import baseline
from training.augment import AugmentConfig
from training.data import BACKGROUND, Split, merge, without_recorders
from training.errors import DataError
from training.evaluate import confusion, per_class_recall, plot_confusion, uar
from training.field import windows_of
from training.field_votes import fold_field_votes
from training.model import ModelConfig, PrimateBiLSTM
from training.operating import DEFAULT_TARGET_FALSE_PER_HOUR, field_report
from training.recipes import FIELD, HOP_S, PAPER, WINDOW_S, recipe_name, seconds_to_frames
from training.out_dirs import as_out_error, check_out_dir, holding_out_dir
from training.runs import run_config, save_model
from training.thresholds import field_summary
from training.train import OptimConfig, predict, train

log = logging.getLogger(__name__)

DEFAULT_MAX_FALSE_RATE = 0.1  # of background windows (4 s, 2 s hop) stored as a call
RECIPES = ("baseline", "paper", "field")  # what ``cv_recipes`` knows by name


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


def cv_recipes(names: list[str], frontend: FrontendConfig, *, epochs: int, seed: int, hidden: int = PAPER.hidden,
               layers: int = PAPER.layers, average_last: int = 0, window_s: float = WINDOW_S, hop_s: float = HOP_S,
               centre_bands: bool = False, mix_other_recorders: bool = False,
               hard_negatives: float = 0.0, near_call_negatives: float = 0.0,
               background_share: float = 0.0, recorder_adversary: float = 0.0,
               params: dict | None = None) -> list[Recipe]:
    """The recipes ``names`` (of ``RECIPES``): the baseline; ``paper``, Table 2 at the given size;
    ``field``, Table 2 plus the field preset on crops of the recorder's window. Each network
    recipe is named by ``recipe_name`` for what differs from the paper's. ``params`` (a search
    trial's settings) replace Table 2 and the preset: the one recipe named must be the trial's space."""
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}: choose from {list(RECIPES)}")
    if params is not None:
        return [_searched_recipe(names, params, frontend, epochs=epochs, seed=seed, average_last=average_last,
                                 window_s=window_s, hop_s=hop_s, centre_bands=centre_bands,
                                 mix_other_recorders=mix_other_recorders, hard_negatives=hard_negatives,
                                 near_call_negatives=near_call_negatives, background_share=background_share,
                                 recorder_adversary=recorder_adversary)]
    optim = OptimConfig(epochs=epochs, seed=seed, average_last=average_last, hard_negatives=hard_negatives,
                        near_call_negatives=near_call_negatives, background_share=background_share,
                        recorder_adversary=recorder_adversary)
    model = ModelConfig(hidden=hidden, layers=layers, centre_bands=centre_bands)
    knobs = dict(frontend_kind=frontend.kind, f_max=frontend.f_max, average_last=average_last, hidden=hidden, layers=layers,
                 window_s=window_s, hop_s=hop_s, centre_bands=centre_bands, hard_negatives=hard_negatives,
                 near_call_negatives=near_call_negatives, background_share=background_share,
                 recorder_adversary=recorder_adversary)
    field = AugmentConfig(crop_frames=seconds_to_frames(window_s, frontend), mix_other_recorders=mix_other_recorders,
                          **FIELD.augment_fields())
    known = {"baseline": Recipe("baseline"),
             "paper": Recipe(recipe_name("paper", **knobs), model, optim, AugmentConfig(), frontend),
             "field": Recipe(recipe_name("field", **knobs, mix_other_recorders=mix_other_recorders), model, optim,
                             field, frontend)}
    return [known[n] for n in names]


def _searched_recipe(names: list[str], params: dict, frontend: FrontendConfig, *, epochs: int, seed: int,
                     average_last: int, window_s: float, hop_s: float, centre_bands: bool,
                     mix_other_recorders: bool, **negatives) -> Recipe:
    """The recipe of a search trial's ``params``, named ``<space>-…-p<digest>``."""
    import hashlib

    from training.hpo import settings_from_params

    space, (model, optim, augment) = settings_from_params(params, frontend, window_s, centre_bands=centre_bands,
                                                          mix_other_recorders=mix_other_recorders)
    if names != [space]:
        raise ValueError(f"--params holds {space}-space settings: name that one recipe (--recipe {space})")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:6]
    name = recipe_name(space, frontend_kind=frontend.kind, f_max=frontend.f_max, average_last=average_last, hidden=model.hidden,
                       layers=model.layers, window_s=window_s, hop_s=hop_s, centre_bands=centre_bands,
                       mix_other_recorders=mix_other_recorders, **negatives) + f"-p{digest}"
    return Recipe(name, model, OptimConfig(**optim, epochs=epochs, seed=seed, average_last=average_last, **negatives),
                  augment, frontend)


def grouped_folds(split: Split, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs; each recorder falls in exactly one validation fold.
    Raises ``DataError`` when a clip names no recorder: it would be a group of its own, and the
    folds no longer keep a recorder out of its own validation (a trial saw clip-level CV, silently)."""
    nameless = sum(not c.recorder for c in split.clips)
    if nameless:
        raise DataError(f"{nameless} of {len(split.clips)} clips name no recorder (the lists' recorder column): "
                        f"grouped cross-validation needs each clip's recorder")
    recorders = {c.recorder for c in split.clips}
    if len(recorders) < 2:   # grouped_folds_of would fall back to folds within the one recorder, silently
        raise DataError(f"every clip names the one recorder {next(iter(recorders))!r}: grouped cross-validation "
                        f"needs clips from at least 2 recorders, to hold each out of its own training")
    if k > len(recorders):   # each fold holds out at least one recorder, so there are fewer folds
        log.warning("%d folds asked, %d recorders: %d folds, one recorder each", k, len(recorders), len(recorders))
    folds = grouped_folds_of([c.recorder or c.path.name for c in split.clips], split.targets, k, seed)
    # A species heard by one recorder only: the fold holding it out trains without the class, so its
    # recall, threshold and calibration come from a model that never saw one (a trial: cv-ensemble
    # said only "never stored", and bundle --thresholds then never detected it).
    for index, label in enumerate(split.labels):
        for n, (tr, va) in enumerate(folds, 1):
            if np.any(split.targets[va] == index) and not np.any(split.targets[tr] == index):
                held = sorted({split.clips[i].recorder for i in va if split.targets[i] == index})
                log.warning("%r: every clip held out in fold %d (%s) and none in its training: that fold trains "
                            "without it, so grouped CV cannot score it (pool clips aside): add clips of it from another "
                            "recorder", label, n, ", ".join(held))
    return folds


def grouped_folds_of(groups: list[str], targets: np.ndarray, k: int = 5, seed: int = 0
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``grouped_folds`` from the clips' recorders and classes alone (no audio read)."""
    targets = np.asarray(targets)
    if len(set(groups)) < 2:  # one recorder only (an inner split of a small fold): plain stratified
        folder = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(folder.split(np.zeros(len(targets)), targets))
    folder = StratifiedGroupKFold(n_splits=min(k, len(set(groups))), shuffle=True, random_state=seed)
    return list(folder.split(np.zeros(len(targets)), targets, groups))


def validation_recorders(split: Split, folds) -> list[list[str]]:
    """Each fold's held-out recorders, as cv.json records them (and cv-ensemble checks them)."""
    return [sorted({split.clips[i].recorder for i in va}) for _, va in folds]


def fold_training(train_side: Split, pool: Split | None, held_out: list[str]) -> Split:
    """A fold's training clips plus the pool's clips from recorders the fold does not hold out."""
    if pool is None:
        return train_side
    return merge(train_side, without_recorders(pool, held_out))


def held_out_with_pool(split: Split, pool: Split | None, folds) -> tuple[Split, list[tuple[np.ndarray, np.ndarray]]]:
    """``split`` + ``pool`` and ``folds`` over both, for the field measure: each pool clip is held out
    in the fold that holds out its recorder (``fold_training`` kept it out of that fold's training)
    and is on the training side of the others; one of a recorder no fold holds out is never held out.
    So the measure is grouped CV over train + devel + pool, with the pool's background from more
    nights and times of day (0.94 h of the data set's 1.6 h) among the held-out audio."""
    if pool is None or not len(pool.clips):
        return split, folds
    return merge(split, pool), folds_with_pool(validation_recorders(split, folds), folds, len(split.clips),
                                               [c.recorder or c.path.name for c in pool.clips])


def folds_with_pool(held_out: list[list[str]], folds, n: int, pool_recorders: list[str]
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``held_out_with_pool``'s folds from recorders alone: pool clip ``i`` is clip ``n + i``."""
    combined = []
    for (tr, va), held in zip(folds, held_out):
        mine = np.array([n + i for i, r in enumerate(pool_recorders) if r in held], np.int64)
        others = np.array([n + i for i, r in enumerate(pool_recorders) if r not in held], np.int64)
        combined.append((np.concatenate([tr, others]), np.sort(np.concatenate([va, mine]))))
    return combined


def run_fold(recipe: Recipe, train_split: Split, val: Split,
             on_epoch: Callable[[int, dict], None] | None = None) -> FoldResult:
    """Train on one fold; validation predictions per epoch (and of the averaged model).
    ``on_epoch(epoch, record)`` hears each epoch, as ``train`` tells it."""
    if recipe.model is None:  # C chosen on an inner split grouped by recorder, never on ``val``
        # grouped_folds_of: a fold's training side may hold one recorder, split then within it
        inner_train, inner_val = grouped_folds_of([c.recorder or c.path.name for c in train_split.clips],
                                                  train_split.targets, 3)[0]
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


def cross_validate(recipes: list[Recipe], data: Split, k: int, out: Path, seed: int = 0,
                   load=None, window_s: float = WINDOW_S, hop_s: float = HOP_S,
                   max_false_rate: float = DEFAULT_MAX_FALSE_RATE, pool=None,
                   target_false_per_hour: float = DEFAULT_TARGET_FALSE_PER_HOUR,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Score every recipe on the same grouped folds; write ``cv.json`` and pooled confusions.

    ``load(frontend)`` gives ``data`` computed by another frontend, for recipes that need one.
    ``pool(frontend)``, when given, gives train-only clips (``lab/pool.csv``) that join every
    fold's training side, less those of the fold's held-out recorders. The folds and their clip
    scores are those of ``data`` alone; the field measure of averaged recipes also runs over the
    held-out recorders' pool clips (``held_out_with_pool``).
    ``progress(event)`` hears every epoch and the end of every fold: ``{"recipe", "fold"`` (from 1),
    ``"folds", "epoch", "epochs"`` (both None at a fold's end), ``"uar"`` (the fold's validation
    UAR after that epoch; None at a fold's end)``}``.
    """
    with holding_out_dir(out):
        try:
            return _cross_validate(recipes, data, k, out, seed, load, window_s, hop_s, max_false_rate, pool,
                                   target_false_per_hour, progress)
        except OSError as e:   # a full disk while fold models or cv.json are written: named as --out
            raise as_out_error(e, out) from None


def _cross_validate(recipes: list[Recipe], data: Split, k: int, out: Path, seed: int, load, window_s: float,
                    hop_s: float, max_false_rate: float, pool, target_false_per_hour: float,
                    progress: Callable[[dict], None] | None) -> dict:
    folds = grouped_folds(data, k, seed)
    n_classes = len(data.labels)
    inputs = {data.frontend: data}
    pools = {}
    held_out = validation_recorders(data, folds)
    check_out_dir(out, own=("cv.json",))   # a second cv adds its recipes to the first's (below)
    earlier = _earlier_recipes(out, seed, held_out, [r.name for r in recipes], pool is not None)   # before any training
    field = next((r for r in recipes if r.averaged), None)
    if field is not None:   # its field measure needs held-out background in every fold: say so now, not hours on
        if pool is not None:
            pools[field.frontend] = pool(field.frontend)
        _check_held_out_background(data, folds, held_out, pools.get(field.frontend))
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for recipe in recipes:
        if recipe.frontend not in inputs:
            inputs[recipe.frontend] = load(recipe.frontend)
        if pool is not None and recipe.frontend not in pools:
            pools[recipe.frontend] = pool(recipe.frontend)
        split = inputs[recipe.frontend]
        per_fold = [_fold_with_progress(recipe, fold_training(split.subset(tr), pools.get(recipe.frontend), recorders),
                                        split.subset(va), n, len(folds), progress)
                    for n, ((tr, va), recorders) in enumerate(zip(folds, held_out), 1)]
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
                recipe, split, folds, per_fold, out / recipe.name, window_s, hop_s, max_false_rate,
                target_false_per_hour, pools.get(recipe.frontend)))
        # After each recipe, not only at the end: a Ctrl-C in the second recipe lost the first's record,
        # its fold models left without the cv.json that bundle-cv reads (a newcomer trial).
        summary = _write_summary(out, seed, folds, held_out, {**earlier, **results}, pools)
    return summary


def _write_summary(out: Path, seed: int, folds, held_out: list[list[str]], recipes: dict, pools: dict) -> dict:
    """``cv.json`` with the recipes scored so far (and those an earlier run kept), written whole."""
    folds_info = [{"validation_recorders": recorders, "n": int(len(va))}
                  for recorders, (_, va) in zip(held_out, folds)]
    # k as run: there are only as many folds as recorders (a newcomer's --folds 100 ran 10, said 100)
    summary = {"k": len(folds), "seed": seed, "folds": folds_info, "recipes": recipes}
    if pools:
        some_pool = next(iter(pools.values()))
        summary["pool"] = {"clips": len(some_pool) if some_pool is not None else 0,
                           "used_per_fold": [0 if some_pool is None else len(without_recorders(some_pool, r))
                                             for r in held_out]}
    # Whole or not at all: a kill half-way through the write lost every earlier recipe's record.
    staged = out / "cv.json.tmp"
    staged.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(staged, out / "cv.json")
    return summary


def _check_held_out_background(data: Split, folds, held_out: list[list[str]], pool: Split | None) -> None:
    """Every fold must hold out a background clip (of train + devel, or of the pool's clips of its
    recorders) for the field measure of averaged recipes; refused before any training (a newcomer's
    --folds 10 trained every fold, then stopped: recorder S13 has no background clip)."""
    background = data.labels.index(BACKGROUND)
    pooled = set() if pool is None else {c.recorder or c.path.name for c, t in zip(pool.clips, pool.targets)
                                         if t == pool.labels.index(BACKGROUND)}
    for n, ((_, va), recorders) in enumerate(zip(folds, held_out), 1):
        if not (data.targets[va] == background).any() and not pooled & set(recorders):
            raise DataError(f"fold {n} of {len(folds)} holds out recorder(s) {', '.join(recorders)} with no "
                            f"background clip: the field measure of an averaged recipe needs one in every fold; "
                            f"choose fewer --folds")


def _earlier_recipes(out: Path, seed: int, held_out: list, names: list[str], pooled: bool) -> dict:
    """The recipes a ``cv.json`` already in ``out`` scored on these same folds, kept beside the new
    ones (a newcomer's second cv run into one --out replaced the file, and the first run's fold
    models could no longer be bundled). Refused, before any training, when its folds differ or
    it already scores one of ``names``, or it was run with the pool and this run is not (or the
    other way round: cv.json records the pool once, for all its recipes)."""
    path = out / "cv.json"
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        same = old["seed"] == seed and [f["validation_recorders"] for f in old["folds"]] == [list(r) for r in held_out]
        recipes = dict(old["recipes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable cv.json ({type(exc).__name__}: {exc}): choose another --out") from None
    if not same:
        raise DataError(f"{out}: holds a cv run on other folds ({path}); a new one would replace it: "
                        f"choose another --out or move it aside")
    if ("pool" in old) != pooled:
        raise DataError(f"{out}: holds a cv run {'with' if 'pool' in old else 'without'} the pool, this one is "
                        f"{'with' if pooled else 'without'}: choose another --out (or the same --pool setting)")
    again = sorted(set(recipes) & set(names))
    if again:
        raise DataError(f"{out}: its cv.json already scores {', '.join(again)}; a new run would replace it: "
                        f"choose another --out or move it aside")
    return recipes


def _fold_with_progress(recipe: Recipe, train: Split, val: Split, fold: int, folds: int,
                        progress: Callable[[dict], None] | None) -> FoldResult:
    """``run_fold`` on one fold, telling ``progress`` (when given) of each epoch and of the end."""
    if progress is None:
        return run_fold(recipe, train, val)
    event = {"recipe": recipe.name, "fold": fold, "folds": folds}
    epochs = recipe.optim.epochs if recipe.optim is not None else None
    result = run_fold(recipe, train, val, lambda epoch, record: progress(
        {**event, "epoch": epoch, "epochs": epochs, "uar": record["devel_uar"]}))
    progress({**event, "epoch": None, "epochs": None, "uar": None})
    return result


def _keep_fold_models(recipe: Recipe, split: Split, folds, per_fold: list[FoldResult], out: Path,
                      window_s: float, hop_s: float, max_false_rate: float,
                      target_false_per_hour: float, pool: Split | None = None) -> dict:
    """Export the fold models; run each over its held-out audio, the pool's clips of its held-out
    recorders included, as the recorder would (``training.field``); choose thresholds, the field
    operating point and calibration there."""
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for n, ((_, va), fold) in enumerate(zip(folds, per_fold)):
        config = run_config(fold.model.config, recipe.optim, recipe.augment, split.frontend, split.labels,
                            window_s, hop_s)
        path = save_model(out / f"fold{n}.onnx", fold.model, config,
                          {"selected_by": "grouped cross-validation", "recipe": recipe.name,
                           "validation_uar": uar(split.targets[va], fold.final, len(split.labels))})
        members.append(path.name)
    measured, measured_folds = held_out_with_pool(split, pool, folds)
    votes = fold_field_votes([[out / m] for m in members], [split.frontend], measured, measured_folds, window_s, hop_s)
    votes.save(out / "field_votes.npz")
    windows = windows_of(votes)
    windows["clip"] = np.concatenate([va for _, va in measured_folds])[windows["clip"]]
    np.savez(out / "held_out_windows.npz", target=measured.targets[windows["clip"]], **windows)
    return {"members": members, "window_s": window_s, "hop_s": hop_s, "frontend_config": split.frontend.to_dict(),
            "labels": list(split.labels), "held_out_pool_clips": len(measured.clips) - len(split.clips),
            **field_summary(windows, measured.targets, split.labels, max_false_rate),
            "field": field_report(votes, target_false_per_hour, out / "reliability.png",
                                  f"{recipe.name}: grouped CV, held-out events")}
