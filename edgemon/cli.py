"""``edgemon``: the recorder's command line. An adapter: parse options, call one function, and
turn an ``EdgemonError`` into a one-line message and a non-zero exit (see ``edgemon.console`` for
the exit statuses).

Every option that is also a setting takes its flag, help and shown default from the settings
registry (``edgemon.config.SETTINGS``) and defaults to None ("not given"), so that every command
reads its settings one way: defaults < settings file < ``EDGEMON_*`` < options (``load_settings``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgemon import console
from edgemon.config import BY_NAME, OptionError, ServiceConfig, Settings, cli_overrides, load_settings
from edgemon.errors import EdgemonError
from edgemon.utc import parse_utc

# rich_markup_mode=None: plain help, so "[watch]" stays text and flags show no "<bool>" value.
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]}, epilog=console.EPILOG,
                  help="Species detections from field recorders, on the recorder.")


def _setting(name: str) -> Any:
    """The option of setting ``name``: flag, help and shown default from the registry. Its
    parameter defaults to None (not given): the settings file and environment then decide."""
    s = BY_NAME[name]
    return typer.Option(s.option, help=s.help if s.default is None else f"{s.help}  [default: {s.default}]",
                        show_default=False, readable=False)   # unreadable paths: our own one-line errors


class TextFormat(str, enum.Enum):
    text = "text"
    json = "json"


class ConfigFormat(str, enum.Enum):
    toml = "toml"
    json = "json"


class ClassifyFormat(str, enum.Enum):
    table = "table"
    csv = "csv"


class ExportFormat(str, enum.Enum):
    csv = "csv"
    birdnet = "birdnet"
    jsonl = "jsonl"
    raven = "raven"


ModelsOpt = Annotated[Optional[Path], _setting("models")]
DbOpt = Annotated[Optional[Path], _setting("db")]
ThreadsOpt = Annotated[Optional[int], _setting("threads")]
DeviceIdOpt = Annotated[Optional[str], _setting("device_id")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Settings file (TOML; default: $EDGEMON_CONFIG, else /etc/edgemon/edgemon.toml if present). Environment variables and options override it.", readable=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
# One way for `watch` and `status`: DIRECTORY positional; --directory kept for existing scripts.
DirectoryArg = Annotated[Optional[Path], typer.Argument(
    metavar="DIRECTORY", show_default=False,
    help="Recorder directory (recursive); default: `directory` in [watch] of the settings file.", readable=False)]
DirectoryAlias = Annotated[Optional[Path], typer.Option("--directory", hidden=True, help="Same as DIRECTORY.", readable=False)]


@app.callback()
def _main(version: Annotated[bool, console.version_option("edgemon")] = False):
    """Species detections from field recorders, on the recorder."""


def _fail(exc: EdgemonError) -> typer.Exit:
    """The one-line error for ``exc``; exit 2 for a refused option, 1 for every other failure."""
    return console.error(str(exc), console.EXIT_USAGE if isinstance(exc, OptionError) else console.EXIT_FAILURE)


def _settings(ctx: typer.Context, config: Path | None, directory_alias: Path | None = None) -> Settings:
    """The settings in force for this command, the one way every command reads them: defaults <
    settings file < environment < the options given on its command line."""
    given = cli_overrides(ctx)
    if directory_alias is not None:
        if given.get("directory", directory_alias) != directory_alias:
            raise OptionError("give the directory once: DIRECTORY or --directory")
        given["directory"] = directory_alias
    return load_settings(config, given)


def _service(ctx: typer.Context, config: Path | None, directory_alias: Path | None = None) -> ServiceConfig:
    """``_settings(...)``, typed (for commands that need the values, not where they came from)."""
    return _settings(ctx, config, directory_alias).service


@app.command()
def info(ctx: typer.Context, models: ModelsOpt = None, config: ConfigOpt = None,
         fmt: Annotated[TextFormat, typer.Option("--format", help="json (everything; the default) or text (the lines a person reads first).")] = TextFormat.json):
    """Describe a model bundle: labels and their names, members and their devel/test UAR, windows,
    thresholds, the highest confidence it can give, and its self-check on this CPU."""
    from edgemon.analysis.bundle import default_bundle_path
    from edgemon.analysis.bundle_text import format_description
    from edgemon.analysis.ensemble import describe_bundle
    from edgemon.analysis.selfcheck import SelfCheckError

    try:
        description, check = describe_bundle(_service(ctx, config).models or default_bundle_path())
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(format_description(description) if fmt is TextFormat.text else json.dumps(description, indent=2))
    if not check.passed:
        raise _fail(SelfCheckError(f"{description['path']}: self-check on this CPU {check.summary()}"))


@app.command()
def watch(
    ctx: typer.Context,
    directory: DirectoryArg = None,
    db: DbOpt = None,
    models: ModelsOpt = None,
    device_id: DeviceIdOpt = None,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit once the backlog is done.")] = False,
    settle_s: Annotated[Optional[float], _setting("settle_s")] = None,
    rescan_s: Annotated[Optional[float], _setting("rescan_s")] = None,
    incomplete_grace_s: Annotated[Optional[float], _setting("incomplete_grace_s")] = None,
    retry_s: Annotated[Optional[float], _setting("retry_s")] = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    directory_alias: DirectoryAlias = None,
):
    """Turn every recording in DIRECTORY into detections, once, and keep watching for new ones."""
    from edgemon.daemon import run_service

    try:
        run_service(_settings(ctx, config, directory_alias), mode="watch", until_idle=until_idle)
    except EdgemonError as exc:
        raise _fail(exc)


@app.command()
def run(ctx: typer.Context, config: ConfigOpt = None):
    """Run what the settings file names (mode = watch or listen): the systemd service's command."""
    from edgemon.daemon import run_service

    try:
        run_service(_settings(ctx, config))
    except EdgemonError as exc:
        raise _fail(exc)


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def show_config(ctx: typer.Context, config: ConfigOpt = None,
                fmt: Annotated[ConfigFormat, typer.Option("--format", help="toml (commented with sources) or json.")] = ConfigFormat.toml,
                as_json: JsonOpt = False):
    """Print the settings in force and where each came from (file < environment < options).
    Setting options (--db X, --settle-s 3 ...) preview what a command given them would use."""
    from edgemon.config import parse_options

    try:
        settings = load_settings(config, parse_options(ctx.args))
    except EdgemonError as exc:
        raise _fail(exc)
    if as_json or fmt is ConfigFormat.json:
        typer.echo(json.dumps(settings.as_json(), indent=2))
    else:
        typer.echo(settings.describe(), nl=False)


