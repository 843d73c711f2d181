"""Export detections as CSV, JSON Lines or Raven selection tables, and live-stream coverage.

Export reads through a read-only connection: under WAL a reader sees the last committed state and
neither waits for nor blocks the daemon's writer. Output files appear only complete (temp file in
the same directory, fsync, rename). With ``new=True`` a named cursor remembers the highest exported
detection id; it advances only after the output is written, so a failed export can be repeated.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import itertools
import json
import os
import re
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import TextIO

from edgemon.errors import EdgemonError
from edgemon.store import connect_read_only, utc_iso

FORMATS = ("csv", "jsonl", "raven")
COLUMNS = ("id", "device_id", "source", "start_s", "end_s", "start_utc", "end_utc", "time_source",
           "clock_suspect", "label", "confidence", "votes", "bundle_id", "created_at", "clip_path",
           "clock_synced")
COVERAGE_COLUMNS = ("source", "device_id", "minute_utc", "end_utc", "analysed_s", "lost_overflow_s",
                    "lost_dropped_s", "lost_device_s", "lost_daemon_s", "overflows", "dropped_blocks",
                    "clock_synced", "updated_at")
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                 "Low Freq (Hz)", "High Freq (Hz)", "Label", "Confidence", "Begin Path",
                 "File Offset (s)", "Begin Date Time (UTC)")
RAVEN_HIGH_FREQ_HZ = 8000
BUSY_TIMEOUT_S = 30.0


class ExportError(EdgemonError):
    """Detections cannot be exported: the database is unreadable or the output unwritable."""


def export_detections(db_path: str | Path, fmt: str = "csv", output: Path | None = None,
                      since: dt.datetime | None = None, until: dt.datetime | None = None,
                      label: list[str] | None = None, min_confidence: float | None = None,
                      new: bool = False, cursor_name: str = "default",
                      bundle: list[str] | None = None) -> int:
    """Write the detections that pass the filters; return how many were written.

    ``fmt`` 'csv' or 'jsonl' writes one file at ``output`` (standard output when None); 'raven'
    writes one ``<source stem>.selections.txt`` per source into the existing directory ``output``.
    Filters: ``since`` <= start_utc < ``until`` (naive times are read as UTC; detections without a
    start time are left out whenever a time filter is given), label in ``label`` (None or empty:
    any), confidence >= ``min_confidence``, bundle id in ``bundle`` (None or empty: any). ``new``
    exports only detections after the cursor ``cursor_name`` and then advances it. Rows come in
    id order (Raven: by offset per source).
    Raises ExportError naming the file that cannot be read or written.
    """
    db_path = Path(db_path)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "raven" and (output is None or not Path(output).is_dir()):
        raise ExportError(f"Raven export needs an existing output directory, got {output}")
    conn = _connect_read_only(db_path)
    try:
        # One read transaction: the cursor, the source names and the rows come from one snapshot.
        conn.execute("BEGIN")
        after_id = _cursor_position(conn, db_path, cursor_name) if new else 0
        where, params = _where(after_id, since, until, label, min_confidence, bundle)
        rows = _Tally(_query(conn, db_path, where, params, raven=fmt == "raven"))
        if fmt == "raven":
            _write_raven(rows, Path(output), _raven_names(conn, db_path))
        elif output is None:
            _write_stdout(WRITERS[fmt], rows)
        else:
            with _atomic_text(Path(output)) as f:
                WRITERS[fmt](f, rows)
    finally:
        conn.close()
    if new and rows.count:
        _advance_cursor(db_path, cursor_name, rows.max_id)
    return rows.count


class _Tally:
    """Passes rows through, counting them and noting the highest detection id."""

    def __init__(self, rows: Iterable[sqlite3.Row]):
        self._rows = rows
        self.count = 0
        self.max_id = 0

    def __iter__(self) -> Iterator[sqlite3.Row]:
        for row in self._rows:
            self.count += 1
            self.max_id = max(self.max_id, row["id"])
            yield row


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise ExportError(f"detections database not found: {db_path}")
    try:
        conn = connect_read_only(db_path)
    except sqlite3.Error as e:
        raise ExportError(f"cannot open detections database {db_path}: {e}") from e
    conn.row_factory = sqlite3.Row
    return conn


def _cursor_position(conn: sqlite3.Connection, db_path: Path, name: str) -> int:
    """Highest detection id already exported under cursor ``name``; 0 for a new cursor."""
    try:
        row = conn.execute("SELECT last_id FROM export_cursors WHERE name = ?", [name]).fetchone()
    except sqlite3.Error as e:
        raise ExportError(f"cannot read export cursors of {db_path}: {e}") from e
    return 0 if row is None else row["last_id"]


def _where(after_id: int, since: dt.datetime | None, until: dt.datetime | None,
           label: list[str] | None, min_confidence: float | None,
           bundle: list[str] | None = None) -> tuple[str, list]:
    """SQL conditions and parameters. Stored times are fixed-width UTC text, so comparing the
    text compares the times; a NULL start_utc compares as unknown and is left out."""
    clauses, params = ["d.id > ?"], [after_id]
    if since is not None:
        clauses.append("d.start_utc >= ?")
        params.append(utc_iso(since, naive_is_utc=True))
    if until is not None:
        clauses.append("d.start_utc < ?")
        params.append(utc_iso(until, naive_is_utc=True))
    if label:
        clauses.append(f"d.label IN ({', '.join('?' * len(label))})")
        params.extend(label)
    if min_confidence is not None:
        clauses.append("d.confidence >= ?")
        params.append(min_confidence)
    if bundle:
        clauses.append(f"d.bundle_id IN ({', '.join('?' * len(bundle))})")
        params.extend(bundle)
    return " AND ".join(clauses), params


def _query(conn: sqlite3.Connection, db_path: Path, where: str, params: list,
           raven: bool) -> Iterator[sqlite3.Row]:
    """Stream matching detections (a Pi cannot hold a whole season in memory), with the audio
    path from the ledger when the source is a file."""
    order = "d.source, d.start_s, d.id" if raven else "d.id"
    sql = (f"SELECT d.*, f.path AS file_path FROM detections d "
           f"LEFT JOIN files f ON f.source = d.source WHERE {where} ORDER BY {order}")
    try:
        yield from conn.execute(sql, params)
    except sqlite3.Error as e:
        raise ExportError(f"cannot read detections from {db_path}: {e}") from e


def _value(row: sqlite3.Row, column: str):
    """A column's value; None for a column a database from before its migration lacks (export
    opens read-only, so it never migrates)."""
    return row[column] if column in row.keys() else None


def _write_csv(f: TextIO, rows: Iterable[sqlite3.Row], columns: tuple[str, ...] = COLUMNS) -> None:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_value(row, c) for c in columns])


def _write_jsonl(f: TextIO, rows: Iterable[sqlite3.Row], columns: tuple[str, ...] = COLUMNS) -> None:
    for row in rows:
        f.write(json.dumps({c: _value(row, c) for c in columns}, ensure_ascii=False) + "\n")


WRITERS: dict[str, Callable[[TextIO, Iterable[sqlite3.Row]], None]] = {
    "csv": _write_csv, "jsonl": _write_jsonl}


def export_coverage(db_path: str | Path, fmt: str = "csv", output: Path | None = None,
                    since: dt.datetime | None = None, until: dt.datetime | None = None) -> int:
    """Write live-stream coverage, one row per source and UTC minute, and return the row count.

    Each row says how many seconds of the minute were analysed and how many were lost, by cause
    (overflow, dropped, device, daemon): a minute without detections but with analysed seconds
    was listened to; one without analysed seconds was not. ``fmt`` 'csv' or 'jsonl', to
    ``output`` (standard output when None). ``since`` <= minute_utc < ``until``, as for
    detections (the minute holding ``since`` is left out unless it starts at ``since``).
    A database that never listened gives a header only. Raises ExportError.
    """
    db_path = Path(db_path)
    if fmt not in WRITERS:
        raise ExportError(f"coverage exports as {' or '.join(WRITERS)}, not {fmt!r}")
    conn = _connect_read_only(db_path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'coverage'").fetchone():
            rows: list = []
        else:
            clauses, params = ["1"], []
            if since is not None:
                clauses.append("minute_utc >= ?")
                params.append(utc_iso(since, naive_is_utc=True))
            if until is not None:
                clauses.append("minute_utc < ?")
                params.append(utc_iso(until, naive_is_utc=True))
            rows = conn.execute(f"SELECT * FROM coverage WHERE {' AND '.join(clauses)} "
                                f"ORDER BY source, minute_utc", params).fetchall()
    except sqlite3.Error as e:
        raise ExportError(f"cannot read coverage from {db_path}: {e}") from e
    finally:
        conn.close()
    write = WRITERS[fmt]
    if output is None:
        _write_stdout(lambda f, r: write(f, r, COVERAGE_COLUMNS), rows)
    else:
        with _atomic_text(Path(output)) as f:
            write(f, rows, COVERAGE_COLUMNS)
    return len(rows)


def _write_stdout(write: Callable[[TextIO, Iterable[sqlite3.Row]], None],
                  rows: Iterable[sqlite3.Row]) -> None:
    try:
        write(sys.stdout, rows)
        sys.stdout.flush()
    except OSError as e:
        raise ExportError(f"cannot write to standard output: {e}") from e


def _raven_names(conn: sqlite3.Connection, db_path: Path) -> dict[str, str]:
    """Selection table file name of every source: '<stem>.selections.txt', with a hash of the
    source added when two sources share a stem (e.g. the same file name at two sites). Taken over
    all sources, not only the exported ones, so a source keeps its name whatever the filters."""
    try:
        sources = [row[0] for row in conn.execute("SELECT DISTINCT source FROM detections")]
    except sqlite3.Error as e:
        raise ExportError(f"cannot read detections from {db_path}: {e}") from e
    stems = {s: _safe_name(PurePosixPath(s).stem) for s in sources}
    shared = Counter(stems.values())
    names = {}
    for source, stem in stems.items():
        if shared[stem] > 1:
            stem = f"{stem}.{hashlib.sha1(source.encode()).hexdigest()[:8]}"
        names[source] = f"{stem}.selections.txt"
    return names


def _safe_name(stem: str) -> str:
    """``stem`` with characters FAT/exFAT cards or Windows refuse (':' of 'live:mic0') as '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "source"


