"""``edgemon-train``: an adapter from options to ``training.runs``; no logic lives here.

Exit statuses as ``edgemon``'s (``edgemon.console``): 1 when a command fails, with one line saying
why (a named error, a bad value from the search or the thresholds, a file, an Optuna storage that
cannot be opened), 2 when the command line is wrong.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon import console
from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import EdgemonError
from edgemon.signals import terminate_as_interrupt
from training.augment import AugmentConfig
from training.cli_options import (AdversaryOpt, BackgroundShareOpt, CentreOpt, CvMixOtherOpt, CvPoolOpt, DataOpt,
                                  FMaxOpt, FrontendOpt, HardNegOpt, MixOtherOpt, NearCallOpt, OutOpt, ParamsOpt,
                                  PoolOpt, TargetOpt,
                                  check_average_last, check_background_share, check_network_options,
                                  check_params_alone, check_window, device_option, frontend_option, non_negative,
                                  positive, share)
from training.cv_progress import CvProgress
from training.data import DEFAULT_DATA_DIR
from training.configs import ModelConfig, OptimConfig
from training.recipes import FIELD, HOP_S, PAPER, WINDOW_S, seconds_to_frames

log = logging.getLogger(__name__)

# rich_markup_mode=None: plain help (no "<bool>" after flags, brackets kept as written).
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  epilog=console.EPILOG, help="Train, evaluate and export edgemon classifiers.")
console.plain_help_names()   # RUN... and <path> in the help, not {runs} and <list[Path]>


@app.callback()
def _main(version: Annotated[bool, console.version_option("edgemon-train")] = False):
    """Train, evaluate and export edgemon classifiers."""


# What a command reports in one line rather than a traceback: the named errors, bad values (the
# search's and the thresholds' ValueError) and files.
EXPECTED_ERRORS = (EdgemonError, ValueError, OSError)


def _run(fn, *args, **kwargs):
    """Call ``fn``; print its summary as JSON, or a one-line error and exit 1. A run that a Ctrl-C
    or SIGTERM stopped early, written with what it had (``stopped_in_epoch``), or one written whole
    after a signal held while it was written (``signal_while_written``), says so and exits 130."""
    try:
        with terminate_as_interrupt():
            summary = fn(*args, **kwargs)
    except EXPECTED_ERRORS as exc:
        raise console.error(str(exc) or type(exc).__name__)
    typer.echo(json.dumps(summary, indent=2))
    if isinstance(summary, dict) and summary.get("stopped_in_epoch"):
        raise console.error(f"stopped in epoch {summary['stopped_in_epoch']}: {summary.get('run_dir')} holds the "
                            f"model of the {summary.get('epochs_done')} finished epoch(s)", 130)
    if isinstance(summary, dict) and summary.get("signal_while_written"):   # training had ended: nothing cut short
        raise console.error(f"signal {summary['signal_while_written']} while {summary.get('run_dir')} was written: "
                            f"it was written whole first", 130)


@app.command()
def fit(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/fit"),
    lr: Annotated[float, typer.Option(callback=positive, help="Learning rate.")] = PAPER.lr,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = PAPER.batch_size,
    tau: Annotated[float, typer.Option(callback=positive, help="Normalised-softmax temperature.")] = PAPER.tau,
    weight_decay: Annotated[float, typer.Option(callback=non_negative, help="AdamW weight decay (lambda).")] = PAPER.weight_decay,
    lr_decay: Annotated[float, typer.Option(callback=positive, max=1.0, help="Per-epoch lr factor (beta).")] = PAPER.lr_decay,
    gamma: Annotated[float, typer.Option(callback=non_negative, help="Focal-loss gamma.")] = float(PAPER.gamma),
    p_fm: Annotated[float, typer.Option(callback=share, help="Fraction of mel bins masked.")] = PAPER.p_fm,
    p_tm: Annotated[float, typer.Option(callback=share, help="Fraction of frames masked.")] = PAPER.p_tm,
    p_r: Annotated[float, typer.Option(callback=share, help="Probability of applying the masks.")] = PAPER.p_r,
    layers: Annotated[int, typer.Option(min=1, help="LSTM layers (l).")] = PAPER.layers,
    hidden: Annotated[int, typer.Option(min=1, help="LSTM hidden size (h).")] = PAPER.hidden,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout (p_drop).")] = PAPER.dropout,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs.")] = 300,
    patience: Annotated[int, typer.Option(min=0, help="Stop after N epochs without a better devel UAR (0: off).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    field: Annotated[bool, typer.Option("--field", help="Turn on the field augmentations.")] = False,
    crop_s: Annotated[Optional[float], typer.Option(callback=non_negative, help="Random crops of this many seconds (default: the window with --field, else off).")] = None,
    window_s: Annotated[float, typer.Option(callback=positive, help="Deployment window length written into the bundle.")] = WINDOW_S,
    hop_s: Annotated[float, typer.Option(callback=positive, help="Deployment window hop written into the bundle.")] = HOP_S,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")] = False,
    frontend_kind: FrontendOpt = "logmel",
    f_max: FMaxOpt = FrontendConfig.f_max,
    average_last: Annotated[int, typer.Option(min=0, help="Keep the mean weights of the last N epochs instead of the best devel epoch (0: off).")] = 0,
    mix_other_recorders: MixOtherOpt = False,
    centre_bands: CentreOpt = False,
    with_devel: Annotated[bool, typer.Option("--with-devel", help="Train on train + devel (needs --average-last): for a recipe already chosen by grouped CV.")] = False,
    pool: PoolOpt = True,
    hard_negatives: HardNegOpt = 0.0,
    near_call_negatives: NearCallOpt = 0.0,
    background_share: BackgroundShareOpt = 0.0,
    recorder_adversary: AdversaryOpt = 0.0,
    params: ParamsOpt = None,
):
    """Train one model (defaults: the paper's Table 2 setting) and write a run directory."""
    from training.runs import fit_run

    check_background_share(background_share)
    check_average_last(average_last, epochs)
    check_window(window_s, hop_s)
    if patience and average_last:   # an early stop returned the best devel epoch, not the average
        raise console.error("--patience and --average-last: give one (early stopping keeps the best devel epoch, "
                            "averaging the last epochs; with --with-devel that epoch would be chosen on training data)",
                            console.EXIT_USAGE)
    check_params_alone(params, lr=lr, batch_size=batch_size, tau=tau, weight_decay=weight_decay,
                        lr_decay=lr_decay, gamma=gamma, p_fm=p_fm, p_tm=p_tm, p_r=p_r, layers=layers,
                        hidden=hidden, dropout=dropout)
    if params is not None and (field or crop_s is not None):   # the file's space decides them (a trial)
        raise console.error(f"--params {params} sets the augmentations (a field-space file the field preset): "
                            f"{'--field' if field else '--crop-s'} beside it would be ignored; leave it out",
                            console.EXIT_USAGE)
    if mix_other_recorders and not field and params is None:
        raise console.error("--mix-other-recorders needs --field (only the field recipe mixes in background)",
                            console.EXIT_USAGE)
    frontend = frontend_option(frontend_kind, f_max)
    crop = crop_s if crop_s is not None else (window_s if field else 0.0)
    aug = AugmentConfig(p_fm=p_fm, p_tm=p_tm, p_r=p_r, log_floor=frontend.log_floor,
                        crop_frames=seconds_to_frames(crop, frontend),
                        mix_other_recorders=mix_other_recorders, **(FIELD.augment_fields() if field else {}))
    model = ModelConfig(hidden=hidden, layers=layers, dropout=dropout, tau=tau, centre_bands=centre_bands)
    optim = dict(lr=lr, batch_size=batch_size, weight_decay=weight_decay, lr_decay=lr_decay, gamma=gamma)
    if params is not None:
        model, optim, aug = _searched_settings(params, frontend, window_s, centre_bands, mix_other_recorders)
    _run(fit_run, data, out, model,
         OptimConfig(**optim, epochs=epochs, patience=patience, seed=seed, device=device_option(device),
                     average_last=average_last, hard_negatives=hard_negatives,
                     near_call_negatives=near_call_negatives, background_share=background_share,
                     recorder_adversary=recorder_adversary),
         aug, window_s=window_s, hop_s=hop_s, frontend=frontend, progress=not quiet, with_devel=with_devel, pool=pool)


def _read_params(path: Path) -> dict:
    from training.hpo import read_params

    try:
        return read_params(path)
    except ValueError as exc:
        raise console.error(str(exc), console.EXIT_USAGE)


def _searched_settings(path: Path, frontend: FrontendConfig, window_s: float, centre_bands: bool,
                       mix_other_recorders: bool):
    """``fit --params``: the trial's model, optimiser and augmentation settings."""
    from training.hpo import settings_from_params

    try:
        return settings_from_params(_read_params(path), frontend, window_s, centre_bands=centre_bands,
                                    mix_other_recorders=mix_other_recorders)[1]
    except ValueError as exc:
        raise console.error(f"--params {path}: {exc}", console.EXIT_USAGE)


@app.command()
def baseline(data: DataOpt = DEFAULT_DATA_DIR, out: OutOpt = Path("runs/baseline")):
    """ComParE-style reference: log-mel functionals, standardisation, linear SVM (C on devel)."""
    from training.runs import baseline_run

    _run(baseline_run, data, out)


@app.command()
def bundle(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="Run directories whose model.onnx become members.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8 (dynamic).")] = False,
    thresholds: Annotated[Optional[Path], typer.Option(help="Per-class thresholds from a cv-ensemble JSON.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Data directory whose train split gives the bundle's self-check reference windows (recommended).")] = None,
):
    """Assemble a model bundle (manifest + members) from trained runs.

    Runs on log-mel and on PCEN may be mixed: the bundle then streams both side by side and each
    member reads its own columns."""
    from training.bundling import bundle_runs

    _run(bundle_runs, runs, out, int8=int8, thresholds_from=thresholds, reference_data=data)


