"""``edgemon-train hpo``: Optuna TPE over the paper's twelve hyper-parameters, median pruning.

A thin layer over ``training.train.train``: the search space lives in ``suggest``, each epoch's
devel UAR is reported to the trial, and ``MedianPruner`` stops trials whose best UAR so far is
below the median of earlier trials at the same epoch. Studies live in any Optuna storage: by
default a SQLite file in the run directory; a PostgreSQL URL lets workers on many machines share
one study. Heartbeats mark a killed worker's trial as failed and re-enqueue it, so rerunning the
command resumes the study and loses at most the running trial.

Every completed trial keeps its best epoch as ``trials/NNNN/{checkpoint.pt,model.onnx,metrics.json}``
under the worker's run directory (its path is stored on the trial), for ``edgemon-train ensemble``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import warnings
from pathlib import Path

import optuna

from edgemon.analysis.frontend import FrontendConfig
from training.augment import AugmentConfig
from training.data import Split
from training.evaluate import metrics
from training.model import ModelConfig
from training.recipes import FIELD, HOP_S, PAPER, SHIPPED_HIDDEN, WINDOW_S, seconds_to_frames
from training.out_dirs import check_out_dir, write_whole
from training.runs import run_config, save_run
from training.search_dir import claim_trials_dir
from training.train import OptimConfig, predict, train
from training.trial_interrupts import TrialInterrupts

log = logging.getLogger(__name__)

SPACES = ("paper", "field")
OBJECTIVE_NAMES = {"devel": "devel UAR", "cv": "grouped-CV window UAR",   # cv, field: training.hpo_cv
                   "field": "grouped-CV event recall at the target false events / h"}
OBJECTIVES = tuple(OBJECTIVE_NAMES)
GROUPED = ("cv", "field")      # the objectives that fold train + devel (+ pool) by recorder


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    n_trials: int = 400            # total over all workers (complete + pruned)
    max_epochs: int = 300
    space: str = "paper"           # "paper": Table 2 exactly; "field": + field augmentations
    seed: int | None = None        # sampler seed (None: differs per worker, as it should)
    device: str = "auto"
    startup_trials: int = 5        # random trials before TPE, and finished trials before pruning
    # Optuna's n_warmup_steps: steps below it are never pruned. The devel search reports epochs
    # from 1, so a trial may be pruned after its first epoch (the paper's median rule, which names
    # no warm-up); the grouped-CV searches report folds from 0, so their first fold is never pruned.
    warmup_epochs: int = 1
    heartbeat_s: int = 60
    timeout_s: float | None = None  # this worker stops starting trials after this long
    start_from_paper: bool = True  # enqueue the paper's Table 2 best setting as the first trial
    window_s: float = WINDOW_S
    hop_s: float = HOP_S
    objective: str = "devel"
    folds: int = 5                 # the cv and field objectives' grouped folds
    average_last: int = 5          # their members average their last epochs, as shipped
    target_false_per_hour: float = 10.0   # the field objective's rate, where its recall is read
    centre_bands: bool = False     # the model centres each window's bands, as the shipped members
    inputs: str = "audio"          # or "pack": 8-bit log-mel (training.feature_pack), a slightly other score


def suggest(trial: optuna.Trial, space: str, frontend: FrontendConfig, window_s: float):
    """The paper's Table 2 priors; ``field`` trains on crops of the deployment window and adds the
    other field augmentations (time shift, background mixing, gain) as further dimensions."""
    model = ModelConfig(
        layers=trial.suggest_int("layers", 1, 4),
        hidden=trial.suggest_int("hidden", 32, 256, step=32),
        dropout=trial.suggest_float("dropout", 0.0, 0.8, step=0.05),
        tau=trial.suggest_float("tau", 0.01, 1.0),
    )
    optim = dict(
        lr=trial.suggest_float("lr", 1e-6, 1e-1, log=True),
        batch_size=trial.suggest_int("batch_size", 32, 256, step=32),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-1),
        lr_decay=trial.suggest_float("lr_decay", 0.80, 1.00, step=0.02),
        gamma=float(trial.suggest_int("gamma", 1, 5)),
    )
    aug = dict(p_fm=trial.suggest_float("p_fm", 0.0, 0.5, step=0.05),
               p_tm=trial.suggest_float("p_tm", 0.0, 0.5, step=0.05),
               p_r=trial.suggest_float("p_r", 0.0, 1.0), log_floor=frontend.log_floor)
    if space == "field":
        # Train as you serve: every view is a crop of the deployment window (also ~3x cheaper).
        aug["crop_frames"] = seconds_to_frames(window_s, frontend)
        aug["time_shift"] = trial.suggest_categorical("time_shift", [True, False])
        aug["p_mix"] = trial.suggest_float("p_mix", 0.0, 1.0, step=0.25)
        aug["gain_db"] = trial.suggest_float("gain_db", 0.0, 12.0, step=3.0)
    return model, optim, AugmentConfig(**aug)


def _named_wrong_type(said: str, params: dict) -> str:
    """Optuna's "'fast' is not a valid type …" with the parameter that holds that value named."""
    value = re.match(r"(.*) is not a valid type", said)
    named = [k for k, v in params.items() if value and repr(v) == value[1]]
    return f"{named[0]}: expected a number, got {params[named[0]]!r}" if named else said


