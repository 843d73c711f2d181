"""The detections database for readers beside the daemon (export, status, the review page, the
health probe, ``edgemon-train adapt``): connections that can never create, alter, checkpoint or
write-lock it, SQLite's integrity check, the time filter readers share, and the reviewed
detections. The one edgemon.storage module that the training side may import."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from contextlib import closing
from pathlib import Path

from edgemon.errors import AudioError, EdgemonError
from edgemon.safetext import name_from_stored
from edgemon.storage.disk_budget import full_disk_note
from edgemon.storage.fingerprint import not_analysed_as

BUSY_TIMEOUT_MS = 30_000   # how long a reader (and the store's writer) waits out another's lock


class ReadError(EdgemonError):
    """The detections database is missing or cannot be read."""


def latest_verdicts(table: str = "reviews") -> str:
    """SQL of the latest verdict per detection (natural key) in ``table``: a reviewer may change
    their mind. ``main.reviews`` names the table where a statement's ``WITH reviews`` shadows it."""
    return f"""
    SELECT * FROM (
        SELECT r.*, row_number() OVER (PARTITION BY source, start_s, label, bundle_id
                                       ORDER BY reviewed_at DESC, id DESC) AS nth
        FROM {table} r)
    WHERE nth = 1"""


LATEST_VERDICTS = latest_verdicts()


def error_code(e: sqlite3.Error) -> int:
    """SQLite's primary result code of ``e`` (SQLITE_BUSY, SQLITE_CORRUPT...); 0 when it has none."""
    return getattr(e, "sqlite_errorcode", 0) & 0xFF


def connect_read_only(path: Path, timeout_s: float = BUSY_TIMEOUT_MS / 1000, **options) -> sqlite3.Connection:
    """A connection that can never create, alter, checkpoint or write-lock the database at ``path``
    (``mode=ro``): for readers beside the daemon (export, status, the health probe, the corruption
    check). Waits out a writer's lock like the store does, unless told otherwise. Where ``mode=ro``
    cannot open it because the WAL's shared-memory file cannot be made beside it (a database
    copied onto read-only storage) and nothing can be changing it (``frozen``), it is opened
    ``immutable``."""
    uri = Path(path).resolve().as_uri()
    conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=timeout_s, **options)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.OperationalError as e:
        code = error_code(e)
        # CANTOPEN on a read-only mount; READONLY (_DIRECTORY) where this user may not write the
        # directory. Either is read immutable when nothing can be changing it (``frozen``).
        if code not in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY):
            return conn   # the caller's first query meets the same error, as it always did
        if not frozen(Path(path)):
            if code == sqlite3.SQLITE_READONLY and not os.access(Path(path).resolve().parent, os.W_OK):
                # Another user's database (the service's, read by an admin): its owner may be
                # writing, so it is not read immutable; one line says how to read it instead.
                conn.close()
                raise sqlite3.OperationalError(_not_this_users(Path(path))) from e
            return conn
        conn.close()
        return sqlite3.connect(uri + "?immutable=1", uri=True, timeout=timeout_s, **options)
    except sqlite3.Error:
        pass
    return conn


def frozen(path: Path) -> bool:
    """Nothing can be changing the database at ``path``: no WAL with changes not yet in the file,
    nor a journal to roll back, lies beside it (``immutable`` would not read them), and no one
    can start writing it: it lies on a file system mounted read-only (a card or copy), or it is
    this user's own database in a directory this user may not write. (Another user's database
    in a directory this user may not write is not frozen: its owner may be writing it, and an
    immutable reader would see stale or torn pages: found by a review.)"""
    path = path.resolve()
    wal, journal = (path.with_name(path.name + suffix) for suffix in ("-wal", "-journal"))
    try:
        read_only_mount = bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
        own_and_closed = path.stat().st_uid == os.geteuid() and not os.access(path.parent, os.W_OK)
    except OSError:
        return False
    return ((read_only_mount or own_and_closed) and (not wal.exists() or wal.stat().st_size == 0)
            and not journal.exists())


