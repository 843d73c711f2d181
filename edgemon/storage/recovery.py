"""A corrupt detections database at start must not stop a recorder nobody will visit for months.

``open_or_recover`` checks the file with SQLite's ``quick_check`` before opening it. A file that
is corrupt (or not a database at all) is moved aside, with its WAL and shared-memory files,
under a name that says when; a clear log line says where it went and how to salvage it; a fresh
database is created and the daemon runs on, re-deriving every detection from the recordings
(the ledger is empty again). Nothing is deleted. Errors that are not corruption (permissions,
I/O errors of a failing card, a lock) are not "repaired": they raise ``StoreError``; nor is a file
that is plainly something else (a recording, an export: ``--db`` given the wrong path), which is
refused and left where it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
from pathlib import Path

from edgemon.safetext import shown
from edgemon.storage.disk_budget import full_disk_note
from edgemon.storage.readonly import BUSY_TIMEOUT_MS, connect_read_only, error_code, has_table, quick_check
from edgemon.storage.store import Store, StoreError

log = logging.getLogger(__name__)

# Primary result codes that mean "the bytes are wrong", as opposed to "cannot get at them".
CORRUPTION_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
COMPANIONS = ("-wal", "-shm", "-journal")
# What a file is when --db names the wrong one: a recording, an export, a document. A damaged
# database keeps its own name (detections.db), and flash that fails leaves zeros or noise.
OTHER_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".csv", ".tsv", ".txt", ".json", ".jsonl",
                  ".xml", ".yaml", ".yml", ".toml", ".conf", ".ini", ".pdf", ".png", ".jpg", ".jpeg", ".zip", ".gz",
                  ".onnx", ".py", ".sh", ".md", ".html"}
OTHER_MAGIC = {b"RIFF": "a WAV recording", b"fLaC": "a FLAC recording", b"OggS": "an Ogg recording",
               b"ID3": "an MP3 recording", b"PK\x03\x04": "a zip archive", b"%PDF": "a PDF document",
               b"\x89PNG": "a PNG image", b"\x1f\x8b": "a gzip archive"}


def corruption(path: str | Path) -> str | None:
    """What ``quick_check`` finds wrong with the database at ``path``; None when it is sound or
    absent. Raises ``StoreError`` for errors that are not corruption."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        findings = _quick_check(path, read_only=True)
    except sqlite3.DatabaseError as e:
        if error_code(e) != sqlite3.SQLITE_READONLY:
            return _corrupt_or_raise(path, e)
        # A hot journal (a kill while the database was being created, before WAL) or a WAL index
        # to rebuild: ordinary crash recovery, which needs write access. Let SQLite do it.
        try:
            findings = _quick_check(path, read_only=False)
        except sqlite3.DatabaseError as e2:
            return _corrupt_or_raise(path, e2)
    return None if findings == ["ok"] else "; ".join(findings[:5]) + (" ..." if len(findings) > 5 else "")


def _quick_check(path: Path, read_only: bool) -> list[str]:
    # Read-only first: a read-write connection would checkpoint the WAL into the damaged file, or
    # delete a WAL it cannot use, as it closes; the evidence must be moved aside untouched.
    try:
        conn = connect_read_only(path) if read_only else sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open detections database {shown(path)}: {shown(e)}") from e
    try:
        return quick_check(conn)
    finally:
        conn.close()


def _corrupt_or_raise(path: Path, e: sqlite3.DatabaseError) -> str:
    """The finding when ``e`` says the bytes are wrong; StoreError for anything else."""
    if error_code(e) in CORRUPTION_CODES:
        return str(e)
    raise StoreError(f"cannot check detections database {shown(path)}: {shown(e)}{full_disk_note(path)}") from e


def move_aside(path: str | Path, now: dt.datetime | None = None) -> Path:
    """Rename the database and its companion files to ``NAME.corrupt-YYYYMMDDTHHMMSSZ[-wal]``;
    returns the new name of the database. Never overwrites: a clash gets a counter."""
    path = Path(path)
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(str(aside) + s).exists() for s in ("",) + COMPANIONS):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in COMPANIONS:
        companion = Path(str(path) + suffix)
        if companion.exists():
            companion.rename(str(aside) + suffix)
    path.rename(aside)
    return aside