@app.command()
def rebundle(
    bundle: Annotated[Path, typer.Argument(help="The bundle whose members to keep.")],
    thresholds: Annotated[Path, typer.Option("--thresholds", help="A cv-ensemble JSON with a field operating point and calibration for these members (e.g. from `cv-ensemble --at-point BUNDLE`).")],
    out: Annotated[Path, typer.Option("--out", help="The new bundle's directory (its name starts the bundle id).")],
):
    """The members of a bundle with the operating point and calibration of a cv-ensemble result: no training runs needed."""
    from training.rebundle import rebundle as write

    _run(write, bundle, thresholds, out)


def _train_and_devel(data: Path, frontend: FrontendConfig, pool: bool = False):
    """train + devel as one split, the way cv folds it; the test list is not even read. ``pool``:
    lab/pool.csv joins the folds' training (checked against devel)."""
    from training.data import check_recorders, check_train_labels, load_split, merge

    check_train_labels(data, ("devel",), pool)
    check_recorders(data, ("train", "devel"))
    train_split = load_split(data, "train", frontend=frontend)
    return merge(train_split, load_split(data, "devel", train_split.labels, frontend))


def _field_lines(result: dict) -> dict:
    """The field measure's headline figures from a cv or cv-ensemble result, when it has them."""
    field = result.get("field")
    if not field:
        return {}
    pick = ("false_per_hour", "false_per_hour_95", "false_events", "background_hours", "precision", "recall",
            "clip_uar", "background_clips_alone")
    point = dict(field["operating_point"])
    if point.get("event_gate"):   # its coefficients are in the JSON file; here, what it holds
        point["event_gate"] = {"classes": sorted(point["event_gate"]["classes"]),
                               "coefficients": "in the JSON file written (field.operating_point.event_gate)"}
    return {"field_untuned": {k: field["untuned"][k] for k in pick},
            "field_at_point": {k: field["at_point"][k] for k in pick},
            "never_stored": field.get("never_stored", []),
            "operating_point": point,
            **({"field_chosen_on_other_folds": field["operating_point"]["expected"]["chosen_on_other_folds"]}
               if "chosen_on_other_folds" in field["operating_point"]["expected"] else {}),
            "calibration": {k: field["calibration_report"][k] for k in ("fits",)} |
                           {"ece": field["calibration_report"]["calibrated"]["ece"],
                            "at_0.9": field["calibration_report"]["calibrated"]["levels"]["0.9"]}}


