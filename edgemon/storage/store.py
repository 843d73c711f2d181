"""The detections database: a ledger of processed audio files and the detections found in them.

One SQLite file in WAL mode, so ``edgemon export`` can read while the daemon writes. A file's
detections and its ledger row are written in one transaction: after a crash or restart a file is
either done with all its detections or still to do, never half-stored. A ``Store`` holds one
connection and must stay on one thread; the daemon owns the single writer.

A live stream (``edgemon listen``) has no ledger rows; its ``coverage`` rows say, per UTC minute,
how many seconds were analysed and how many were lost and why, so "no detection" can be told apart
from "not listening".

Times are stored as fixed-width UTC text ('2024-05-01T06:00:00.000Z', see ``utc_iso``), so text
order is time order and a time range can use the index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from edgemon.errors import EdgemonError
from edgemon.safetext import shown, stored_name
from edgemon.storage.lock import daemon_started
from edgemon.storage.readonly import BUSY_TIMEOUT_MS, error_code, quick_check
from edgemon.storage.rows import (CoverageMinute, Detection, Heartbeat, coverage_row, detection_row, heartbeat_row,
                                  optional_utc)
from edgemon.storage.schema import MIGRATIONS, newer_migrations
from edgemon.storage.tables import CONFIDENCE_NOISE, NUMERIC_NOISE, label_names
from edgemon.utc import utc_iso

log = logging.getLogger(__name__)


WAL_SIZE_LIMIT_BYTES = 8 * 2**20   # the WAL is cut back to this after a checkpoint (``Store``)


class StoreError(EdgemonError):
    """The detections database cannot be opened or migrated."""


class DatabaseReplaced(StoreError):
    """The database file was deleted or replaced under a running store: what it wrote since went
    into a file no path names, lost when it closes. The daemon stops; started again, it opens the
    database at the path (``watch`` analyses the card's recordings into it again)."""


def _file_identity(path: Path) -> tuple[int, int] | None | bool:
    """The (device, inode) ``path`` names now; None when it names nothing; False when it cannot
    be told now (an I/O error passing by: no reason to stop the daemon, the write says more)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return False
    return st.st_dev, st.st_ino


def _now() -> str:
    return utc_iso(dt.datetime.now(dt.timezone.utc))


def _within_a_millisecond(when: dt.datetime) -> list[str]:
    """The bounds of a ``start_utc BETWEEN ? AND ?`` for times stored within a millisecond of
    ``when`` (as utc_iso text, which sorts as the times do)."""
    return [utc_iso(when - dt.timedelta(milliseconds=1)), utc_iso(when + dt.timedelta(milliseconds=1))]


def _directory_note(path: Path) -> str:
    """Why SQLite could not open a database whose directory this process may not write: it keeps
    its -wal and -shm files beside the database, and said only "unable to open database file" (a
    review)."""
    parent = path.resolve().parent
    if parent.is_dir() and not os.access(parent, os.W_OK):
        return f" (its directory {parent} is not writable here: SQLite keeps its -wal and -shm files there)"
    return ""


class Store:
    """The detections database at ``path``, created and migrated on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite_utils.Database(self.path)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open detections database {self.path}: {e}") from e
        try:
            # The timeout first, so that switching to WAL and migrating wait for a busy writer.
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._refuse_another_programs_database()   # before WAL: that alone rewrites its header
            self._enable_wal()
            # FULL: a commit is on the card before it returns, so a power cut (a field unit's
            # usual end) loses no stored detection. NORMAL could lose the commits since the last
            # checkpoint: harmless for a watched file (redone), but a live stream's are gone with
            # its audio. Commits come per file or per event and minute: the fsyncs cost ~0.4 ms each
            # here, nothing beside the analysis.
            self.db.execute("PRAGMA synchronous = FULL")
            # A reader that holds a read transaction (a person's sqlite3 shell left in one, a
            # browser of the file) keeps every commit since in the WAL: about 75 KB a recording,
            # 130 MB after 1,700 of them. SQLite then leaves the file at that size, however
            # small the database, until the daemon stops (a review); with a limit the WAL is cut
            # back to it at the first checkpoint after the reader lets go. Normal use peaks at
            # about 4.2 MB (the 1,000-page autocheckpoint), below the limit: nothing is cut then.
            self.db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
            newer = newer_migrations(self.db)
            if newer:   # a unit's SD card put back to an older image, say: refuse, never mix
                raise StoreError(f"detections database {self.path} was written by a newer edgemon (its schema has "
                                 f"{', '.join(newer)}, unknown to this one): upgrade edgemon to use it")
            if MIGRATIONS.pending(self.db):   # a read first: nearly every open has nothing to do
                self._refuse_migrating_under_a_daemon()
                # Check and apply under one write lock: another process (the daemon and an
                # export, say) may be migrating the same old database now. IMMEDIATE waits for
                # it, then the list is read again inside, so no migration runs twice (which
                # failed with "duplicate column"). Migrations nest as savepoints in this one.
                self.db.conn.execute("BEGIN IMMEDIATE")
                try:
                    MIGRATIONS.apply(self.db)
                    self.db.conn.execute("COMMIT")
                except BaseException:
                    if self.db.conn.in_transaction:
                        self.db.conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            self.db.close()
            raise StoreError(f"cannot open detections database {self.path}: {e}{_directory_note(self.path)}") from e
        except StoreError:
            self.db.close()
            raise
        self._opened_as = _file_identity(self.path)

    def _refuse_migrating_under_a_daemon(self) -> None:
        """Refuse to migrate an older database while another process's daemon holds it: an
        older edgemon still running (the package upgraded, the service not yet restarted) goes on
        writing as its own schema says, without what the migrations add (an upgrade trial:
        `edgemon review` before the restart, and the recordings that daemon analysed next had no
        ``analyses`` rows, so its bundle counted as never having analysed them). A new database
        is never refused: a daemon creating it migrates it as this would."""
        holder = daemon_started(self.path)
        if holder is not None and holder[0] != os.getpid() and MIGRATIONS.applied(self.db):
            raise StoreError(f"detections database {shown(self.path)} is in use by edgemon pid {holder[0]}, "
                             f"which opened it at an older schema: restart it first (`systemctl restart edgemon` "
                             f"after an upgrade), so that it is not left writing into a schema it does not know; "
                             f"if it has only just started, try again in a moment")

    def _enable_wal(self) -> None:
        """Switch to WAL, waiting as long as for any busy writer. The switch upgrades the read it
        starts with to a write, and SQLite answers "database is locked" at once, without waiting,
        to a read that wants to write while another process writes (waiting could deadlock): a
        second process opening a database still in rollback mode while the first migrated it
        failed to start (a full run, under load)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self.db.enable_wal()
                return
            except sqlite3.OperationalError as e:
                if error_code(e) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _refuse_another_programs_database(self) -> None:
        """A database with tables but no detections table belongs to another program: migrating
        it would write twenty tables and triggers into that program's file."""
        tables = [name for (name,) in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'")]
        if tables and "detections" not in tables:
            shown_tables = ", ".join(shown(t) for t in sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
            raise StoreError(f"{shown(self.path)}: not an edgemon database (it holds another program's tables: "
                             f"{shown_tables}); nothing was changed: give --db a new file or an edgemon database")

    def check_writable(self) -> None:
        """Raise ``StoreError`` when the database refuses writes (a read-only file, or a card
        mounted read-only): a daemon would otherwise hold its work and retry for ever."""
        try:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:   # setting it to what it is: a write, rolled back
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                self.db.conn.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                self.db.conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            if error_code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return   # another writer held it past the busy timeout: writable, and waited for later
            raise StoreError(f"{shown(self.path)}: the detections database cannot be written ({shown(e)}); "
                             f"make it writable, or give --db a writable path") from e

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction, committed at the end of the block or rolled back on error.

        IMMEDIATE takes the write lock up front and waits up to the busy timeout for it; a
        deferred transaction that reads and then writes fails at once with SQLITE_BUSY when
        another connection (an export advancing its cursor) committed in between.
        """
        self._check_still_there()
        self.db.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.conn.execute("COMMIT")
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.conn.execute("ROLLBACK")
            raise

    def _check_still_there(self) -> None:
        """Raise ``DatabaseReplaced`` when the path no longer names the file this store opened (a
        technician's `rm detections.db*` "to start afresh": the daemon went on storing into the
        deleted file, and everything since was gone when it stopped; a review). A stat a write."""
        if self._opened_as and (now := _file_identity(self.path)) is not False and now != self._opened_as:
            raise DatabaseReplaced(f"the detections database {self.path} was deleted or replaced while edgemon "
                                   f"used it: stopping, so that nothing more is stored where no file keeps it; "
                                   f"started again, edgemon opens the database at that path")

    def file_entry(self, source: str) -> dict | None:
        """The ledger row of ``source`` as a dict, or None if the file was never recorded."""
        return next(self.db["files"].rows_where("source = ?", [source]), None)

    def labels_at_end(self, source: str, bundle_id: str, within_s: float) -> frozenset[str] | None:
        """The labels of ``bundle_id``'s detections of ``source`` ending within ``within_s`` of its
        end (a call going on into the next recording: ``files.preroll``); None when that bundle
        has not analysed it."""
        analysed = self.db.execute("SELECT duration_s FROM analyses WHERE source = ? AND bundle_id = ?",
                                   [source, bundle_id]).fetchone()
        if analysed is None or analysed[0] is None:
            return None
        return frozenset(label for label, in self.db.execute(
            "SELECT DISTINCT label FROM detections WHERE source = ? AND bundle_id = ? AND end_s > ?",
            [source, bundle_id, analysed[0] - within_s]))

    def commit_file(self, source: str, *, path: str | Path, size: int, mtime_ns: int,
                    duration_s: float, start_utc: str | dt.datetime | None, time_source: str,
                    clock_suspect: bool, bundle_id: str, detections: list[Detection],
                    note: str | None = None, fingerprint: str | None = None,
                    tail_digest: str | None = None, samples_digest: str | None = None,
                    span_s: float | None = None) -> None:
        """Store a processed file: its detections replace earlier ones of the same bundle (one found
        again unchanged keeps its row and id, so a file merely touched or copied again delivers
        nothing twice to export cursors), and its ledger row becomes 'done'. One transaction: all of it is stored or none of it. ``note``
        (kept in the ledger's error column) says what was odd about a file that was still read;
        ``fingerprint`` (``storage.fingerprint``) tells this recording from another of its name;
        ``tail_digest`` (its header and last bytes) tells it, with the size, from one written again;
        ``samples_digest`` (its decoded audio) knows it again converted to another format;
        ``span_s``: the time a triggered recording spans, its left-out silences included.

        ``size`` is in bytes, ``mtime_ns`` in nanoseconds since the epoch, ``duration_s`` in
        seconds. Raises ValueError if a detection names another source or bundle. Ends the file's
        attempt (``begin_attempt``). ``source`` must be valid UTF-8 text (see ``safetext.stored_name``).
        """
        _check_detections(detections, source, bundle_id)
        now = _now()
        rows = [detection_row(d, now) for d in detections]
        with self._write() as db:
            _replace_rows(db, source, bundle_id, rows)
            _mark_analysed(db, source, bundle_id, duration_s, now, ledger_at=now)   # the row written below
            attempts = _attempts_so_far(self.file_entry(source), size, mtime_ns) + 1
            db.execute("DELETE FROM in_progress WHERE source = ?", [source])
            db["files"].upsert({
                "source": source, "path": stored_name(path), "size": size, "mtime_ns": mtime_ns,
                "state": "done", "attempts": attempts, "error": None if note is None else shown(note),
                "duration_s": duration_s,
                "start_utc": optional_utc(start_utc), "time_source": time_source,
                "clock_suspect": int(clock_suspect), "bundle_id": bundle_id, "updated_at": now,
                "fingerprint": fingerprint, "tail_digest": tail_digest, "samples_digest": samples_digest,
                "span_s": span_s,
            }, pk="source")

    def note_other_recording(self, source: str, *, path: str | Path, size: int, mtime_ns: int) -> bool:
        """Record that the file at ``path`` is another recording than the one analysed as
        ``source`` (left alone: ``storage.fingerprint``); True when it is new, or changed since
        it was noted. The ledger row of ``source`` is not touched."""
        path = stored_name(path)
        with self._write() as db:
            row = db.execute("SELECT size, mtime_ns FROM other_recordings WHERE path = ?", [path]).fetchone()
            if row is not None and tuple(row) == (size, mtime_ns):
                return False
            db.execute("INSERT OR REPLACE INTO other_recordings (path, source, size, mtime_ns, noted_utc) "
                       "VALUES (?, ?, ?, ?, ?)", [path, source, size, mtime_ns, _now()])
        return True

    def analysed_under_another_name(self, source: str, size: int, fingerprint: str | None,
                                    tail_digest: str | None, starting: dt.datetime | None = None) -> list[dict]:
        """The ledger rows of recordings analysed under other names than ``source`` with the same
        size, first audio and last bytes (``storage.fingerprint``): the file's twins, if any; with
        ``starting``, only those stored as starting within a millisecond of it."""
        if not fingerprint or not tail_digest:
            return []
        where, params = "state = 'done' AND size = ? AND fingerprint = ? AND tail_digest = ? AND source != ?", \
            [size, fingerprint, tail_digest, source]
        if starting is not None:
            where += " AND start_utc BETWEEN ? AND ?"
            params += _within_a_millisecond(starting)
        return list(self.db["files"].rows_where(where, params))

    def analysed_starting(self, source: str, starting: dt.datetime) -> list[dict]:
        """The ledger rows of recordings analysed under other names than ``source`` and stored as
        starting within a millisecond of ``starting``: what ``source`` may be a conversion of."""
        return list(self.db["files"].rows_where("state = 'done' AND source != ? AND start_utc BETWEEN ? AND ?",
                                                [source, *_within_a_millisecond(starting)]))

    def keep_samples_digest(self, source: str, version: tuple[int, int], digest: str) -> None:
        """Give the ledger row of ``source``, analysed before decoded audio was digested, the
        ``samples_digest`` read from its file, while the row still describes that file (``version``:
        its size and mtime_ns)."""
        with self._write() as db:
            db.execute("UPDATE files SET samples_digest = ? WHERE source = ? AND state = 'done' AND size = ? "
                       "AND mtime_ns = ? AND samples_digest IS NULL", [digest, source, *version])

    def undigested(self) -> dict[str, tuple[int, int, str | None]]:
        """``{source: (size, mtime_ns, fingerprint)}`` of recordings analysed before tail digests
        were kept (``schema.m013_same_recordings``; the fingerprint as then kept, or None): moved,
        they cannot be recognised."""
        rows = self.db.execute("SELECT source, size, mtime_ns, fingerprint FROM files WHERE state = 'done' "
                               "AND tail_digest IS NULL")
        return {source: (size, mtime_ns, fingerprint) for source, size, mtime_ns, fingerprint in rows}

    def keep_digests(self, found: list[tuple[str, tuple[int, int], str | None, str, str]]) -> int:
        """Give analysed recordings' ledger rows today's fingerprint and tail digest, in one
        transaction: ``found`` holds (source, (size, mtime_ns), fingerprint as kept, fingerprint,
        tail digest); a row that changed since it was read is left alone. Returns how many."""
        with self._write() as db:
            return sum(db.execute("UPDATE files SET fingerprint = ?, tail_digest = ? WHERE source = ? "
                                  "AND state = 'done' AND size = ? AND mtime_ns = ? AND fingerprint IS ? "
                                  "AND tail_digest IS NULL", [digest, tail, source, *version, kept]).rowcount
                       for source, version, kept, digest, tail in found)

    def noted_same_recording(self, path: str | Path) -> str | None:
        """The source the file at ``path`` was noted to hold (``note_same_recording``), or None."""
        row = self.db.execute("SELECT source FROM same_recordings WHERE path = ?", [stored_name(path)]).fetchone()
        return None if row is None else row[0]

    def note_same_recording(self, source: str, *, path: str | Path, size: int, mtime_ns: int,
                            moved: bool = False, converted: tuple[str, str] | None = None) -> bool:
        """Record that the file at ``path`` holds the recording analysed as ``source`` (moved,
        renamed or copied); True when it is new, or changed since it was noted. ``moved``: the
        ledger row of ``source`` takes ``path`` as where the recording is now (review and
        reanalyse read it there); ``converted``: the file holds it in another format, and the row
        also takes its size, mtime and (fingerprint, tail digest), which review and reanalyse
        check the file against."""
        path = stored_name(path)
        with self._write() as db:
            row = db.execute("SELECT source, size, mtime_ns FROM same_recordings WHERE path = ?", [path]).fetchone()
            if moved and converted is not None:
                db.execute("UPDATE files SET path = ?, size = ?, mtime_ns = ?, fingerprint = ?, tail_digest = ? "
                           "WHERE source = ?", [path, size, mtime_ns, *converted, source])
            elif moved:
                db.execute("UPDATE files SET path = ? WHERE source = ? AND path != ?", [path, source, path])
            if row is not None and tuple(row) == (source, size, mtime_ns):
                return False
            db.execute("INSERT OR REPLACE INTO same_recordings (path, source, size, mtime_ns, noted_utc) "
                       "VALUES (?, ?, ?, ?, ?)", [path, source, size, mtime_ns, _now()])
        return True

    def note_touched(self, source: str, mtime_ns: int) -> None:
        """The analysed file ``source`` was touched or copied again over itself (same size and
        audio): its ledger row takes the new mtime, and nothing is analysed again (a file timed
        by its mtime would otherwise deliver its detections again at new times). The bundles'
        analyses of it stay current (``analyses.ledger_at`` follows the row)."""
        now = _now()
        with self._write() as db:
            db.execute("UPDATE analyses SET ledger_at = ? WHERE source = ? AND ledger_at = "
                       "(SELECT updated_at FROM files WHERE source = ?)", [now, source, source])
            db.execute("UPDATE files SET mtime_ns = ?, updated_at = ? WHERE source = ?", [mtime_ns, now, source])

    def record_failure(self, source: str, *, path: str | Path, size: int, mtime_ns: int,
                       error: str, max_attempts: int = 3, died: bool = False, counted: bool = True) -> str:
        """Count a failed attempt at ``source`` and return its new state: 'failed', or
        'quarantined' once it has failed ``max_attempts`` times. Detections are left alone.
        ``counted=False``: a failure that is not the file's (its card unreadable): recorded as
        'failed', to be tried again, without counting it.

        A file whose size or mtime changed since the last attempt is a new version (the recorder
        rewrote it), so its count starts again. Ends the file's attempt (``begin_attempt``),
        unless the analysis ``died`` and the file is not quarantined: the attempt then stays open,
        so the next one counts the death and is isolated as well.
        """
        with self._write() as db:
            attempts = _attempts_so_far(self.file_entry(source), size, mtime_ns) + counted
            state = "quarantined" if counted and attempts >= max_attempts else "failed"
            if not died or state == "quarantined":
                db.execute("DELETE FROM in_progress WHERE source = ?", [source])
            db["files"].upsert({
                "source": source, "path": stored_name(path), "size": size, "mtime_ns": mtime_ns,
                "state": state, "attempts": attempts, "error": shown(error), "updated_at": _now(),
            }, pk="source")
        return state

    def begin_attempt(self, source: str, *, path: str | Path, size: int, mtime_ns: int,
                      after_refusal: bool = False) -> int:
        """Record, committed before any work, that ``source`` (this size and mtime) is being
        analysed; ``commit_file`` and ``record_failure`` end the attempt. Returns how many runs in a
        row died while this version was in progress: 0 unless an earlier attempt never ended.
        ``after_refusal``: the attempt left open ended in a refused commit (a full disk), which
        counts as no death."""
        with self._write() as db:
            row = db.execute("SELECT size, mtime_ns, interrupted FROM in_progress WHERE source = ?",
                             [source]).fetchone()
            interrupted = (row[2] + (not after_refusal) if row is not None and row[:2] == (size, mtime_ns)
                           else 0)
            db.execute("INSERT OR REPLACE INTO in_progress (source, path, size, mtime_ns, started_utc, interrupted) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [source, stored_name(path), size, mtime_ns, _now(), interrupted])
        return interrupted

    def drop_attempt(self, source: str) -> None:
        """End an attempt that has no result (the file was deleted while it was analysed)."""
        with self._write() as db:
            db.execute("DELETE FROM in_progress WHERE source = ?", [source])

    def finished_versions(self) -> dict[str, tuple[int, int]]:
        """``{source: (size, mtime_ns)}`` of every file that needs no more work (done or quarantined)."""
        rows = self.db.execute("SELECT source, size, mtime_ns FROM files WHERE state IN ('done', 'quarantined')")
        return {source: (size, mtime_ns) for source, size, mtime_ns in rows}

    def kept_elsewhere(self, root: str | Path) -> dict[str, str]:
        """``{source: ledger path}`` of the finished recordings whose ledger path is under ``root``
        but not their source name there: moved or renamed inside the tree since they were analysed.
        Paths as stored (``safetext.stored_name``)."""
        prefix = stored_name(root).rstrip("/") + "/"
        rows = self.db.execute("SELECT source, path FROM files WHERE state = 'done' AND path != ? || source "
                               "AND substr(path, 1, length(?)) = ?", [prefix, prefix, prefix])
        return dict(rows.fetchall())

    def keep_path(self, source: str, path: str | Path) -> None:
        """The ledger row of ``source`` takes ``path`` as where its recording is now."""
        with self._write() as db:
            db.execute("UPDATE files SET path = ? WHERE source = ?", [stored_name(path), source])

    def noted_versions(self) -> dict[str, tuple[int, int, bool, str]]:
        """``{path: (size, mtime_ns, other, ledger_path)}`` of the files ``watch`` noted as needing
        no analysis while the recording they name stays analysed: a moved or copied recording
        (``other`` False), or another recording under an analysed name (True); ``ledger_path``:
        where the ledger has that recording. Paths as stored (``safetext.stored_name``)."""
        rows = self.db.execute(
            "SELECT n.path, n.size, n.mtime_ns, 0, f.path FROM same_recordings n JOIN files f "
            "ON f.source = n.source AND f.state = 'done' UNION ALL "
            "SELECT n.path, n.size, n.mtime_ns, 1, f.path FROM other_recordings n JOIN files f "
            "ON f.source = n.source AND f.state = 'done'")
        return {path: (size, mtime_ns, bool(other), ledger) for path, size, mtime_ns, other, ledger in rows}

    def unreadable_dirs(self) -> dict[str, str]:
        """``{path: error}`` of the directories the last scan could not read."""
        return dict(self.db.execute("SELECT path, error FROM unreadable_dirs").fetchall())

    def set_unreadable_dirs(self, found: dict[str, str]) -> None:
        """Replace the list of directories the scan cannot read: ``{path: error}``; a directory
        already listed keeps the time it was first seen."""
        with self._write() as db:
            known = dict(db.execute("SELECT path, since_utc FROM unreadable_dirs").fetchall())
            db.execute("DELETE FROM unreadable_dirs")
            now = _now()
            db.conn.executemany("INSERT INTO unreadable_dirs (path, error, since_utc) VALUES (?, ?, ?)",
                                [(stored_name(p), shown(e), known.get(stored_name(p), now)) for p, e in found.items()])

    def insert_detections(self, detections: Iterable[Detection]) -> int:
        """Store detections of a live stream (no ledger row) in one transaction.

        A detection with the same source, start_s, label and bundle as a stored one replaces it.
        Returns the number of detections given.
        """
        now = _now()
        rows = [detection_row(d, now) for d in detections]
        if rows:
            with self._write() as db:
                db["detections"].insert_all(rows, replace=True)
        return len(rows)

    def replace_detections(self, source: str, bundle_id: str, detections: list[Detection],
                           duration_s: float | None = None, *, ledger_at: str | None = None) -> int | None:
        """Store ``bundle_id``'s detections of ``source`` in place of that bundle's earlier ones, in
        one transaction; other bundles' detections and the ledger are left alone (``reanalyse``).
        A detection found again unchanged keeps its row and id, so export cursors do not deliver it
        twice (a confidence or score moved by numeric noise alone counts as unchanged: see
        ``tables.NUMERIC_NOISE`` and ``CONFIDENCE_NOISE``); one found again with other values (confidence, end...) is a new row with a
        new id, so cursors deliver it (a cursor that passed it below a --min-confidence would
        otherwise never see it rise; a rise within the noise, 0.495 to 0.504, is not one), and its
        reviews follow it. The recording is recorded as
        analysed by ``bundle_id`` (``analyses``, with ``duration_s`` of audio read). Returns the
        number stored; None, storing nothing, when ``ledger_at`` is given and the recording's
        ledger row is no longer that one (``watch`` analysed it again meanwhile: the detections
        given are of the older recording). Raises ValueError if a detection names another source
        or bundle."""
        _check_detections(detections, source, bundle_id)
        now = _now()
        rows = [detection_row(d, now) for d in detections]
        with self._write() as db:
            ledger = db.execute("SELECT updated_at FROM files WHERE source = ?", [source]).fetchone()
            if ledger_at is not None and (ledger is None or ledger[0] != ledger_at):
                return None
            _replace_rows(db, source, bundle_id, rows)
            _mark_analysed(db, source, bundle_id, duration_s, now, ledger_at=None if ledger is None else ledger[0])
        return len(rows)

    def add_coverage(self, minutes: Iterable[CoverageMinute]) -> int:
        """Add seconds and counts to the coverage rows of a live stream, in one transaction.

        Rows are keyed by (source, minute_utc); a minute written twice sums its seconds and counts
        and keeps the later ``end_utc``. Returns the number of minutes given.
        """
        now = _now()
        rows = [coverage_row(m, now) for m in minutes]
        if rows:
            with self._write() as db:
                db.conn.executemany("""
                    INSERT INTO coverage (source, minute_utc, device_id, analysed_s, lost_overflow_s,
                        lost_dropped_s, lost_device_s, lost_daemon_s, overflows, dropped_blocks,
                        end_utc, clock_synced, updated_at)
                    VALUES (:source, :minute_utc, :device_id, :analysed_s, :lost_overflow_s,
                        :lost_dropped_s, :lost_device_s, :lost_daemon_s, :overflows, :dropped_blocks,
                        :end_utc, :clock_synced, :updated_at)
                    ON CONFLICT (source, minute_utc) DO UPDATE SET
                        analysed_s = analysed_s + excluded.analysed_s,
                        lost_overflow_s = lost_overflow_s + excluded.lost_overflow_s,
                        lost_dropped_s = lost_dropped_s + excluded.lost_dropped_s,
                        lost_device_s = lost_device_s + excluded.lost_device_s,
                        lost_daemon_s = lost_daemon_s + excluded.lost_daemon_s,
                        overflows = overflows + excluded.overflows,
                        dropped_blocks = dropped_blocks + excluded.dropped_blocks,
                        end_utc = max(end_utc, excluded.end_utc),
                        clock_synced = coalesce(excluded.clock_synced, clock_synced),
                        updated_at = excluded.updated_at""", rows)
        return len(rows)

    def coverage_end(self, source: str) -> str | None:
        """The latest instant of ``source`` accounted for in coverage (store time text), or None."""
        return self.db.execute("SELECT max(end_utc) FROM coverage WHERE source = ?", [source]).fetchone()[0]

    def set_clip_path(self, detection: Detection, clip_path: str | None) -> int:
        """Point the stored ``detection`` (found by its natural key) at its clip; rows changed."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE detections SET clip_path = ? WHERE source = ? AND start_s = ? AND label = ? "
                "AND bundle_id = ?", [clip_path, detection.source, detection.start_s, detection.label,
                                      detection.bundle_id])
        return cursor.rowcount

    def integrity_check(self) -> str:
        """'ok' when SQLite finds the file sound, else its findings, one per line."""
        return "\n".join(quick_check(self.db))

    def record_bundle(self, bundle_id: str, manifest: dict) -> bool:
        """Remember a bundle the daemon runs: its manifest (JSON) and each label's scientific and
        common name (NULL when the manifest's optional ``label_names`` does not give them), so
        exports can name species and check ``--min-confidence`` against ``confidence_max``.
        Recording a bundle again replaces its rows.

        Returns False, with a warning, when the database refuses the write (a full disk): the
        names only label exports, so the daemon starts and records anyway, and the next start
        records them.
        """
        names = label_names(manifest)
        labels = manifest.get("labels") if isinstance(manifest.get("labels"), list) else []
        rows = []
        for label in dict.fromkeys([*map(str, labels), *names]):   # manifest order, no repeats
            scientific, common = names.get(label, (None, None))
            rows.append({"bundle_id": bundle_id, "label": label, "scientific_name": scientific,
                         "common_name": common})
        try:
            with self._write() as db:
                db["bundles"].upsert({"bundle_id": bundle_id, "manifest": json.dumps(manifest, sort_keys=True),
                                      "recorded_at": _now()}, pk="bundle_id")
                db.execute("DELETE FROM labels WHERE bundle_id = ?", [bundle_id])
                if rows:
                    db["labels"].insert_all(rows)
        except sqlite3.OperationalError as e:
            log.warning("bundle %s not recorded in %s (exports will lack its label names): %s",
                        shown(bundle_id), shown(self.path), shown(e))
            return False
        return True

    def add_heartbeat(self, beat: Heartbeat) -> None:
        """Store one heartbeat row, in a transaction of its own."""
        with self._write() as db:
            db["heartbeats"].insert(heartbeat_row(beat))


def _mark_analysed(db: sqlite_utils.Database, source: str, bundle_id: str, duration_s: float | None, now: str,
                   ledger_at: str | None) -> None:
    """``source`` analysed by ``bundle_id`` while its ledger row's ``updated_at`` was ``ledger_at``
    (``schema.m014_analyses``), inside the caller's transaction."""
    db.execute("INSERT INTO analyses (source, bundle_id, duration_s, analysed_at, ledger_at) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (source, bundle_id) DO UPDATE SET duration_s = excluded.duration_s, "
               "analysed_at = excluded.analysed_at, ledger_at = excluded.ledger_at",
               [source, bundle_id, duration_s, now, ledger_at])


def _replace_rows(db: sqlite_utils.Database, source: str, bundle_id: str, rows: list[dict]) -> None:
    """``rows`` in place of ``bundle_id``'s stored detections of ``source``, inside the caller's
    transaction. A detection found again unchanged keeps its row and id (export cursors do not
    deliver it twice); one found again with other values becomes a new row, which cursors deliver,
    and its reviews follow it; one not found again is removed."""
    cursor = db.conn.execute("SELECT * FROM detections WHERE source = ? AND bundle_id = ?", [source, bundle_id])
    names = [c[0] for c in cursor.description]
    earlier = {(r["start_s"], r["label"]): r for r in (dict(zip(names, values)) for values in cursor)}
    again = {(r["start_s"], r["label"]) for r in rows}
    db.conn.executemany("DELETE FROM detections WHERE id = ?",
                        [(r["id"],) for key, r in earlier.items() if key not in again])
    for row in rows:
        old = earlier.get((row["start_s"], row["label"]))
        if old is not None and _found_again(old, row):
            continue   # found again as it was: same row, same id, the values first stored
        if old is not None:
            db.conn.execute("DELETE FROM detections WHERE id = ?", [old["id"]])
        columns = list(row)
        new_id = db.conn.execute(f"INSERT INTO detections ({', '.join(columns)}) "
                                 f"VALUES ({', '.join(':' + c for c in columns)})", row).lastrowid
        if old is not None:
            db.conn.execute("UPDATE reviews SET detection_id = ? WHERE detection_id = ?", [new_id, old["id"]])


def _found_again(old: dict, row: dict) -> bool:
    """Whether ``row`` is ``old`` derived again: every column alike, but the raw score only within
    ``NUMERIC_NOISE``, the calibrated confidence (that noise amplified) within ``CONFIDENCE_NOISE``,
    and the members' votes (the noise's source) not compared."""
    noise = {"score": NUMERIC_NOISE, "confidence": CONFIDENCE_NOISE}
    for column, value in row.items():
        if column in ("created_at", "votes"):
            continue
        if column in noise and None not in (value, old[column]):
            if abs(value - old[column]) > noise[column]:
                return False
        elif old[column] != value:
            return False
    return True


def _check_detections(detections: list[Detection], source: str, bundle_id: str) -> None:
    for d in detections:
        if d.source != source or d.bundle_id != bundle_id:
            raise ValueError(f"detection of {d.source!r} / bundle {d.bundle_id!r} "
                             f"committed as {source!r} / bundle {bundle_id!r}")


def _attempts_so_far(entry: dict | None, size: int, mtime_ns: int) -> int:
    """Attempts already made at this version (size and mtime) of the file."""
    if entry is None or (entry["size"], entry["mtime_ns"]) != (size, mtime_ns):
        return 0
    return entry["attempts"]