def plainly_another_file(path: Path) -> str | None:
    """What the file at ``path`` plainly is when it is not a database (by its first bytes or its
    name), else None: a damaged database, or no file."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"SQLite format 3\0"):
        return None
    for magic, what in OTHER_MAGIC.items():
        if head.startswith(magic):
            return what
    return f"a {path.suffix} file" if path.suffix.lower() in OTHER_SUFFIXES else None


def refuse_another_file(path: str | Path) -> None:
    """``StoreError`` when ``path`` is plainly no database (a recording, a CSV given as --db). A
    daemon asks before it takes the database's lock, which would leave a lock file beside it (a
    newcomer trial: ``card/20240101_053000.WAV.lock`` on a recorder's card, after "nothing was
    changed")."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:   # no file, or an empty one: SQLite makes the database in it
            return
    except OSError:
        return
    other = plainly_another_file(path)   # its first bytes and name: no check of a sound database's pages
    if other is not None:
        raise StoreError(f"{shown(path)}: {other}, not a detections database; nothing was changed: "
                         f"give --db the database's path (such as detections.db)")


def open_or_recover(path: str | Path) -> Store:
    """The ``Store`` at ``path``; a corrupt file is first moved aside and a fresh one created. A
    file that is plainly no database is refused (``StoreError``), untouched."""
    path = Path(path)
    found = corruption(path)
    if found is not None:
        refuse_another_file(path)
        was = _own_id(path)
        aside = move_aside(path)
        log.error("detections database %s is corrupt (%s); moved it aside to %s and started a fresh one. "
                  "Every recording will be analysed again. Nothing was deleted; to salvage old rows: "
                  "sqlite3 %s .recover | sqlite3 salvaged.db", shown(path), shown(found), shown(aside), shown(aside))
        left = left_behind(aside)
        if left:
            log.error("%s holds %s that the fresh database does not have: `edgemon review --db %s --export "
                      "verdicts.csv` lists its verdicts; export cursors start again (a cursor's file is not "
                      "given the rows it holds twice)", shown(aside), left, shown(aside))
        store = Store(path)
        with store.db.conn:
            if was is not None:
                # The same recorder's database: what keys an output to one database (a Raven directory's
                # owner note) takes it for its predecessor (a newcomer trial: refused for good under
                # the default device id, by a message naming the one path as two databases).
                store.db.execute("INSERT OR REPLACE INTO sync_meta (key, value) VALUES ('rebuilt_from', ?)", [was])
            # `edgemon status` names it while the file is there (it said "problems: none").
            store.db.execute("INSERT OR REPLACE INTO sync_meta (key, value) VALUES ('moved_aside', ?)",
                             # resolved: status may run from another directory (the default db is relative)
                             [json.dumps({"path": str(aside.resolve()), "found": found, "left": left})])
        return store
    return Store(path)


def left_behind(aside: Path) -> str:
    """What of a reviewer's or an export's a database moved aside still holds, in words ("50
    verdict(s) and 1 export cursor(s)"), as far as its damaged pages can be read; "" for none."""
    said = []
    for table, what in (("reviews", "verdict(s)"), ("export_cursors", "export cursor(s)")):
        try:
            with contextlib.closing(connect_read_only(aside, timeout_s=1.0)) as conn:
                if not has_table(conn, table):
                    continue
                (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        except sqlite3.Error:
            said.append(f"{what[:-3]}s, maybe (its {table} table cannot be read)")
            continue
        if count:
            said.append(f"{count} {what}")
    return " and ".join(said)


def _own_id(path: Path) -> str | None:
    """The corrupt database's own id (``sync_meta.db_uuid``) where it can still be read, else None."""
    try:
        with contextlib.closing(connect_read_only(path, timeout_s=1.0)) as conn:
            row = conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])
