"""``edgemon``: the recorder's command line. An adapter: parse options, call one function, and
turn an ``EdgemonError`` into a one-line message and a non-zero exit (see ``edgemon.console`` for
the exit statuses).

Every option that is also a setting takes its flag, help and shown default from the settings
registry (``edgemon.settings_registry.SETTINGS``) and defaults to None ("not given"), so that every command
reads its settings one way: defaults < settings file < ``EDGEMON_*`` < options (``load_settings``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon import console
from edgemon.amounts import audio_amount
from edgemon.cli_common import (ClassifyFormat, ClockTimezoneOpt, ConfigFormat, ConfigOpt, DbOpt, DeviceIdOpt,
                                DirectoryAlias, DirectoryArg, ExportFormat, JsonOpt, ModelsOpt, TextFormat, ThreadsOpt,
                                TimezoneOpt, app, fail, service_in_force, settings_in_force, setting_option)
from edgemon.config import OptionError, load_settings
from edgemon.errors import EdgemonError
from edgemon.utc import parse_utc


@app.command()
def info(ctx: typer.Context, models: ModelsOpt = None, config: ConfigOpt = None,
         fmt: Annotated[TextFormat, typer.Option("--format", help="json (everything; the default) or text (the lines a person reads first).")] = TextFormat.json,
         as_json: JsonOpt = False):   # as status, config and devices take it (a newcomer trial)
    """Describe a model bundle: labels and their names, members and their devel/test UAR, windows,
    thresholds, the highest confidence it can give, and its self-check on this CPU."""
    from edgemon.analysis.bundle import default_bundle_path
    from edgemon.analysis.bundle_text import format_description
    from edgemon.analysis.ensemble import describe_bundle
    from edgemon.analysis.selfcheck import SelfCheckError

    try:
        description, check = describe_bundle(service_in_force(ctx, config).models or default_bundle_path())
    except EdgemonError as exc:
        raise fail(exc)
    text = fmt is TextFormat.text and not as_json
    typer.echo(format_description(description) if text else json.dumps(description, indent=2))
    if not check.passed:
        raise fail(SelfCheckError(f"{description['path']}: self-check on this CPU {check.summary()}"))


@app.command()
def watch(
    ctx: typer.Context,
    directory: DirectoryArg = None,
    db: DbOpt = None,
    models: ModelsOpt = None,
    device_id: DeviceIdOpt = None,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit once the backlog is done.")] = False,
    settle_s: Annotated[Optional[float], setting_option("settle_s")] = None,
    rescan_s: Annotated[Optional[float], setting_option("rescan_s")] = None,
    incomplete_grace_s: Annotated[Optional[float], setting_option("incomplete_grace_s")] = None,
    retry_s: Annotated[Optional[float], setting_option("retry_s")] = None,
    threads: ThreadsOpt = None,
    clock_timezone: ClockTimezoneOpt = None,
    config: ConfigOpt = None,
    directory_alias: DirectoryAlias = None,
):
    """Turn every recording in DIRECTORY into detections, once, and keep watching for new ones."""
    from edgemon.daemon import run_service
    from edgemon.signals import StoppedEarly

    try:
        run_service(settings_in_force(ctx, config, directory_alias), mode="watch", until_idle=until_idle)
    except StoppedEarly as exc:
        raise console.error(str(exc), exc.exit_status)
    except EdgemonError as exc:
        raise fail(exc)


@app.command()
def run(ctx: typer.Context, config: ConfigOpt = None):
    """Run what the settings file names (mode = watch or listen): the systemd service's command."""
    from edgemon.daemon import run_service

    try:
        run_service(settings_in_force(ctx, config))
    except EdgemonError as exc:
        raise fail(exc)


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def show_config(ctx: typer.Context, config: ConfigOpt = None,
                fmt: Annotated[ConfigFormat, typer.Option("--format", help="toml (commented with sources) or json.")] = ConfigFormat.toml,
                as_json: JsonOpt = False):
    """Print the settings in force and where each came from (file < environment < options).
    Setting options (--db X, --settle-s 3 ...) preview what a command given them would use."""
    from edgemon.config import parse_options
    from edgemon.sync.service import check_sync_url

    try:
        given = parse_options(ctx.args)
        _check_some_command_takes(given)
        settings = load_settings(config, given)
        check_sync_url(settings)   # what sync would refuse, said here where it is looked for
    except EdgemonError as exc:
        raise fail(exc)
    if as_json or fmt is ConfigFormat.json:
        typer.echo(json.dumps(settings.as_json(), indent=2))
    else:
        typer.echo(settings.describe(), nl=False)


