"""``edgemon-train``: an adapter from options to ``training.runs``; no logic lives here."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon.errors import EdgemonError
from edgemon.frontend import FrontendConfig
from training.augment import AugmentConfig
from training.data import DEFAULT_DATA_DIR
from training.model import ModelConfig
from training.train import OptimConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, evaluate and export edgemon classifiers.")

DataOpt = Annotated[Path, typer.Option("--data", help="ComParE-style data directory (audio/, lab/).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run directory to write.")]

FrontendOpt = Annotated[str, typer.Option("--frontend", help="Model input: logmel (the paper's), pcen, or logmel_pcen (both side by side).")]


def _frontend(kind: str) -> FrontendConfig:
    try:
        return FrontendConfig.from_dict({"kind": kind})
    except EdgemonError as exc:
        typer.echo(f"error: --frontend: {exc}", err=True)
        raise typer.Exit(1)


# Field-augmentation preset (off in the paper's recipe): crops of the deployment window, time
# shift, background mixing at 0-20 dB SNR on half the clips, +-6 dB gain.
MixOtherOpt = Annotated[bool, typer.Option("--mix-other-recorders", help="Mix calls only with background clips from other recorders (with --field).")]
TargetOpt = Annotated[float, typer.Option(help="Field operating point: false events per hour of held-out background that the per-class thresholds and minimum windows may let through (split evenly over the call classes).")]
HardNegOpt = Annotated[float, typer.Option(help="Hard negatives: in the second half of training, draw a background clip 1 + N x P(call) as often as others of its class (0: off).")]
PoolOpt = Annotated[bool, typer.Option("--pool/--no-pool", help="Add lab/pool.csv (train-only background and duets, when the data set has it) to training; in cv, to each fold's training side only, less the held-out recorders' clips.")]
CentreOpt = Annotated[bool, typer.Option("--centre-bands", help="Subtract each band's mean over the window inside the network (cancels a recorder's level and colour).")]
FIELD = {"time_shift": True, "p_mix": 0.5, "snr_db": (0.0, 20.0), "gain_db": 6.0}


def _run(fn, *args, **kwargs):
    """Call ``fn``; print its summary as JSON, or a one-line error and exit 1."""
    try:
        summary = fn(*args, **kwargs)
    except EdgemonError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def fit(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/fit"),
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 3.373e-4,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    tau: Annotated[float, typer.Option(help="Normalised-softmax temperature.")] = 0.6203,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (lambda).")] = 0.0578,
    lr_decay: Annotated[float, typer.Option(help="Per-epoch lr factor (beta).")] = 0.82,
    gamma: Annotated[float, typer.Option(help="Focal-loss gamma.")] = 3.0,
    p_fm: Annotated[float, typer.Option(help="Fraction of mel bins masked.")] = 0.0,
    p_tm: Annotated[float, typer.Option(help="Fraction of frames masked.")] = 0.0,
    p_r: Annotated[float, typer.Option(help="Probability of applying the masks.")] = 0.0,
    layers: Annotated[int, typer.Option(help="LSTM layers (l).")] = 2,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size (h).")] = 256,
    dropout: Annotated[float, typer.Option(help="Dropout (p_drop).")] = 0.05,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = 300,
    patience: Annotated[int, typer.Option(help="Stop after N epochs without a better devel UAR (0: off).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    field: Annotated[bool, typer.Option("--field", help="Turn on the field augmentations.")] = False,
    crop_s: Annotated[Optional[float], typer.Option(help="Random crops of this many seconds (default: the window with --field, else off).")] = None,
    window_s: Annotated[float, typer.Option(help="Deployment window length written into the bundle.")] = 4.0,
    hop_s: Annotated[float, typer.Option(help="Deployment window hop written into the bundle.")] = 2.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="Log lines instead of a progress bar.")] = False,
    frontend_kind: FrontendOpt = "logmel",
    average_last: Annotated[int, typer.Option(help="Keep the mean weights of the last N epochs instead of the best devel epoch (0: off).")] = 0,
    mix_other_recorders: MixOtherOpt = False,
    centre_bands: CentreOpt = False,
    with_devel: Annotated[bool, typer.Option("--with-devel", help="Train on train + devel (needs --average-last): for a recipe already chosen by grouped CV.")] = False,
    pool: PoolOpt = True,
    hard_negatives: HardNegOpt = 0.0,
):
    """Train one model (defaults: the paper's Table 2 setting) and write a run directory."""
    from training.runs import fit_run

    if mix_other_recorders and not field:
        typer.echo("error: --mix-other-recorders needs --field (only the field recipe mixes in background)", err=True)
        raise typer.Exit(1)
    frontend = _frontend(frontend_kind)
    crop = crop_s if crop_s is not None else (window_s if field else 0.0)
    aug = AugmentConfig(p_fm=p_fm, p_tm=p_tm, p_r=p_r, log_floor=frontend.log_floor,
                        crop_frames=int(round(crop * frontend.sample_rate / frontend.hop_length)),
                        mix_other_recorders=mix_other_recorders, **(FIELD if field else {}))
    _run(fit_run, data, out, ModelConfig(hidden=hidden, layers=layers, dropout=dropout, tau=tau,
                                         centre_bands=centre_bands),
         OptimConfig(lr=lr, batch_size=batch_size, weight_decay=weight_decay, lr_decay=lr_decay,
                     gamma=gamma, epochs=epochs, patience=patience, seed=seed, device=device,
                     average_last=average_last, hard_negatives=hard_negatives),
         aug, window_s=window_s, hop_s=hop_s, frontend=frontend, progress=not quiet, with_devel=with_devel, pool=pool)


@app.command()
def baseline(data: DataOpt = DEFAULT_DATA_DIR, out: OutOpt = Path("runs/baseline")):
    """ComParE-style reference: log-mel functionals, standardisation, linear SVM (C on devel)."""
    from training.runs import baseline_run

    _run(baseline_run, data, out)


@app.command()
def bundle(
    runs: Annotated[list[Path], typer.Argument(help="Run directories whose model.onnx become members.")],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8 (dynamic).")] = False,
    thresholds: Annotated[Optional[Path], typer.Option(help="Per-class thresholds from a cv-ensemble JSON.")] = None,
):
    """Assemble a model bundle (manifest + members) from trained runs.

    Runs on log-mel and on PCEN may be mixed: the bundle then streams both side by side and each
    member reads its own columns."""
    from training.bundling import bundle_runs

    _run(bundle_runs, runs, out, int8=int8, thresholds_from=thresholds)


def _train_and_devel(data: Path, frontend: FrontendConfig):
    """train + devel as one split, the way cv folds it; the test list is not even read."""
    from training.data import load_split, merge

    train_split = load_split(data, "train", frontend=frontend)
    return merge(train_split, load_split(data, "devel", train_split.labels, frontend))


def _field_lines(result: dict) -> dict:
    """The field measure's headline figures from a cv or cv-ensemble result, when it has them."""
    field = result.get("field")
    if not field:
        return {}
    pick = ("false_per_hour", "false_per_hour_95", "false_events", "background_hours", "precision", "recall",
            "clip_uar")
    return {"field_untuned": {k: field["untuned"][k] for k in pick},
            "field_at_point": {k: field["at_point"][k] for k in pick},
            "operating_point": field["operating_point"],
            "calibration": {k: field["calibration_report"][k] for k in ("fits",)} |
                           {"ece": field["calibration_report"]["calibrated"]["ece"],
                            "at_0.9": field["calibration_report"]["calibrated"]["levels"]["0.9"]}}


def _storage(storage: Optional[str], out: Path) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


@app.command()
def hpo(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/hpo"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL shared by workers (default: sqlite in --out).")] = None,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
    trials: Annotated[int, typer.Option(help="Finished trials (complete + pruned) over all workers.")] = 400,
    epochs: Annotated[int, typer.Option(help="Maximum epochs per trial.")] = 300,
    space: Annotated[str, typer.Option(help="paper (Table 2) or field (+ field augmentations).")] = "paper",
    startup_trials: Annotated[int, typer.Option(help="Trials finished before pruning starts.")] = 5,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed (default: random per worker).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    heartbeat_s: Annotated[int, typer.Option(help="Seconds between trial heartbeats.")] = 60,
    timeout_s: Annotated[Optional[float], typer.Option(help="This worker starts no trial after this many seconds.")] = None,
    start_from_paper: Annotated[bool, typer.Option(help="Enqueue the paper's Table 2 setting as the first trial.")] = True,
):
    """Optuna TPE search with median pruning; run the same command on more workers to share a study."""
    from training.hpo import SearchConfig, progress_line, run_search
    from training.runs import Splits

    config = SearchConfig(n_trials=trials, max_epochs=epochs, space=space, seed=seed, device=device,
                          startup_trials=startup_trials, heartbeat_s=heartbeat_s, timeout_s=timeout_s,
                          start_from_paper=start_from_paper)

    def search():
        splits = Splits.load(data)
        found = run_search(config, _storage(storage, out), study, out, splits.train, splits.devel)
        return {"study": study, "storage": _storage(storage, out), "progress": progress_line(found)}

    out.mkdir(parents=True, exist_ok=True)
    _run(search)


