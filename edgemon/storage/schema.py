"""The detections database's schema: versioned migrations, applied in order by ``Store``.

Plain DDL, so the constraints are visible. The migration set keeps the name every database
records it under ("edgemon.store", from before the move into edgemon/storage/); a new table or
column is a new migration.
"""

from __future__ import annotations

import uuid

import sqlite_utils
from sqlite_utils import Migrations

TIME_SOURCES = ("filename", "metadata", "mtime", "host_clock")
FILE_STATES = ("done", "failed", "quarantined")

MIGRATIONS = Migrations("edgemon.store")   # stored in every database: a name, not the module path


def newer_migrations(db: sqlite_utils.Database) -> list[str]:
    """Migrations a database records that this edgemon does not know: it was written by a newer
    one (sqlite-utils passes over them, and a write here would bypass what they changed)."""
    known = {m.name for m in MIGRATIONS._migrations}   # sqlite-utils lists them nowhere public
    return [m.name for m in MIGRATIONS.applied(db) if m.name not in known]


@MIGRATIONS()
def m001_initial(db: sqlite_utils.Database) -> None:
    """Ledger, detections and export cursors. Plain DDL, so the constraints are visible."""
    time_sources = ", ".join(f"'{t}'" for t in TIME_SOURCES)
    states = ", ".join(f"'{s}'" for s in FILE_STATES)
    db.execute(f"""
        CREATE TABLE files (
            source TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN ({states})),
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            duration_s REAL,
            start_utc TEXT,
            time_source TEXT CHECK (time_source IN ({time_sources})),
            clock_suspect INTEGER CHECK (clock_suspect IN (0, 1)),
            bundle_id TEXT,
            updated_at TEXT NOT NULL
        )""")
    # AUTOINCREMENT: ids are never reused after a delete, so an export cursor ("id > last_id")
    # sees re-processed detections again instead of mistaking them for rows already exported.
    db.execute(f"""
        CREATE TABLE detections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            source TEXT NOT NULL,
            start_s REAL NOT NULL,
            end_s REAL NOT NULL,
            start_utc TEXT,
            end_utc TEXT,
            time_source TEXT NOT NULL CHECK (time_source IN ({time_sources})),
            clock_suspect INTEGER NOT NULL CHECK (clock_suspect IN (0, 1)),
            label TEXT NOT NULL,
            confidence REAL NOT NULL,
            votes TEXT,
            bundle_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (source, start_s, label, bundle_id)
        )""")
    db.execute("CREATE INDEX detections_start_utc ON detections (start_utc)")
    db.execute("CREATE INDEX detections_label ON detections (label)")
    db.execute("""
        CREATE TABLE export_cursors (
            name TEXT PRIMARY KEY,
            last_id INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )""")


@MIGRATIONS()
def m002_live_coverage(db: sqlite_utils.Database) -> None:
    """Live streams: per-minute coverage, and a detection's clip and host-clock synchronisation.
    Additive only: existing rows get NULL in the new columns."""
    db.execute("""
        CREATE TABLE coverage (
            source TEXT NOT NULL,
            minute_utc TEXT NOT NULL,
            device_id TEXT NOT NULL,
            analysed_s REAL NOT NULL DEFAULT 0,
            lost_overflow_s REAL NOT NULL DEFAULT 0,
            lost_dropped_s REAL NOT NULL DEFAULT 0,
            lost_device_s REAL NOT NULL DEFAULT 0,
            lost_daemon_s REAL NOT NULL DEFAULT 0,
            overflows INTEGER NOT NULL DEFAULT 0,
            dropped_blocks INTEGER NOT NULL DEFAULT 0,
            end_utc TEXT NOT NULL,
            clock_synced INTEGER CHECK (clock_synced IN (0, 1)),
            updated_at TEXT NOT NULL,
            PRIMARY KEY (source, minute_utc)
        )""")
    db.execute("CREATE INDEX coverage_minute_utc ON coverage (minute_utc)")
    db.execute("ALTER TABLE detections ADD COLUMN clip_path TEXT")
    db.execute("ALTER TABLE detections ADD COLUMN clock_synced INTEGER CHECK (clock_synced IN (0, 1))")


