"""The fleet's PostgreSQL database: migration (DDL in ``edgemon.sync.fleetschema`` and
``edgemon.sync.fleetviews``), and idempotent batch writes.

Every recorder's rows live under the schema ``edgemon``, keyed by the natural key of the
recorder's own tables plus the per-database UUID (``db_uuid``): (db_uuid, source, start_s, label,
bundle_id) for a detection. Local row ids never travel. Upserts make a resent batch harmless, and
the database's acknowledged sequence number moves in the same transaction as its rows.

Reaching the server (the URL, the connection, its errors): ``edgemon.sync.fleet_connect``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence

# Reaching the server, re-exported: callers name them fleetdb.X.
from edgemon.sync.fleet_connect import (DRIVER_ERRORS, PASSWORD_IN_URL, SSLPASSWORD_IN_URL, AuthError,  # noqa: F401
                                        BusyError, FleetDbError, LineageMovedError, SchemaBehindError,
                                        SchemaNewerError, SyncUrlError, UnreachableError, check_url, classify,
                                        connect, target_name)
from edgemon.sync.fleetschema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from edgemon.sync.fleetviews import VIEW_REVISIONS
from edgemon.sync.outbox import Batch, natural_columns

try:  # the `sync` extra: recorders that never sync do not carry a PostgreSQL driver
    import psycopg
    from psycopg.types.json import Jsonb
except ImportError:  # pragma: no cover - exercised only on an edge install without the extra
    psycopg = Jsonb = None

log = logging.getLogger(__name__)

# Server-side advisory lock ids: the migrations' (one bigint key), and the namespace of the
# per-database session locks (two int keys: this, hashtext(db_uuid)). PostgreSQL keeps one-key and
# two-key locks apart, so the one number serves both; released edgemons lock with it, keep it.
MIGRATION_LOCK = 0x6564676D  # 'edgm'
SESSION_LOCK_SPACE = MIGRATION_LOCK

# Non-key columns of each table on the server (the key columns come from the outbox's SYNC_KEYS).
COLUMNS: dict[str, tuple[str, ...]] = {
    "detections": ("device_id", "end_s", "start_utc", "end_utc", "time_source", "clock_suspect",
                   "clock_synced", "confidence", "votes", "clip_path", "created_at", "score"),
    "files": ("path", "size", "mtime_ns", "state", "attempts", "error", "duration_s", "start_utc",
              "time_source", "clock_suspect", "bundle_id", "updated_at"),
    "coverage": ("device_id", "analysed_s", "lost_overflow_s", "lost_dropped_s", "lost_device_s",
                 "lost_daemon_s", "overflows", "dropped_blocks", "end_utc", "clock_synced", "updated_at"),
    "heartbeats": ("mode", "device_id", "at_utc", "started_utc", "state", "bundle_id", "files_done",
                   "audio_s", "busy_s", "disk_free_mb", "rss_mb", "note"),
    "reviews": ("verdict", "new_label", "reviewed_at"),
    "analyses": ("duration_s", "analysed_at", "ledger_at"),
}
BOOLEAN = {"clock_suspect", "clock_synced"}   # 0/1 in SQLite, boolean on the server
EMPTY_IS_NULL = {"analysed_at"}   # '' where migration m014 found no time: NULL on the server
# Tables a view revision adds (``fleetviews.VIEW_REVISIONS``), not a schema version, so an older
# edgemon still syncs to the server; they are missing where the syncing role could not add them.
ADDED_BY_REVISION = ("analyses",)
# Columns a view revision adds to a versioned table, for the same reason: sent where the server
# holds them for this role, else left out of the rows (said once) and sent again once it does.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"files": ("span_s",)}



def schema_version(conn: psycopg.Connection) -> int:
    """The fleet schema's version (0: not created yet)."""
    exists = conn.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.schema_version"]).fetchone()[0]
    if exists is None:
        return 0
    return conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version").fetchone()[0]