def _check_some_command_takes(given: dict) -> None:
    """A setting no command has an option for (min_free_mb, heartbeat_s: the service's, set in its
    file) previewed as an option looked usable, and every command then refused it (a newcomer trial)."""
    from edgemon.settings_registry import BY_NAME

    taken = {opt for command in typer.main.get_command(app).commands.values() if command.name != "config"
             for param in command.params for opt in getattr(param, "opts", ())}
    for name in given:
        setting = BY_NAME[name]
        if setting.option not in taken:
            where = f"[{setting.table}] {name}" if setting.table else name
            raise OptionError(f"no command takes {setting.option}: set {name} in the settings file "
                              f"({where} = …) or as EDGEMON_{name.upper()}")


@app.command()
def status(
    ctx: typer.Context,
    directory: DirectoryArg = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    fmt: Annotated[TextFormat, typer.Option("--format", help="text or json.")] = TextFormat.text,
    as_json: JsonOpt = False,
    heartbeats: Annotated[Optional[Path], typer.Option("--heartbeats", help="Also write every heartbeat row to this CSV file ('-': stdout).", readable=False)] = None,
    integrity: Annotated[bool, typer.Option("--integrity/--no-integrity", help="Check the database's integrity (SQLite's quick_check: most of status's time on a season's database, minutes on a Pi).")] = True,
    directory_alias: DirectoryAlias = None,
):
    """How the unit is doing: service, backlog (of DIRECTORY), last file and detection, real-time
    factor, dropped audio, disk free, database integrity, bundle, uptime, problems. Reads only."""
    from edgemon.status import collect_status, format_status, write_heartbeats_file

    try:
        service = service_in_force(ctx, config, directory_alias)
        report = collect_status(service.db, directory=service.directory, heartbeat_s=service.heartbeat_s,
                                min_free_mb=service.min_free_mb, integrity=integrity)
        if heartbeats is not None:
            write_heartbeats_file(service.db, heartbeats)
    except EdgemonError as exc:
        raise fail(exc)
    if heartbeats is None or str(heartbeats) != "-":
        if as_json or fmt is TextFormat.json:
            typer.echo(json.dumps(report, indent=2))
        else:
            typer.echo(format_status(report, zone=service.zone()), nl=False)


@app.command()
def classify(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Recordings (WAV or FLAC; another format libsndfile reads, MP3 or Ogg say, when named), or directories (their WAV and FLAC files, recursive).", readable=False)],
    models: ModelsOpt = None,
    fmt: Annotated[ClassifyFormat, typer.Option("--format", help="table (for reading) or csv (export-detections' csv columns).")] = ClassifyFormat.table,
    threads: ThreadsOpt = None,
    timezone: TimezoneOpt = None,
    clock_timezone: ClockTimezoneOpt = None,
    config: ConfigOpt = None,
):
    """Analyse files once and print their detections; no database."""
    from edgemon.files.classify import classify_files, format_rows
    from edgemon.analysis.analyzer import make_analyzer

    try:
        service = service_in_force(ctx, config)
        rows, errors = classify_files(files, make_analyzer(service.models, service.threads), service.zone(),
                                      service.clock_zone())
    except EdgemonError as exc:
        raise fail(exc)
    if rows or not errors:   # every file failed: no table (a bare header read as "no detections")
        typer.echo(format_rows(rows, fmt.value), nl=False)
    for line in errors:
        console.echo_error(line)
    if errors:
        raise typer.Exit(console.EXIT_FAILURE)