def settings_from_params(params: dict, frontend: FrontendConfig, window_s: float = WINDOW_S, *,
                         centre_bands: bool = False, mix_other_recorders: bool = False):
    """A search trial's settings (its ``params``, as Optuna stores them) as the model, optimiser
    and augmentation configs that ``suggest`` gave that trial, with the two options no search
    space holds: a found setting can be trained again by ``fit --params`` and scored by
    ``cv --params``. The space is ``field`` when the params hold its augmentations. Raises
    ValueError on a missing or out-of-range parameter."""
    import warnings

    for name, value in params.items():   # Optuna's words for these named no parameter (a review)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    space = "field" if "p_mix" in params else "paper"
    trial = optuna.trial.FixedTrial(params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # FixedTrial only warns about a value out of range
        try:
            settings = suggest(trial, space, frontend, window_s)
        except UserWarning as exc:
            raise ValueError(str(exc)) from None
        except ValueError as exc:  # FixedTrial's words for a missing one name its own constructor
            missing = re.search(r"parameter '(\w+)' is not found", str(exc))
            if missing:
                raise ValueError(f"missing search parameter {missing[1]!r}") from None
            # ... and for a value of the wrong type ("'fast' is not a valid type") name no parameter
            raise ValueError(_named_wrong_type(str(exc), params)) from None
    unknown = sorted(set(params) - set(trial.distributions))
    if unknown:
        raise ValueError(f"unknown search parameter(s) {unknown}")
    for name, distribution in trial.distributions.items():  # FixedTrial hands back whatever it was given
        value = params[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(distribution, optuna.distributions.FloatDistribution) and not number:
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if isinstance(distribution, optuna.distributions.IntDistribution) and not (number and float(value).is_integer()):
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
    model, optim, augment = settings
    return space, (dataclasses.replace(model, centre_bands=centre_bands), optim,
                   dataclasses.replace(augment, mix_other_recorders=mix_other_recorders))


def read_params(path: Path) -> dict:
    """Trial params from a JSON file (``scripts/summarise_search.py --write-params``)."""
    try:
        params = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"--params {path}: not a readable JSON file ({type(exc).__name__})") from exc
    if not isinstance(params, dict):
        raise ValueError(f"--params {path}: expected an object of search parameters")
    return params


def _storage(storage_url: str, config: SearchConfig, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The study's storage; workers started together on a new database race to create its
    tables, and the losers simply connect again (PostgreSQL reports the loss as a unique
    violation or, seen under load, as "relation alembic_version already exists")."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # optuna calls the heartbeat and stale-trial retry experimental; the search relies on
                # them on purpose, so their warning would only be noise in every worker's log
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    storage_url, heartbeat_interval=config.heartbeat_s, grace_period=2 * config.heartbeat_s,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)


def open_study(storage_url: str, name: str, config: SearchConfig) -> optuna.Study:
    storage = _storage(storage_url, config)
    return optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials,
                                           n_warmup_steps=config.warmup_epochs))


