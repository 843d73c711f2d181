"""``edgemon status``: how the unit is doing, read from its database (read-only, so it never
blocks the daemon) and the file systems it uses.

Backlog, last file processed, last detection, real-time factor, dropped audio (live coverage),
disk free, database integrity, bundle in use, uptime; plus ``problems``, one line each, for a
person or a monitoring script. Heartbeat rows are ordered by id, not by time: the host clock of
a field unit may step.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import sqlite3
import zoneinfo
from pathlib import Path
from typing import Any, TextIO

from edgemon.errors import EdgemonError
from edgemon.safetext import name_from_stored, shown, stored_name
from edgemon.storage.cursors import list_cursors
from edgemon.storage.export_journal import pending as pending_exports
from edgemon.storage.lock import daemon_gone, daemon_started
from edgemon.storage.readonly import has_table, open_read_only, quick_check
from edgemon.storage.rows import COVERAGE_LOSSES
from edgemon.storage.tables import local_time
from edgemon.utc import UTC, parse_utc, utc_iso

MB = 1024 * 1024
# Live audio lost in 24 h that makes a problem: a stream's start loses a second or so (0.2 s in a
# clean 100 s run here, 1.3 s at every start in a newcomer trial's), which a restart or two a day
# need not put among the problems; a device lost or an overrun buffer costs more.
LOST_AUDIO_PROBLEM_S = 5.0


class StatusError(EdgemonError):
    """The status cannot be read (no database, or not an edgemon database)."""


def collect_status(db_path: str | Path, *, directory: str | Path | None = None, heartbeat_s: float = 300.0,
                   min_free_mb: float | None = None, integrity: bool = True,
                   now: dt.datetime | None = None) -> dict[str, Any]:
    """The status as plain data (see ``format_status``); ``directory`` (the watched one) lets the
    backlog be counted on disk, ``heartbeat_s`` says how old a heartbeat may be for 'running'."""
    db_path = Path(db_path)
    now = now or dt.datetime.now(UTC)
    conn = open_read_only(db_path, StatusError)
    status: dict[str, Any] = {}
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "files" not in tables:
            raise StatusError(f"{db_path}: not an edgemon database (no files table)")
        status["database"] = _database(conn, db_path, integrity)
        _read_tables(status, conn, tables, db_path, directory, heartbeat_s, now)
    except sqlite3.OperationalError as e:   # locked past the busy timeout, or unreadable as a file
        raise StatusError(f"cannot read {shown(db_path)}: {e}") from None
    except sqlite3.DatabaseError as e:   # damaged: a traceback was all a newcomer saw
        checked = status.get("database", {}).get("integrity")
        raise StatusError(
            f"{shown(db_path)}: damaged ({e}{f'; integrity: {checked}' if checked else ''}). edgemon watch, "
            f"listen or run moves it aside and starts a fresh one; to salvage its rows: "
            f"sqlite3 {shown(db_path)} .recover | sqlite3 salvaged.db") from None
    finally:
        conn.close()
    status["disk"] = _disk(db_path)
    status["problems"] = _problems(status, min_free_mb)
    return status


def _read_tables(status: dict, conn: sqlite3.Connection, tables: set[str], db_path: Path,
                 directory: str | Path | None, heartbeat_s: float, now: dt.datetime) -> None:
    beat = _last_heartbeat(conn) if "heartbeats" in tables else None
    status["service"] = _service(beat, heartbeat_s, now, daemon_gone(db_path))
    _starting(status["service"], beat, daemon_started(db_path))
    status["mode"] = beat["mode"] if beat else None
    status["device_id"] = beat["device_id"] if beat else None
    status["bundle_id"] = (beat["bundle_id"] if beat and beat["bundle_id"] else
                           _one(conn, "SELECT bundle_id FROM files WHERE state = 'done' ORDER BY updated_at DESC LIMIT 1"))
    status["backlog"] = _backlog(conn, directory)
    status["last_file"] = _row(conn, "SELECT source, updated_at AS processed_utc, duration_s FROM files "
                                     "WHERE state = 'done' ORDER BY updated_at DESC LIMIT 1")
    status["last_detection"] = _row(conn, "SELECT label, confidence, source, start_utc, created_at AS stored_utc, "
                                          "bundle_id FROM detections ORDER BY id DESC LIMIT 1")
    _worked_past_the_last_heartbeat(status["service"], status["last_file"])
    status["real_time_factor"] = (round(beat["audio_s"] / beat["busy_s"], 1)
                                  if beat and beat["busy_s"] else None)
    status["audio_h_this_run"] = round(beat["audio_s"] / 3600, 3) if beat else None
    status["dropped_audio"] = _dropped(conn, now) if "coverage" in tables else None
    status["export_cursors"] = _export_cursors(conn) if "export_cursors" in tables else []
    status["unfinished_exports"] = ([{"journal": j, "cursor": c} for j, c in pending_exports(db_path, conn)]
                                    if "export_cursors" in tables else [])
    status["sync"] = _sync_targets(conn) if {"sync_cursors", "changes"} <= tables else []
    status["unreadable_dirs"] = (dict(conn.execute("SELECT path, error FROM unreadable_dirs ORDER BY path"))
                                 if "unreadable_dirs" in tables else {})
    # Files whose analysis was cut short in a row (power cuts, or a file that kills it), while
    # still there: nothing ends the attempt of one deleted or renamed since (it stayed a problem for good).
    status["interrupted"] = ({source: times for source, path, times in conn.execute(
                                  "SELECT source, path, interrupted + 1 FROM in_progress WHERE interrupted > 0 "
                                  "ORDER BY source") if os.path.lexists(name_from_stored(path))}
                             if "in_progress" in tables else {})


def _one(conn: sqlite3.Connection, sql: str, params=()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _row(conn: sqlite3.Connection, sql: str, params=()) -> dict | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else dict(row)


def _database(conn: sqlite3.Connection, db_path: Path, integrity: bool) -> dict:
    wal = Path(str(db_path) + "-wal")
    result = "not checked"
    if integrity:
        try:
            result = "; ".join(quick_check(conn)[:5])
        except sqlite3.DatabaseError as e:
            result = f"error: {e}"
    return {"path": str(db_path), "size_mb": round(db_path.stat().st_size / MB, 2),
            "wal_mb": round(wal.stat().st_size / MB, 2) if wal.exists() else 0.0, "integrity": result,
            "moved_aside": _moved_aside(conn)}


def _moved_aside(conn: sqlite3.Connection) -> dict | None:
    """The damaged database this one replaced (``recovery.open_or_recover``), while its file is
    still there: what it held is not in this one."""
    try:
        row = conn.execute("SELECT value FROM sync_meta WHERE key = 'moved_aside'").fetchone() \
            if has_table(conn, "sync_meta") else None
        aside = None if row is None else json.loads(row[0])
    except (sqlite3.Error, ValueError):
        return None
    return aside if isinstance(aside, dict) and Path(str(aside.get("path"))).exists() else None


def _worked_past_the_last_heartbeat(service: dict, last_file: dict | None) -> None:
    """A watch killed between heartbeats ran at least until the last file it stored: a silent
    one's uptime goes on to that (a newcomer trial read "ran at least 0 s" of a watch killed
    after a minute's files, its only heartbeat the one at its start). Only the files ledger: only
    watch writes it, while ``reanalyse`` or ``review`` store detections and verdicts later."""
    if service.get("state") != "silent" or not service.get("started_utc") or not last_file:
        return
    since_start = (parse_utc(last_file["processed_utc"]) - parse_utc(service["started_utc"])).total_seconds()
    service["uptime_s"] = round(max(service["uptime_s"], since_start), 1)


def _starting(service: dict, beat: dict | None, started: tuple[int, float] | None) -> None:
    """A daemon that took the database's lock after the last run ended (or with no heartbeat
    yet) and has not written its first heartbeat: 'starting', not 'stopped'. It loads its bundle
    and checks the database first, and waits for any other process's write (a reanalyse, a
    verdict, a sync): status said "stopped" all that while, a watch running beside it (a
    field-station trial)."""
    if started is None or not (beat is None or service["state"] == "stopped"):
        return
    pid, taken = started
    taken_at = dt.datetime.fromtimestamp(taken, UTC)
    if beat is not None and taken_at <= parse_utc(beat["at_utc"]):
        return   # the lock was last taken by the run that stopped (its pid alive again by chance)
    service.update(state="starting", starting_pid=pid, starting_utc=utc_iso(taken_at))


def _last_heartbeat(conn: sqlite3.Connection) -> dict | None:
    return _row(conn, "SELECT * FROM heartbeats ORDER BY id DESC LIMIT 1")


def _service(beat: dict | None, heartbeat_s: float, now: dt.datetime, gone: int | None = None) -> dict:
    """What the newest heartbeat says of the daemon; ``gone``: the pid of a daemon known to have
    died without a word (``storage.lock.daemon_gone``), which is not running however fresh its
    last heartbeat."""
    if beat is None:
        return {"state": "unknown", "note": "no heartbeat recorded"}
    at = parse_utc(beat["at_utc"])
    age = (now - at).total_seconds()
    if beat["state"] in ("stopping", "refused"):
        state = "stopped"
    elif age <= 2 * heartbeat_s + 60 and gone is None:
        state = "running"
    else:
        state = "silent"     # crashed, hung, powered off, or its clock stepped
    return {"state": state, "heartbeat_state": beat["state"], "last_heartbeat_utc": beat["at_utc"],
            "heartbeat_age_s": round(age, 1), "run_id": beat["run_id"], "started_utc": beat["started_utc"],
            "uptime_s": round(beat["uptime_s"] + (max(age, 0.0) if state == "running" else 0.0), 1),
            "files_done_this_run": beat["files_done"], "rss_mb": beat["rss_mb"], "note": beat["note"],
            **({"process_gone": gone} if gone is not None and state == "silent" else {})}


def _other_recordings(conn: sqlite3.Connection) -> int:
    """Files watch left alone (another recorder's files under names already analysed) that are
    still there as they were: one moved away, as the advice says, is no longer a problem."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'other_recordings'").fetchone() is None:
        return 0
    from edgemon.files.directory import mtime_ns

    there = 0
    for path, size, stored_mtime in conn.execute("SELECT path, size, mtime_ns FROM other_recordings"):
        try:
            st = os.stat(name_from_stored(path))
        except OSError:
            continue
        there += (st.st_size, mtime_ns(st)) == (size, stored_mtime)
    return there