@MIGRATIONS()
def m003_heartbeats(db: sqlite_utils.Database) -> None:
    """Heartbeats of the daemon (see ``Heartbeat``). Additive only."""
    db.execute("""
        CREATE TABLE heartbeats (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            mode TEXT NOT NULL,
            device_id TEXT NOT NULL,
            at_utc TEXT NOT NULL,
            started_utc TEXT NOT NULL,
            uptime_s REAL NOT NULL,
            state TEXT NOT NULL,
            bundle_id TEXT,
            files_done INTEGER NOT NULL DEFAULT 0,
            audio_s REAL NOT NULL DEFAULT 0,
            busy_s REAL NOT NULL DEFAULT 0,
            disk_free_mb REAL,
            rss_mb REAL,
            note TEXT
        )""")
    db.execute("CREATE INDEX heartbeats_at_utc ON heartbeats (at_utc)")


@MIGRATIONS()
def m004_named_cursors_and_bundles(db: sqlite_utils.Database) -> None:
    """Export cursors tied to their filter; the bundles the daemon ran and their label names; an
    index for per-species-over-time queries.

    A cursor's ``filter`` is canonical JSON (see ``edgemon.storage.cursors.CursorFilter``); NULL marks a
    cursor from before filters were stored, which its next export adopts. ``last_id`` is the
    highest detection id the cursor has examined under its filter, ``exported_at`` its last
    export (also one that found nothing new), ``delivered`` the rows it has delivered in all.
    """
    db.execute("ALTER TABLE export_cursors ADD COLUMN filter TEXT")
    db.execute("ALTER TABLE export_cursors ADD COLUMN exported_at TEXT")
    db.execute("ALTER TABLE export_cursors ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0")
    db.execute("""
        CREATE TABLE bundles (
            bundle_id TEXT PRIMARY KEY,
            manifest TEXT NOT NULL,
            recorded_at TEXT NOT NULL
        )""")
    db.execute("""
        CREATE TABLE labels (
            bundle_id TEXT NOT NULL,
            label TEXT NOT NULL,
            scientific_name TEXT,
            common_name TEXT,
            PRIMARY KEY (bundle_id, label)
        )""")
    # "One species over time" (a daily per-species summary) reads this index alone.
    db.execute("CREATE INDEX detections_label_start_utc ON detections (label, start_utc)")


@MIGRATIONS()
def m005_attempts_and_unreadable(db: sqlite_utils.Database) -> None:
    """Crash accounting and scan problems. Additive only.

    ``in_progress``: one row per file being analysed, committed before the work starts and
    removed with the file's result; a row found at the next attempt means the run died while the
    file was in progress (``interrupted`` counts such deaths in a row, for this size and mtime).
    ``unreadable_dirs``: directories under the watched one that the scan cannot read now.
    """
    db.execute("""
        CREATE TABLE in_progress (
            source TEXT PRIMARY KEY,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            started_utc TEXT NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0
        )""")
    db.execute("""
        CREATE TABLE unreadable_dirs (
            path TEXT PRIMARY KEY,
            error TEXT NOT NULL,
            since_utc TEXT NOT NULL
        )""")


@MIGRATIONS()
def m006_detection_score(db: sqlite_utils.Database) -> None:
    """A detection's raw vote score beside its confidence, now the calibrated probability that it
    is right. Additive only: rows stored before keep NULL (their confidence was the raw score)."""
    db.execute("ALTER TABLE detections ADD COLUMN score REAL")


# The sync outbox (edgemon/sync/outbox.py). Each synced table's natural key, as (k1, k2, k3, k4) of
# ``changes``: text, real, text, text. Local row ids are never a key: they change when a corrupt
# database is rebuilt, and AUTOINCREMENT ids of re-processed detections are new rows anyway.
SYNC_KEYS: dict[str, tuple[str, str, str, str]] = {
    "detections": ("source", "start_s", "label", "bundle_id"),
    "files": ("source", "0", "''", "''"),
    "coverage": ("source", "0", "minute_utc", "''"),
    "heartbeats": ("run_id", "uptime_s", "''", "''"),
    # Five key parts in four slots: k4 holds json_array(bundle_id, reviewer) (the generated column
    # ``sync_key4`` of m009). JSON, not a separator: free text can hold any separator, and
    # json_array is injective and deterministic, so one review is one k4 and k4 decodes back.
    "reviews": ("source", "start_s", "label", "sync_key4"),
    "analyses": ("source", "0", "bundle_id", "''"),
}
# Slots holding more than one key column: slot column -> the columns it folds, in order.
FOLDED_KEYS: dict[str, dict[str, tuple[str, ...]]] = {"reviews": {"sync_key4": ("bundle_id", "reviewer")}}
# The tables m007 put under the change log (later tables join through their own migration).
_M007_TABLES = ("detections", "files", "coverage", "heartbeats")