@app.command()
def cv(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/cv"),
    # the metavar names training.cv.RECIPES (not imported here: sklearn); a test holds them equal
    recipe: Annotated[list[str], typer.Option(metavar="<baseline|paper|field>", help="baseline, paper (Table 2) or field (Table 2 + field augmentations); repeatable.")] = ["baseline", "paper", "field"],
    folds: Annotated[int, typer.Option(min=2, help="Folds, grouped by recorder.")] = 5,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per fold for network recipes.")] = 30,
    seed: Annotated[int, typer.Option(help="Fold and training seed.")] = 0,
    hidden: Annotated[int, typer.Option(min=1, help="Network recipes: LSTM hidden size (h).")] = PAPER.hidden,
    layers: Annotated[int, typer.Option(min=1, help="Network recipes: LSTM layers (l).")] = PAPER.layers,
    frontend_kind: FrontendOpt = "logmel",
    f_max: FMaxOpt = FrontendConfig.f_max,
    average_last: Annotated[int, typer.Option(min=0, help="Network recipes: average the weights of the last N epochs instead of choosing an epoch; keeps the fold models and chooses thresholds.")] = 0,
    max_false_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="With --average-last: share of background windows the thresholds may let through as calls.")] = 0.1,
    window_s: Annotated[float, typer.Option(callback=positive, help="The recorder's window: the field recipe's crop length and the held-out windows.")] = WINDOW_S,
    hop_s: Annotated[float, typer.Option(callback=positive, help="The recorder's window hop, for the held-out windows.")] = HOP_S,
    mix_other_recorders: CvMixOtherOpt = False,
    centre_bands: CentreOpt = False,
    pool: CvPoolOpt = True,
    target_false_per_hour: TargetOpt = 5.0,
    hard_negatives: HardNegOpt = 0.0,
    near_call_negatives: NearCallOpt = 0.0,
    background_share: BackgroundShareOpt = 0.0,
    recorder_adversary: AdversaryOpt = 0.0,
    params: ParamsOpt = None,
):
    """Grouped cross-validation over train + devel: no recorder in both training and validation."""
    from training.cv import cross_validate, cv_recipes

    check_params_alone(params, hidden=hidden, layers=layers)
    check_network_options(recipe, hidden=hidden != PAPER.hidden, layers=layers != PAPER.layers,
                           average_last=average_last, centre_bands=centre_bands,
                           mix_other_recorders=mix_other_recorders, hard_negatives=hard_negatives,
                           near_call_negatives=near_call_negatives, background_share=background_share,
                           recorder_adversary=recorder_adversary, params=params is not None,
                           frontend=frontend_kind != "logmel", f_max=f_max != FrontendConfig.f_max)
    check_background_share(background_share)
    check_average_last(average_last, epochs)
    check_window(window_s, hop_s)
    frontend = frontend_option(frontend_kind, f_max)
    try:
        recipes = cv_recipes(recipe, frontend, epochs=epochs, seed=seed, hidden=hidden, layers=layers,
                             average_last=average_last, window_s=window_s, hop_s=hop_s, centre_bands=centre_bands,
                             mix_other_recorders=mix_other_recorders, hard_negatives=hard_negatives,
                             near_call_negatives=near_call_negatives, background_share=background_share,
                             recorder_adversary=recorder_adversary, params=None if params is None else _read_params(params))
    except ValueError as exc:  # an unknown recipe name or search parameter: the command line is wrong
        raise console.error(f"--params {params}: {exc}" if params is not None and "--recipe" not in str(exc)
                            else str(exc), console.EXIT_USAGE)

    def run():
        from training.data import load_pool

        load = functools.partial(_train_and_devel, data, pool=pool)
        reference = load(FrontendConfig())
        pool_load = functools.partial(load_pool, data, reference.labels) if pool else None
        with CvProgress() as progress:
            summary = cross_validate(recipes, reference, folds, out, seed,
                                     load=load, window_s=window_s, hop_s=hop_s, max_false_rate=max_false_rate,
                                     pool=pool_load, target_false_per_hour=target_false_per_hour,
                                     progress=progress)
        keys = ("uar_mean", "uar_std", "epoch", "recall", "thresholds", "windows_at_thresholds",
                "windows_at_thresholds_note")
        return {name: {**{k: r[k] for k in keys if k in r}, **_field_lines(r)} for name, r in summary["recipes"].items()}

    _run(run)