@app.command()
def listen(
    ctx: typer.Context,
    device: Annotated[Optional[str], setting_option("device")] = None,
    db: DbOpt = None,
    models: ModelsOpt = None,
    device_id: DeviceIdOpt = None,
    sample_rate: Annotated[Optional[float], setting_option("sample_rate")] = None,
    channels: Annotated[Optional[int], setting_option("channels")] = None,
    clips: Annotated[Optional[Path], setting_option("clips")] = None,
    clip_pre_s: Annotated[Optional[float], setting_option("clip_pre_s")] = None,
    clip_post_s: Annotated[Optional[float], setting_option("clip_post_s")] = None,
    clips_max_mb: Annotated[Optional[float], setting_option("clips_max_mb")] = None,
    clips_min_free_mb: Annotated[Optional[float], setting_option("clips_min_free_mb")] = None,
    queue_s: Annotated[Optional[float], setting_option("queue_s")] = None,
    stall_s: Annotated[Optional[float], setting_option("stall_s")] = None,
    backoff_max_s: Annotated[Optional[float], setting_option("backoff_max_s")] = None,
    flush_s: Annotated[Optional[float], setting_option("flush_s")] = None,
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
        run_service(settings_in_force(ctx, config), mode="listen", duration_s=duration_s)
    except EdgemonError as exc:
        raise fail(exc)


@app.command()
def devices(fmt: Annotated[TextFormat, typer.Option("--format", help="text (tab-separated) or json.")] = TextFormat.text,
            as_json: JsonOpt = False):
    """List audio input devices: index, name, host API, input channels, default rate."""
    import dataclasses

    from edgemon.live.capture import list_input_devices

    try:
        found = list_input_devices()
    except EdgemonError as exc:
        raise fail(exc)
    if as_json or fmt is TextFormat.json:
        typer.echo(json.dumps([dataclasses.asdict(d) for d in found], indent=2))
        return
    typer.echo("index\tname\thostapi\tchannels\tdefault_rate")
    for d in found:
        typer.echo(f"{d.index}\t{d.name}\t{d.hostapi}\t{d.channels}\t{d.default_rate:g}")
    if not found:   # a header alone read as a listing that had failed (a newcomer trial)
        typer.echo("no audio input devices found: is a microphone or sound card plugged in, and may this user "
                   "use it (the audio group)?", err=True)


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
    output: Annotated[Optional[Path], typer.Option("--output", help="File (csv, birdnet, jsonl) or directory (raven); default (or -) standard output.", readable=False)] = None,
    since: Annotated[Optional[str], typer.Option(help="Only detections starting at or after this UTC time (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only detections starting before this UTC time (ISO 8601).")] = None,
    label: Annotated[Optional[list[str]], typer.Option(metavar="LABEL", help="Only these labels (repeatable).")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(metavar="P", help="Only detections at least this confident, 0 to 1 (an error above what the bundle can reach).")] = None,
    new: Annotated[bool, typer.Option("--new", help="Only what this cursor has not delivered yet (cursor 'default' unless --cursor), then advance it.")] = False,
    cursor: Annotated[Optional[str], typer.Option("--cursor", metavar="NAME", help="Named cursor, one per destination and filter; implies --new. A cursor keeps the filter it was first used with.")] = None,
    bundle: Annotated[Optional[list[str]], typer.Option("--bundle", metavar="ID", help="Only detections of this bundle id (repeatable; see `edgemon reanalyse`).")] = None,
    coverage: Annotated[Optional[Path], typer.Option("--coverage", help="Also write live-stream coverage (per minute: seconds analysed and lost) for the same --since/--until to this file (csv, or jsonl with --format jsonl).", readable=False)] = None,
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="Also write the recordings analysed (the effort: one row per recording, its start, end, seconds of audio, clock and detection count) for the same --since/--until, and --bundle: the recordings each bundle analysed, to this file (csv, or jsonl with --format jsonl).", readable=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No info line on standard error (for cron); errors are still reported.")] = False,
    timezone: TimezoneOpt = None,
    config: ConfigOpt = None,
):
    """Export detections; reads only, so it never blocks the daemon."""
    from edgemon.storage.export import (export_coverage, export_detections as run_export, export_recordings,
                                        refuse_cursors_files)
    from edgemon.signals import Terminated, terminate_as_interrupt
    from edgemon.storage.export_files import ExportError, OutputClosed, refuse_the_database
    from edgemon.storage.output_target import check_output

    log = logging.getLogger("edgemon.storage.export")
    output = None if output == Path("-") else output   # as status and review take it: standard output
    try:
        extras = [(coverage, "--coverage"), (recordings, "--recordings")]
        for extra, option in extras:
            taken = [other for other, name in [(output, "--output"), *extras] if name != option and other is not None]
            if extra == Path("-") or (extra is not None and any(extra.resolve() == other.resolve() for other in taken)):
                raise OptionError(f"{option} needs a file of its own, not standard output or another option's file")
        if fmt is ExportFormat.raven and output is None:
            raise OptionError("--format raven writes one table per recording: give --output DIR (an existing directory)")
        _check_confidence(min_confidence)
        service = service_in_force(ctx, config)
        db = service.db
        refuse_the_database(output, db, "--output")
        for extra, option in extras:
            refuse_the_database(extra, db, option)
        if fmt is not ExportFormat.raven:   # raven's --output is a directory of tables
            check_output(output, "--output", ExportError, appending=new or cursor is not None)
        for extra, option in extras:
            check_output(extra, option, ExportError)
        refuse_cursors_files(db, extras + ([] if new or cursor is not None or
                                                              fmt is ExportFormat.raven else [(output, "--output")]))
        times = [None if t is None else _parse_time(t, option) for t, option in ((since, "--since"), (until, "--until"))]
        if None not in times and times[0] >= times[1]:
            raise OptionError(f"--since {since} is not before --until {until}: nothing could match")
        side_fmt = "jsonl" if fmt is ExportFormat.jsonl else "csv"

        def alongside(snapshot) -> None:
            # In the detections' own read snapshot, before their rows: a coverage or recordings file
            # that cannot be written must not cost a cursor its rows, and a recording watch stored
            # between two reads had detections with no recording behind them (a field-station trial).
            nonlocal minutes, effort
            if coverage is not None:
                minutes = export_coverage(db, side_fmt, coverage, times[0], times[1], timezone=service.timezone,
                                          snapshot=snapshot)
            if recordings is not None:
                effort = export_recordings(db, side_fmt, recordings, times[0], times[1], bundle=bundle or None,
                                           timezone=service.timezone, label=label or None,
                                           min_confidence=min_confidence, snapshot=snapshot)
        minutes, effort = 0, (0, 0.0)
        with terminate_as_interrupt():   # a stopped job removes its temp files, as after Ctrl-C
            count = run_export(db, fmt.value, output, times[0], times[1], label or None, min_confidence,
                               new or cursor is not None, "default" if cursor is None else cursor,
                               bundle=bundle or None, timezone=service.timezone,
                               alongside=alongside if coverage is not None or recordings is not None else None)
    except OutputClosed:   # `| head`: the reader had enough; as any Unix filter, exit quietly (128 + SIGPIPE)
        raise typer.Exit(128 + signal.SIGPIPE)
    except Terminated:      # stopped (systemd, `timeout`): said, and 128 + SIGTERM, as the signal would give
        log.warning("export stopped by SIGTERM before it finished; a cursor's next export delivers what this "
                    "one did not")
        raise typer.Exit(128 + signal.SIGTERM)
    except EdgemonError as exc:
        raise fail(exc)
    if not bundle and not quiet:
        _warn_several_bundles(db, "--bundle ID")
    if bundle and not quiet:
        _warn_bundle_reach(db, bundle)
    if not quiet:
        log.info("exported %d detection(s)%s", count, f" (cursor {cursor or 'default'})" if new or cursor else "")
        if coverage is not None:
            log.info("exported %d coverage minute(s)", minutes)
        if recordings is not None:
            log.info("exported %d recording(s), %s of audio analysed", effort[0], audio_amount(effort[1]))


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


