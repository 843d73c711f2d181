"""Named export cursors: "what has this destination already received?"

A cursor belongs to one destination and one filter. Its position is the highest detection id it
has *examined* under that filter: every row at or below it was either delivered to that
destination or did not match its filter. Ids only grow (AUTOINCREMENT, never reused), a row's
label, confidence and start time never change, and the filter is fixed for the cursor's life, so
a row at or below the position can never start to match: each matching row is delivered exactly
once, and no row is passed over because another cursor's filter skipped it. A re-processed file's
detections are new rows (new ids) and are delivered again; ``reanalyse`` keeps a row's id only
when it finds the detection again unchanged (``Store.replace_detections``). (source, start_s,
label, bundle_id) identifies them downstream.

Using a cursor with another filter is refused, naming the cursor and its filter: moving one
position across two filters is what lost rows before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown, stored_name
from edgemon.storage.readonly import has_table, table_columns, time_range
from edgemon.storage.tables import HALF_SHOWN_STEP
from edgemon.utc import utc_iso

BUSY_TIMEOUT_S = 30.0
log = logging.getLogger(__name__)


class CursorError(EdgemonError):
    """An export cursor cannot be read, is used with another filter, or cannot be advanced."""


@dataclasses.dataclass(frozen=True)
class CursorFilter:
    """An export's filter in canonical form: labels sorted without repeats, times as store UTC
    text (since <= start_utc < until), confidence as a float; None: no such condition."""

    labels: tuple[str, ...] = ()
    min_confidence: float | None = None
    since: str | None = None
    until: str | None = None
    bundles: tuple[str, ...] = ()

    @classmethod
    def of(cls, since: dt.datetime | None = None, until: dt.datetime | None = None,
           labels: list[str] | None = None, min_confidence: float | None = None,
           bundles: list[str] | None = None) -> CursorFilter:
        """Naive times are read as UTC."""
        return cls(tuple(sorted(set(labels or ()))),
                   None if min_confidence is None else float(min_confidence),
                   None if since is None else utc_iso(since, naive_is_utc=True),
                   None if until is None else utc_iso(until, naive_is_utc=True),
                   tuple(sorted(set(bundles or ()))))

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in (("label", list(self.labels)),
                                             ("min_confidence", self.min_confidence),
                                             ("since", self.since), ("until", self.until),
                                             ("bundle", list(self.bundles)))
                           if v not in (None, [])},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CursorFilter:
        data = json.loads(text)
        return cls(tuple(data.get("label", ())), data.get("min_confidence"), data.get("since"),
                   data.get("until"), tuple(data.get("bundle", ())))

    def describe(self) -> str:
        """As the options that give it: '--label a --min-confidence 0.5', or 'no filter'."""
        parts = [f"--label {label}" for label in self.labels]
        if self.min_confidence is not None:
            parts.append(f"--min-confidence {self.min_confidence:g}")
        parts += [f"--{k} {v}" for k, v in (("since", self.since), ("until", self.until)) if v]
        parts += [f"--bundle {bundle}" for bundle in self.bundles]
        return " ".join(parts) or "no filter"

    def where(self) -> tuple[list[str], list]:
        """SQL conditions on ``d`` (detections) and their parameters. Stored times are fixed-width
        UTC text, so comparing text compares times; a NULL start_utc never passes a time filter."""
        clauses, params = time_range("d.start_utc", self.since, self.until)
        if self.labels:
            clauses.append(f"d.label IN ({', '.join('?' * len(self.labels))})")
            params.extend(self.labels)
        if self.min_confidence is not None:   # as exports show it: 0.790672 is 0.7907, and passes 0.7907
            # The first condition can use an index; the second is the rounding the tables apply
            # (``tables.confidence``, registered on the connection by ``export``).
            clauses.append("d.confidence >= ? AND shown_confidence(d.confidence) >= ?")
            params += [self.min_confidence - HALF_SHOWN_STEP - 1e-9, self.min_confidence]
        if self.bundles:
            clauses.append(f"d.bundle_id IN ({', '.join('?' * len(self.bundles))})")
            params.extend(self.bundles)
        return clauses, params


@dataclasses.dataclass(frozen=True)
class Cursor:
    """A stored cursor; ``filter`` None for one from before filters were stored."""

    name: str
    filter: CursorFilter | None
    last_id: int
    exported_at: str | None
    delivered: int


def has_filters(conn: sqlite3.Connection) -> bool:
    """Whether the database's cursors carry filters (migration m004 applied)."""
    return "filter" in table_columns(conn, "export_cursors")


def cursors_up_to_date(conn: sqlite3.Connection) -> bool:
    """Whether the database's cursors carry filters and note their files (m004, m015): a cursor
    export migrates a database first where not."""
    return has_filters(conn) and has_table(conn, "cursor_outputs")


def refuse_a_cursors_file(conn: sqlite3.Connection, output: Path, error: type[EdgemonError],
                          option: str = "--output") -> None:
    """Refuse (``error``, one line) a plain export (or ``--coverage``) to a file an export cursor
    appends to: it would replace the file, and the rows the cursor has moved past would never be
    delivered again."""
    if not has_table(conn, "cursor_outputs") or not output.exists():
        return
    row = conn.execute("SELECT cursor FROM cursor_outputs WHERE path = ?",
                       [stored_name(output.resolve())]).fetchone()
    if row is not None:
        raise error(f"{option} {output}: export cursor {row[0]!r} appends to this file; a plain export would "
                    f"replace it, and the rows the cursor delivered there would not be delivered again: write "
                    f"elsewhere" + (f", or export with --cursor {row[0]}" if option == "--output" else ""))


