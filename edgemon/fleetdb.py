"""The fleet's PostgreSQL database: connection, versioned schema, and idempotent batch writes.

Every recorder's rows live under the schema ``edgemon``, keyed by the natural key of the
recorder's own tables plus the per-database UUID (``db_uuid``): (db_uuid, source, start_s, label,
bundle_id) for a detection. Local row ids never travel. Upserts make a resent batch harmless, and
the database's acknowledged sequence number moves in the same transaction as its rows.

Credentials come from libpq (``~/.pgpass``, ``$PGPASSFILE``, ``passfile=`` in the URL, a client
certificate, ``$PGPASSWORD``): a URL holding a password is refused, so none reaches a command
line, a settings file or a log.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Sequence
from pathlib import Path

try:  # the `sync` extra: recorders that never sync do not carry a PostgreSQL driver
    import psycopg
    from psycopg import conninfo
except ImportError:  # pragma: no cover - exercised only on an edge install without the extra
    psycopg = conninfo = None

# What a driver call may raise (nothing, without the driver: ``except ()`` catches nothing).
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,) if psycopg else ()

from edgemon.errors import EdgemonError
from edgemon.outbox import Batch, key_columns

SCHEMA = "edgemon"
# Server-side lock ids: one for migrations, and a namespace for per-database sync sessions.
MIGRATION_LOCK = 0x6564676D  # 'edgm'

# Non-key columns of each table on the server (the key columns come from the outbox's SYNC_KEYS).
COLUMNS: dict[str, tuple[str, ...]] = {
    "detections": ("device_id", "end_s", "start_utc", "end_utc", "time_source", "clock_suspect",
                   "clock_synced", "confidence", "votes", "clip_path", "created_at"),
    "files": ("path", "size", "mtime_ns", "state", "attempts", "error", "duration_s", "start_utc",
              "time_source", "clock_suspect", "bundle_id", "updated_at"),
    "coverage": ("device_id", "analysed_s", "lost_overflow_s", "lost_dropped_s", "lost_device_s",
                 "lost_daemon_s", "overflows", "dropped_blocks", "end_utc", "clock_synced", "updated_at"),
    "heartbeats": ("mode", "device_id", "at_utc", "started_utc", "state", "bundle_id", "files_done",
                   "audio_s", "busy_s", "disk_free_mb", "rss_mb", "note"),
}
BOOLEAN = {"clock_suspect", "clock_synced"}   # 0/1 in SQLite, boolean on the server


class FleetDbError(EdgemonError):
    """The fleet database cannot be reached or used."""


class SyncUrlError(FleetDbError):
    """A sync URL is malformed or holds a secret."""


class AuthError(FleetDbError):
    """The fleet database refused the credentials (retrying will not help)."""


class UnreachableError(FleetDbError):
    """The fleet database cannot be reached now (network, server down): worth retrying later."""


class SchemaNewerError(FleetDbError):
    """The fleet database's schema is newer than this edgemon knows."""


class BusyError(FleetDbError):
    """Another sync of the same recorder database is running."""


# --- schema -------------------------------------------------------------------------------------