@app.command()
def status(
    ctx: typer.Context,
    directory: DirectoryArg = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[TextFormat, typer.Option("--format", help="text or json.")] = TextFormat.text,
    as_json: JsonOpt = False,
    heartbeats: Annotated[Optional[Path], typer.Option("--heartbeats", help="Also write every heartbeat row to this CSV file ('-': stdout).", readable=False)] = None,
    directory_alias: DirectoryAlias = None,
):
    """How the unit is doing: service, backlog (of DIRECTORY), last file and detection, real-time
    factor, dropped audio, disk free, database integrity, bundle, uptime, problems. Reads only."""
    from edgemon.status import collect_status, format_status, write_heartbeats_file

    try:
        service = _service(ctx, config, directory_alias)
        report = collect_status(service.db, directory=service.directory, heartbeat_s=service.heartbeat_s,
                                min_free_mb=service.min_free_mb)
        if heartbeats is not None:
            write_heartbeats_file(service.db, heartbeats)
    except EdgemonError as exc:
        raise _fail(exc)
    if heartbeats is None or str(heartbeats) != "-":
        if as_json or fmt is TextFormat.json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo(format_status(report), nl=False)


@app.command()
def classify(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILES", help="Audio files (WAV or FLAC).", readable=False)],
    models: ModelsOpt = None,
    fmt: Annotated[ClassifyFormat, typer.Option("--format", help="table or csv.")] = ClassifyFormat.table,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
):
    """Analyse files once and print their detections; no database."""
    from edgemon.files.classify import classify_files, format_rows
    from edgemon.analysis.analyzer import make_analyzer

    try:
        service = _service(ctx, config)
        rows, errors = classify_files(files, make_analyzer(service.models, service.threads))
    except EdgemonError as exc:
        raise _fail(exc)
    if rows or not errors:   # every file failed: no table (a bare header read as "no detections")
        typer.echo(format_rows(rows, fmt.value), nl=False)
    for line in errors:
        console.echo_error(line)
    if errors:
        raise typer.Exit(console.EXIT_FAILURE)