def _write_raven(rows: Iterable[sqlite3.Row], out_dir: Path, names: dict[str, str]) -> None:
    """One tab-separated Raven selection table per source; times in seconds from its start."""
    for source, group in itertools.groupby(rows, key=lambda row: row["source"]):
        with _atomic_text(out_dir / names[source]) as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(RAVEN_COLUMNS)
            for number, row in enumerate(group, start=1):
                writer.writerow([
                    number, "Spectrogram 1", 1, row["start_s"], row["end_s"], 0,
                    RAVEN_HIGH_FREQ_HZ, row["label"], row["confidence"],
                    row["file_path"] or source, row["start_s"], row["start_utc"] or ""])


@contextlib.contextmanager
def _atomic_text(path: Path) -> Iterator[TextIO]:
    """A UTF-8 text file that appears at ``path`` only when complete.

    The temp file sits in the same directory so the rename stays on one file system (atomic);
    fsync before the rename, so a power cut cannot leave a renamed but empty file behind.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ExportError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable. Some file systems refuse fsync on a directory; the file is then
    still complete, only the rename might not survive a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _advance_cursor(db_path: Path, name: str, last_id: int) -> None:
    """Move cursor ``name`` to ``last_id`` in a short write transaction of its own.

    The cursor only moves forward, so a slower concurrent export cannot move it back.
    """
    uri = db_path.resolve().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise ExportError(f"cannot advance export cursor {name!r} in {db_path}: {e}") from e
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO export_cursors (name, last_id, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id, "
            "updated_at = excluded.updated_at WHERE excluded.last_id > export_cursors.last_id",
            [name, last_id, utc_iso(dt.datetime.now(dt.timezone.utc))])
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise ExportError(f"cannot advance export cursor {name!r} in {db_path}: {e}") from e
    finally:
        conn.close()
