"""``edgemon sync`` and ``edgemon fleet status``: the fleet's PostgreSQL (registered on
``edgemon.cli_common.app``)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Optional

import typer

from edgemon.cli_common import (ConfigOpt, DbOpt, DeviceIdOpt, JsonOpt, TextFormat, app, fail,
                                settings_in_force)
from edgemon.config import OptionError
from edgemon.errors import EdgemonError


@app.command()
def sync(
    ctx: typer.Context,
    to: Annotated[Optional[str], typer.Option("--to", help="Fleet database, postgresql://user@host/db (default: sync_url from the settings). No password in it: libpq's ~/.pgpass, $PGPASSFILE, ?passfile=PATH (0600) or $PGPASSWORD.")] = None,
    db: DbOpt = None,
    device_id: DeviceIdOpt = None,
    retry_for_s: Annotated[float, typer.Option(min=0.0, help="Keep retrying an unreachable server this many seconds, backing off.")] = 0.0,
    batch_rows: Annotated[int, typer.Option(min=1, help="Changes in the first batch (batches then adapt to the link, 20 to 5000).")] = 500,   # SyncConfig.batch_rows
    forget_target: Annotated[Optional[str], typer.Option("--forget-target", help="Instead of syncing, forget a sync target this database keeps deletions for (a server retired, or reached under another spelling of its URL), as `edgemon sync` names it.")] = None,
    config: ConfigOpt = None,
):
    """Send every detection, file, coverage minute and heartbeat the fleet database lacks, once."""
    from edgemon.sync.service import forget_target as forget, sync_command

    try:
        if forget_target is not None:
            typer.echo(forget(settings_in_force(ctx, config), forget_target, to))
            return
        if not math.isfinite(retry_for_s):
            raise OptionError(f"--retry-for-s: must be a finite number of seconds, not {retry_for_s}")
        result = sync_command(settings_in_force(ctx, config), to, retry_for_s, batch_rows)
    except EdgemonError as exc:
        raise fail(exc)
    typer.echo(result.describe())


MAX_DAYS = 36600   # a century: beyond it the server's dates run out


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
    from edgemon.sync.fleetdb import SyncUrlError

    if not 1 <= days <= MAX_DAYS:   # 10^8 days went to the server: "date out of range" (a review)
        raise fail(OptionError(f"--days {days}: give 1 to {MAX_DAYS}"))
    if not math.isfinite(min_free_mb) or min_free_mb < 0:   # nan flagged no recorder at all
        raise fail(OptionError(f"--min-free-mb {min_free_mb}: give a number of MB, 0 or more"))
    try:
        report = collect_fleet(db, VisitRules(min_free_mb=min_free_mb), days, all_bundles)
    except SyncUrlError as exc:   # the URL given, named as sync's --to is (a review)
        raise fail(SyncUrlError(f"option --db: {exc}"))
    except EdgemonError as exc:
        raise fail(exc)
    as_json = as_json or fmt is TextFormat.json
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else format_fleet(report), nl=as_json)


@fleet_app.command("migrate")
def fleet_migrate(
    db: Annotated[str, typer.Option("--db", help="Fleet database, postgresql://OWNER@host/db, as the owner of schema edgemon (no password in it).")],
):
    """Create or migrate the fleet schema and its views to this edgemon's, as the schema's owner.
    Where recorders only write rows (deploy/fleet-setup.sql), run it before they sync, and after
    each upgrade of edgemon, before the upgraded recorders sync."""
    from edgemon.sync.fleet_migrate import migrate_fleet
    from edgemon.sync.fleetdb import SyncUrlError

    try:
        typer.echo(migrate_fleet(db))
    except SyncUrlError as exc:
        raise fail(SyncUrlError(f"option --db: {exc}"))
    except EdgemonError as exc:
        raise fail(exc)