_TABLES = f"""
CREATE TABLE {SCHEMA}.databases (
    db_uuid uuid PRIMARY KEY,
    device_id text NOT NULL,
    first_sync timestamptz NOT NULL DEFAULT now(),
    last_sync timestamptz NOT NULL DEFAULT now(),
    acked_seq bigint NOT NULL DEFAULT 0,
    local_seq bigint NOT NULL DEFAULT 0,
    latitude double precision,
    longitude double precision,
    timezone text,
    bundle_id text,
    bundle_manifest text,
    edgemon_version text,
    settings_hash text,
    sync_interval_s double precision,
    heartbeat_s double precision,
    disk_free_mb double precision,
    clock_offset_s double precision
);
CREATE INDEX databases_device ON {SCHEMA}.databases (device_id);
CREATE TABLE {SCHEMA}.sync_sessions (
    db_uuid uuid NOT NULL REFERENCES {SCHEMA}.databases,
    started timestamptz NOT NULL DEFAULT now(),
    backlog bigint NOT NULL
);
CREATE INDEX sync_sessions_db ON {SCHEMA}.sync_sessions (db_uuid, started);
CREATE TABLE {SCHEMA}.detections (
    db_uuid uuid NOT NULL, source text NOT NULL, start_s double precision NOT NULL,
    label text NOT NULL, bundle_id text NOT NULL,
    device_id text NOT NULL, end_s double precision NOT NULL, start_utc timestamptz,
    end_utc timestamptz, time_source text NOT NULL, clock_suspect boolean NOT NULL,
    clock_synced boolean, confidence real NOT NULL, votes text, clip_path text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (db_uuid, source, start_s, label, bundle_id)
);
CREATE INDEX detections_start ON {SCHEMA}.detections (start_utc);
CREATE INDEX detections_device_created ON {SCHEMA}.detections (device_id, created_at);
CREATE TABLE {SCHEMA}.files (
    db_uuid uuid NOT NULL, source text NOT NULL,
    path text, size bigint, mtime_ns bigint, state text NOT NULL, attempts integer,
    error text, duration_s double precision, start_utc timestamptz, time_source text,
    clock_suspect boolean, bundle_id text, updated_at timestamptz,
    PRIMARY KEY (db_uuid, source)
);
CREATE TABLE {SCHEMA}.coverage (
    db_uuid uuid NOT NULL, source text NOT NULL, minute_utc timestamptz NOT NULL,
    device_id text NOT NULL, analysed_s double precision, lost_overflow_s double precision,
    lost_dropped_s double precision, lost_device_s double precision, lost_daemon_s double precision,
    overflows integer, dropped_blocks integer, end_utc timestamptz, clock_synced boolean,
    updated_at timestamptz,
    PRIMARY KEY (db_uuid, source, minute_utc)
);
CREATE TABLE {SCHEMA}.heartbeats (
    db_uuid uuid NOT NULL, run_id text NOT NULL, uptime_s double precision NOT NULL,
    mode text, device_id text NOT NULL, at_utc timestamptz NOT NULL, started_utc timestamptz,
    state text, bundle_id text, files_done integer, audio_s double precision,
    busy_s double precision, disk_free_mb double precision, rss_mb double precision, note text,
    PRIMARY KEY (db_uuid, run_id, uptime_s)
);
CREATE INDEX heartbeats_at ON {SCHEMA}.heartbeats (db_uuid, at_utc);
"""

# Views for the person running the study. A device's rows may come from several databases (a
# corrupt one rebuilt re-analyses everything), so counts are of distinct natural keys per
# device; the newest bundle of a device is the bundle of its most recently stored detection.
# Days are local days in the device's time zone. A filter on ``day`` reaches inside the
# aggregates (day is a grouping column), so `fleet status` asks only for the days it shows.
def _detections_daily(name: str, where: str) -> str:
    # Two levels (distinct keys, then counts) instead of count(DISTINCT ...): hashable, and
    # a third of the time on 450 000 detections.
    return f"""
CREATE VIEW {SCHEMA}.{name} AS
SELECT k.site, k.species, k.day, count(*) AS detections, count(*) FILTER (WHERE k.suspect) AS clock_suspect,
       k.bundle_id
FROM (SELECT d.device_id AS site, d.label AS species, d.bundle_id,
             (d.start_utc AT TIME ZONE b.timezone)::date AS day, d.source, d.start_s,
             bool_or(d.clock_suspect) AS suspect
      FROM {SCHEMA}.detections d JOIN {SCHEMA}.device_bundle b USING (device_id)
      WHERE {where}
      GROUP BY 1, 2, 3, 4, 5, 6) k
GROUP BY k.site, k.species, k.day, k.bundle_id;
"""