def _not_this_users(path: Path) -> str:
    """Why another user's database cannot be read here, and what to do."""
    try:
        uid = path.resolve().stat().st_uid
    except OSError:
        uid = None
    try:
        owner = pwd.getpwuid(uid).pw_name if uid is not None else None
    except KeyError:
        owner = f"'#{uid}'"   # no account: sudo takes the number
    how = f"read it as {owner} (sudo -u {owner} edgemon ...)" if owner else "read it as its owner"
    return (f"SQLite keeps the database's shared-memory file beside it, and this user may not write "
            f"{path.resolve().parent}: {how}, or a copy of it")


def open_read_only(db_path: Path, error: type[EdgemonError] = ReadError) -> sqlite3.Connection:
    """A read-only connection (``connect_read_only``) to the existing SQLite file ``db_path``,
    rows as ``sqlite3.Row``. Raises ``error`` (the caller's own class, so its command names the
    failure): 'detections database not found: PATH' or 'cannot read detections database PATH: WHY'
    (a file that is not SQLite fails here, not at the first query)."""
    if not Path(db_path).is_file():
        raise error(f"detections database not found: {db_path}")
    conn = None
    try:
        conn = connect_read_only(db_path)
        conn.row_factory = sqlite3.Row
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        raise error(f"cannot read detections database {db_path}: {e}{full_disk_note(db_path)}") from e
    return conn


def edgemon_tables(conn: sqlite3.Connection, db_path: Path, error: type[EdgemonError] = ReadError,
                   said: str = "") -> set[str]:
    """The table names of the database open on ``conn``; ``error`` ('PATH: not an edgemon
    database (no detections table)' and ``said``) when it is another tool's SQLite file."""
    found = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "detections" not in found:
        raise error(f"{db_path}: not an edgemon database (no detections table){said}")
    return found


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the database open on ``conn`` holds table ``name`` (one an older edgemon's lacks)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


def analyses_table(conn: sqlite3.Connection) -> str:
    """SQL of the table of what each bundle analysed (``source, bundle_id, duration_s``): ``analyses``,
    or in a database from before it (one no edgemon since has opened to write), what its migration
    (``schema.m014_analyses``) fills it with: the ledger's bundle of each recording, and each
    bundle with detections of it (audio read unknown: NULL). The charts and the recordings export
    of a bundle count the same effort."""
    if has_table(conn, "analyses"):
        return "analyses"
    return ("(SELECT source, bundle_id, max(duration_s) AS duration_s FROM (SELECT source, bundle_id, "
            "duration_s FROM files WHERE bundle_id IS NOT NULL UNION ALL SELECT DISTINCT source, bundle_id, "
            "NULL FROM detections WHERE bundle_id IS NOT NULL) GROUP BY source, bundle_id)")


def table_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The columns table ``table`` has on ``conn`` (one an older edgemon made lacks the newer)."""
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def quick_check(conn) -> list[str]:
    """SQLite's ``quick_check`` findings on ``conn`` (a ``sqlite3.Connection`` or sqlite-utils
    ``Database``): ``['ok']`` when the file is sound. Raises ``sqlite3.DatabaseError`` when the
    file cannot even be checked."""
    return [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]


def time_range(column: str, since: str | None, until: str | None) -> tuple[list[str], list[str]]:
    """SQL conditions ``since <= column < until`` and their parameters, for store UTC text (fixed
    width, so comparing text compares times; a NULL time never passes); no bound, no condition."""
    clauses, params = [], []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since)
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until)
    return clauses, params


# Two bundles' detections are one sound when they share at least this much of the shorter one:
# any overlap made neighbours one sound, since adjacent events share a frame or two at their edge
# (a newcomer trial: a verdict shown on, and taught for, the sound beside the one judged). A
# quarter still joins a re-analysed event shifted by a hop (2 s of a 4-s event share half).
SAME_SOUND_SHARE = 0.25


def same_sound(a_start: float, a_end: float, b_start: float, b_end: float) -> bool:
    """Whether spans a and b of one recording are one sound (``SAME_SOUND_SHARE``)."""
    shared = min(a_end, b_end) - max(a_start, b_start)
    return shared > 0 and shared >= SAME_SOUND_SHARE * min(a_end - a_start, b_end - b_start)


def reviewed(db_path: Path) -> list[dict]:
    """The latest verdict on every reviewed detection, with the detection's end and the ledger's
    path of its recording (for ``edgemon-train adapt``), oldest first; none from a database that
    was never reviewed. Raises ``ReadError``."""
    with closing(open_read_only(db_path)) as conn:
        edgemon_tables(conn, db_path)   # another tool's file said "no judged review yet" (a trial)
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'reviews'").fetchone() is None:
                return []
            rows = conn.execute(f"""
                SELECT v.*, d.end_s, d.confidence, {ledger_columns(conn)}, f.source AS file_source
                FROM ({LATEST_VERDICTS}) v
                LEFT JOIN detections d ON d.source = v.source AND d.start_s = v.start_s
                     AND d.label = v.label AND d.bundle_id = v.bundle_id
                LEFT JOIN files f ON f.source = v.source
                ORDER BY v.reviewed_at, v.id""").fetchall()
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the reviews of {db_path}: {e}") from e
    return [dict(r) for r in rows]


def review_spans(db_path: Path, ids) -> dict[int, tuple[str, float, float | None]]:
    """Each of the reviews ``ids`` still stored: its recording, its start and its detection's end
    (None when that detection is no longer stored), whichever bundle's detection it judged (for
    ``edgemon-train adapt``: the sounds an adapted bundle was fitted on). Raises ``ReadError``."""
    with closing(open_read_only(db_path)) as conn:
        try:
            if not has_table(conn, "reviews"):
                return {}
            rows = conn.execute("""
                SELECT r.id, r.source, r.start_s, d.end_s FROM reviews r
                LEFT JOIN detections d ON d.source = r.source AND d.start_s = r.start_s
                     AND d.label = r.label AND d.bundle_id = r.bundle_id
                WHERE r.id IN (SELECT value FROM json_each(?))""", [json.dumps(sorted(set(ids)))]).fetchall()
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the reviews of {db_path}: {e}") from e
    return {r["id"]: (r["source"], r["start_s"], r["end_s"]) for r in rows}


def stored_bundles(db_path: Path) -> list[str]:
    """The ids of the bundles whose detections the database holds. Raises ``ReadError``, also for
    another tool's SQLite file."""
    with closing(open_read_only(db_path)) as conn:
        edgemon_tables(conn, db_path)
        try:
            return [r[0] for r in conn.execute("SELECT DISTINCT bundle_id FROM detections ORDER BY bundle_id")]
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the detections of {db_path}: {e}") from e


