"""``edgemon-train`` search commands: ``hpo``, ``pack-features``, ``ensemble``, ``report``.

Adapters from options to ``training.hpo``, ``training.feature_pack``, ``training.top_trials`` and
``training.report``, registered on ``training.cli``'s ``app`` (importing this module registers
them; ``training.cli`` does so).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon import console
from training.cli import _run, app
from training.cli_options import CentreOpt, DataOpt, OutOpt, device_option, positive
from training.data import DEFAULT_DATA_DIR
from training.errors import DataError
from training.out_dirs import check_out_dir


@contextlib.contextmanager
def _study_storage(url: str):
    """An Optuna storage that cannot be opened (SQLAlchemy) or used (Optuna), as an error naming it."""
    import optuna
    import sqlalchemy.exc

    try:
        yield url
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, ImportError) as exc:
        # ImportError: the URL's database driver is not installed (a traceback before, a review).
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"Optuna storage {_without_password(url)}: {_without_password(why)}") from exc


def _without_password(text: str) -> str:
    """``text`` with any URL's password masked (``scheme://user:***@host``): it went to the
    terminal and the logs in the one-line error (a review)."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]+@", r"\1***@", text)


def _probe_storage(url: str) -> None:
    """Connect to a database storage once, failing in one line (a wrong host, a driver missing)
    before the audio loads; a SQLite file is left to the study to make."""
    if url.startswith("sqlite:"):
        return
    import sqlalchemy

    with _study_storage(url):
        engine = sqlalchemy.create_engine(url)
        try:
            engine.connect().close()
        finally:
            engine.dispose()


def _storage(storage: Optional[str], out: Path) -> str:
    return storage or f"sqlite:///{(out / 'study.db').resolve()}"


def _existing_study(url: str, study: str) -> None:
    """For commands that read a search: the storage and the study must exist (opening them made
    an empty study.db, or an empty study in the real one, and then said only "no trial")."""
    import optuna

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise DataError(f"no search study at {url.removeprefix('sqlite:///')}: run `edgemon-train hpo` there "
                        f"first, or give --storage")
    names = optuna.study.get_all_study_names(storage=url)
    if study not in names:
        raise DataError(f"study {study!r} is not in {url} (it holds: {', '.join(names) or 'none'})")