@app.command()
def ensemble(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")] = Path("runs/hpo/ensemble"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: sqlite in runs/hpo).")] = None,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
    top: Annotated[int, typer.Option(help="Members: the best N completed trials by devel UAR.")] = 5,
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8 (dynamic).")] = False,
):
    """Bundle the search's best trials; report each member's and the majority vote's UAR."""
    from training.ensemble import build_ensemble
    from training.hpo import SearchConfig, open_study
    from training.runs import Splits

    def run():
        splits = Splits.load(data)
        found = open_study(_storage(storage, out.parent), study, SearchConfig())
        return build_ensemble(found, out, splits.devel, splits.test, top=top, int8=int8)

    _run(run)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Search run directory (after 'edgemon-train ensemble').")],
    data: DataOpt = DEFAULT_DATA_DIR,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
):
    """The paper's figures for a search run: Table 1, confusions, classes, t-SNE, history, importances."""
    from training.report import build_report

    _run(build_report, run_dir, data, study)


@app.command()
def cv(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/cv"),
    recipe: Annotated[list[str], typer.Option(help="baseline, paper (Table 2) or field (Table 2 + field augmentations); repeatable.")] = ["baseline", "paper", "field"],
    folds: Annotated[int, typer.Option(help="Folds, grouped by recorder.")] = 5,
    epochs: Annotated[int, typer.Option(help="Epochs per fold for network recipes.")] = 30,
    seed: Annotated[int, typer.Option(help="Fold and training seed.")] = 0,
    hidden: Annotated[int, typer.Option(help="Network recipes: LSTM hidden size (h).")] = 256,
    layers: Annotated[int, typer.Option(help="Network recipes: LSTM layers (l).")] = 2,
    frontend_kind: FrontendOpt = "logmel",
    average_last: Annotated[int, typer.Option(help="Network recipes: average the weights of the last N epochs instead of choosing an epoch; keeps the fold models and chooses thresholds.")] = 0,
    max_false_rate: Annotated[float, typer.Option(help="With --average-last: share of background windows the thresholds may let through as calls.")] = 0.1,
    window_s: Annotated[float, typer.Option(help="The recorder's window: the field recipe's crop length and the held-out windows.")] = 4.0,
    hop_s: Annotated[float, typer.Option(help="The recorder's window hop, for the held-out windows.")] = 2.0,
    mix_other_recorders: MixOtherOpt = False,
    centre_bands: CentreOpt = False,
    pool: PoolOpt = True,
    target_false_per_hour: TargetOpt = 5.0,
    hard_negatives: HardNegOpt = 0.0,
):
    """Grouped cross-validation over train + devel: no recorder in both training and validation."""
    from training.cv import Recipe, cross_validate

    frontend = _frontend(frontend_kind)
    window = int(round(window_s * frontend.sample_rate / frontend.hop_length))
    optim = OptimConfig(epochs=epochs, seed=seed, average_last=average_last, hard_negatives=hard_negatives)
    model = ModelConfig(hidden=hidden, layers=layers, centre_bands=centre_bands)
    suffix = ("" if frontend.kind == "logmel" else f"-{frontend.kind}") + (f"-avg{average_last}" if average_last else "")
    if (hidden, layers) != (256, 2):
        suffix += f"-h{hidden}l{layers}"
    if (window_s, hop_s) != (4.0, 2.0):
        suffix += f"-w{window_s:g}"
    if centre_bands:
        suffix += "-cb"
    if hard_negatives:
        suffix += f"-hn{hard_negatives:g}"
    known = {
        "baseline": Recipe("baseline"),
        "paper": Recipe("paper" + suffix, model, optim, AugmentConfig(), frontend),
        "field": Recipe("field" + suffix + ("-xrec" if mix_other_recorders else ""), model, optim,
                        AugmentConfig(crop_frames=window, mix_other_recorders=mix_other_recorders, **FIELD), frontend),
    }
    unknown = [r for r in recipe if r not in known]
    if unknown:
        typer.echo(f"error: unknown recipe(s) {unknown}: choose from {list(known)}", err=True)
        raise typer.Exit(1)

    def run():
        from training.data import load_pool

        load = functools.partial(_train_and_devel, data)
        reference = load(FrontendConfig())
        pool_load = functools.partial(load_pool, data, reference.labels) if pool else None
        summary = cross_validate([known[r] for r in recipe], reference, folds, out, seed,
                                 load=load, window_s=window_s, hop_s=hop_s, max_false_rate=max_false_rate,
                                 pool=pool_load, target_false_per_hour=target_false_per_hour)
        keys = ("uar_mean", "uar_std", "epoch", "recall", "thresholds", "windows_at_thresholds")
        return {name: {**{k: r[k] for k in keys if k in r}, **_field_lines(r)} for name, r in summary["recipes"].items()}

    _run(run)


