"""The file name of each Raven selection table an export writes: as BirdNET names them,
'<stem>.BirdNET.selection.table.txt', one per recording (or per live clip), and never another's.

Two sites' recordings of one file name share a stem (compared in lower case: 'ABC' and 'abc' are
one file on FAT, exFAT, Windows and macOS). The table of that plain name belongs to
whichever recording's rows it holds (its last selection's ``Begin Path``); in a directory without
it, to the recording the database met first (the ledger's order, then the detections'). The others
get a hash of their source added. So a recording met later never renames a table a cursor export
appends to, never writes into another's (a recording re-processed to nothing still owns its
table), and a table an earlier edgemon named with a hash is kept. A name that would pass
``MAX_NAME_BYTES`` is shortened and hashed.

Whose tables a directory holds (one recorder's, one cursor's): ``raven_owner``.
"""

from __future__ import annotations

import csv
import hashlib
import re
import sqlite3
from collections import Counter
from pathlib import Path, PurePosixPath

from edgemon.errors import EdgemonError
from edgemon.storage import tables
from edgemon.storage.readonly import table_columns

MAX_NAME_BYTES = 143   # eCryptfs's limit; ext4 and exFAT allow 255
HASH_CHARS = 8
_TAIL_BYTES = 1 << 16  # enough for a table's last selection
_BEGIN_PATH = tables.RAVEN_COLUMNS.index("Begin Path")


def raven_table(conn: sqlite3.Connection) -> str:
    """SQL naming the Raven table a detection goes to: its source's, or, for a live detection with
    a saved clip and its offset in it, the clip's (Raven opens the clip, and the table's seconds
    are the clip's; ``tables.audio_file`` gives the same file). A database older than
    ``clip_offset_s`` has no such rows."""
    if not {"clip_path", "clip_offset_s"} <= table_columns(conn, "detections"):
        return "d.source"
    # The rule of ``tables.audio_file``, in SQL (so that SQLite orders the rows by table): keep in step.
    return ("CASE WHEN coalesce(f.path, '') = '' AND coalesce(d.clip_path, '') != '' AND d.clip_offset_s IS NOT NULL "
            "THEN d.clip_path ELSE d.source END")


def raven_names(conn: sqlite3.Connection, out_dir: Path, error: type[EdgemonError]) -> dict[str, str]:
    """Selection table file name of every source (or clip: ``raven_table``) with detections,
    taken over all of them, not only those exported, so a source keeps its name whatever the
    filters. Raises ``error`` when the database cannot be read."""
    try:
        keyed = conn.execute(
            f"SELECT {raven_table(conn)} AS t, min(f.path), min(f.rowid) AS ledger, min(d.id) AS first "
            f"FROM detections d LEFT JOIN files f ON f.source = d.source GROUP BY t").fetchall()
        quiet = conn.execute("SELECT source, path, rowid FROM files WHERE NOT EXISTS "
                             "(SELECT 1 FROM detections d WHERE d.source = files.source)").fetchall()
    except sqlite3.Error as e:
        raise error(f"cannot read detections: {e}") from e
    # Every recording's Begin Path and place in the order; those without detections own their tables too.
    begin = {t: path or t for t, path, _, _ in keyed} | {source: path or source for source, path, _ in quiet}
    order = sorted([(ledger is None, ledger or 0, first or 0, t) for t, _, ledger, first in keyed]
                   + [(False, rowid, 0, source) for source, _, rowid in quiet])
    exported = {t for t, _, _, _ in keyed}
    stem = {key: _safe_name(PurePosixPath(key).stem) for *_, key in order}
    groups: dict[str, list[str]] = {}
    for *_, key in order:   # by the stem's lower case: 'ABC' and 'abc' are one file on FAT, exFAT, Windows, macOS
        groups.setdefault(stem[key].lower(), []).append(key)
    names = {}
    for keys in groups.values():
        plain = {k: stem[k] + tables.RAVEN_SUFFIX for k in keys}
        hashed = {k: _hashed(k, HASH_CHARS) for k in keys}
        fits = [k for k in keys if len(plain[k]) <= MAX_NAME_BYTES]
        if len(keys) == 1:
            holder = fits[0] if fits else None
        else:   # one whose hashed table is there goes on in it (an earlier edgemon hashed every shared stem)
            fits = [k for k in fits if not (out_dir / hashed[k]).exists()]
            owner = {k: _last_begin_path(out_dir / plain[k]) for k in fits}   # one file or several, as the disk has it
            paths = {tables.cell(begin[k]) for k in keys}
            holder = next((k for k in fits if owner[k] == tables.cell(begin[k])), None)
            if holder is None:   # no table yet, or its recording's path is not known now (moved)
                holder = next((k for k in fits if owner[k] not in paths), None)
        for k in keys:
            if k in exported:
                names[k] = plain[k] if k == holder else hashed[k]
    taken = Counter(name.lower() for name in names.values())
    for key, name in names.items():   # a hashed name that met another source's own name
        if taken[name.lower()] > 1 and name != stem[key] + tables.RAVEN_SUFFIX:
            names[key] = _hashed(key, len(_digest(key)))
    return names


def _hashed(key: str, chars: int) -> str:
    """``key``'s table name with ``chars`` hex digits of its digest, its stem shortened to fit."""
    room = MAX_NAME_BYTES - len(tables.RAVEN_SUFFIX)
    return f"{_safe_name(PurePosixPath(key).stem)[:room - chars - 1]}.{_digest(key)[:chars]}{tables.RAVEN_SUFFIX}"


def _last_begin_path(table: Path) -> str | None:
    """The ``Begin Path`` of the last selection of the Raven table at ``table``; None when there
    is no such file or it holds no selection."""
    try:
        with open(table, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
            lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return None
    if not lines or lines[-1].split("\t", 1)[0] == tables.RAVEN_COLUMNS[0]:
        return None
    fields = next(csv.reader([lines[-1]], delimiter="\t"))
    return fields[_BEGIN_PATH] if len(fields) > _BEGIN_PATH else None


def _digest(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()


def _safe_name(stem: str) -> str:
    """``stem`` with characters FAT/exFAT cards or Windows refuse (':' of 'live:mic0') as '_'.
    ASCII only, so its length is its length in bytes."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "source"