@app.command("bundle-cv")
def bundle_cv_command(
    cv_dir: Annotated[Path, typer.Argument(help="A cv run directory.")],
    recipe: Annotated[str, typer.Option(help="The recipe whose fold models form the ensemble (as named in cv.json).")],
    out: OutOpt = Path("runs/cv-bundle"),
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8.")] = False,
    max_false_rate: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Choose the thresholds again for this share of background windows (default: as cv chose them).")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Data directory whose train split gives the bundle's self-check reference windows (recommended).")] = None,
):
    """Bundle the fold models of an averaged cv recipe, with its thresholds: an ensemble chosen by grouped CV."""
    from training.bundling import bundle_cv

    _run(bundle_cv, cv_dir, recipe, out, int8, max_false_rate, reference_data=data)


@app.command("cv-ensemble")
def cv_ensemble_command(
    members: Annotated[list[Path], typer.Argument(metavar="MEMBER", help="Recipe directories of averaged cv runs (<cv_dir>/<recipe>), same folds.")],
    data: DataOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path, typer.Option("--out", help="JSON file to write: scores, trade-off, thresholds.")] = Path("runs/cv-ensemble.json"),
    max_false_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of background windows the thresholds may let through as calls.")] = 0.1,
    target_false_per_hour: TargetOpt = 5.0,
    prevalence: Annotated[float, typer.Option(min=0.001, max=0.99, help="Share of the assembled recordings' time that is calls.")] = 0.05,
    reuse_votes: Annotated[bool, typer.Option("--reuse-votes", help="Read the raw votes an earlier run saved beside --out (<out>.votes.npz) instead of running the models.")] = False,
    votes: Annotated[Optional[Path], typer.Option("--votes", help="Read the raw votes from this .votes.npz of an earlier run of the same members instead of running the models.")] = None,
    rules: Annotated[str, typer.Option(help="Evidence rules the operating point may use per class: windows (1-4 windows), windows6, evidence (1-6 windows and a summed window confidence), hysteresis (1-6 windows and one confident window), evidence+hysteresis, gate (runs over 0.3 kept by an event gate fitted on the held-out runs).")] = "hysteresis",
    at_point: Annotated[Optional[Path], typer.Option("--at-point", help="A bundle whose own operating point to measure and calibrate at, instead of choosing one for the target (to re-fit a bundle's calibration; then `rebundle`).")] = None,
    held_out_pool: Annotated[bool, typer.Option("--held-out-pool/--no-held-out-pool", help="Measure each fold on its held-out recorders' pool clips too (lab/pool.csv, when the data set has it): grouped CV over train + devel + pool. Off: train + devel alone, as before 2026-12-04.")] = True,
):
    """Grouped-CV score of an ensemble of cv recipes (mixed frontends allowed), thresholds on its own vote,
    the field measure, a field operating point and calibration (for `bundle --thresholds`)."""
    from training.cv_ensemble import cv_ensemble

    def run():
        from training.data import load_pool

        result = cv_ensemble(members, functools.partial(_train_and_devel, data, pool=held_out_pool), out, max_false_rate,
                             target_false_per_hour, prevalence, reuse_votes, votes, rules,
                             pool=functools.partial(load_pool, data) if held_out_pool else None, at_point=at_point)
        keys = ("uar_mean", "uar_std", "uar_mean_untuned", "uar_std_untuned", "thresholds",
                "windows_untuned", "windows_at_thresholds", "windows_at_thresholds_note")
        return {**{k: result[k] for k in keys}, **_field_lines(result)}

    _run(run)