def check_version(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaNewerError(f"fleet database schema is version {version}, newer than this edgemon's "
                               f"{SCHEMA_VERSION}: upgrade edgemon on this machine")


def migrate(conn: psycopg.Connection) -> int:
    """Create or migrate the fleet schema to ``SCHEMA_VERSION``; returns the version found before.

    One transaction under an advisory lock, so recorders connecting together migrate once.
    Raises SchemaNewerError (changing nothing) when the server is ahead of this edgemon.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        found = schema_version(conn)
        check_version(found)
        if found < SCHEMA_VERSION:
            try:
                with conn.transaction():
                    _migrate_schema(conn, found)
            except psycopg.errors.InsufficientPrivilege:
                # A recorder that only writes rows (deploy/fleet-setup.sql): the schema's owner
                # migrates it, and this recorder's rows wait on the unit until then.
                user, owner = conn.execute("SELECT current_user, (SELECT pg_get_userbyid(nspowner) FROM pg_namespace "
                                           "WHERE nspname = %s)", [SCHEMA]).fetchone()
                raise SchemaBehindError(
                    f"the fleet database's schema is version {found}, this edgemon's {SCHEMA_VERSION}, and role "
                    f"{user} may not migrate it: the owner of schema {SCHEMA} runs `edgemon fleet migrate --db "
                    f"postgresql://{owner or 'OWNER'}@HOST/DB` (nothing is lost: the rows wait here until then)") from None
        try:
            with conn.transaction():   # a savepoint: a role that may not replace views still syncs
                _revise_views(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("fleet views left at revision %d (this edgemon's: %d): %s; the role that owns "
                        "schema %s revises them (`edgemon fleet migrate`, or its next sync)", view_revision(conn),
                        len(VIEW_REVISIONS), str(exc).splitlines()[0], SCHEMA)
    return found


def _migrate_schema(conn: psycopg.Connection, found: int) -> None:
    # Only when missing: IF NOT EXISTS still asks for CREATE on the database, which a recorder's
    # role lacks where the superuser owns it (deploy/fleet-setup.sql).
    if conn.execute("SELECT to_regnamespace(%s)", [SCHEMA]).fetchone()[0] is None:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version "
                 "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute(MIGRATIONS[version - 1])
        conn.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", [version])


def view_revision(conn: psycopg.Connection) -> int:
    """The revision of the fleet views (``fleetviews.VIEW_REVISIONS``; 0: as first released)."""
    if conn.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.view_revision"]).fetchone()[0] is None:
        return 0
    return conn.execute(f"SELECT coalesce(max(revision), 0) FROM {SCHEMA}.view_revision").fetchone()[0]


def _revise_views(conn: psycopg.Connection) -> None:
    """Bring the views to this edgemon's revision, never back (inside ``migrate``'s transaction)."""
    found = view_revision(conn)
    if found >= len(VIEW_REVISIONS):
        return
    conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.view_revision "
                 "(revision integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
    for revision in range(found + 1, len(VIEW_REVISIONS) + 1):
        conn.execute(VIEW_REVISIONS[revision - 1])
        conn.execute(f"INSERT INTO {SCHEMA}.view_revision (revision) VALUES (%s)", [revision])


# --- writes -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the fleet knows of a recorder database besides its rows. ``latitude``/``longitude`` in
    decimal degrees (WGS84), ``timezone`` an IANA name; ``bundle_manifest`` the bundle's
    manifest.json text; ``settings_hash`` a sha256 of the settings in force."""

    device_id: str
    db_uuid: str
    latitude: float | None = None
    longitude: float | None = None
    timezone: str | None = None
    bundle_id: str | None = None
    bundle_manifest: str | None = None
    edgemon_version: str | None = None
    settings_hash: str | None = None
    sync_interval_s: float | None = None
    heartbeat_s: float | None = None
    disk_free_mb: float | None = None
    forked_from: str | None = None


def _stage_sql(table: str, columns: Sequence[str]) -> str:
    """A session's staging table for ``table``'s rows: its key and ``columns`` without db_uuid,
    emptied at commit."""
    return (f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} ON COMMIT DELETE ROWS AS "
            f"SELECT {', '.join([*natural_columns(table), *columns])} FROM {SCHEMA}.{table} WITH NO DATA")