def _named(files: dict, total: int, shown: int = 3) -> str:
    """The first ``shown`` of ``total`` files with why, and how many more."""
    named = "; ".join(f"{source} ({why})" for source, why in list(files.items())[:shown])
    more = total - min(shown, len(files))
    return named + (f"; and {more} more (--format json lists the newest 20)" if more > 0 else "")


def _backlog(conn: sqlite3.Connection, directory: str | Path | None) -> dict:
    counts = dict(conn.execute("SELECT state, COUNT(*) FROM files GROUP BY state").fetchall())
    backlog = {"done": counts.get("done", 0), "failed": counts.get("failed", 0),
               "quarantined": counts.get("quarantined", 0), "waiting": None, "directory": None,
               # which files, newest first, and why: a count alone sends the user to SQL
               "quarantined_files": dict(conn.execute(
                   "SELECT source, error FROM files WHERE state = 'quarantined' ORDER BY updated_at DESC LIMIT 20")),
               "with_note": conn.execute("SELECT count(*) FROM files WHERE state = 'done' AND error IS NOT NULL")
                                .fetchone()[0],
               "other_recordings": _other_recordings(conn),
               # detections timed by when a file was last written, not recorded (a copy's time)
               "timed_by_mtime": dict(conn.execute(
                   "SELECT source, path FROM files WHERE state = 'done' AND time_source = 'mtime' "
                   "ORDER BY updated_at DESC LIMIT 20")),
               "timed_by_mtime_count": conn.execute(
                   "SELECT count(*) FROM files WHERE state = 'done' AND time_source = 'mtime'").fetchone()[0],
               # recordings whose clock looked unset or ahead: their detections' times are doubtful
               "clock_suspect": dict(conn.execute(
                   "SELECT source, start_utc FROM files WHERE state = 'done' AND clock_suspect = 1 "
                   "ORDER BY updated_at DESC LIMIT 20")),
               "clock_suspect_count": conn.execute(
                   "SELECT count(*) FROM files WHERE state = 'done' AND clock_suspect = 1").fetchone()[0]}
    if directory is None:
        return backlog
    from edgemon.files.directory import iter_audio, mtime_ns, source_of

    root = Path(directory).resolve()
    backlog["directory"] = str(root)
    if not root.is_dir():
        backlog["note"] = "directory not found"
        return backlog
    ledger = {r[0]: (r[1], r[2], r[3]) for r in conn.execute("SELECT source, size, mtime_ns, state FROM files")}
    others = {}
    if backlog["other_recordings"]:
        others = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT path, size, mtime_ns FROM other_recordings")}
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'same_recordings'").fetchone() is not None:
        others |= {r[0]: (r[1], r[2]) for r in conn.execute("SELECT path, size, mtime_ns FROM same_recordings")}
    waiting = 0
    for path in iter_audio(root):
        try:
            st = path.stat()
        except OSError:
            continue
        entry, version = ledger.get(source_of(root, path)), (st.st_size, mtime_ns(st))
        if others.get(stored_name(path)) == version:
            continue          # left alone by watch: another recording than the one analysed, or the same moved
        if entry is None or entry[:2] != version or entry[2] == "failed":
            waiting += 1
    backlog["waiting"] = waiting
    return backlog