SPLITS = ("train", "devel", "test")


@app.command()
def score(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory.")],
    data: DataOpt = DEFAULT_DATA_DIR,
    split: Annotated[str, typer.Option(metavar=f"<{'|'.join(SPLITS)}>", help="Which list to score: train, devel or test.")] = "test",
):
    """Score a bundle as the recorder runs it: windows, vote, thresholds, one label per clip."""
    from training.runs import score_bundle

    if split not in SPLITS:   # else any path under lab/ ran ("--split ../lab/test")
        raise console.error(f"--split {split!r}: choose one of {', '.join(SPLITS)}", console.EXIT_USAGE)
    _run(score_bundle, bundle, data, split)


@app.command()
def adapt(
    bundle: Annotated[Path, typer.Argument(help="Parent bundle directory.")],
    reviews: Annotated[Path, typer.Option("--reviews", help="Detections database with reviews (edgemon review).")],
    out: Annotated[Path, typer.Option("--out", help="Adapted bundle directory to write.")],
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="Recorder directory of the reviewed detections (default: the ledger's paths).")] = None,
    folds: Annotated[int, typer.Option(min=2, help="Held-out folds, grouped by recording.")] = 4,
    l2: Annotated[float, typer.Option(callback=non_negative, help="Penalty on the site head's weights (larger: closer to the parent).")] = 1.0,
):
    """Adapt a bundle to a site from its reviewed detections: a site head on the members'
    embeddings and/or re-fitted thresholds (alone or with the fewest windows an event needs), or a
    site veto of windows like its reviewed false alarms over re-fitted thresholds and windows,
    whichever does best on held-out recordings; refused if worse than the parent there. The
    stored confidence is shifted to the site's reviews when that scores better on held-out
    recordings, else the parent's calibration is kept."""
    from training.adapt import AdaptConfig, adapt_bundle

    if recordings is not None and not recordings.is_dir():   # else every review fell back to the ledger's paths
        raise console.error(f"--recordings {recordings}: not a directory (leave it out to read the ledger's paths)",
                            console.EXIT_USAGE)
    _run(adapt_bundle, bundle, reviews, recordings, out, AdaptConfig(folds=folds, l2=l2))


# The search's commands (hpo, pack-features, ensemble, report) live in their own module; importing
# it registers them on ``app``.
from training import cli_search  # noqa: E402,F401  (after everything it uses is defined)


def main() -> None:
    console.setup_logging()
    console.usage_errors_in_one_line()
    app()
