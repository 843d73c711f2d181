"""``edgemon``: the recorder's command line. An adapter: parse options, call one function, and
turn an ``EdgemonError`` into a one-line message and a non-zero exit."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon.errors import EdgemonError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Species detections from field recorders, on the recorder.")

ModelsOpt = Annotated[Optional[Path], typer.Option("--models", help="Model bundle directory (default: the embedded bundle).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Settings file (TOML; default: $EDGEMON_CONFIG, else /etc/edgemon/edgemon.toml if present). Environment variables and options override it.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]


def _fail(exc: EdgemonError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app.command()
def info(models: ModelsOpt = None):
    """Describe a model bundle: labels, members and their devel/test UAR, windows."""
    from edgemon.bundle import default_bundle_path, load_bundle

    try:
        bundle = load_bundle(models or default_bundle_path())
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(json.dumps({"bundle_id": bundle.bundle_id, "path": str(bundle.path),
                           "labels": bundle.labels, "window_s": bundle.window_s, "hop_s": bundle.hop_s,
                           "members": [m.__dict__ for m in bundle.members],
                           "frontend": bundle.frontend.to_dict()}, indent=2))


@app.command()
def watch(
    ctx: typer.Context,
    directory: Annotated[Optional[Path], typer.Argument(help="Recorder directory to watch (recursive); default: `directory` in [watch] of the settings file.")] = None,
    db: Annotated[Path, typer.Option("--db", help="Detections database (SQLite).")] = Path("edgemon.db"),
    models: ModelsOpt = None,
    device_id: Annotated[str, typer.Option(help="Recorder/site id stored with every detection.")] = "edgemon",
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit once the backlog is done.")] = False,
    settle_s: Annotated[float, typer.Option(help="Seconds a file must stay unchanged before it is read.")] = 5.0,
    rescan_s: Annotated[float, typer.Option(help="Seconds between full rescans of the directory.")] = 30.0,
    incomplete_grace_s: Annotated[float, typer.Option(help="Seconds to wait for a WAV header to be finalised.")] = 120.0,
    retry_s: Annotated[float, typer.Option(help="Seconds before a file that failed is tried again.")] = 60.0,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 1,
    config: ConfigOpt = None,
):
    """Turn every recording in DIRECTORY into detections, once, and keep watching for new ones."""
    from edgemon.config import load_settings
    from edgemon.daemon import run_service

    try:
        run_service(load_settings(config, ctx), mode="watch", until_idle=until_idle)
    except EdgemonError as exc:
        raise _fail(exc)


@app.command()
def run(config: ConfigOpt = None):
    """Run what the settings file names (mode = watch or listen): the systemd service's command."""
    from edgemon.config import load_settings
    from edgemon.daemon import run_service

    try:
        run_service(load_settings(config))
    except EdgemonError as exc:
        raise _fail(exc)


@app.command("config", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def show_config(ctx: typer.Context, config: ConfigOpt = None, as_json: JsonOpt = False):
    """Print the settings in force and where each came from (file < environment < options).
    Setting options (--db X, --settle-s 3 ...) preview what a command given them would use."""
    from edgemon.config import load_settings, parse_options

    try:
        settings = load_settings(config, parse_options(ctx.args))
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(settings.as_json(), indent=2) if as_json else settings.describe(), nl=as_json)


