"""Export detections as CSV, BirdNET-compatible CSV, JSON Lines or Raven selection tables, the
recordings analysed (the effort of ``watch``) and live-stream coverage.

Export reads through a read-only connection: under WAL a reader sees the last committed state and
neither waits for nor blocks the daemon's writer. The database is checked before any output is
opened, so a bad database leaves no file (and no header on standard output) behind. Output files
appear only complete (temp file in the same directory, fsync, rename), with the mode the umask
gives. With ``new=True`` a named cursor (``edgemon.storage.cursors``) delivers each row matching its
filter once; it moves with the output files (``export_files``), so a failed export can be repeated.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import re
import sqlite3
import sys
import zoneinfo
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from edgemon.safetext import shown
from edgemon.storage import tables
from edgemon.storage.cursors import (CursorError, CursorFilter, advance, advancing, check_filter, cursors_up_to_date,
                                     read_cursor, refuse_a_cursors_file, write_through)
from edgemon.storage.export_files import (CursorMove, ExportError, OutputClosed, atomic_text, write_file,
                                         write_raven)
from edgemon.storage.export_journal import JournalError, finish_pending
from edgemon.storage.lock import DatabaseInUseError, hold_exports
from edgemon.storage.raven_names import raven_names, raven_table
from edgemon.storage.raven_owner import check_directory, owner_note
from edgemon.storage.output_target import utf8_stdout
from edgemon.storage.readonly import analyses_table, edgemon_tables, open_read_only, table_columns, time_range
from edgemon.storage.store import Store, StoreError
from edgemon.utc import parse_utc, utc_iso

FORMATS = ("csv", "birdnet", "jsonl", "raven")
COLUMNS = tables.COLUMNS
RAVEN_COLUMNS = tables.RAVEN_COLUMNS
COVERAGE_COLUMNS = ("source", "device_id", "minute_utc", "end_utc", "analysed_s", "lost_overflow_s",
                    "lost_dropped_s", "lost_device_s", "lost_daemon_s", "overflows", "dropped_blocks",
                    "clock_synced", "updated_at", "minute_local")

_CALENDAR_END = dt.datetime.max.replace(tzinfo=dt.timezone.utc)

RECORDING_COLUMNS = ("source", "start_utc", "end_utc", "duration_s", "time_source", "clock_suspect", "detections",
                     "bundle_id", "start_local")


def export_detections(db_path: str | Path, fmt: str = "csv", output: Path | None = None,
                      since: dt.datetime | None = None, until: dt.datetime | None = None,
                      label: list[str] | None = None, min_confidence: float | None = None,
                      new: bool = False, cursor_name: str = "default",
                      bundle: list[str] | None = None, timezone: str | None = None,
                      alongside: Callable[[sqlite3.Connection], object] | None = None) -> int:
    """Write the detections that pass the filters; return how many were written.

    ``fmt`` 'csv', 'birdnet' or 'jsonl' writes one file at ``output`` (standard output when
    None); 'raven' writes one ``<source stem>.BirdNET.selection.table.txt`` per source into the
    existing directory ``output``. Filters: ``since`` <= start_utc < ``until`` (naive times are
    read as UTC; detections without a start time are left out whenever a time filter is given),
    label in ``label`` (None or empty: any), confidence >= ``min_confidence`` (an error when above
    what the detections' bundles can reach), bundle id in ``bundle`` (None or empty: any).
    ``new`` exports only what cursor ``cursor_name`` has not delivered, then advances it; the cursor keeps the filter it was first used with, and a
    file or Raven table it delivered to is appended to, never replaced. Rows come in id order (Raven: by
    offset per source). ``timezone`` (an IANA name, the settings' ``timezone``) fills the csv and
    jsonl column ``start_local``; without it that column is empty. ``alongside`` is called with
    the export's read connection inside its snapshot, before any row is written or a cursor moves:
    the side tables (``export_recordings``, ``export_coverage`` with ``snapshot``) then describe
    the same database as the detections. Raises ExportError (CursorError) naming what cannot be
    read or written.
    """
    db_path = Path(db_path)
    zone = _zone(timezone)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "raven" and (output is None or not Path(output).is_dir()):
        raise ExportError(f"Raven export needs an existing output directory, got {output}")
    if new and not re.fullmatch(r"[^\x00-\x1f\x7f]{1,100}", cursor_name):
        raise ExportError(f"an export cursor name is 1 to 100 printable characters, not {cursor_name!r}")
    if new and re.search("[\ud800-\udfff]", cursor_name):   # bytes the locale could not decode: unstorable
        raise ExportError(f"export cursor name '{shown(cursor_name)}' is not UTF-8 text (typed under another "
                          f"encoding?): give it in UTF-8")
    wanted = CursorFilter.of(since, until, label, min_confidence, bundle)
    conn, found = _open(db_path, migrate_cursors=new)
    with contextlib.ExitStack() as held:
        if new:   # one cursor-moving export at a time: two would read one position and deliver twice
            try:
                held.enter_context(hold_exports(db_path))
            except BaseException as e:   # any refusal: the connection is not left open (a review)
                conn.close()
                if isinstance(e, DatabaseInUseError):
                    raise CursorError(str(e)) from None
                raise
        try:
            if new:
                _finish_interrupted(db_path, conn, cursor_name)
            # One read transaction: cursor, bundles, names and rows come from one snapshot.
            conn.execute("BEGIN")
            span = _span(conn, db_path, cursor_name, wanted) if new else None
            if label and "labels" in found:
                _check_known(conn, db_path, "label", label)
            if bundle and "bundles" in found:
                _check_known(conn, db_path, "bundle", bundle)
            if min_confidence is not None and "bundles" in found:
                _check_reachable(conn, db_path, replace(wanted, min_confidence=None), span, min_confidence)
            if alongside is not None:
                alongside(conn)
            rows = _select(conn, db_path, wanted, span, found, raven=fmt == "raven")
            # A cursor moves with the files: it commits with their renames journaled, then they follow.
            moving = None if span is None else CursorMove(db_path, cursor_name, span[1], functools.partial(
                advancing, db_path, cursor_name, wanted, span[1],
                output=None if output is None or fmt == "raven" else Path(output)))
            try:
                if fmt == "raven":
                    claim = check_directory(conn, db_path, Path(output), ExportError, cursor_name if new else None,
                                            wanted.labels)
                    count = write_raven(rows, Path(output), raven_names(conn, Path(output), ExportError), new, moving,
                                        _alone(conn), owner_note(claim))
                elif output is None:
                    count = _write_stdout(tables.WRITERS[fmt], tables.with_local_time(rows, zone))
                else:
                    if not new:
                        refuse_a_cursors_file(conn, Path(output), ExportError)
                    count = write_file(tables.WRITERS[fmt], tables.with_local_time(rows, zone), Path(output),
                                       new, moving, _alone(conn) if fmt == "birdnet" else None)
            except sqlite3.Error as e:
                raise ExportError(f"cannot read detections from {db_path}: {e}") from e
        finally:
            conn.close()
        if span is not None and output is None:   # standard output: nothing to move with the cursor
            advance(db_path, cursor_name, wanted, span[1], count)
        if span is not None:
            write_through(db_path)
    return count


def _finish_interrupted(db_path: Path, conn: sqlite3.Connection, cursor: str) -> None:
    """Before a cursor is read: the files of a cursor export killed between its commit and its
    renames are moved into place (or dropped, had its cursor not moved)."""
    try:
        finish_pending(db_path, conn, cursor)
    except (JournalError, sqlite3.Error) as e:
        raise ExportError(f"an interrupted export's files are not all in place: {e}") from e


def _zone(timezone: str | None) -> zoneinfo.ZoneInfo | None:
    if timezone is None:
        return None
    try:
        return zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ExportError(f"timezone: unknown IANA time zone {timezone!r} (e.g. 'Asia/Kuching')") from None


def refuse_cursors_files(db_path: Path, outputs: list[tuple[Path | None, str]]) -> None:
    """Before anything is written: refuse (``ExportError``) each of ``outputs`` ((file, option))
    that an export cursor appends to (``cursors.refuse_a_cursors_file``). ``--coverage`` is
    written first and anew: it replaced a cursor's file, and a refused ``--output`` came after it
    (a review)."""
    wanted = [(Path(path), option) for path, option in outputs if path is not None]
    if not wanted or not Path(db_path).exists():   # a missing database is said by the export itself
        return
    conn = open_read_only(db_path, ExportError)
    try:
        for path, option in wanted:
            refuse_a_cursors_file(conn, path, ExportError, option)
    except sqlite3.Error as e:
        raise ExportError(f"cannot read detections database {db_path}: {e}") from e
    finally:
        conn.close()


def _open(db_path: Path, migrate_cursors: bool = False) -> tuple[sqlite3.Connection, set[str]]:
    """A read-only connection to an edgemon database, and its table names. A database whose
    cursors predate filters is migrated first when a cursor is to be used (the cursor is written
    anyway); any other export never writes."""
    conn = open_read_only(db_path, ExportError)
    conn.create_function("shown_confidence", 1, tables.shown_confidence, deterministic=True)   # CursorFilter.where
    try:
        found = edgemon_tables(conn, db_path, ExportError)
        if not migrate_cursors or cursors_up_to_date(conn):
            return conn, found
    except sqlite3.Error as e:
        conn.close()
        raise ExportError(f"cannot read detections database {db_path}: {e}") from e
    except ExportError:
        conn.close()
        raise
    conn.close()
    try:
        Store(db_path).close()
    except StoreError as e:
        raise ExportError(f"cannot upgrade the export cursors of {db_path}: {e}") from e
    return _open(db_path)


def _span(conn: sqlite3.Connection, db_path: Path, name: str, wanted: CursorFilter) -> tuple[int, int]:
    """Detection ids (after, upto] that cursor ``name`` examines now: from its position to the
    newest row of this snapshot. Rows committed later get higher ids, so none falls behind."""
    try:
        cursor = read_cursor(conn, name)
        newest = conn.execute("SELECT coalesce(max(id), 0) FROM detections").fetchone()[0]
    except sqlite3.Error as e:
        raise CursorError(f"cannot read export cursor {name!r} of {db_path}: {e}") from e
    check_filter(cursor, wanted)
    after = cursor.last_id if cursor else 0
    return after, max(after, newest)


def _where(wanted: CursorFilter, span: tuple[int, int] | None) -> tuple[str, list]:
    clauses, params = wanted.where()
    if span is not None:
        clauses += ["d.id > ?", "d.id <= ?"]
        params += list(span)
    return " AND ".join(clauses) or "1", params


def _check_reachable(conn: sqlite3.Connection, db_path: Path, others: CursorFilter,
                     span: tuple[int, int] | None, min_confidence: float) -> None:
    """Refuse a ``min_confidence`` above the highest ``confidence_max`` recorded for the bundles
    of the detections the other filters select. No check when one of them records none (it
    could reach anything) or no bundle was recorded."""
    where, params = _where(others, span)
    try:
        used = [r[0] for r in conn.execute(f"SELECT DISTINCT d.bundle_id FROM detections d WHERE {where}", params)]
        manifests = dict(conn.execute("SELECT bundle_id, manifest FROM bundles").fetchall())
    except sqlite3.Error as e:
        raise ExportError(f"cannot read bundles from {db_path}: {e}") from e
    reach = []
    for bundle_id in used:
        try:
            top = json.loads(manifests[bundle_id]).get("confidence_max")
        except (KeyError, ValueError, AttributeError):
            return
        if not isinstance(top, (int, float)) or isinstance(top, bool):
            return
        reach.append((float(top), bundle_id))
    if reach and min_confidence - tables.HALF_SHOWN_STEP > max(reach)[0]:
        top, bundle_id = max(reach)
        raise ExportError(f"--min-confidence {min_confidence:g} is above {round(top, tables.CONFIDENCE_DECIMALS):g}, the "
                          f"highest confidence these detections' bundle(s) can reach ({bundle_id}; as exports show "
                          f"it): nothing could match")


# What a --label or --bundle filter may name: (its option, how the refusal calls the set, the
# columns of the tables of the database that hold the known values).
KNOWN = {"label": ("label(s)", "the bundles run on {db} know",
                   (("labels", "label"), ("detections", "label"))),
         "bundle": ("bundle id(s)", "{db} holds detections of",
                    (("bundles", "bundle_id"), ("detections", "bundle_id")))}


def _check_known(conn: sqlite3.Connection, db_path: Path, option: str, wanted: list[str]) -> None:
    """Refuse a ``--label`` that no bundle run on this database knows, or a ``--bundle`` id that
    never stored anything here: a typo such as 'gibbon' would export nothing, and tie a cursor to
    that filter for good. No check before anything was recorded."""
    what, known_as, sources = KNOWN[option]
    try:
        known = {r[0] for table, column in sources for r in conn.execute(f"SELECT DISTINCT {column} FROM {table}")}
    except sqlite3.Error as e:
        raise ExportError(f"cannot read {what} from {db_path}: {e}") from e
    if option == "label":
        # A bundle's background class is a label it knows, but never stored: a filter on it exported
        # nothing, silently, and the refusal of another label listed it as known (a newcomer trial).
        silent = _background_labels(conn) & known
        if set(wanted) & silent:
            raise ExportError(f"--label {', '.join(sorted(set(wanted) & silent))}: the bundles' background class, "
                              f"never stored as a detection; the calls they store are "
                              f"{', '.join(sorted(known - silent)) or 'none yet'}")
        known -= silent
    unknown = sorted(set(wanted) - known)
    if unknown and known:
        raise ExportError(f"unknown {what} {', '.join(map(repr, unknown))}: {known_as.format(db=db_path)} "
                          f"{', '.join(sorted(known))}")


def _background_labels(conn: sqlite3.Connection) -> set[str]:
    """The background labels of the bundles recorded in the database (their manifests)."""
    try:
        manifests = [m for (m,) in conn.execute("SELECT manifest FROM bundles")]
    except sqlite3.Error:
        return set()
    found = set()
    for text in manifests:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            found.add(json.loads(text).get("background_label") or "background")
    return found


def _select(conn: sqlite3.Connection, db_path: Path, wanted: CursorFilter, span: tuple[int, int] | None,
            found: set[str], raven: bool) -> sqlite3.Cursor:
    """Matching detections as dicts with the audio path from the ledger and the label's names,
    streamed (a Pi cannot hold a whole season in memory). Executed here, so a query that fails
    fails before any output exists."""
    where, params = _where(wanted, span)
    names, join = ("l.scientific_name, l.common_name",
                   "LEFT JOIN labels l ON l.bundle_id = d.bundle_id AND l.label = d.label") \
        if "labels" in found else ("NULL AS scientific_name, NULL AS common_name", "")
    table = f", {raven_table(conn)} AS raven_table" if raven else ""
    order = "raven_table, d.start_s, d.id" if raven else "d.id"
    sql = (f"SELECT d.*, {names}, f.path AS file_path{table} FROM detections d "
           f"LEFT JOIN files f ON f.source = d.source {join} WHERE {where} ORDER BY {order}")
    cursor = conn.cursor()
    cursor.row_factory = _as_dict
    try:
        return cursor.execute(sql, params)
    except sqlite3.Error as e:
        raise ExportError(f"cannot read detections from {db_path}: {e}") from e


def _alone(conn: sqlite3.Connection) -> Callable[[dict], bool]:
    """For BirdNET and Raven rows, which carry no bundle: whether no other detection of this
    database shares a row's window and label. Only then can a row alike in a file (alike up to the
    shown confidence) be this detection's, derived before a restore; else it may be the other's,
    and the new row is appended (a duplicate after a restore rather than a detection lost)."""
    def alone(row: dict) -> bool:
        return conn.execute("SELECT 1 FROM detections WHERE source = ? AND start_s = ? AND label IS ? AND id <> ? "
                            "LIMIT 1", [row["source"], row["start_s"], row["label"], row["id"]]).fetchone() is None
    return alone


def _as_dict(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {d[0]: v for d, v in zip(cursor.description, row)}


def export_coverage(db_path: str | Path, fmt: str = "csv", output: Path | None = None,
                    since: dt.datetime | None = None, until: dt.datetime | None = None,
                    timezone: str | None = None, snapshot: sqlite3.Connection | None = None) -> int:
    """Write live-stream coverage, one row per source and UTC minute, and return the row count.

    Each row says how many seconds of the minute were analysed and how many were lost, by cause
    (overflow, dropped, device, daemon): a minute without detections but with analysed seconds
    was listened to; one without analysed seconds was not. ``fmt`` 'csv' or 'jsonl', to
    ``output`` (standard output when None). ``since`` <= minute_utc < ``until``, as for
    detections (the minute holding ``since`` is left out unless it starts at ``since``).
    ``minute_local``: the minute's start in ``timezone`` (the settings' ``timezone``), as
    ``start_local`` for detections and recordings, so the effort is summed by the same local hours
    and days as the calls; empty without one. A database that never listened gives a header only.
    ``snapshot``: read through that connection (``export_detections``' ``alongside``), left open.
    Raises ExportError.
    """
    db_path = Path(db_path)
    write = _side_writer(fmt, "coverage exports")
    zone = _zone(timezone)

    def as_row(row: dict) -> dict:
        return {**_rounded_seconds(row), "minute_local": tables.local_time(row["minute_utc"], zone)}
    conn, found = _open(db_path) if snapshot is None else (snapshot, edgemon_tables(snapshot, db_path, ExportError))
    try:
        if "coverage" not in found:
            rows: Iterable[dict] = []
        else:
            clauses, params = time_range("minute_utc", *_utc_bounds(since, until))
            cursor = conn.cursor()
            cursor.row_factory = _as_dict
            # Streamed, as detections are: a season of minutes held at once cost a Pi 250 MB (a review).
            rows = map(as_row, cursor.execute(
                f"SELECT * FROM coverage WHERE {' AND '.join(['1', *clauses])} ORDER BY source, minute_utc", params))
        return _write_side(write, rows, COVERAGE_COLUMNS, output)
    except sqlite3.Error as e:
        raise ExportError(f"cannot read coverage from {db_path}: {e}") from e
    finally:
        if snapshot is None:
            conn.close()


def export_recordings(db_path: str | Path, fmt: str = "csv", output: Path | None = None,
                      since: dt.datetime | None = None, until: dt.datetime | None = None,
                      bundle: list[str] | None = None, timezone: str | None = None,
                      label: list[str] | None = None, min_confidence: float | None = None,
                      snapshot: sqlite3.Connection | None = None) -> tuple[int, float]:
    """Write the recordings analysed, one row per recording in the ledger that is done, in order of
    start; return (rows, seconds of audio). This is the effort behind the detections: a recording
    with no detection was listened to, a time with no recording was not. With ``bundle`` (ids, as
    ``export-detections --bundle``), one row per recording each of them analysed (``analyses``:
    ``watch`` or ``reanalyse``), its audio read and its detections that bundle's; a recording a
    bundle never analysed is no effort of it (an export of a re-analysed season listed every
    recording of the ledger with the ledger's bundle, a review). Before that table existed (a
    database no edgemon since has opened to write), what its migration would fill it with: the
    recordings whose ledger names the bundle, and those it stored detections of.

    Each row: ``source`` (as detections name it), ``start_utc`` and ``end_utc`` (the end counts
    the silences a triggered recording left out, as its detections' times do), ``duration_s`` (the
    audio analysed), ``time_source`` and ``clock_suspect`` (as its detections), ``detections`` (how
    many the ledger's bundle stored; with ``label`` or ``min_confidence``, those the detections
    export's same filter passes, so the two files agree: an export of one species counted every
    species' detections here, a trial) and ``bundle_id``. ``fmt`` 'csv' or 'jsonl', to ``output``
    (standard output when None). With ``since`` or ``until``, the recordings that overlap
    ``since <= t < until``, each cut to its part inside it (its times, its audio in proportion and
    its detections starting there, as the detections' own filter takes them): a recording that
    runs on past local midnight was the effort of both days, and a day's export listed its
    detections after midnight with no recording behind them while the day before counted its
    whole audio without them (a Borneo trial). A recording without a start time is left out
    whenever a time filter is given. ``start_local``: the start in ``timezone`` (the settings'
    ``timezone``), as for detections; empty without one. ``snapshot``: read through that
    connection (``export_detections``' ``alongside``, so the two files agree), left open. Raises
    ExportError.
    """
    db_path = Path(db_path)
    write = _side_writer(fmt, "recordings export")
    zone = _zone(timezone)
    conn = _open(db_path)[0] if snapshot is None else snapshot
    seconds = [0.0]

    lower, upper = _utc_bounds(since, until)

    def as_row(row: dict) -> dict | None:
        span = row.pop("span_s", None) or row["duration_s"]
        start = row["start_utc"]
        if start is None:
            row["end_utc"] = None
        else:
            begin = parse_utc(start)
            try:
                end = begin + dt.timedelta(seconds=span)
            except OverflowError:   # a name at 9999-12-31: an end past the calendar's, no time (as its detections')
                end = None
            far = _CALENDAR_END if end is None else end
            if lower is not None or upper is not None:   # the part inside the range
                cut_begin = max(begin, parse_utc(lower)) if lower is not None else begin
                cut_end = min(far, parse_utc(upper)) if upper is not None else far
                if cut_end <= cut_begin:
                    return None
                if (cut_begin, cut_end) != (begin, far):
                    row["duration_s"] *= (cut_end - cut_begin).total_seconds() / span if span > 0 else 0.0
                begin, end = cut_begin, (None if end is None and cut_end == far else cut_end)
            row["start_utc"], row["end_utc"] = utc_iso(begin), None if end is None else utc_iso(end)
        seconds[0] += row["duration_s"]
        return {**row, "duration_s": round(row["duration_s"], 3),
                "start_local": tables.local_time(row["start_utc"], zone)}
    try:
        # Recordings that overlap the range: those starting before its end, and ending after its
        # start (exactly, in as_row; here with a second's slack, julianday being a float).
        clauses, params = time_range("f.start_utc", None, upper)
        counted, counted_params = CursorFilter.of(since, until, label, min_confidence, None).where()
        span = "f.span_s" if "span_s" in table_columns(conn, "files") else "NULL"
        # Each row's bundle and audio read: the ledger's, or with --bundle each chosen bundle's analysis.
        analysed, duration, by = "files f", "f.duration_s", "f.bundle_id"
        if bundle:
            marks = ", ".join("?" * len(bundle))
            analysed, duration, by = f"{analyses_table(conn)} a JOIN files f ON f.source = a.source", \
                "coalesce(a.duration_s, f.duration_s)", "a.bundle_id"
            clauses.append(f"{by} IN ({marks})")
            params = [*params, *bundle]
        # A triggered recording spans its left-out silences beyond the audio read, as in the ledger.
        spanned = f"{duration} + ({span} - f.duration_s)" if span != "NULL" else "NULL"
        if lower is not None:
            clauses.append(f"julianday(f.start_utc) + (coalesce({spanned}, {duration}) + 1) / 86400.0 > julianday(?)")
            params.append(lower)
        where = " AND ".join(["f.state = 'done'", f"{duration} IS NOT NULL", *clauses])
        cursor = conn.cursor()
        cursor.row_factory = _as_dict
        # Streamed, as detections are; the count is the row's bundle's, as status counts them.
        in_range = "".join(f" AND {c}" for c in counted)
        rows = filter(None, map(as_row, cursor.execute(
            f"SELECT f.source, f.start_utc, {duration} AS duration_s, {spanned} AS span_s, f.time_source, "
            f"f.clock_suspect, (SELECT count(*) FROM detections d WHERE d.source = f.source AND d.bundle_id IS {by}"
            f"{in_range}) AS detections, {by} AS bundle_id FROM {analysed} "
            f"WHERE {where} ORDER BY f.start_utc IS NULL, f.start_utc, f.source, {by}", [*counted_params, *params])))
        return _write_side(write, rows, RECORDING_COLUMNS, output), seconds[0]
    except sqlite3.Error as e:
        raise ExportError(f"cannot read the recordings of {db_path}: {e}") from e
    finally:
        if snapshot is None:
            conn.close()


def _side_writer(fmt: str, what: str) -> Callable:
    """The writer of a table beside the detections (coverage, recordings): csv or jsonl."""
    writers = {"csv": tables.write_csv, "jsonl": tables.write_jsonl}
    if fmt not in writers:
        raise ExportError(f"{what} as {' or '.join(writers)}, not {fmt!r}")
    return writers[fmt]


def _utc_bounds(since: dt.datetime | None, until: dt.datetime | None) -> list[str | None]:
    return [None if t is None else utc_iso(t, naive_is_utc=True) for t in (since, until)]


def _write_side(write: Callable, rows: Iterable[dict], columns: tuple[str, ...], output: Path | None) -> int:
    """``rows`` streamed by ``write`` to ``output`` whole or not at all (standard output when None)."""
    if output is None:
        return _write_stdout(lambda f, r: write(f, r, columns), rows)
    with atomic_text(Path(output)) as f:
        return write(f, rows, columns)


def _rounded_seconds(row: dict) -> dict:
    """A coverage row's seconds to the millisecond the ledger counts them in (sums of the writes
    of a minute gave 60.00000000000001)."""
    return {k: round(v, 3) if k.endswith("_s") and isinstance(v, float) else v for k, v in row.items()}


def _write_stdout(write: Callable[[TextIO, Iterable[dict]], int], rows: Iterable[dict]) -> int:
    try:
        with utf8_stdout() as out:
            count = write(out, rows)
            out.flush()
    except BrokenPipeError:
        # What is still buffered goes nowhere, quietly: else Python reports the pipe again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosed("standard output was closed by its reader") from None
    except OSError as e:
        raise ExportError(f"cannot write to standard output: {e}") from e
    return count