@app.command()
def hpo(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: OutOpt = Path("runs/hpo"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL shared by workers (default: sqlite in --out).")] = None,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
    trials: Annotated[int, typer.Option(min=1, help="Finished trials (complete + pruned) over all workers.")] = 400,
    epochs: Annotated[int, typer.Option(min=1, help="Maximum epochs per trial (per fold with --objective cv or field).")] = 300,
    # the metavars name training.hpo's SPACES and OBJECTIVES (not imported here: optuna); a test holds them equal
    space: Annotated[str, typer.Option(metavar="<paper|field>", help="paper (Table 2) or field (+ field augmentations).")] = "paper",
    objective: Annotated[str, typer.Option(metavar="<devel|cv|field>", help="devel: devel UAR of the standard split (keeps each trial's model for `ensemble`); cv: mean held-out window UAR over folds grouped by recorder, each pool clip on the training side of the folds that do not hold out its recorder and scored in the one that does (recorders never heard); field: the same folds by the field measure, each fold's model run over its held-out audio as the recorder runs a bundle: event recall at --target-false-per-hour false events per hour of held-out background, points chosen on the other folds.")] = "devel",
    folds: Annotated[int, typer.Option(min=2, help="--objective cv or field: folds, grouped by recorder.")] = 5,
    average_last: Annotated[int, typer.Option(min=1, help="--objective cv or field: average the weights of the last N epochs, as the shipped members (an epoch chosen on the held-out fold would leak).")] = 5,
    centre_bands: CentreOpt = False,
    pool: Annotated[bool, typer.Option("--pool/--no-pool", help="--objective cv or field: add lab/pool.csv to each fold's training side, less the held-out recorders' clips (the devel objective trains on train alone).")] = True,
    target_false_per_hour: Annotated[Optional[float], typer.Option(callback=positive, help="--objective field: the false events per hour of held-out background at which a trial's event recall is read (default 10: about 16 events in the 1.6 h of background held out with the pool, where 5 / h is 8 and noisier; about 0.7 h with --no-pool).")] = None,
    features: Annotated[Optional[Path], typer.Option(help="Read train, devel (and pool) from a feature pack (`pack-features`) instead of --data's audio.")] = None,
    startup_trials: Annotated[int, typer.Option(min=0, help="Trials finished before pruning starts.")] = 5,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed (default: random per worker).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    heartbeat_s: Annotated[int, typer.Option(min=1, help="Seconds between trial heartbeats.")] = 60,
    timeout_s: Annotated[Optional[float], typer.Option(callback=positive, help="This worker starts no trial after this many seconds.")] = None,
    start_from_paper: Annotated[bool, typer.Option(help="Enqueue the paper's Table 2 setting as the first trial.")] = True,
):
    """Optuna TPE search with median pruning; run the same command on more workers to share a study."""
    from training.hpo import GROUPED, OBJECTIVES, SPACES, SearchConfig, progress_line, run_search
    from training.search_dir import check_trials_dir

    if space not in SPACES:
        raise console.error(f"--space must be one of {', '.join(SPACES)}, not {space!r}", console.EXIT_USAGE)
    if objective not in OBJECTIVES:
        raise console.error(f"--objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}",
                            console.EXIT_USAGE)
    if objective == "field" and features is not None:
        raise console.error("--objective field runs each fold's model over the held-out audio as the recorder "
                            "does: give --data, not a feature pack (--features)", console.EXIT_USAGE)
    if target_false_per_hour is not None and objective != "field":
        raise console.error("--target-false-per-hour is what --objective field reads its recall at: "
                            "give --objective field, or leave it out", console.EXIT_USAGE)

    config = SearchConfig(n_trials=trials, max_epochs=epochs, space=space, seed=seed, device=device_option(device),
                          startup_trials=startup_trials, heartbeat_s=heartbeat_s, timeout_s=timeout_s,
                          start_from_paper=start_from_paper, objective=objective, folds=folds,
                          average_last=average_last, centre_bands=centre_bands,
                          inputs="audio" if features is None else "pack",
                          **({"target_false_per_hour": target_false_per_hour} if target_false_per_hour else {}))
    if out.exists() and not out.is_dir():
        raise console.error(f"--out {out} exists and is not a directory", console.EXIT_USAGE)

    def search():
        _probe_storage(_storage(storage, out))   # before minutes of audio (a review: found after them)
        if objective not in GROUPED:   # another study's trial models there: refused before the audio too
            check_trials_dir(out, study, _storage(storage, out))
        try:
            train_split, devel, pool_split = _search_splits(data, features, pool and objective in GROUPED)
        except BaseException:
            if created and not any(out.iterdir()):   # a wrong --data leaves no empty run directory behind
                out.rmdir()
            raise
        with _study_storage(_storage(storage, out)) as url:
            try:
                found = run_search(config, url, study, out, train_split, devel, pool_split)
            except KeyboardInterrupt:
                raise console.error("interrupted: a trial cut short is marked failed; the same command goes on "
                                    "with the study (the reference trials are queued again)", 130) from None
        return {"study": study, "storage": url, "progress": progress_line(found)}

    created = not out.exists()
    try:   # before the data loads: a read-only place, or another's work there, fails now, not after minutes of audio
        check_out_dir(out, own=("study.db",))
        out.mkdir(parents=True, exist_ok=True)
    except DataError as exc:
        raise console.error(str(exc))
    except OSError as exc:   # one line, not a traceback
        raise console.error(f"--out {out}: cannot create it ({exc.strerror or exc})")
    _run(search)


def _search_splits(data: Path, features: Optional[Path], with_pool: bool):
    """train, devel and (``with_pool``) the pool, from the audio or from a feature pack."""
    if features is not None:
        from training.feature_pack import pool_left_out, unpack

        splits = unpack(features)
        missing = [name for name in ("train", "devel") if name not in splits]
        if missing:
            raise DataError(f"{features}: the pack holds no {missing[0]} split")
        if with_pool and "pool" not in splits and pool_left_out(features):
            raise DataError(f"{features}: packed with --no-pool; search with --no-pool too, or pack the pool")
        return splits["train"], splits["devel"], splits.get("pool") if with_pool else None
    from training.data import check_train_labels, load_pool, load_split

    check_train_labels(data, ("devel",), with_pool)   # before any audio is read: a background under another name (a review)
    train_split = load_split(data, "train")
    devel = load_split(data, "devel", train_split.labels)
    return train_split, devel, load_pool(data, train_split.labels) if with_pool else None


@app.command("pack-features")
def pack_features(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path, typer.Option("--out", help="The pack (.npz) to write.")] = Path("runs/features.npz"),
    pool: Annotated[bool, typer.Option("--pool/--no-pool", help="Pack lab/pool.csv too (train-only background and duets, when the data set has it).")] = True,
):
    """Pack train, devel (and pool) log-mel, 8-bit, into one file: a search on a machine the audio cannot reach (`hpo --features`)."""
    from training.feature_pack import pack

    def run():
        train_split, devel, pool_split = _search_splits(data, None, pool)
        splits = {"train": train_split, "devel": devel, **({"pool": pool_split} if pool_split is not None else {})}
        path = pack(splits, out, pool_left_out=not pool and (data / "lab" / "pool.csv").is_file())
        return {"pack": str(path), "bytes": path.stat().st_size, "clips": {k: len(v) for k, v in splits.items()}}

    _run(run)