def read_cursor(conn: sqlite3.Connection, name: str) -> Cursor | None:
    row = conn.execute("SELECT name, filter, last_id, coalesce(exported_at, updated_at), delivered "
                       "FROM export_cursors WHERE name = ?", [name]).fetchone()
    return None if row is None else _cursor(row)


def list_cursors(conn: sqlite3.Connection) -> list[Cursor]:
    """Every cursor, by name (filter None for cursors from before filters were stored)."""
    columns = ("filter, coalesce(exported_at, updated_at), delivered" if has_filters(conn)
               else "NULL, updated_at, 0")   # a database from before m004: no filters yet
    return [_cursor((row[0], row[2], row[1], row[3], row[4])) for row in conn.execute(
        f"SELECT name, last_id, {columns} FROM export_cursors ORDER BY name")]


def _cursor(row) -> Cursor:
    return Cursor(row[0], None if row[1] is None else CursorFilter.from_json(row[1]), row[2], row[3], row[4])


def check_filter(cursor: Cursor | None, wanted: CursorFilter) -> None:
    """Refuse to move ``cursor`` under a filter other than its own."""
    if cursor is not None and cursor.filter is not None and cursor.filter != wanted:
        raise CursorError(f"export cursor {cursor.name!r} belongs to the filter "
                          f"'{cursor.filter.describe()}', not '{wanted.describe()}': "
                          f"give this filter its own --cursor NAME")
    if cursor is not None and cursor.filter is None and cursor.last_id > 0:
        # Before filters were stored, exports with other filters moved this cursor too: rows at or
        # below its position may never have reached this destination. Say so; a fresh cursor
        # (--cursor NEW) delivers everything that matches.
        log.warning("export cursor %r predates stored filters and takes '%s' now; rows up to id %d that "
                    "an earlier filtered export passed over are not delivered again: for all of them, "
                    "export with a new --cursor NAME", shown(cursor.name), wanted.describe(), cursor.last_id)


def advance(db_path: Path, name: str, wanted: CursorFilter, last_id: int, delivered: int) -> None:
    """Record an export under cursor ``name`` (``advancing`` around nothing): for an export whose
    output has no file to move into place (standard output)."""
    with advancing(db_path, name, wanted, last_id, delivered):
        pass


@contextlib.contextmanager
def advancing(db_path: Path, name: str, wanted: CursorFilter, last_id: int, delivered: int, *,
              output: Path | None = None) -> Iterator[None]:
    """Record an export under cursor ``name`` — position ``last_id`` (only ever forward, so a slower
    concurrent export cannot move it back), filter, time, rows delivered — in a short write
    transaction held across the block: written and checked before it, committed right after it,
    rolled back if it fails. The export's files are complete and their renames journaled before
    it, and renamed after it (``export_files.atomic_texts``): a failure up to the commit leaves
    files and cursor as they were (a repeat appends nothing twice), and a cursor that cannot be
    written stops the files from moving. ``output``: the csv, jsonl or birdnet file it appends
    to, noted as the cursor's (``cursor_outputs``: a plain export will not replace it)."""
    uri = db_path.resolve().as_uri() + "?mode=rw"
    now = utc_iso(dt.datetime.now(dt.timezone.utc))
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as e:
        raise CursorError(f"cannot advance export cursor {name!r} in {db_path}: {e}") from e
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            check_filter(read_cursor(conn, name), wanted)   # another export may have created it meanwhile
            conn.execute(
                "INSERT INTO export_cursors (name, last_id, updated_at, filter, exported_at, delivered) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "last_id = max(last_id, excluded.last_id), updated_at = excluded.updated_at, "
                "filter = excluded.filter, exported_at = excluded.exported_at, "
                "delivered = delivered + excluded.delivered",
                [name, last_id, now, wanted.to_json(), now, delivered])
            # Noted also when nothing was new, for a file there already: one a cursor filled
            # before its database knew cursor_outputs was unprotected until a new row (a review).
            if output is not None and (delivered or output.exists()):
                conn.execute("INSERT OR REPLACE INTO cursor_outputs (path, cursor, noted_utc) VALUES (?, ?, ?)",
                             [stored_name(output.resolve()), name, now])
        except sqlite3.Error as e:
            raise CursorError(f"cannot advance export cursor {name!r} in {db_path}: {e}") from e
        yield
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise CursorError(f"cannot advance export cursor {name!r} in {db_path} (nothing was delivered; "
                              f"a repeat delivers these rows): {e}") from e
    finally:
        conn.close()   # uncommitted: rolled back


def write_through(db_path: Path) -> None:
    """Copy what the write-ahead log holds into the database file itself (a passive checkpoint: it
    waits for no reader or writer). A cursor's move sat in ``<db>-wal`` after the export: the
    export's own read-only connection closes last and cannot checkpoint, so a field worker who
    copied ``detections.db`` alone got a copy whose cursors had delivered nothing, and its next
    export delivered every row again. Best effort: the log still holds the move when this fails."""
    try:
        with contextlib.closing(sqlite3.connect(db_path.resolve().as_uri() + "?mode=rw", uri=True,
                                                timeout=BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    except sqlite3.Error as e:
        log.debug("checkpoint of %s after an export skipped: %s", db_path, e)
