"""``edgemon fleet status``: the fleet database's views for the person running the study, and
which recorders need a visit. Reads only; refuses a schema newer than this edgemon."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from edgemon.safetext import shown
from edgemon.sync import fleetdb
from edgemon.sync.fleetdb import FleetDbError
from edgemon.sync.fleetschema import SCHEMA
from edgemon.sync.fleetviews import VIEW_REVISIONS
from edgemon.utc import UTC

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VisitRules:
    """When a recorder needs a visit. Silent: no sync for ``silent_factor`` times its own sync
    interval (at least ``silent_min_s`` seconds). Low disk: last reported free space under
    ``min_free_mb``. Suspect clock: its clock differed from the server's by more than
    ``clock_offset_s`` seconds at the last sync, or clock-suspect detections in the last 7 days.
    Growing backlog: unsent changes grew over its last ``backlog_sessions`` sessions."""

    silent_factor: float = 3.0
    silent_min_s: float = 1800.0
    min_free_mb: float = 500.0
    clock_offset_s: float = 300.0
    backlog_sessions: int = 3


def visit_reasons(row: dict, rules: VisitRules, now: dt.datetime) -> list[str]:
    """Why the recorder of a ``recorder_health`` row needs a visit (empty: it does not)."""
    reasons = []
    allowed_s = max(rules.silent_min_s, rules.silent_factor * (row["sync_interval_s"] or 900.0))
    silent_s = (now - row["last_sync"]).total_seconds()
    if silent_s > allowed_s:
        reasons.append(f"silent {silent_s / 3600:.1f} h (allowed {allowed_s / 3600:.1f} h)")
    if row.get("last_state") == "no_audio":   # its last heartbeat: the microphone gave nothing
        reasons.append("hearing nothing: no audio from its microphone at its last heartbeat")
    if row["disk_free_mb"] is not None and row["disk_free_mb"] < rules.min_free_mb:
        reasons.append(f"low disk: {row['disk_free_mb']:.0f} MB free")
    offset = row["clock_offset_s"]
    if offset is not None and abs(offset) > rules.clock_offset_s:
        reasons.append(f"suspect clock: {offset:+.0f} s from the server's")
    if row["clock_suspect_7d"]:
        reasons.append(f"suspect clock: {row['clock_suspect_7d']} clock-suspect detection(s) in 7 days")
    recent = row["recent_backlogs"] or []   # newest first; each what waited as a session began
    # A recorder whose last session sent everything is not falling behind, however much more each
    # session found waiting (a trial saw 'growing backlog: 0 < 10 < 32' on one that cleared all).
    if (row["backlog"] or 0) > 0 and len(recent) >= rules.backlog_sessions \
            and all(a > b for a, b in zip(recent, recent[1:rules.backlog_sessions])):
        reasons.append(f"growing backlog: {' < '.join(map(str, reversed(recent[:rules.backlog_sessions])))} changes")
    return reasons


def collect_fleet(url: str, rules: VisitRules = VisitRules(), days: int = 7, all_bundles: bool = False,
                  now: dt.datetime | None = None) -> dict:
    """The fleet views as plain rows: ``health`` (one per recorder database, with ``visit``
    reasons), ``detections`` (site, species, day; the newest bundle per site unless
    ``all_bundles``) and ``effort`` (site, day: hours listened, lost, recorded) for the last
    ``days`` days present, ``clashes`` (device ids used by overlapping databases), and from
    schema version 3: each health row's ``reported_problems`` and ``status_at`` (the recorder's
    last status snapshot; None: none sent yet) and ``precision`` (per site, bundle and class,
    from reviews)."""
    with fleetdb.connect(url) as conn:
        try:
            version = fleetdb.schema_version(conn)
            fleetdb.check_version(version)
            if version == 0:
                raise FleetDbError("the fleet database has no edgemon schema yet: run `edgemon fleet migrate` as the "
                                   "owner of schema edgemon, or `edgemon sync` where a recorder owns it")
            if conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
                # A view a recorder's credentials replaced runs its functions with the reader's rights
                # (README, "What a recorder's credentials allow"): said, not refused (a newcomer trial).
                log.warning("reading the fleet views as a PostgreSQL superuser: read them as analyst (a role that "
                            "may only read), since a view replaced with one unit's credentials runs with the rights "
                            "of whoever reads it")
            now = now or conn.execute("SELECT now()").fetchone()[0]
            rows = lambda sql, *args: _dicts(conn.execute(sql, args))
            # From version 4: a database superseded by its new lineage (restored from a backup:
            # it never synced again once the new one began) is history, not a recorder to visit.
            superseded = "" if version < 4 else (
                f"WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.databases n WHERE n.forked_from = h.db_uuid "
                f"AND n.device_id = h.site AND n.first_sync >= h.last_sync)")
            health = rows(f"SELECT * FROM {SCHEMA}.recorder_health h {superseded} ORDER BY site, last_sync")
            for row in health:
                row["visit"] = visit_reasons(row, rules, now)
            # The newest day present; a literal cutoff then reaches into the views. Times a clock
            # got wrong (a recording dated 2030) do not count, nor any after the server's now:
            # one such recorder set the window and emptied every other site from the tables.
            cutoff = conn.execute(f"""
                SELECT (least(greatest(
                    (SELECT max(start_utc) FROM {SCHEMA}.detections WHERE NOT clock_suspect AND start_utc <= now()),
                    (SELECT max(minute_utc) FROM {SCHEMA}.coverage WHERE minute_utc <= now()),
                    (SELECT max(start_utc) FROM {SCHEMA}.files WHERE clock_suspect IS NOT TRUE AND start_utc <= now())),
                    now()) AT TIME ZONE 'UTC')::date - %s""", [days]).fetchone()[0]
            view = "detections_daily_all" if all_bundles else "detections_daily"
            detections = rows(f"SELECT * FROM {SCHEMA}.{view} WHERE day > %s ORDER BY site, day, species", cutoff)
            effort = rows(f"SELECT * FROM {SCHEMA}.effort_daily WHERE day > %s ORDER BY site, day", cutoff)
            views = fleetdb.view_revision(conn)
            clashes = rows(f"""
                WITH {fleetdb.own_heartbeat_spans()}
                SELECT a.device_id AS site, a.db_uuid::text AS db_a, b.db_uuid::text AS db_b
                FROM spans a JOIN spans b ON a.device_id = b.device_id AND a.db_uuid < b.db_uuid
                WHERE a.lo <= b.hi AND b.lo <= a.hi ORDER BY 1, 2, 3""")
            snapshots, precision = {}, []
            if version >= 3:
                snapshots = {str(r["db_uuid"]): r for r in rows(
                    f"SELECT db_uuid, received_at, problems FROM {SCHEMA}.status_snapshots")}
                precision = rows(f"SELECT * FROM {SCHEMA}.review_precision ORDER BY site, bundle_id, label")
        except fleetdb.DRIVER_ERRORS as e:
            raise fleetdb.classify(e, fleetdb.target_name(fleetdb.check_url(url))) from None
    for h in health:
        snapshot = snapshots.get(str(h["db_uuid"]))
        h["status_at"] = snapshot["received_at"] if snapshot else None
        h["reported_problems"] = list(snapshot["problems"]) if snapshot else None
    for row in clashes:
        for h in health:
            if h["site"] == row["site"] and str(h["db_uuid"]) in (row["db_a"], row["db_b"]):
                h["visit"].append("device id clash: two databases send under this id")
    return {"schema_version": version, "view_revision": views, "now": now, "health": health,
            "detections": detections, "effort": effort, "clashes": clashes, "precision": precision}


def format_fleet(report: dict) -> str:
    """The report as text tables, recorders needing a visit first."""
    lines = [f"fleet database schema v{report['schema_version']}, {len(report['health'])} recorder database(s)"]
    if report["view_revision"] < len(VIEW_REVISIONS):   # revised by the schema's owner (fleet migrate, or a sync)
        lines.append(f"note: the fleet views are revision {report['view_revision']}, this edgemon's "
                     f"{len(VIEW_REVISIONS)}: these figures follow the older views until the schema's owner runs "
                     f"`edgemon fleet migrate` of this edgemon (README, \"The fleet database\")")
    need = [h for h in report["health"] if h["visit"]]
    lines.append(f"\nNEEDS A VISIT ({len(need)}):" if need else "\nno recorder needs a visit")
    for h in need:
        lines.append(f"  {shown(h['site'])} ({str(h['db_uuid'])[:8]}): {shown('; '.join(h['visit']))}")
    lines.append("\nrecorder health:")
    lines += _table(report["health"], ["site", "db_uuid", "last_sync", "last_heartbeat", "last_state",
                                       "backlog", "disk_free_mb", "last_detection", "clock_offset_s", "bundle_id"])
    reported = [h for h in report["health"] if h.get("reported_problems")]
    lines.append(f"\nproblems the recorders reported in their last status ({len(reported)}):" if reported
                 else "\nno recorder reported a problem in its last status")
    for h in reported:
        lines += [f"  {shown(h['site'])} ({str(h['db_uuid'])[:8]}, {_cell(h['status_at'])}): {shown(p)}"
                  for p in h["reported_problems"]]
    lines.append("\ndetections per site, species and day:")
    lines += _table(report["detections"], ["site", "day", "species", "detections", "clock_suspect", "bundle_id"])
    lines.append("\neffort per site and day (hours):")
    lines += _table(report["effort"], ["site", "day", "listen_h", "lost_h", "files", "recorded_h",
                                       "longest_gap_h", "effort_h"])
    if report.get("precision"):
        lines.append("\nprecision per site and class, from reviews (95 % interval):")
        lines += _table(report["precision"], ["site", "bundle_id", "label", "judged", "correct",
                                              "precision", "low", "high"])
    return "\n".join(lines) + "\n"


def _dicts(cursor) -> list[dict]:
    names = [c.name for c in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    text = shown(value)   # recorders' text (an older edgemon took any device id): never raw
    return text[:8] if len(text) == 36 and text.count("-") == 4 else text   # a UUID: its prefix


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    if not rows:
        return ["  (none)"]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*columns)] + [fmt.format(*row) for row in cells]
