"""The detections database's schema: versioned migrations, applied in order by ``Store``.

Plain DDL, so the constraints are visible. The migration set keeps the name it was first
recorded under in databases ("edgemon.store"); a new table or column is a new migration.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils import Migrations

TIME_SOURCES = ("filename", "metadata", "mtime", "host_clock")
FILE_STATES = ("done", "failed", "quarantined")

MIGRATIONS = Migrations("edgemon.store")


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
def m006_detection_score(db: sqlite_utils.Database) -> None:
    """A detection's raw vote score beside its confidence, now the calibrated probability that it
    is right. Additive only: rows stored before keep NULL (their confidence was the raw score)."""
    db.execute("ALTER TABLE detections ADD COLUMN score REAL")