def _dropped(conn: sqlite3.Connection, now: dt.datetime) -> dict | None:
    """Live-stream seconds analysed and lost, last 24 h and in all; None without coverage rows."""
    if conn.execute("SELECT 1 FROM coverage LIMIT 1").fetchone() is None:
        return None
    columns = ", ".join(f"COALESCE(SUM(lost_{k}_s), 0)" for k in COVERAGE_LOSSES)
    result = {}
    for name, since in (("last_24h", now - dt.timedelta(days=1)), ("total", None)):
        where, params = ("WHERE minute_utc >= ?", [utc_iso(since)]) if since else ("", [])
        row = conn.execute(f"SELECT COALESCE(SUM(analysed_s), 0), {columns} FROM coverage {where}", params).fetchone()
        lost = {k: round(v, 1) for k, v in zip(COVERAGE_LOSSES, row[1:])}
        result[name] = {"analysed_s": round(row[0], 1), "lost_s": round(sum(lost.values()), 1), "lost_by_kind": lost}
    return result


def _sync_targets(conn: sqlite3.Connection) -> list[dict]:
    """Each fleet database this one has synced to: what it acknowledged, when, and what waits."""
    return [{"target": target, "acknowledged_seq": seq, "at": at,
             "backlog": conn.execute("SELECT count(*) FROM changes WHERE seq > ?", [seq]).fetchone()[0]}
            for target, seq, at in conn.execute("SELECT target, seq, updated_at FROM sync_cursors ORDER BY target")]