@app.command()
def listen(
    ctx: typer.Context,
    device: Annotated[Optional[str], _setting("device")] = None,
    db: DbOpt = None,
    models: ModelsOpt = None,
    device_id: DeviceIdOpt = None,
    sample_rate: Annotated[Optional[float], _setting("sample_rate")] = None,
    channels: Annotated[Optional[int], _setting("channels")] = None,
    clips: Annotated[Optional[Path], _setting("clips")] = None,
    clip_pre_s: Annotated[Optional[float], _setting("clip_pre_s")] = None,
    clip_post_s: Annotated[Optional[float], _setting("clip_post_s")] = None,
    clips_max_mb: Annotated[Optional[float], _setting("clips_max_mb")] = None,
    clips_min_free_mb: Annotated[Optional[float], _setting("clips_min_free_mb")] = None,
    queue_s: Annotated[Optional[float], _setting("queue_s")] = None,
    stall_s: Annotated[Optional[float], _setting("stall_s")] = None,
    backoff_max_s: Annotated[Optional[float], _setting("backoff_max_s")] = None,
    flush_s: Annotated[Optional[float], _setting("flush_s")] = None,
    duration_s: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (default: run until stopped).")] = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
):
    """Turn a live microphone (see `edgemon devices`) into detections, with per-minute coverage,
    until stopped. Reads the settings file and EDGEMON_* like every command; options override them."""
    from edgemon.daemon import run_service

    try:
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
            raise OptionError(f"option --duration-s: must be a finite number of seconds above 0, got {duration_s!r}")
        run_service(_settings(ctx, config), mode="listen", duration_s=duration_s)
    except EdgemonError as exc:
        raise _fail(exc)


@app.command()
def devices(fmt: Annotated[TextFormat, typer.Option("--format", help="text (tab-separated) or json.")] = TextFormat.text,
            as_json: JsonOpt = False):
    """List audio input devices: index, name, host API, input channels, default rate."""
    import dataclasses

    from edgemon.live.capture import list_input_devices

    try:
        found = list_input_devices()
    except EdgemonError as exc:
        raise _fail(exc)
    if as_json or fmt is TextFormat.json:
        typer.echo(json.dumps([dataclasses.asdict(d) for d in found], indent=2))
        return
    typer.echo("index\tname\thostapi\tchannels\tdefault_rate")
    for d in found:
        typer.echo(f"{d.index}\t{d.name}\t{d.hostapi}\t{d.channels}\t{d.default_rate:g}")


def _check_confidence(value: float | None) -> None:
    """A --min-confidence is a probability; 70 is BirdNET users' habit of percent, so say so."""
    if value is not None and not 0.0 <= value <= 1.0:   # nan fails this too
        hint = f" (did you mean {value / 100:g}?)" if 1.0 < value <= 100.0 and value.is_integer() else ""
        raise OptionError(f"--min-confidence {value:g} is not a probability from 0 to 1{hint}")