@app.command("bundle-cv")
def bundle_cv_command(
    cv_dir: Annotated[Path, typer.Argument(help="A cv run directory.")],
    recipe: Annotated[str, typer.Option(help="The recipe whose fold models form the ensemble (as named in cv.json).")],
    out: OutOpt = Path("runs/cv-bundle"),
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8.")] = False,
    max_false_rate: Annotated[Optional[float], typer.Option(help="Choose the thresholds again for this share of background windows (default: as cv chose them).")] = None,
):
    """Bundle the fold models of an averaged cv recipe, with its thresholds: an ensemble chosen by grouped CV."""
    from training.bundling import bundle_cv

    _run(bundle_cv, cv_dir, recipe, out, int8, max_false_rate)


@app.command("cv-ensemble")
def cv_ensemble_command(
    members: Annotated[list[Path], typer.Argument(help="Recipe directories of averaged cv runs (<cv_dir>/<recipe>), same folds.")],
    data: DataOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path, typer.Option("--out", help="JSON file to write: scores, trade-off, thresholds.")] = Path("runs/cv-ensemble.json"),
    max_false_rate: Annotated[float, typer.Option(help="Share of background windows the thresholds may let through as calls.")] = 0.1,
    target_false_per_hour: TargetOpt = 5.0,
    prevalence: Annotated[float, typer.Option(help="Share of the assembled recordings' time that is calls.")] = 0.05,
    reuse_votes: Annotated[bool, typer.Option("--reuse-votes", help="Read the raw votes an earlier run saved beside --out (<out>.votes.npz) instead of running the models.")] = False,
):
    """Grouped-CV score of an ensemble of cv recipes (mixed frontends allowed), thresholds on its own vote,
    the field measure, a field operating point and calibration (for `bundle --thresholds`)."""
    from training.cv_ensemble import cv_ensemble

    def run():
        result = cv_ensemble(members, functools.partial(_train_and_devel, data), out, max_false_rate,
                             target_false_per_hour, prevalence, reuse_votes)
        keys = ("uar_mean", "uar_std", "uar_mean_untuned", "uar_std_untuned", "thresholds",
                "windows_untuned", "windows_at_thresholds")
        return {**{k: result[k] for k in keys}, **_field_lines(result)}

    _run(run)


@app.command()
def score(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory.")],
    data: DataOpt = DEFAULT_DATA_DIR,
    split: Annotated[str, typer.Option(help="Which list to score: train, devel or test.")] = "test",
):
    """Score a bundle as the recorder runs it: windows, vote, thresholds, one label per clip."""
    from training.runs import score_bundle

    _run(score_bundle, bundle, data, split)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