@app.command()
def ensemble(
    data: DataOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")] = Path("runs/hpo/ensemble"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: the study.db of the search run that --out's parent is, runs/hpo for the default --out).")] = None,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
    top: Annotated[int, typer.Option(min=1, help="Members: the best N completed trials by devel UAR.")] = 5,
    int8: Annotated[bool, typer.Option("--int8", help="Quantise members to int8 (dynamic).")] = False,
):
    """Bundle the search's best trials; report each member's and the majority vote's UAR."""
    from training.hpo import GROUPED, SearchConfig, open_study
    from training.runs import Splits
    from training.top_trials import build_ensemble

    def run():
        splits = Splits.load(data)
        with _study_storage(_storage(storage, out.parent)) as url:
            _existing_study(url, study)
            found = open_study(url, study, SearchConfig())
            searched = found.user_attrs.get("objective")
            if searched in GROUPED:
                raise DataError(f"study {study!r} searched the {searched} objective, which keeps no models: train a setting "
                                f"it found with `edgemon-train fit --params` (scripts/summarise_search.py "
                                f"--write-params) and bundle those runs")
            return build_ensemble(found, out, splits.devel, splits.test, top=top, int8=int8, reference_data=data)

    _run(run)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Search run directory (after 'edgemon-train ensemble').")],
    data: DataOpt = DEFAULT_DATA_DIR,
    study: Annotated[str, typer.Option(help="Study name.")] = "edgemon",
    ensemble_dir: Annotated[Optional[Path], typer.Option("--ensemble", help="The bundle 'edgemon-train ensemble --out' wrote (default: RUN_DIR/ensemble).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL of the study, as given to hpo (default: sqlite in RUN_DIR).")] = None,
):
    """The paper's figures for a search run: Table 1, confusions, classes, t-SNE, history, importances."""
    from training.report import build_report

    def run():
        with _study_storage(_storage(storage, run_dir)) as url:
            _existing_study(url, study)
            return build_report(run_dir, data, study, ensemble_dir, url)

    _run(run)