_VIEWS = f"""
CREATE INDEX coverage_minute ON {SCHEMA}.coverage (minute_utc);
CREATE INDEX files_start ON {SCHEMA}.files (start_utc);

CREATE VIEW {SCHEMA}.device_bundle AS
SELECT DISTINCT ON (db.device_id) db.device_id, newest.bundle_id, coalesce(db.timezone, 'UTC') AS timezone,
       db.latitude, db.longitude
FROM {SCHEMA}.databases db
LEFT JOIN LATERAL (SELECT d.bundle_id FROM {SCHEMA}.detections d WHERE d.device_id = db.device_id
                   ORDER BY d.created_at DESC LIMIT 1) newest ON true
ORDER BY db.device_id, db.last_sync DESC;
{_detections_daily("detections_daily_all", "true")}
{_detections_daily("detections_daily", "b.bundle_id IS NULL OR d.bundle_id = b.bundle_id")}
-- Effort: live streams' coverage (seconds analysed and lost per minute) and watched directories'
-- recordings (the files ledger: each analysed file's duration, and the gap since the previous
-- recording's end), summed per site and local day. UNION ALL, not a FULL JOIN, so that a filter
-- on day reaches both halves. Files are counted once per device (a rebuilt database re-analyses
-- them); coverage minutes are not (a rebuilt database never rewrites past minutes).
CREATE VIEW {SCHEMA}.effort_daily AS
SELECT site, day, sum(listen_h) AS listen_h, sum(lost_h) AS lost_h, sum(files)::bigint AS files,
       sum(recorded_h) AS recorded_h, max(longest_gap_h) AS longest_gap_h,
       sum(listen_h) + sum(recorded_h) AS effort_h
FROM (
    SELECT c.device_id AS site, (c.minute_utc AT TIME ZONE b.timezone)::date AS day,
           sum(c.analysed_s) / 3600 AS listen_h,
           sum(c.lost_overflow_s + c.lost_dropped_s + c.lost_device_s + c.lost_daemon_s) / 3600 AS lost_h,
           0 AS files, 0.0::float8 AS recorded_h, 0.0::float8 AS longest_gap_h
    FROM {SCHEMA}.coverage c JOIN {SCHEMA}.device_bundle b USING (device_id)
    GROUP BY 1, 2
    UNION ALL
    SELECT site, (start_utc AT TIME ZONE timezone)::date, 0, 0, count(*), sum(duration_s) / 3600,
           coalesce(extract(epoch FROM max(gap)) / 3600, 0)::float8
    FROM (SELECT r.*, r.start_utc - lag(r.start_utc + make_interval(secs => r.duration_s))
                     OVER (PARTITION BY r.site ORDER BY r.start_utc) AS gap
          FROM (SELECT DISTINCT ON (db.device_id, f.source) db.device_id AS site, f.source, f.start_utc,
                       f.duration_s, b.timezone
                FROM {SCHEMA}.files f JOIN {SCHEMA}.databases db USING (db_uuid)
                JOIN {SCHEMA}.device_bundle b ON b.device_id = db.device_id
                WHERE f.state = 'done' AND f.start_utc IS NOT NULL
                ORDER BY db.device_id, f.source, f.updated_at DESC) r) g
    GROUP BY 1, 2) u
GROUP BY site, day;

CREATE VIEW {SCHEMA}.recorder_health AS
SELECT db.device_id AS site, db.db_uuid, db.last_sync, db.local_seq - db.acked_seq AS backlog,
       hb.at_utc AS last_heartbeat, hb.state AS last_state,
       coalesce(hb.disk_free_mb, db.disk_free_mb) AS disk_free_mb,
       (SELECT max(start_utc) FROM {SCHEMA}.detections d WHERE d.db_uuid = db.db_uuid) AS last_detection,
       db.clock_offset_s,
       (SELECT count(*) FROM {SCHEMA}.detections d WHERE d.db_uuid = db.db_uuid AND d.clock_suspect
          AND d.created_at > now() - interval '7 days') AS clock_suspect_7d,
       db.sync_interval_s, db.bundle_id, db.edgemon_version, db.latitude, db.longitude, db.timezone,
       ARRAY(SELECT s.backlog FROM {SCHEMA}.sync_sessions s WHERE s.db_uuid = db.db_uuid
             ORDER BY s.started DESC LIMIT 3) AS recent_backlogs,
       (SELECT min(h.at_utc) FROM {SCHEMA}.heartbeats h WHERE h.db_uuid = db.db_uuid) AS first_heartbeat
FROM {SCHEMA}.databases db
LEFT JOIN LATERAL (SELECT * FROM {SCHEMA}.heartbeats h WHERE h.db_uuid = db.db_uuid
                   ORDER BY h.at_utc DESC LIMIT 1) hb ON true;
"""

# Version n is MIGRATIONS[n - 1]; a migration is never edited once released, only appended.
MIGRATIONS: tuple[str, ...] = (_TABLES, _VIEWS)
SCHEMA_VERSION = len(MIGRATIONS)