def _export_cursors(conn: sqlite3.Connection) -> list[dict]:
    """Each export cursor: name, filter (as options), position (highest detection id examined),
    last export time, rows delivered in all."""
    return [{"name": c.name,
             "filter": "none yet (its next export ties one)" if c.filter is None else c.filter.describe(),
             "last_id": c.last_id, "exported_at": c.exported_at, "delivered": c.delivered}
            for c in list_cursors(conn)]


def _disk(db_path: Path) -> dict:
    """Free space where the database lies, and whether its file system is mounted read-only (a
    card the kernel remounted read-only after an error: the daemon's heartbeats stop only at its
    next beat, so status said "running" and no problem for up to 11 minutes)."""
    try:
        fs = os.statvfs(db_path.resolve().parent)   # one look: free and total as shutil.disk_usage gives them
    except OSError:
        return {"free_mb": None, "total_mb": None, "read_only": None}
    return {"free_mb": round(fs.f_bavail * fs.f_frsize / MB, 1), "total_mb": round(fs.f_blocks * fs.f_frsize / MB, 1),
            "read_only": bool(fs.f_flag & os.ST_RDONLY)}


def _problems(status: dict, min_free_mb: float | None) -> list[str]:
    problems = []
    integrity = status["database"]["integrity"]
    if integrity not in ("ok", "not checked"):
        problems.append(f"database integrity: {integrity}")
    if aside := status["database"].get("moved_aside"):
        problems.append(f"this database was started afresh: the damaged one ({aside.get('found')}) was moved aside to "
                        f"{aside['path']}" + (f", which holds {aside['left']} not here" if aside.get("left") else "")
                        + "; delete or move that file once done with it")
    service = status["service"]
    if service["state"] == "silent" and "process_gone" in service:
        problems.append(f"edgemon is not running: its process (pid {service['process_gone']}) ended without "
                        f"stopping, {service['heartbeat_age_s']:.0f} s after its last heartbeat or less")
    elif service["state"] == "silent":
        problems.append(f"no heartbeat for {service['heartbeat_age_s']:.0f} s: edgemon is not running, or hung")
    if service.get("heartbeat_state") == "refused":
        problems.append(f"refused to start: {service.get('note')}")
    if service.get("heartbeat_state") == "no_audio" and service["state"] == "running":
        problems.append(f"listening but hearing nothing: {service.get('note') or 'no audio from the microphone'}")
    if service.get("heartbeat_state") in ("hold_disk", "hold_store"):
        problems.append(f"holding work ({service['heartbeat_state']}): {service.get('note') or 'low disk'}")
    if status["backlog"]["quarantined"]:
        problems.append(f"{status['backlog']['quarantined']} file(s) quarantined (not analysed): "
                        + _named(status["backlog"].get("quarantined_files", {}), status["backlog"]["quarantined"])
                        + "; each is tried again once its size or modification time changes (mend it, then "
                          "`touch` it)")
    if status["backlog"].get("other_recordings"):
        problems.append(f"{status['backlog']['other_recordings']} file(s) left alone: another recording under a "
                        f"name already analysed (another recorder's card?); give each recorder its own database")
    if status["backlog"].get("timed_by_mtime_count"):
        named = ", ".join(list(status["backlog"]["timed_by_mtime"])[:3])
        more = status["backlog"]["timed_by_mtime_count"] - min(3, len(status["backlog"]["timed_by_mtime"]))
        problems.append(f"{status['backlog']['timed_by_mtime_count']} file(s) timed by their modification time (no "
                        f"start time in the name or header: a copy's time if copied): {named}"
                        + (f"; and {more} more" if more > 0 else ""))
    if suspect := status["backlog"].get("clock_suspect_count"):
        problems.append(f"{suspect} file(s) from a recorder clock that looks wrong (unset, or over a day ahead of "
                        f"this host): their detections' times are doubtful, and the fleet leaves them out of its "
                        f"days; set the recorder's clock: " + _named(status["backlog"]["clock_suspect"], suspect))
    # Only while a daemon is meant to be storing: a card or copy read on a read-only mount is fine.
    if status["disk"].get("read_only") and service["state"] in ("running", "silent"):
        problems.append(f"the database's file system ({Path(status['database']['path']).resolve().parent}) is "
                        f"mounted read-only: nothing new can be stored (a card remounted read-only after an "
                        f"error? see dmesg; check it with fsck, then remount it read-write)")
    free = status["disk"]["free_mb"]
    if min_free_mb is not None and free is not None and free < min_free_mb:
        problems.append(f"disk: {free:.0f} MB free, below the {min_free_mb:g} MB watermark")
    root_gone = status["backlog"].get("note") == "directory not found"
    if root_gone:
        problems.append(f"watched directory {status['backlog']['directory']} not found (a card not mounted?)")
    from edgemon.files.directory import skipped_because

    for path, error in status.get("unreadable_dirs", {}).items():
        # the watched directory itself gone (a card pulled mid-watch) is the line above, not a second one
        if root_gone and os.path.abspath(path) == os.path.abspath(status["backlog"]["directory"]):
            continue
        problems.append(skipped_because(path, error))
    for source, times in status.get("interrupted", {}).items():
        problems.append(f"{source}: analysis cut short {times} times in a row")
    dropped = status["dropped_audio"]
    if dropped and dropped["last_24h"]["lost_s"] >= LOST_AUDIO_PROBLEM_S:
        problems.append(f"{dropped['last_24h']['lost_s']:g} s of live audio lost in the last 24 h")
    for unfinished in status.get("unfinished_exports", []):
        problems.append(f"export cursor {shown(unfinished['cursor'])!r} is past rows whose files are not in place "
                        f"yet (an interrupted export, {shown(unfinished['journal'])}): its next export moves them; "
                        f"if that export is refused, its error says why")
    return problems


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days} d {hours} h" if days else f"{hours} h {minutes} min" if hours else
            f"{minutes} min {secs} s" if minutes else f"{secs} s")


