"""``edgemon review`` and ``edgemon reanalyse``: judge detections, and run recordings again
through another bundle (registered on ``edgemon.cli_common.app``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon import console
from edgemon.cli_common import (ConfigOpt, DbOpt, ModelsOpt, ThreadsOpt, TimezoneOpt, app, fail, service_in_force,
                                setting_option)
from edgemon.config import OptionError
from edgemon.errors import EdgemonError
from edgemon.signals import Terminated, terminate_as_interrupt


@app.command()
def review(
    ctx: typer.Context,
    db: DbOpt = None,
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="The recorder directory the detections came from (default: the paths in the database's ledger).", readable=False)] = None,
    clips: Annotated[Optional[Path], setting_option("clips")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but 127.0.0.1/localhost needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", envvar="EDGEMON_REVIEW_TOKEN", help="Token every request must carry (default: generated and printed when binding beyond this machine).")] = None,
    reviewer: Annotated[str, typer.Option("--reviewer", show_default=False, help="Name stored with each verdict, unless the browser gave its own on the page (default: $USER, else 'reviewer').")] = os.environ.get("USER", "reviewer"),
    export: Annotated[Optional[Path], typer.Option("--export", help="Write every verdict as CSV to this file ('-': stdout) and exit.", readable=False)] = None,
    timezone: TimezoneOpt = None,
    config: ConfigOpt = None,
):
    """A local web page to hear, see and judge detections (correct / wrong / another label / unsure)."""
    clips_given = clips   # named here; the settings' clip directory may not exist before `listen` saves one
    try:
        service = service_in_force(ctx, config)
        db, clips = service.db, service.clips   # the clip directory `listen` saved into
        for option, path in (("--recordings", recordings), ("--clips", clips_given)):
            if path is not None and not path.is_dir():   # else the page quietly falls back to the ledger's paths
                raise OptionError(f"{option} {path}: {'not a directory' if path.exists() else 'no such directory'}")
    except EdgemonError as exc:
        raise fail(exc)
    if export is not None:   # a CSV of the verdicts: the page's extra is not needed
        from edgemon.storage.export_files import ExportError, atomic_text, refuse_the_database
        from edgemon.storage.output_target import check_output, utf8_stdout
        from edgemon.review.reviews import write_reviews_csv

        try:
            refuse_the_database(export, db, "--export")
            check_output(export, "--export", ExportError)
            with (utf8_stdout() if str(export) == "-" else atomic_text(export)) as out:
                count = write_reviews_csv(db, out, service.zone())
        except EdgemonError as exc:
            raise fail(exc)
        logging.getLogger("edgemon.review").info("exported %d verdict(s)", count)
        return
    try:
        from edgemon.review.app import ReviewConfig, serve
        from edgemon.files.preroll import recording_before
    except ImportError as exc:
        raise fail(EdgemonError(f"the review page needs the 'review' extra (in a clone: .venv/bin/pip install -c "
                                f"constraints.txt -e '.[review]'; else pip install 'edgemon[review]'): {exc}"))
    try:
        serve(ReviewConfig(db=db, recordings=recordings, clips=clips, host=host, port=port, token=token,
                           reviewer=reviewer, zone=service.zone(), recording_before=recording_before),
              on_ready=lambda line: typer.echo(line, err=True))
    except EdgemonError as exc:
        raise fail(exc)


@app.command()
def reanalyse(
    ctx: typer.Context,
    models: ModelsOpt = None,
    db: DbOpt = None,
    recordings: Annotated[Optional[Path], typer.Option("--recordings", help="Recorder directory (default: the ledger's paths).", readable=False)] = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    again: Annotated[bool, typer.Option("--again", help="Analyse again the recordings this bundle analysed since they last changed (passed over otherwise, so a stopped run goes on where it stopped).")] = False,
):
    """Run recordings still on disk through another bundle (--models; e.g. one from `edgemon-train adapt`,
    or the embedded one after an upgrade); its detections are stored beside the old ones (run again,
    a detection found again keeps its id and reviews)."""
    from edgemon.analysis.analyzer import make_analyzer
    from edgemon.files.reanalyse import reanalyse as run_reanalyse

    try:
        service = service_in_force(ctx, config)
        with terminate_as_interrupt():   # stopped by systemd or `timeout`: said, as after Ctrl-C
            result = run_reanalyse(service.db, make_analyzer(service.models, service.threads), recordings,
                                   service.device_id, again)
    except Terminated:
        raise typer.Exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        raise typer.Exit(128 + signal.SIGINT)
    except EdgemonError as exc:
        raise fail(exc)
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