# --- connection ---------------------------------------------------------------------------------

def check_url(url: str) -> dict[str, str]:
    """The libpq parameters of ``url``; SyncUrlError (never echoing the URL) when it holds a
    password, is not a PostgreSQL URL, or names a passfile anyone but its owner may read."""
    if psycopg is None:
        raise FleetDbError("sync needs the PostgreSQL driver: pip install 'edgemon[sync]'")
    if not url.startswith(("postgresql://", "postgres://")):
        raise SyncUrlError("sync target must be a postgresql:// URL")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise SyncUrlError("sync URL is not a valid PostgreSQL URL") from None
    if params.get("password"):
        raise SyncUrlError("sync URL holds a password: put it in a 0600 passfile (~/.pgpass, $PGPASSFILE "
                           "or ?passfile=PATH) or $PGPASSWORD, never in the URL")
    passfile = params.get("passfile") or os.environ.get("PGPASSFILE")
    if passfile and Path(passfile).exists() and Path(passfile).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SyncUrlError(f"passfile {passfile} is readable by others: chmod 0600 it")
    return params


def target_name(params: dict[str, str]) -> str:
    """A recorder-side name for a target, without credentials: 'user@host:port/dbname'."""
    return (f"{params.get('user', '')}@{params.get('host', 'localhost')}:{params.get('port', '5432')}"
            f"/{params.get('dbname', '')}")


def connect(url: str, *, connect_timeout_s: int = 15) -> psycopg.Connection:
    """An autocommit connection to the fleet database at ``url`` (checked by ``check_url``).

    TCP keepalives find a link that died silently, so a sync never hangs for ever.
    """
    params = check_url(url)
    params = {"connect_timeout": str(connect_timeout_s), "keepalives_idle": "30",
              "keepalives_interval": "10", "keepalives_count": "3", "application_name": "edgemon-sync",
              **params}
    try:
        return psycopg.connect(conninfo.make_conninfo(**params), autocommit=True)
    except psycopg.OperationalError as e:
        raise classify(e, target_name(params)) from None


def classify(exc: psycopg.Error, where: str) -> FleetDbError:
    """A driver error as one named, one-line error (libpq's first line; it never holds a password)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    first = first.removeprefix("connection failed: ")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate in ("28P01", "28000") or "password authentication failed" in first or "no password supplied" in first:
        return AuthError(f"fleet database {where} refused the credentials: {first}")
    if isinstance(exc, psycopg.OperationalError) or sqlstate.startswith(("08", "57P")):
        return UnreachableError(f"fleet database {where} unreachable: {first}")
    return FleetDbError(f"fleet database {where}: {first}")


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
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version "
                         "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            for version in range(found + 1, SCHEMA_VERSION + 1):
                conn.execute(MIGRATIONS[version - 1])
                conn.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", [version])
    return found


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


def _stage_sql(table: str) -> str:
    """A session's staging table for ``table``'s rows: its columns without db_uuid, emptied at commit."""
    columns = ", ".join([*key_columns(table), *COLUMNS[table]])
    return (f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {SCHEMA}.{table} WITH NO DATA")


def _merge_sql(table: str) -> str:
    """Staged rows into ``table`` under one database's UUID (the query's one parameter)."""
    key = ["db_uuid", *key_columns(table)]
    columns = [*key_columns(table), *COLUMNS[table]]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[table])
    return (f"INSERT INTO {SCHEMA}.{table} (db_uuid, {', '.join(columns)}) "
            f"SELECT %s::uuid, {', '.join(columns)} FROM pg_temp.stage_{table} "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


def _delete_sql(table: str) -> str:
    key = ["db_uuid", *key_columns(table)]
    return f"DELETE FROM {SCHEMA}.{table} WHERE " + " AND ".join(f"{c} = %s" for c in key)


STAGE = {t: _stage_sql(t) for t in COLUMNS}
MERGE = {t: _merge_sql(t) for t in COLUMNS}
COPY = {t: f"COPY pg_temp.stage_{t} ({', '.join([*key_columns(t), *COLUMNS[t]])}) FROM STDIN" for t in COLUMNS}
DELETE = {t: _delete_sql(t) for t in COLUMNS}


def _values(table: str, row: dict) -> list:
    out = [row[c] for c in key_columns(table)]
    for c in COLUMNS[table]:
        value = row.get(c)
        out.append(bool(value) if c in BOOLEAN and value is not None else value)
    return out


def register(conn: psycopg.Connection, info: DeviceInfo, local_seq: int, client_utc: str) -> int:
    """Record the database's metadata and a sync session; returns the sequence number the server
    has acknowledged for it (0: new). ``client_utc`` is the recorder's clock now: the difference
    to the server's is kept, for the suspect-clock flag."""
    fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    names = list(fields)
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n != "db_uuid")
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {SCHEMA}.databases ({', '.join(names)}, local_seq, clock_offset_s) "
            f"VALUES ({', '.join(['%s'] * len(names))}, %s, extract(epoch FROM %s::timestamptz - now())) "
            f"ON CONFLICT (db_uuid) DO UPDATE SET {updates}, local_seq = EXCLUDED.local_seq, "
            f"clock_offset_s = EXCLUDED.clock_offset_s, last_sync = now()",
            [*fields.values(), local_seq, client_utc])
        acked = conn.execute(f"SELECT acked_seq FROM {SCHEMA}.databases WHERE db_uuid = %s",
                             [info.db_uuid]).fetchone()[0]
        conn.execute(f"INSERT INTO {SCHEMA}.sync_sessions (db_uuid, backlog) VALUES (%s, %s)",
                     [info.db_uuid, max(0, local_seq - acked)])
    return acked