def _seconds(seconds: float) -> str:
    """Seconds of audio as a person reads them: '0.4 s', '75 s', then as a duration from an hour on
    ('3 d 4 h'). ``:g`` said '1.0368e+06 s' once a listener had run for 12 days (a weeks review)."""
    return f"{seconds:g} s" if seconds < 3600 else _duration(seconds)


def format_status(status: dict, zone: zoneinfo.ZoneInfo | None = None) -> str:
    """``collect_status``'s result as a few aligned lines for a person; its times in ``zone``
    with their offset (the settings' ``timezone``), else in UTC as stored. A field user with
    ``timezone`` set read every time here 8 h off their clock, beside exports and a review page
    that show local times."""
    s, db, svc, backlog = status, status["database"], status["service"], status["backlog"]

    def when(utc_text: str | None) -> str:
        try:
            return (zone and local_time(utc_text, zone)) or utc_text or "?"
        except ValueError:   # a time in no ISO form (a database another program wrote): as it is
            return utc_text
    if svc["state"] == "starting":
        alive = (f"starting (pid {svc['starting_pid']}, no heartbeat yet: loading its bundle, checking the "
                 f"database or waiting for another process's write, since {when(svc['starting_utc'])})")
    elif svc["state"] == "unknown":
        alive = "unknown (no heartbeat recorded)"
    else:
        # silent: it ran on past its last heartbeat (a kill), for how long no row says
        ran = {"running": "up", "silent": "ran at least"}.get(svc["state"], "ran")
        # "stopped, … (stopping)" read as two states at once (a newcomer trial): it is the heartbeat's
        alive = (f"{svc['state']}, last heartbeat {svc['heartbeat_age_s']:.0f} s ago (its state then: "
                 f"{svc['heartbeat_state']}); "
                 f"{ran} {_duration(svc['uptime_s'])} from {when(svc['started_utc'])}")
    waiting = "?" if backlog["waiting"] is None else str(backlog["waiting"])
    where = (f" in {backlog['directory']}" if backlog["directory"] else
             " (a live stream's: no files)" if s["mode"] == "listen" else " (`edgemon status DIRECTORY` counts them)")
    if backlog.get("note"):   # a directory given that is not there said "? file(s) waiting in …" (a newcomer trial)
        where = f": {backlog['directory']}: {backlog['note']}"
    last_file = (f"{s['last_file']['source']} at {when(s['last_file']['processed_utc'])}" if s["last_file"] else
                 "none yet")
    det = s["last_detection"]
    last_det = (f"{det['label']} ({det['confidence']:.2f}) at {when(det['start_utc'])} in {det['source']}"
                if det else "none yet")
    if det and det.get("bundle_id") and det["bundle_id"] != s["bundle_id"]:
        # after `reanalyse` the last row may be another bundle's, its confidence on that bundle's scale
        last_det += f", by bundle {det['bundle_id']}"
    rtf = (f"{s['real_time_factor']:g}x ({s['audio_h_this_run']:.2f} h of audio this run)"
           if s["real_time_factor"] else "not measured yet (at each heartbeat: heartbeat_s, 300 s by default)")
    dropped = s["dropped_audio"]
    dropped_text = ("no live coverage recorded" if not dropped else
                    f"{_seconds(dropped['last_24h']['lost_s'])} in the last 24 h, {_seconds(dropped['total']['lost_s'])} "
                    f"in all (of {_duration(dropped['total']['analysed_s'] + dropped['total']['lost_s'])})")
    disk = s["disk"]
    disk_text = "?" if disk["free_mb"] is None else f"{disk['free_mb'] / 1024:.1f} GB of {disk['total_mb'] / 1024:.1f} GB"
    lines = [
        ("service", alive),
        ("mode", f"{s['mode'] or '?'}, device {s['device_id'] or '?'}"),
        ("bundle", s["bundle_id"] or "?"),
        ("backlog", f"{waiting} file(s) waiting{where}; {backlog['done']} done"
                    + (f" ({backlog['with_note']} with a note, e.g. read as far as the audio goes)"
                       if backlog.get("with_note") else "")
                    + f", {backlog['failed']} failed, {backlog['quarantined']} quarantined"),
        ("last file", last_file),
        ("last detection", last_det),
        ("real-time factor", rtf),
        ("dropped audio", dropped_text),
        ("disk free", disk_text),
        ("database", f"{db['path']}: {db['integrity']}, {db['size_mb']:g} MB + WAL {db['wal_mb']:g} MB"),
        # Only a running service's is its memory now; otherwise its last heartbeat's (a newcomer
        # trial read a stopped one's as memory in use).
        ("memory", "?" if svc.get("rss_mb") is None else f"{svc['rss_mb']:g} MB resident"
                   + ("" if svc["state"] == "running" else " at its last heartbeat")),
        ("export cursors", "; ".join(f"{c['name']} ({c['filter']}): at id {c['last_id']}, {c['delivered']} delivered, "
                                     f"last export {when(c['exported_at'])}" for c in s.get("export_cursors", [])) or "none"),
        ("sync", "; ".join(f"{t['target']}: acknowledged {when(t['at'])}, {t['backlog']} change(s) waiting"
                           for t in s.get("sync", [])) or "never synced"),
        ("problems", "; ".join(s["problems"]) if s["problems"] else "none"),
    ]
    # Names come from the card and the command line: a newline or escape sequence in one split
    # the report or drove the terminal (a file named 'new\nline….flac' among "problems").
    return "".join(f"{k + ':':<18}{shown(v)}\n" for k, v in lines)