def ledger_columns(conn: sqlite3.Connection) -> str:
    """SQL of the ledger's columns that find a detection's recording and tell it from another
    of its name (``recording_path``), over ``files f``; a database older than fingerprints gives
    NULL for them."""
    kept = table_columns(conn, "files")
    digest = "f.fingerprint" if "fingerprint" in kept else "NULL"
    tail = "f.tail_digest" if "tail_digest" in kept else "NULL"
    return f"f.path AS file_path, f.size AS file_size, {digest} AS file_fingerprint, {tail} AS file_tail_digest"


def recording_path(row: dict, recordings: Path | None, grown_ok: bool = True) -> Path | None:
    """Where the detection's recording is: under ``recordings`` by its source name (a database
    copied off the recorder) or by the end of the ledger's path, else the ledger's path; None if
    none exists. A file there that
    is not the recording analysed (shorter, other audio: another recorder's file of the same
    name, or larger unless ``grown_ok``) is passed over: ``AudioError`` says why when no file is
    left. ``row``: ``source`` and the ledger's ``file_path``, ``file_size``, ``file_fingerprint``
    and ``file_tail_digest``."""
    candidates = []
    # Names are stored as text (``safetext.stored_name``): a Latin-1 card's 'caf\\xe9.WAV', a
    # backslash doubled. Joined as stored they named no file, and such recordings were "no longer
    # on disk" to reanalyse and "not found" to the review page.
    source = name_from_stored(row["source"])
    file_path = name_from_stored(row["file_path"]) if row.get("file_path") else None
    # A source is a name under the watched directory; one that leaves it ('../x', '/etc/x': a
    # database written by hand or by another program) would serve any file from --recordings.
    if recordings is not None and _stays_under(source):
        candidates.append(Path(recordings) / source)
    if recordings is not None and file_path:
        # A recording watch followed (moved into a folder, renamed, converted to FLAC) keeps its
        # source name, and its ledger path names the card where it was: on a copy of the card
        # it is found by the end of that path, the longest that exists first (a review: every
        # followed recording was "missing" under --recordings). The checks below tell it apart.
        parts = Path(file_path).parts[1:]
        candidates += [Path(recordings, *parts[i:]) for i in range(len(parts))]
    if file_path:
        candidates.append(Path(file_path))
    refused, seen = [], set()
    for path in candidates:
        # the source name, the ledger path's end and the ledger path may be one file (a relative
        # --recordings and the ledger's absolute path too): judged and named once
        if not path.is_file() or (real := os.path.realpath(path)) in seen:
            continue
        seen.add(real)
        why = not_analysed_as({"size": row.get("file_size"), "fingerprint": row.get("file_fingerprint"),
                               "tail_digest": row.get("file_tail_digest")}, path, grown_ok)
        if why is None:
            return path
        refused.append(why)
    if refused:
        raise AudioError(f"{row['source']}: not the recording analysed: {'; '.join(refused)}")
    return None