def _merge_sql(table: str, columns: Sequence[str]) -> str:
    """Staged rows into ``table`` under one database's UUID (the query's one parameter)."""
    key = ["db_uuid", *natural_columns(table)]
    every = [*natural_columns(table), *columns]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    return (f"INSERT INTO {SCHEMA}.{table} (db_uuid, {', '.join(every)}) "
            f"SELECT %s::uuid, {', '.join(every)} FROM pg_temp.stage_{table} "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _copy_sql(table: str, columns: Sequence[str]) -> str:
    return f"COPY pg_temp.stage_{table} ({', '.join([*natural_columns(table), *columns])}) FROM STDIN"


def _delete_sql(table: str) -> str:
    key = ["db_uuid", *natural_columns(table)]
    return f"DELETE FROM {SCHEMA}.{table} WHERE " + " AND ".join(f"{c} = %s" for c in key)


DELETE = {t: _delete_sql(t) for t in COLUMNS}


def _values(table: str, row: dict, columns: Sequence[str] | None = None) -> list:
    """``row``'s key and ``columns`` (default: every one of ``COLUMNS``) as the server takes them."""
    out = [row[c] for c in natural_columns(table)]
    for c in COLUMNS[table] if columns is None else columns:
        value = row.get(c)
        if c in EMPTY_IS_NULL and value == "":
            value = None
        out.append(bool(value) if c in BOOLEAN and value is not None else value)
    return out


# A site's position and time zone, kept when a sync does not give them: a card's database synced
# from a field laptop without the recorder's settings wiped them, and the site's detections moved
# to other local days in every view (a review).
KEPT_WHEN_UNSAID = ("latitude", "longitude", "timezone")
# The bundle's manifest, kept when a sync names the same bundle without one (its heartbeat's
# bundle, which the database never recorded: ``Store.record_bundle`` refused on a full disk).
_KEPT_MANIFEST = (f"bundle_manifest = CASE WHEN EXCLUDED.bundle_manifest IS NULL AND EXCLUDED.bundle_id IS NOT "
                  f"DISTINCT FROM {SCHEMA}.databases.bundle_id THEN {SCHEMA}.databases.bundle_manifest "
                  f"ELSE EXCLUDED.bundle_manifest END")


def register(conn: psycopg.Connection, info: DeviceInfo, waiting: Callable[[int], int],
             client_utc: str) -> tuple[int, int]:
    """Record the database's metadata and a sync session; returns the sequence number the server
    has acknowledged for it (0: new) and how many changes wait after it (``waiting(acked)``, counted
    by the recorder). ``client_utc`` is the recorder's clock now: the difference to the server's
    is kept, for the suspect-clock flag. A position or time zone the sender does not give keeps
    the server's (``KEPT_WHEN_UNSAID``).

    ``local_seq`` is stored as the acknowledged number plus the changes waiting, so that the
    views' backlog (``local_seq - acked_seq``) counts changes: the recorder's own sequence
    numbers have gaps (a coverage minute rewritten six times takes six), and a backlog of 61
    changes showed as 661. An earlier edgemon stores its last sequence number there."""
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    names = list(fields)
    updates = ", ".join(f"{n} = coalesce(EXCLUDED.{n}, {SCHEMA}.databases.{n})" if n in KEPT_WHEN_UNSAID else
                        _KEPT_MANIFEST if n == "bundle_manifest" else
                        f"{n} = EXCLUDED.{n}" for n in names if n != "db_uuid")
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {SCHEMA}.databases ({', '.join(names)}, clock_offset_s) "
            f"VALUES ({', '.join(['%s'] * len(names))}, extract(epoch FROM %s::timestamptz - now())) "
            f"ON CONFLICT (db_uuid) DO UPDATE SET {updates}, "
            f"clock_offset_s = EXCLUDED.clock_offset_s, last_sync = now()",
            [*fields.values(), client_utc])
        acked = conn.execute(f"SELECT acked_seq FROM {SCHEMA}.databases WHERE db_uuid = %s",
                             [info.db_uuid]).fetchone()[0]
        backlog = waiting(acked)
        conn.execute(f"UPDATE {SCHEMA}.databases SET local_seq = %s WHERE db_uuid = %s",
                     [acked + backlog, info.db_uuid])
        conn.execute(f"INSERT INTO {SCHEMA}.sync_sessions (db_uuid, backlog) VALUES (%s, %s)",
                     [info.db_uuid, backlog])
    return acked, backlog