@app.command()
def status(
    ctx: typer.Context,
    config: ConfigOpt = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="Detections database (default: from the settings).")] = None,
    directory: Annotated[Optional[Path], typer.Option("--directory", help="Watched directory, to count the backlog (default: from the settings).")] = None,
    as_json: JsonOpt = False,
    heartbeats: Annotated[Optional[Path], typer.Option("--heartbeats", help="Also write every heartbeat row to this CSV file ('-': stdout).")] = None,
):
    """How the unit is doing: service, backlog, last file and detection, real-time factor,
    dropped audio, disk free, database integrity, bundle, uptime, problems. Reads only."""
    from edgemon.config import load_settings
    from edgemon.status import collect_status, format_status, write_heartbeats_csv

    try:
        settings = load_settings(config, ctx)
        report = collect_status(settings["db"], directory=settings["directory"], heartbeat_s=settings["heartbeat_s"],
                                min_free_mb=settings["min_free_mb"])
        if heartbeats is not None:
            with (open(heartbeats, "w", newline="") if str(heartbeats) != "-" else contextlib.nullcontext(sys.stdout)) as out:
                write_heartbeats_csv(settings["db"], out)
    except EdgemonError as exc:
        raise _fail(exc)
    if heartbeats is None or str(heartbeats) != "-":
        typer.echo(json.dumps(report, indent=2) if as_json else format_status(report), nl=as_json)


@app.command()
def classify(
    files: Annotated[list[Path], typer.Argument(help="Audio files (WAV or FLAC).")],
    models: ModelsOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="table or csv.")] = "table",
):
    """Analyse files once and print their detections; no database."""
    from edgemon.classify import classify_files, format_rows
    from edgemon.daemon import make_analyzer

    if fmt not in ("table", "csv"):
        raise _fail(EdgemonError(f"--format must be table or csv, not {fmt!r}"))
    try:
        rows, errors = classify_files(files, make_analyzer(models))
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(format_rows(rows, fmt), nl=False)
    for line in errors:
        typer.echo(f"error: {line}", err=True)
    if errors:
        raise typer.Exit(1)


@app.command()
def listen(
    device: Annotated[Optional[str], typer.Option("--device", help="Input device: index or name substring (see `edgemon devices`); default: the system's default input.")] = None,
    db: Annotated[Path, typer.Option("--db", help="Detections database (SQLite).")] = Path("edgemon.db"),
    models: ModelsOpt = None,
    device_id: Annotated[str, typer.Option(help="Recorder/site id stored with every detection.")] = "edgemon",
    sample_rate: Annotated[Optional[float], typer.Option(help="Capture rate in Hz (default: the device's own).")] = None,
    channels: Annotated[int, typer.Option(help="Channels to capture (mixed to mono).")] = 1,
    clips: Annotated[Optional[Path], typer.Option("--clips", help="Save each detection's audio (FLAC) in this directory.")] = None,
    clip_pre_s: Annotated[float, typer.Option(help="Seconds of audio kept before a detection.")] = 2.0,
    clip_post_s: Annotated[float, typer.Option(help="Seconds of audio kept after a detection.")] = 2.0,
    clips_max_mb: Annotated[float, typer.Option(help="Clip directory budget in MB; further clips are skipped.")] = 500.0,
    clips_min_free_mb: Annotated[float, typer.Option(help="Free space (MB) below which no clip is saved.")] = 1000.0,
    queue_s: Annotated[float, typer.Option(help="Seconds of audio queued for analysis before blocks are dropped.")] = 30.0,
    stall_s: Annotated[float, typer.Option(help="Seconds without audio before the stream is reopened.")] = 5.0,
    backoff_max_s: Annotated[float, typer.Option(help="Longest wait between attempts to reopen the device.")] = 60.0,
    flush_s: Annotated[float, typer.Option(help="Seconds between coverage writes.")] = 10.0,
    duration_s: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (default: run until stopped).")] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 1,
):
    """Turn a live microphone into detections, with per-minute coverage, until stopped."""
    from edgemon.config import Settings
    from edgemon.listen import listen_main

    # The same builder as the service's settings file, so an option cannot reach one and not the other.
    options = dict(device=device, sample_rate=sample_rate, channels=channels, queue_s=queue_s, stall_s=stall_s,
                   backoff_max_s=backoff_max_s, device_id=device_id, flush_s=flush_s, clips=clips,
                   clip_pre_s=clip_pre_s, clip_post_s=clip_post_s, clips_max_mb=clips_max_mb,
                   clips_min_free_mb=clips_min_free_mb)
    config = Settings(options, dict.fromkeys(options, "command line")).listen_config(duration_s)
    try:
        listen_main(config, db, models, threads)
    except EdgemonError as exc:
        raise _fail(exc)