def _stays_under(source: str) -> bool:
    """Whether the relative name ``source`` names a path inside the directory it is joined to."""
    normal = os.path.normpath(source)
    return not os.path.isabs(source) and normal != ".." and not normal.startswith("../")


def sources_in_several_bundles(db_path: Path) -> int:
    """How many recordings (sources) hold detections of more than one bundle (``reanalyse``
    stores a second bundle's beside the first): views over every bundle count their sounds once
    per bundle. Raises ``ReadError``."""
    with closing(open_read_only(db_path)) as conn:
        try:
            return conn.execute("SELECT count(*) FROM (SELECT source FROM detections GROUP BY source "
                                "HAVING count(DISTINCT bundle_id) > 1)").fetchone()[0]
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the detections of {db_path}: {e}") from e


def recordings_analysed_by(db_path: Path, bundle_ids: list[str]) -> list[tuple[str, int, int]]:
    """For each of ``bundle_ids``: how many of the ledger's finished recordings it analysed as
    they now are (``analyses``, its ``ledger_at`` the row's ``updated_at``: a recording that grew
    and watch analysed again holds this bundle's calls of the shorter one, a review), and how many
    there are; nothing for a database from before that table. Raises ``ReadError``."""
    with closing(open_read_only(db_path)) as conn:
        try:
            if not has_table(conn, "analyses"):
                return []
            finished = conn.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0]
            return [(bundle_id, conn.execute("SELECT count(*) FROM analyses a JOIN files f ON f.source = a.source "
                                             "WHERE a.bundle_id = ? AND f.state = 'done' AND a.ledger_at = f.updated_at",
                                             [bundle_id]).fetchone()[0],
                     finished) for bundle_id in bundle_ids]
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the ledger of {db_path}: {e}") from e


def sources_analysed_by(db_path: Path, bundle_id: str) -> set[str] | None:
    """The recordings ``bundle_id`` analysed (``analyses``), or None for a database from before
    that table (it cannot tell). Raises ``ReadError``."""
    with closing(open_read_only(db_path)) as conn:
        try:
            if not has_table(conn, "analyses"):
                return None
            return {r[0] for r in conn.execute("SELECT source FROM analyses WHERE bundle_id = ?", [bundle_id])}
        except sqlite3.Error as e:
            raise ReadError(f"cannot read the analyses of {db_path}: {e}") from e


def newest_device_id(path: Path) -> str | None:
    """The device id of the newest heartbeat, detection or live coverage minute stored in the
    database at ``path``, or None when it holds none (a quiet listener's coverage alone took any
    --device-id, and its hours left the fleet's effort tables)."""
    with closing(connect_read_only(path)) as conn:
        for table in ("heartbeats", "detections", "coverage"):
            try:
                row = conn.execute(f"SELECT device_id FROM {table} ORDER BY rowid DESC LIMIT 1").fetchone()
            except sqlite3.OperationalError:  # a database from before that table, or not edgemon's
                continue
            if row is not None:
                return row[0]
        return None


def database_uuid(db_path: Path) -> str | None:
    """The database's own id (``sync_meta.db_uuid``; a copy keeps it until it syncs as a new
    lineage), or None for a database without one."""
    with closing(open_read_only(db_path)) as conn:
        try:
            row = conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()
        except sqlite3.Error:
            return None
    return None if row is None else str(row[0])