def own_heartbeat_spans(where: str = "true") -> str:
    """A CTE ``spans`` (device_id, db_uuid, lo, hi): the time span of each database's heartbeats
    (those matching ``where``) that no other database of the device also holds. A database that
    started a new lineage (``edgemon.sync``: restored backup, cloned card) carries its ancestor's
    heartbeats; shared history is not two recorders running at once, new heartbeats are."""
    return f"""mine AS (SELECT device_id, db_uuid, run_id, uptime_s, at_utc FROM {SCHEMA}.heartbeats WHERE {where}),
        spans AS (SELECT device_id, db_uuid, min(at_utc) AS lo, max(at_utc) AS hi FROM mine h
                  WHERE NOT EXISTS (SELECT 1 FROM mine o WHERE o.device_id = h.device_id AND o.db_uuid <> h.db_uuid
                                    AND o.run_id = h.run_id AND o.uptime_s = h.uptime_s)
                  GROUP BY device_id, db_uuid)"""


def clashes(conn: psycopg.Connection, info: DeviceInfo) -> list[str]:
    """UUIDs of other databases sending under ``info.device_id`` whose heartbeats overlap in time
    with this database's: two recorders sharing one id (a rebuilt database follows, never overlaps)."""
    rows = conn.execute(f"""
        WITH {own_heartbeat_spans("device_id = %s")}
        SELECT o.db_uuid::text FROM spans o JOIN spans me ON me.db_uuid = %s
        WHERE o.db_uuid <> me.db_uuid AND o.lo <= me.hi AND me.lo <= o.hi ORDER BY 1""",
        [info.device_id, info.db_uuid]).fetchall()
    return [r[0] for r in rows]


def record_status(conn: psycopg.Connection, info: DeviceInfo, status: dict, taken_utc: str) -> None:
    """Upsert the recorder database's status snapshot (``edgemon status --json``'s dict, taken at
    ``taken_utc`` by the recorder's clock): one row per database, the latest wins."""
    conn.execute(f"""
        INSERT INTO {SCHEMA}.status_snapshots (db_uuid, device_id, taken_utc, problems, status)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (db_uuid) DO UPDATE SET device_id = EXCLUDED.device_id, received_at = now(),
            taken_utc = EXCLUDED.taken_utc, problems = EXCLUDED.problems, status = EXCLUDED.status""",
        [info.db_uuid, info.device_id, taken_utc, [str(p) for p in status.get("problems") or []], Jsonb(status)])


@dataclasses.dataclass(frozen=True)
class Acknowledged:
    """What the server holds of one recorder database: its device, the last sequence number it
    acknowledged, and the token of the batch that moved it (None: before tokens, or nothing yet)."""

    device_id: str
    acked_seq: int
    acked_token: str | None


def acknowledged(conn: psycopg.Connection, db_uuid: str) -> Acknowledged | None:
    """The server's record of database ``db_uuid`` (None: never synced). Read under the
    database's session lock (``lock_database``), so no other session moves it meanwhile."""
    row = conn.execute(f"SELECT device_id, acked_seq, acked_token FROM {SCHEMA}.databases WHERE db_uuid = %s",
                       [db_uuid]).fetchone()
    return None if row is None else Acknowledged(*row)


def unlock_database(conn: psycopg.Connection, db_uuid: str) -> None:
    """Release ``lock_database``'s lock (a session that moved to a new UUID)."""
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [SESSION_LOCK_SPACE, db_uuid])