@app.command("export-detections")
def export_detections(
    ctx: typer.Context,
    db: DbOpt = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="csv, birdnet (BirdNET-Analyzer's CSV columns), jsonl or raven (one BirdNET-named selection table per file).")] = ExportFormat.csv,
    output: Annotated[Optional[Path], typer.Option("--output", help="File (csv, birdnet, jsonl) or directory (raven); default stdout.", readable=False)] = None,
    since: Annotated[Optional[str], typer.Option(help="Only detections starting at or after this UTC time (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only detections starting before this UTC time (ISO 8601).")] = None,
    label: Annotated[Optional[list[str]], typer.Option(metavar="LABEL", help="Only these labels (repeatable).")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(metavar="P", help="Only detections at least this confident, 0 to 1 (an error above what the bundle can reach).")] = None,
    new: Annotated[bool, typer.Option("--new", help="Only what this cursor has not delivered yet (cursor 'default' unless --cursor), then advance it.")] = False,
    cursor: Annotated[Optional[str], typer.Option("--cursor", metavar="NAME", help="Named cursor, one per destination and filter; implies --new. A cursor keeps the filter it was first used with.")] = None,
    bundle: Annotated[Optional[list[str]], typer.Option("--bundle", metavar="ID", help="Only detections of this bundle id (repeatable; see `edgemon reanalyse`).")] = None,
    coverage: Annotated[Optional[Path], typer.Option("--coverage", help="Also write live-stream coverage (per minute: seconds analysed and lost) for the same --since/--until to this file (csv, or jsonl with --format jsonl).", readable=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No info line on standard error (for cron); errors are still reported.")] = False,
    config: ConfigOpt = None,
):
    """Export detections; reads only, so it never blocks the daemon."""
    from edgemon.storage.export import export_coverage, export_detections as run_export
    from edgemon.storage.export_files import OutputClosed, refuse_the_database

    log = logging.getLogger("edgemon.storage.export")
    try:
        if fmt is ExportFormat.raven and output is None:
            raise OptionError("--format raven writes one table per recording: give --output DIR (an existing directory)")
        _check_confidence(min_confidence)
        service = _service(ctx, config)
        db = service.db
        refuse_the_database(output, db, "--output")
        refuse_the_database(coverage, db, "--coverage")
        times = [None if t is None else _parse_time(t, option) for t, option in ((since, "--since"), (until, "--until"))]
        if None not in times and times[0] >= times[1]:
            raise OptionError(f"--since {since} is not before --until {until}: nothing could match")
        if coverage is not None:   # first: a coverage file that cannot be written must not cost a cursor its rows
            minutes = export_coverage(db, "jsonl" if fmt is ExportFormat.jsonl else "csv", coverage, times[0], times[1])
        count = run_export(db, fmt.value, output, times[0], times[1], label or None, min_confidence,
                           new or cursor is not None, "default" if cursor is None else cursor, bundle=bundle or None,
                           timezone=service.timezone)
    except OutputClosed:   # `| head`: the reader had enough; as any Unix filter, exit quietly (128 + SIGPIPE)
        raise typer.Exit(128 + signal.SIGPIPE)
    except EdgemonError as exc:
        raise _fail(exc)
    if not bundle and not quiet:
        _warn_several_bundles(db, "--bundle ID")
    if not quiet:
        log.info("exported %d detection(s)%s", count, f" (cursor {cursor or 'default'})" if new or cursor else "")
        if coverage is not None:
            log.info("exported %d coverage minute(s)", minutes)


def _warn_several_bundles(db: Path, choose: str) -> None:
    """A view over every bundle, on a database where ``reanalyse`` stored a second bundle's
    detections of the same recordings, counts each sound once per bundle: say so, once."""
    from edgemon.storage.readonly import ReadError, sources_in_several_bundles

    try:
        several = sources_in_several_bundles(db)
    except ReadError:
        return   # the export itself said what was wrong
    if several:
        logging.getLogger("edgemon").warning(
            "%d recording(s) hold detections of more than one bundle (reanalyse): every bundle's are "
            "included, so a call may appear once per bundle; choose one with %s", several, choose)


@app.command()
def review(
    ctx: typer.Context,
    db: DbOpt = None,
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="The recorder directory the detections came from (default: the paths in the database's ledger).", readable=False)] = None,
    clips: Annotated[Optional[Path], _setting("clips")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but 127.0.0.1/localhost needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", envvar="EDGEMON_REVIEW_TOKEN", help="Token every request must carry (default: generated and printed when binding beyond this machine).")] = None,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Name stored with each verdict.")] = os.environ.get("USER", "reviewer"),
    export: Annotated[Optional[Path], typer.Option("--export", help="Write every verdict as CSV to this file ('-': stdout) and exit.", readable=False)] = None,
    config: ConfigOpt = None,
):
    """A local web page to hear, see and judge detections (correct / wrong / another label / unsure)."""
    clips_given = clips   # named here; the settings' clip directory may not exist before `listen` saves one
    try:
        service = _service(ctx, config)
        db, clips = service.db, service.clips   # the clip directory `listen` saved into
        for option, path in (("--recordings", recordings), ("--clips", clips_given)):
            if path is not None and not path.is_dir():   # else the page quietly falls back to the ledger's paths
                raise OptionError(f"{option} {path}: {'not a directory' if path.exists() else 'no such directory'}")
    except EdgemonError as exc:
        raise _fail(exc)
    if export is not None:   # a CSV of the verdicts: the page's extra is not needed
        from edgemon.storage.export_files import atomic_text, refuse_the_database
        from edgemon.review.reviews import write_reviews_csv

        try:
            refuse_the_database(export, db, "--export")
            with (contextlib.nullcontext(sys.stdout) if str(export) == "-" else atomic_text(export)) as out:
                count = write_reviews_csv(db, out)
        except EdgemonError as exc:
            raise _fail(exc)
        logging.getLogger("edgemon.review").info("exported %d verdict(s)", count)
        return
    try:
        from edgemon.review.app import ReviewConfig, serve
    except ImportError as exc:
        raise _fail(EdgemonError(f"the review page needs the 'review' extra (pip install 'edgemon[review]'): {exc}"))
    try:
        serve(ReviewConfig(db=db, recordings=recordings, clips=clips, host=host, port=port, token=token,
                           reviewer=reviewer), on_ready=lambda line: typer.echo(line, err=True))
    except EdgemonError as exc:
        raise _fail(exc)