def clashes(conn: psycopg.Connection, info: DeviceInfo) -> list[str]:
    """UUIDs of other databases sending under ``info.device_id`` whose heartbeats overlap in time
    with this database's: two recorders sharing one id (a rebuilt database follows, never overlaps)."""
    rows = conn.execute(f"""
        WITH spans AS (SELECT db_uuid, min(at_utc) AS lo, max(at_utc) AS hi FROM {SCHEMA}.heartbeats
                       WHERE device_id = %s GROUP BY db_uuid)
        SELECT o.db_uuid::text FROM spans o JOIN spans me ON me.db_uuid = %s
        WHERE o.db_uuid <> me.db_uuid AND o.lo <= me.hi AND me.lo <= o.hi ORDER BY 1""",
        [info.device_id, info.db_uuid]).fetchall()
    return [r[0] for r in rows]


def lock_database(conn: psycopg.Connection, db_uuid: str) -> None:
    """A session lock on one recorder database's rows; BusyError when another sync holds it.
    Released when the connection closes, also when the holder was killed."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", [MIGRATION_LOCK, db_uuid]).fetchone()[0]:
        raise BusyError(f"another sync of database {db_uuid} is running")


def prepare_staging(conn: psycopg.Connection) -> None:
    """Create this session's staging tables (once per connection, before ``apply_batch``)."""
    for sql in STAGE.values():
        conn.execute(sql)


def apply_batch(conn: psycopg.Connection, db_uuid: str, batch: Batch, local_seq: int) -> None:
    """Write ``batch`` and acknowledge its last sequence number in one transaction. Idempotent:
    rows are upserted and deleted by natural key, so sending a batch twice changes nothing.

    Rows travel by COPY into the session's staging tables and are merged from there: about half
    the bytes of one INSERT per row (no per-row protocol messages, the UUID sent once), which
    counts on a slow link. A batch holds each natural key once (the outbox's ``changes`` is
    unique per key), so one merge never meets a key twice.
    """
    with conn.transaction(), conn.cursor() as cur:
        for table in COLUMNS:
            rows = batch.upserts.get(table) or []
            if rows:
                with cur.copy(COPY[table]) as copy:
                    for r in rows:
                        copy.write_row(_values(table, r))
                cur.execute(MERGE[table], [db_uuid])
            keys: Sequence[tuple] = batch.deletes.get(table) or []
            if keys:
                cur.executemany(DELETE[table], [(db_uuid, *k) for k in keys])
        cur.execute(f"UPDATE {SCHEMA}.databases SET acked_seq = greatest(acked_seq, %s), "
                    f"local_seq = greatest(local_seq, %s), last_sync = now() WHERE db_uuid = %s",
                    [batch.last_seq, local_seq, db_uuid])