def lock_database(conn: psycopg.Connection, db_uuid: str) -> None:
    """A session lock on one recorder database's rows; BusyError when another sync holds it.
    Released when the connection closes, also when the holder was killed."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [SESSION_LOCK_SPACE, db_uuid]).fetchone()[0]:
        raise BusyError(f"another sync of database {db_uuid} is running (or was killed just now: the server "
                        f"frees its lock when it notices the connection gone, within a minute; try again then)")


def prepare_staging(conn: psycopg.Connection) -> dict[str, tuple[str, ...]]:
    """Create this session's staging tables (once per connection, before ``apply_batch``); returns
    the tables the server holds for this role, each with the non-key columns it takes (one
    ``ADDED_BY_REVISION`` table, or ``ADDED_COLUMNS`` column, is missing where the views could not
    be revised, or not writable by a role granted the tables there were before it: its rows, or
    that column of them, are then not sent, said once)."""
    held = {table: (*columns, *(c for c in ADDED_COLUMNS.get(table, ()) if _writable(conn, table, c)))
            for table, columns in COLUMNS.items()}
    for table in ADDED_BY_REVISION:
        if not _writable(conn, table):
            del held[table]
    for table, columns in held.items():
        conn.execute(_stage_sql(table, columns))
    return held


def _writable(conn: psycopg.Connection, table: str, column: str | None = None) -> bool:
    """Whether this role may read and write ``table`` (or its ``column``), added by a view
    revision; says once why not."""
    # A role that does not own the schema was granted the tables there were (ON ALL TABLES): one the
    # owner added since is not its to write, and staging it failed every sync (a review).
    what = f"{table}.{column}" if column else table
    if column is None:
        found, writable = conn.execute(
            "SELECT t IS NOT NULL, t IS NOT NULL AND has_table_privilege(t, 'SELECT') AND has_table_privilege(t, "
            "'INSERT') AND has_table_privilege(t, 'UPDATE') AND has_table_privilege(t, 'DELETE') "
            "FROM to_regclass(%s) t", [f"{SCHEMA}.{table}"]).fetchone()
    else:
        found, writable = conn.execute(
            "SELECT a.attname IS NOT NULL, a.attname IS NOT NULL AND has_column_privilege(a.attrelid, a.attnum, "
            "'SELECT') AND has_column_privilege(a.attrelid, a.attnum, 'INSERT') AND has_column_privilege("
            "a.attrelid, a.attnum, 'UPDATE') FROM (SELECT 1) one LEFT JOIN pg_attribute a "
            "ON a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
            [f"{SCHEMA}.{table}", column]).fetchone()
    thing = f"{SCHEMA}.{what} {'column' if column else 'table'}"
    unsent = f"{table} are sent without {column}" if column else f"{table} are not sent"
    if not found:
        log.warning("the fleet database has no %s yet (its views are at revision %d): this recorder's %s to it "
                    "until the owner of schema %s adds it (`edgemon fleet migrate`, or its next sync)", thing,
                    view_revision(conn), unsent, SCHEMA)
    elif not writable:
        log.warning("this role may not write the fleet database's %s: this recorder's %s to it until it may "
                    "(GRANT SELECT, INSERT, UPDATE%s ON %s.%s TO the role)", thing, unsent,
                    "" if column else ", DELETE", SCHEMA, table)
    return bool(writable)


def apply_batch(conn: psycopg.Connection, db_uuid: str, batch: Batch, local_seq: int,
                token: str | None = None, expected_token: str | None = None,
                held: Mapping[str, Sequence[str]] = COLUMNS) -> None:
    """Write ``batch`` and acknowledge its last sequence number, with its ``token``, in one
    transaction, provided the acknowledgement still carries ``expected_token`` (compare and set;
    LineageMovedError, nothing written, otherwise). Idempotent: rows are upserted and deleted by
    natural key, so sending a batch twice changes nothing.

    Rows travel by COPY into the session's staging tables and are merged from there: about half
    the bytes of one INSERT per row (no per-row protocol messages, the UUID sent once), which
    counts on a slow link. A batch holds each natural key once (the outbox's ``changes`` is
    unique per key), so one merge never meets a key twice. Only the tables ``held`` (those the server
    holds: ``prepare_staging``) are written, each with the columns ``held`` names.
    """
    with conn.transaction(), conn.cursor() as cur:
        for table in (t for t in COLUMNS if t in held):
            rows, columns = batch.upserts.get(table) or [], held[table]
            if rows:
                with cur.copy(_copy_sql(table, columns)) as copy:
                    for r in rows:
                        copy.write_row(_values(table, r, columns))
                cur.execute(_merge_sql(table, columns), [db_uuid])
            keys: Sequence[tuple] = batch.deletes.get(table) or []
            if keys:
                cur.executemany(DELETE[table], [(db_uuid, *k) for k in keys])
        cur.execute(f"UPDATE {SCHEMA}.databases SET acked_seq = greatest(acked_seq, %s), acked_token = %s, "
                    f"local_seq = greatest(local_seq, %s), last_sync = now() "
                    f"WHERE db_uuid = %s AND acked_token IS NOT DISTINCT FROM %s",
                    [batch.last_seq, token, local_seq, db_uuid, expected_token])
        if cur.rowcount != 1:   # raising rolls the batch's rows back with it
            raise LineageMovedError(f"the server's acknowledgement of database {db_uuid} moved during this "
                                    f"session: batch not applied, the next session checks again")