class Objective:
    """Train one trial on preloaded splits; keep its best epoch's model in the run directory."""

    def __init__(self, config: SearchConfig, train_split: Split, devel: Split, run_dir: Path,
                 frontend: FrontendConfig = FrontendConfig()):
        self.config, self.train_split, self.devel = config, train_split, devel
        self.run_dir, self.frontend = run_dir, frontend

    def __call__(self, trial: optuna.Trial) -> float:
        # Which worker ran the trial, whatever its end (pruned and failed trials leave no run_dir).
        trial.set_user_attr("worker_dir", str(self.run_dir.resolve()))
        model, optim, aug = suggest(trial, self.config.space, self.frontend, self.config.window_s)
        model = dataclasses.replace(model, n_classes=len(self.train_split.labels), n_mels=self.frontend.n_features,
                                    centre_bands=self.config.centre_bands)
        optim = OptimConfig(**optim, epochs=self.config.max_epochs, seed=trial.number, device=self.config.device)

        def report(epoch: int, record: dict) -> None:
            trial.report(record["devel_uar"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: devel UAR {record['devel_uar']:.3f}")

        started = time.perf_counter()
        result = train(model, optim, aug, self.train_split, self.devel, on_epoch=report, progress=False,
                       log_epochs=False)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        trial.set_user_attr("run_dir", str(self.save(trial, result, model, optim, aug).resolve()))
        return result.best_uar

    def save(self, trial, result, model, optim, aug) -> Path:
        out = self.run_dir / "trials" / f"{trial.number:04d}"
        probs, _ = predict(result.model, self.devel.features)
        devel_metrics = metrics(self.devel.targets, probs.argmax(1), self.devel.labels)
        config = run_config(model, optim, aug, self.frontend, self.devel.labels, self.config.window_s,
                            self.config.hop_s, trial=trial.number, params=trial.params)
        save_run(out, result.model, config, result.best_epoch,
                 {"devel_uar": devel_metrics["uar"], "best_epoch": result.best_epoch, "trial": trial.number})
        write_whole(out / "metrics.json", (json.dumps({"devel": devel_metrics}, indent=2) + "\n").encode())
        return out


def _enqueue_once(study: optuna.Study, params: dict) -> None:
    """Enqueue ``params`` unless a trial of them is done, running or waiting. Optuna's own
    ``skip_if_exists`` also counts a failed one (a worker stopped with Ctrl-C), and the reference
    setting would then never be scored."""
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING,
             optuna.trial.TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=alive):
        if trial.system_attrs.get("fixed_params", trial.params) == params:
            return
    study.enqueue_trial(params)


def _field_scoring(config: SearchConfig) -> dict:
    """What the field objective's value depends on beyond the folds: a worker must agree on it."""
    from training.field_votes import DEFAULT_PREVALENCE
    from training.hpo_cv import CURVE_TARGETS
    from training.operating import DEFAULT_RULES

    return {"target_false_per_hour": config.target_false_per_hour, "rules": DEFAULT_RULES,
            "curve_targets": list(CURVE_TARGETS), "prevalence": DEFAULT_PREVALENCE,
            "read_off": "frontier from silence"}   # training.hpo_cv.recall_at


def progress_line(study: optuna.Study) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = states.count(optuna.trial.TrialState.COMPLETE)
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    try:
        best = f"{study.best_value:.3f} (trial {study.best_trial.number})"
    except ValueError:
        best = "-"
    what = OBJECTIVE_NAMES[study.user_attrs.get("objective", "devel")]
    if "target_false_per_hour" in study.user_attrs.get("scoring", {}):
        what = what.replace("the target", f"{study.user_attrs['scoring']['target_false_per_hour']:g}")
    return f"trials done {done}, pruned {pruned}, running {states.count(optuna.trial.TrialState.RUNNING)}; best {what} {best}"


def _clips_digest(*splits: Split | None) -> str:
    """What the trials learn from and are scored on: the clips' file names and labels, per split."""
    digest = hashlib.sha256()
    for split in splits:
        for clip in ([] if split is None else split.clips):
            digest.update(f"{split.name}\t{Path(clip.path).name}\t{clip.label}\n".encode())
    return digest.hexdigest()[:16]


def run_search(config: SearchConfig, storage_url: str, study_name: str, run_dir: Path,
               train_split: Split, devel: Split, pool: Split | None = None) -> optuna.Study:
    """Work on the study until it holds ``n_trials`` finished (complete or pruned) trials.
    The ``cv`` and ``field`` objectives fold train + devel by recorder, ``pool`` (when given) on the
    training side."""
    if config.space not in SPACES:
        raise ValueError(f"unknown search space {config.space!r}: choose one of {SPACES}")
    if config.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.objective!r}: choose one of {OBJECTIVES}")
    check_out_dir(run_dir, own=("study.db",))   # a study there is resumed
    run_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage_url, study_name, config)
    earlier = study.user_attrs.get("objective", "devel" if study.get_trials(deepcopy=False) else None)
    if earlier not in (None, config.objective):
        raise ValueError(f"study {study_name!r} searches the {earlier} objective, not {config.objective}: "
                         f"choose another study name")
    study.set_user_attr("objective", config.objective)
    # Workers sharing a study must score trials alike, or its best value compares unlike things.
    scoring = {"space": config.space, "epochs": config.max_epochs, "inputs": config.inputs,
               "centre_bands": config.centre_bands, "clips": _clips_digest(train_split, devel, pool),
               **({"folds": config.folds, "average_last": min(config.average_last, config.max_epochs),  # as trained
                   "pool": pool is not None,
                   "held_out": "train+devel+pool" if pool is not None else "train+devel"}
                if config.objective in GROUPED else {}),
               **(_field_scoring(config) if config.objective == "field" else {})}
    agreed = dict(study.user_attrs.get("scoring", scoring))
    if "average_last" in agreed:   # recorded as given before 2026-12-05: what was averaged is what counts
        agreed["average_last"] = min(agreed["average_last"], agreed.get("epochs", agreed["average_last"]))
    for key in ("centre_bands", "clips"):   # recorded for every objective since 2026-12-07 (a review: a
        agreed.setdefault(key, scoring[key])   # --centre-bands or another data set resumed a study, mixed in)
    if agreed != scoring:
        differ = ", ".join(f"{k} {agreed.get(k)} (here {scoring.get(k)})" for k in sorted(set(agreed) | set(scoring))
                           if agreed.get(k) != scoring.get(k))
        raise ValueError(f"study {study_name!r} scores its trials with {differ}: run this worker with the same "
                         f"settings, or choose another study name")
    study.set_user_attr("scoring", scoring)
    if config.objective not in GROUPED:   # the one objective that keeps each trial's model under --out
        claim_trials_dir(run_dir, study_name, storage_url, study)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=finished)) >= config.n_trials:
        log.info("study %s already holds %d finished trials", study_name, config.n_trials)
        return study
    if config.start_from_paper:
        # A known-good point first: TPE then explores around it.
        first = {**PAPER.trial_params(), **(FIELD.trial_params() if config.space == "field" else {})}
        _enqueue_once(study, first)
        if config.objective in GROUPED:  # and the shipped members' size, the setting to beat on recorders never heard
            _enqueue_once(study, {**first, "hidden": SHIPPED_HIDDEN})

    def show(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        log.info("trial %d %s: %s", trial.number, trial.state.name.lower(), progress_line(study))

    if config.objective in GROUPED:
        from training.data import merge
        from training.hpo_cv import CvObjective, FieldObjective

        kind = FieldObjective if config.objective == "field" else CvObjective
        objective = kind(config, merge(train_split, devel), pool, suggest, config.folds)
    else:
        objective = Objective(config, train_split, devel, run_dir)
    quiet = _QuietOnInterrupt()
    optuna_trials = logging.getLogger("optuna.study._optimize")   # the logger of Optuna's failed-trial warnings
    optuna_trials.addFilter(quiet)
    interrupts = TrialInterrupts()
    try:
        with interrupts.installed():
            study.optimize(interrupts.objective(objective), catch=(), timeout=config.timeout_s,
                           callbacks=[optuna.study.MaxTrialsCallback(config.n_trials, states=finished), show,
                                      interrupts.stop_if_held])
    finally:
        optuna_trials.removeFilter(quiet)
    return study


class _QuietOnInterrupt(logging.Filter):
    """Drops Optuna's two warnings about a trial failed by Ctrl-C (the first carries the whole
    traceback): the CLI says in one line what an interrupt did. Other failures are still logged."""

    def __init__(self):
        super().__init__()
        self.interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted.add(record.getMessage().split(" failed", 1)[0])   # "Trial N"
            return False
        return record.getMessage().split(" failed", 1)[0] not in self.interrupted