@app.command()
def reanalyse(
    ctx: typer.Context,
    models: ModelsOpt = None,
    db: DbOpt = None,
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="Recorder directory (default: the ledger's paths).", readable=False)] = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
):
    """Run recordings still on disk through another bundle (--models; e.g. one from `edgemon-train adapt`,
    or the embedded one after an upgrade); its detections are stored beside the old ones (run again,
    a detection found again keeps its id and reviews)."""
    from edgemon.analysis.analyzer import make_analyzer
    from edgemon.files.reanalyse import reanalyse as run_reanalyse

    try:
        service = _service(ctx, config)
        result = run_reanalyse(service.db, make_analyzer(service.models, service.threads), recordings,
                               service.device_id)
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(dataclasses.asdict(result), indent=2))
    where = "" if recordings is not None else "; give --recordings DIR where they are now"
    if result.missing and not (result.files or result.failed or result.changed):
        raise console.error(f"nothing analysed again: none of the {len(result.missing)} recording(s) is on disk "
                            f"(listed above){where}")
    if result.missing:
        logging.getLogger("edgemon").warning("%d recording(s) no longer on disk were not analysed again (listed "
                                             "above)%s", len(result.missing), where)
    if result.failed or result.changed:
        raise console.error(f"{len(result.changed) + len(result.failed)} recording(s) not analysed again: "
                            f"{len(result.changed)} changed since watch analysed them, {len(result.failed)} "
                            f"unreadable (listed above); their detections were left as they were")


@app.command()
def sync(
    ctx: typer.Context,
    to: Annotated[Optional[str], typer.Option("--to", help="Fleet database, postgresql://user@host/db (default: sync_url from the settings). No password in it: libpq's ~/.pgpass, $PGPASSFILE, ?passfile=PATH (0600) or $PGPASSWORD.")] = None,
    db: DbOpt = None,
    device_id: DeviceIdOpt = None,
    retry_for_s: Annotated[float, typer.Option(min=0.0, help="Keep retrying an unreachable server this many seconds, backing off.")] = 0.0,
    batch_rows: Annotated[Optional[int], typer.Option(min=1, help="Changes in the first batch (batches then adapt to the link).")] = None,
    config: ConfigOpt = None,
):
    """Send every detection, file, coverage minute and heartbeat the fleet database lacks, once."""
    from edgemon.sync.sender import sync_command

    try:
        if not math.isfinite(retry_for_s):
            raise OptionError(f"--retry-for-s: must be a finite number of seconds, not {retry_for_s}")
        result = sync_command(_settings(ctx, config), to, retry_for_s, batch_rows)
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(result.describe())


fleet_app = typer.Typer(no_args_is_help=True, help="The fleet database (PostgreSQL) that recorders sync into.")
app.add_typer(fleet_app, name="fleet")


@fleet_app.command("status")
def fleet_status(
    db: Annotated[str, typer.Option("--db", help="Fleet database, postgresql://user@host/db (no password in it).")],
    days: Annotated[int, typer.Option(help="Days of detections and effort to show (the newest present).")] = 7,
    all_bundles: Annotated[bool, typer.Option("--all-bundles", help="Detections of every bundle, not only each site's newest.")] = False,
    min_free_mb: Annotated[float, typer.Option(help="Flag recorders with less free disk (MB).")] = 500.0,
    fmt: Annotated[TextFormat, typer.Option("--format", help="text or json.")] = TextFormat.text,
    as_json: JsonOpt = False,
):
    """Recorder health, detections per site/species/day and effort; flags recorders that need a visit."""
    from edgemon.sync.fleet_status import VisitRules, collect_fleet, format_fleet

    if days < 1:
        raise _fail(OptionError(f"--days {days}: give 1 or more"))
    try:
        report = collect_fleet(db, VisitRules(min_free_mb=min_free_mb), days, all_bundles)
    except EdgemonError as exc:
        raise _fail(exc)
    as_json = as_json or fmt is TextFormat.json
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else format_fleet(report), nl=as_json)


def _parse_time(text: str, option: str):
    try:
        return parse_utc(text)
    except ValueError:
        raise OptionError(f"{option}: not an ISO 8601 time: {text!r} (e.g. 2024-05-01 or 2024-05-01T06:00Z)") from None


def main() -> None:
    # Before numpy loads: OpenBLAS otherwise starts a worker per core that spin-waits after each
    # small product (the frontend's mel filterbank), ~13 % of a core while listening (bench/listen_load.py).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    console.setup_logging()
    app()