def _change_sql(table: str, row: str) -> str:
    """Statements that move the key of ``row`` ('NEW' or 'OLD') of ``table`` to the end of the log."""
    k = [f"{row}.{c}" if c[0].isalpha() else c for c in SYNC_KEYS[table]]
    # DELETE then a plain INSERT, not INSERT OR REPLACE: a trigger's conflict clause is overridden
    # by the outer statement's (an INSERT OR IGNORE would then keep the old seq and lose the change).
    return (f"DELETE FROM changes WHERE tbl = '{table}' AND k1 = {k[0]} AND k2 = {k[1]} AND k3 = {k[2]} "
            f"AND k4 = {k[3]};\n"
            f"  INSERT INTO changes (tbl, k1, k2, k3, k4) VALUES ('{table}', {k[0]}, {k[1]}, {k[2]}, {k[3]});")


@MIGRATIONS()
def m007_sync_outbox(db: sqlite_utils.Database) -> None:
    """The database as the sync outbox: a per-database UUID, a change log and a cursor per target.

    ``changes`` holds one row per natural key that was ever written, at the sequence number of its
    latest insert, update or delete (triggers keep it). Sync sends the row as it is now, or a
    tombstone when it is gone, so deletes travel and updates converge; ``seq`` only grows
    (AUTOINCREMENT), so "seq > cursor" is every change the target has not acknowledged.
    """
    db.execute("CREATE TABLE sync_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO sync_meta VALUES ('db_uuid', ?)", [str(uuid.uuid4())])
    db.execute("""
        CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            tbl TEXT NOT NULL,
            k1 TEXT NOT NULL,
            k2 REAL NOT NULL,
            k3 TEXT NOT NULL,
            k4 TEXT NOT NULL,
            UNIQUE (tbl, k1, k2, k3, k4)
        )""")
    db.execute("""
        CREATE TABLE sync_cursors (
            target TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX heartbeats_run_uptime ON heartbeats (run_id, uptime_s)")
    for table in _M007_TABLES:
        _log_changes(db, table)


def every_row_changed(table: str, where: str = "") -> str:
    """The statement that puts a change of each of ``table``'s rows (those ``where`` holds) at the
    end of the log (the first backlog of a table put under it; ``Outbox.send_again``)."""
    # OR IGNORE: keys need not be unique in old rows (two heartbeats of one run in the same
    # millisecond): one change per key is all the log holds anyway.
    return (f"INSERT OR IGNORE INTO changes (tbl, k1, k2, k3, k4) SELECT '{table}', {', '.join(SYNC_KEYS[table])} "
            f"FROM {table} {f'WHERE {where} ' if where else ''}ORDER BY rowid")


def _log_changes(db: sqlite_utils.Database, table: str) -> None:
    """Put ``table`` under the change log: its rows so far are the first backlog, triggers the rest."""
    db.execute(every_row_changed(table))
    db.execute(f"CREATE TRIGGER changes_{table}_insert AFTER INSERT ON {table} BEGIN\n  "
               f"{_change_sql(table, 'NEW')}\nEND")
    db.execute(f"CREATE TRIGGER changes_{table}_delete AFTER DELETE ON {table} BEGIN\n  "
               f"{_change_sql(table, 'OLD')}\nEND")
    db.execute(f"CREATE TRIGGER changes_{table}_update AFTER UPDATE ON {table} BEGIN\n  "
               f"{_change_sql(table, 'OLD')}\n  {_change_sql(table, 'NEW')}\nEND")


REVIEW_VERDICTS = ("correct", "wrong", "relabel", "unsure")


@MIGRATIONS()
def m008_reviews(db: sqlite_utils.Database) -> None:
    """A person's verdicts on detections (``edgemon review``). Additive only.

    A detection is named by its natural key (source, start_s, label, bundle_id), which survives a
    file being re-analysed; ``detection_id`` is the row id when the verdict was given. One verdict
    per reviewer and detection: marking again replaces it. ``new_label`` is the right label of a
    'relabel' verdict and NULL otherwise."""
    verdicts = ", ".join(f"'{v}'" for v in REVIEW_VERDICTS)
    db.execute(f"""
        CREATE TABLE reviews (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            detection_id INTEGER,
            source TEXT NOT NULL,
            start_s REAL NOT NULL,
            label TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ({verdicts})),
            new_label TEXT CHECK ((verdict = 'relabel') = (new_label IS NOT NULL)),
            reviewer TEXT NOT NULL,
            reviewed_at TEXT NOT NULL,
            UNIQUE (source, start_s, label, bundle_id, reviewer)
        )""")
    db.execute("CREATE INDEX reviews_reviewed_at ON reviews (reviewed_at)")


@MIGRATIONS()
def m009_sync_reviews(db: sqlite_utils.Database) -> None:
    """Reviews join the sync outbox. Their natural key (source, start_s, label, bundle_id,
    reviewer) has one part more than the change log's four slots, so a virtual generated column
    ``sync_key4`` = json_array(bundle_id, reviewer) fills the fourth (see ``SYNC_KEYS``): it costs
    no storage, and the triggers and the outbox treat it like any key column."""
    db.execute("ALTER TABLE reviews ADD COLUMN sync_key4 TEXT "
               "GENERATED ALWAYS AS (json_array(bundle_id, reviewer)) VIRTUAL")
    _log_changes(db, "reviews")


@MIGRATIONS()
def m010_sync_lineage(db: sqlite_utils.Database) -> None:
    """The tokens this database offered with its sync batches, so a session can tell whether the
    server's last acknowledgement belongs to this database's history (see ``edgemon.sync``).

    A token is written here before its batch is sent, so a lost acknowledgement still matches;
    a database restored from a backup, or a cloned card, lacks the tokens acknowledged since and
    then starts a new lineage (a new ``db_uuid``) instead of re-using sequence numbers the server
    believes it already holds."""
    db.execute("""
        CREATE TABLE sync_tokens (
            token TEXT PRIMARY KEY,
            target TEXT NOT NULL,
            seq INTEGER NOT NULL,
            offered_utc TEXT NOT NULL
        )""")
    db.execute("CREATE INDEX sync_tokens_target_seq ON sync_tokens (target, seq)")


@MIGRATIONS()
def m011_clip_offset(db: sqlite_utils.Database) -> None:
    """Where in its saved clip a live detection begins (seconds: the pre-roll, or less when the
    stream began later) and ends (a long event's clip holds only its first ``max_clip_s``).
    Additive only: rows stored before keep NULL (their clip began the pre-roll before them,
    unless the stream had just begun)."""
    db.execute("ALTER TABLE detections ADD COLUMN clip_offset_s REAL")
    db.execute("ALTER TABLE detections ADD COLUMN clip_end_s REAL")


@MIGRATIONS()
def m012_file_fingerprint(db: sqlite_utils.Database) -> None:
    """A digest of each analysed recording's first audio bytes (``storage.fingerprint``), so that
    another recorder's file under the same name is told apart from the one analysed. Additive
    only: files analysed before keep NULL (nothing is compared for them). ``other_recordings``:
    the files ``watch`` left alone for it (by path; the ledger row keeps describing the recording
    its detections came from), so ``status`` names them and a restart does not warn again."""
    db.execute("ALTER TABLE files ADD COLUMN fingerprint TEXT")
    db.execute("""
        CREATE TABLE other_recordings (
            path TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            noted_utc TEXT NOT NULL
        )""")


@MIGRATIONS()
def m013_same_recordings(db: sqlite_utils.Database) -> None:
    """The files ``watch`` did not analyse because they hold a recording already analysed under
    another name: moved or renamed inside the watched tree (its old path gone), or a byte-for-byte
    copy. Analysed, each would store the recording's detections and hours a second time. By
    path, like ``other_recordings``; ``source`` is the name its detections are stored under.
    ``files.tail_digest`` (``storage.fingerprint.digests``): with the size and the first
    audio, what tells such a file from one written again at its size. Files analysed before keep
    NULL: they are analysed again when touched, as before. The index makes the look for such a
    twin a search, not a scan of the ledger for every new file (a soak trial: 7 ms a file at 60,000
    files without it)."""
    db.execute("ALTER TABLE files ADD COLUMN tail_digest TEXT")
    db.execute("CREATE INDEX files_by_audio ON files (size, tail_digest)")   # 40 hex digits, not the longer fingerprint
    db.execute("""
        CREATE TABLE same_recordings (
            path TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            noted_utc TEXT NOT NULL
        )""")


@MIGRATIONS()
def m014_analyses(db: sqlite_utils.Database) -> None:
    """Which bundle analysed which recording (``watch`` with its own, ``reanalyse`` with another),
    how much audio it read, and ``ledger_at``: the recording's ledger row (its ``updated_at``) as it
    was then. The ledger keeps only the bundle of ``watch``'s last run, so a bundle's hours and an
    export ``--bundle`` could not tell a recording it analysed and found empty from one it never
    analysed (a review: a chart of a bundle run on one recording of three showed the other two as
    listened to and silent). A bundle's analysis is current while the ledger row is the one it
    saw: compared by value, not by time, so a recorder's clock set back cannot make an old
    analysis look new (a review). Filled from what earlier versions left: watch's own bundle of
    each finished row (current), and each other bundle with detections of a finished recording,
    analysed once (whether before or after watch last analysed the recording again, nothing says:
    ``ledger_at`` NULL, so ``reanalyse`` runs it again, and its duration is not known)."""
    db.execute("""
        CREATE TABLE analyses (
            source TEXT NOT NULL,
            bundle_id TEXT NOT NULL,
            duration_s REAL,
            analysed_at TEXT NOT NULL,
            ledger_at TEXT,
            PRIMARY KEY (source, bundle_id)
        )""")
    db.execute("""
        INSERT OR IGNORE INTO analyses (source, bundle_id, duration_s, analysed_at, ledger_at)
        SELECT source, bundle_id, duration_s, coalesce(updated_at, ''), updated_at FROM files
        WHERE state = 'done' AND bundle_id IS NOT NULL""")
    db.execute("""
        INSERT OR IGNORE INTO analyses (source, bundle_id, duration_s, analysed_at, ledger_at)
        SELECT d.source, d.bundle_id, NULL, max(d.created_at), NULL
        FROM detections d JOIN files f ON f.source = d.source WHERE f.state = 'done'
        GROUP BY d.source, d.bundle_id""")


@MIGRATIONS()
def m015_cursor_outputs(db: sqlite_utils.Database) -> None:
    """The csv, jsonl and birdnet files an export cursor appends to (resolved paths). A plain
    export to one of them replaced it whole, and the rows the cursor had moved past were never
    delivered again (a newcomer trial: 46 of 48 gone); it is refused now, as a plain export into
    a cursor's Raven directory already was (``raven_owner``)."""
    db.execute("""
        CREATE TABLE cursor_outputs (
            path TEXT PRIMARY KEY,
            cursor TEXT NOT NULL,
            noted_utc TEXT NOT NULL
        )""")


@MIGRATIONS()
def m016_samples_digest_and_span(db: sqlite_utils.Database) -> None:
    """``files.samples_digest`` (``storage.fingerprint.samples_digest``): a digest of each analysed
    recording's decoded audio, so that the recording converted to another format in the watched
    tree (a card of WAVs compressed to FLAC) is known as the recording analysed, not analysed
    again under its new name with its detections stored twice. Files analysed before keep NULL:
    read from the original while it is still there. The index makes the look for recordings
    that start at the same time a search. ``files.span_s``: the time a triggered recording
    spans, its silent stretches left out by the recorder included (NULL: ``duration_s``), which
    the review page's charts count as listened to, as detection times count them."""
    db.execute("ALTER TABLE files ADD COLUMN samples_digest TEXT")
    db.execute("ALTER TABLE files ADD COLUMN span_s REAL")
    db.execute("CREATE INDEX files_by_start ON files (start_utc)")


@MIGRATIONS()
def m017_sync_analyses(db: sqlite_utils.Database) -> None:
    """Which bundle analysed which recording (``analyses``) joins the sync outbox. The fleet knew
    only the ledger, which keeps ``watch``'s bundle: a site whose recordings still on the card were
    ``reanalyse``d with a new bundle showed, for the days that bundle never analysed, hours of
    effort and no calls (an analyst's trial); ``edgemon.effort_daily_by_bundle`` now counts each
    bundle's own hours. The rows so far are the first backlog."""
    _log_changes(db, "analyses")