def write_heartbeats_csv(db_path: str | Path, out: TextIO) -> int:
    """Every heartbeat row as CSV (oldest first) to ``out``; returns the number of rows."""
    conn = open_read_only(Path(db_path), StatusError)
    try:
        cursor = conn.execute("SELECT * FROM heartbeats ORDER BY id")
    except sqlite3.Error as e:
        conn.close()
        raise StatusError(f"{db_path}: no heartbeats table ({e})") from e
    try:
        writer = csv.writer(out)
        writer.writerow([d[0] for d in cursor.description])
        count = 0
        for row in cursor:
            writer.writerow(row)
            count += 1
        return count
    finally:
        conn.close()


def write_heartbeats_file(db_path: str | Path, path: Path) -> int:
    """``write_heartbeats_csv`` to the file ``path`` ('-': standard output); StatusError naming
    the file when it cannot be written."""
    if str(path) == "-":
        from edgemon.storage.output_target import utf8_stdout

        with utf8_stdout() as out:
            return write_heartbeats_csv(db_path, out)
    from edgemon.storage.export_files import ExportError, atomic_text, refuse_the_database
    from edgemon.storage.output_target import check_output

    try:   # status reads only: the database, a recording or another database given here stays as it is
        refuse_the_database(path, Path(db_path), "--heartbeats")
        check_output(path, "--heartbeats", StatusError)
        with atomic_text(path) as out:   # appears complete, or not at all
            return write_heartbeats_csv(db_path, out)
    except ExportError as e:
        raise StatusError(str(e).replace("cannot write ", "cannot write heartbeats to ", 1)) from None