def _warn_bundle_reach(db: Path, bundles: list[str]) -> None:
    """An export of a bundle that analysed only some of the recordings (an interrupted or partial
    ``reanalyse``) holds the calls of those only: say how many, since an empty recording and one
    never analysed look alike in the rows (a review)."""
    from edgemon.storage.readonly import ReadError, recordings_analysed_by

    try:
        reach = recordings_analysed_by(db, bundles)
    except ReadError:
        return
    for bundle_id, analysed, finished in reach:
        if analysed < finished:
            logging.getLogger("edgemon").warning(
                "%s analysed %d of the %d finished recordings in the ledger as they now are: this export holds its "
                "calls in those only (`edgemon reanalyse --models BUNDLE` analyses the rest)", bundle_id, analysed,
                finished)


def _parse_time(text: str, option: str):
    try:
        when = parse_utc(text)
    except ValueError:
        raise OptionError(f"{option}: not an ISO 8601 time: {text!r} (e.g. 2024-05-01 or 2024-05-01T06:00Z)") from None
    try:
        when.astimezone(dt.timezone.utc)   # year 1 or 9999 with an offset falls off the calendar in UTC
        # Up to the millisecond times are stored to: "since <= start < until" then holds for a
        # bound given finer (truncated, a start 0.4 ms before --since was in, a newcomer trial).
        if when.microsecond % 1000:
            when += dt.timedelta(microseconds=1000 - when.microsecond % 1000)
            when.astimezone(dt.timezone.utc)
    except OverflowError:
        raise OptionError(f"{option}: {text!r} is outside the years UTC can hold (1-9999)") from None
    return when


# The commands grouped in their own modules; importing them registers them on ``app``.
# In the order `edgemon --help` lists them, after every command here.
from edgemon import cli_review  # noqa: E402,F401
from edgemon import cli_fleet  # noqa: E402,F401,I001


def main() -> None:
    # Before numpy loads: OpenBLAS otherwise starts a worker per core that spin-waits after each
    # small product (the frontend's mel filterbank), ~13 % of a core while listening (bench/listen_load.py).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    console.setup_logging()
    console.usage_errors_in_one_line()
    app()