@app.command()
def devices():
    """List audio input devices: index, name, host API, input channels, default rate."""
    from edgemon.capture import list_input_devices

    try:
        found = list_input_devices()
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo("index\tname\thostapi\tchannels\tdefault_rate")
    for d in found:
        typer.echo(f"{d.index}\t{d.name}\t{d.hostapi}\t{d.channels}\t{d.default_rate:g}")


@app.command("export-detections")
def export_detections(
    db: Annotated[Path, typer.Option("--db", help="Detections database (SQLite).")] = Path("edgemon.db"),
    fmt: Annotated[str, typer.Option("--format", help="csv, jsonl or raven (one selection table per file).")] = "csv",
    output: Annotated[Optional[Path], typer.Option("--output", help="File (csv, jsonl) or directory (raven); default stdout.")] = None,
    since: Annotated[Optional[str], typer.Option(help="Only detections starting at or after this UTC time (ISO 8601).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only detections starting before this UTC time (ISO 8601).")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="Only these labels (repeatable).")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="Only detections at least this confident.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Only what no earlier --new export delivered.")] = False,
    coverage: Annotated[Optional[Path], typer.Option("--coverage", help="Also write live-stream coverage (per minute: seconds analysed and lost) for the same --since/--until to this file (csv, or jsonl with --format jsonl).")] = None,
):
    """Export detections; reads only, so it never blocks the daemon."""
    from edgemon.export import export_coverage, export_detections as run_export

    try:
        times = [None if t is None else _parse_time(t) for t in (since, until)]
        count = run_export(db, fmt, output, times[0], times[1], label or None, min_confidence, new)
        if coverage is not None:
            minutes = export_coverage(db, "jsonl" if fmt == "jsonl" else "csv", coverage, times[0], times[1])
    except EdgemonError as exc:
        raise _fail(exc)
    logging.getLogger("edgemon.export").info("exported %d detection(s)", count)
    if coverage is not None:
        logging.getLogger("edgemon.export").info("exported %d coverage minute(s)", minutes)


@app.command()
def sync(
    ctx: typer.Context,
    to: Annotated[Optional[str], typer.Option("--to", help="Fleet database, postgresql://user@host/db (default: sync_url from the settings). No password in it: libpq's ~/.pgpass, $PGPASSFILE, ?passfile=PATH (0600) or $PGPASSWORD.")] = None,
    db: Annotated[Optional[Path], typer.Option("--db", help="Detections database (default: from the settings).")] = None,
    device_id: Annotated[Optional[str], typer.Option(help="Recorder/site id (default: from the settings).")] = None,
    retry_for_s: Annotated[float, typer.Option(help="Keep retrying an unreachable server this many seconds, backing off.")] = 0.0,
    batch_rows: Annotated[Optional[int], typer.Option(help="Changes in the first batch (batches then adapt to the link).")] = None,
    config: ConfigOpt = None,
):
    """Send every detection, file, coverage minute and heartbeat the fleet database lacks, once."""
    from edgemon.config import load_settings
    from edgemon.sync import sync_command

    try:
        result = sync_command(load_settings(config, ctx), to, retry_for_s, batch_rows)
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
    as_json: JsonOpt = False,
):
    """Recorder health, detections per site/species/day and effort; flags recorders that need a visit."""
    from edgemon.fleet import VisitRules, collect_fleet, format_fleet

    try:
        report = collect_fleet(db, VisitRules(min_free_mb=min_free_mb), days, all_bundles)
    except EdgemonError as exc:
        raise _fail(exc)
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else format_fleet(report), nl=as_json)


def _parse_time(text: str):
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EdgemonError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def main() -> None:
    # Before numpy loads: OpenBLAS otherwise starts a worker per core that spin-waits after each
    # small product (the frontend's mel filterbank), ~13 % of a core while listening (bench/listen_load.py).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app()
