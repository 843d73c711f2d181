"""A fleet server for the sync tests: a real PostgreSQL server (devtools/postgres_server.py) that
can be stopped and restarted, and both sides' rows in one comparable form. The recorder databases
come from devtools/recorder_db.py."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg

from devtools.postgres_server import postgres_server, server_bin


@dataclasses.dataclass
class FleetServer:
    """A running PostgreSQL server: ``url`` (libpq form, superuser, no password), its data
    directory, and ``stop``/``start`` to take it away mid-sync."""

    url: str
    data_dir: str
    options: str
    as_user: list[str]

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def stop(self) -> None:
        subprocess.run(self.as_user + [server_bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(self.as_user + [server_bin("pg_ctl"), "-D", self.data_dir, "-w", "-l",
                                       os.path.join(os.path.dirname(self.data_dir), "log2"),
                                       "-o", self.options, "start"], check=True, capture_output=True)

    def reset(self) -> None:
        """Drop the fleet schema, so a test starts from an empty fleet database."""
        with self.connect() as conn:
            conn.execute("DROP SCHEMA IF EXISTS edgemon CASCADE")


@contextlib.contextmanager
def fleet_server() -> Iterator[FleetServer]:
    with postgres_server() as sqlalchemy_url:
        url = sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        opts = Path(data_dir, "postmaster.opts").read_text()
        # postmaster.opts: the binary then each argument quoted; keep what follows the binary.
        options = opts.split(" ", 1)[1].strip().replace('"', "")
        options = " ".join(a for a in options.split(" ") if not a.startswith("-D") and a != data_dir)
        yield FleetServer(url, data_dir, options, ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])


DETECTION_KEY = "source, start_s, label, bundle_id"
DETECTION_VALUES = "device_id, end_s, confidence, clock_suspect"


def local_state(path: Path) -> dict[str, set]:
    """Every synced table of the recorder database as a set of comparable tuples."""
    conn = sqlite3.connect(path)
    try:
        uuid = conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()[0]
        return {
            "detections": {(uuid, *r[:-1], bool(r[-1])) for r in conn.execute(
                f"SELECT {DETECTION_KEY}, device_id, end_s, round(confidence, 3), clock_suspect FROM detections")},
            "files": {(uuid, *r) for r in conn.execute("SELECT source, state, attempts FROM files")},
            "coverage": {(uuid, *r) for r in conn.execute(
                "SELECT source, replace(minute_utc, '.000Z', ''), analysed_s FROM coverage")},
            "heartbeats": {(uuid, *r) for r in conn.execute("SELECT run_id, uptime_s, state FROM heartbeats")},
            "analyses": {(uuid, *r) for r in conn.execute("SELECT source, bundle_id FROM analyses")},
        }
    finally:
        conn.close()


def server_state(conn: psycopg.Connection, uuids: list[str] | None = None) -> dict[str, set]:
    """The fleet database's rows in ``local_state``'s form (for the databases ``uuids``; None: all)."""
    where = "" if uuids is None else "WHERE db_uuid::text = ANY(%s)"
    args = [] if uuids is None else [uuids]
    q = lambda sql: [tuple(r) for r in conn.execute(sql.format(where=where), args).fetchall()]
    return {
        "detections": set(q(f"SELECT db_uuid::text, {DETECTION_KEY}, device_id, end_s, "
                            "round(confidence::numeric, 3)::float, clock_suspect FROM edgemon.detections {where}")),
        "files": set(q("SELECT db_uuid::text, source, state, attempts FROM edgemon.files {where}")),
        "coverage": set(q("SELECT db_uuid::text, source, to_char(minute_utc AT TIME ZONE 'UTC', "
                          "'YYYY-MM-DD\"T\"HH24:MI:SS'), analysed_s FROM edgemon.coverage {where}")),
        "heartbeats": set(q("SELECT db_uuid::text, run_id, uptime_s, state FROM edgemon.heartbeats {where}")),
        "analyses": set(q("SELECT db_uuid::text, source, bundle_id FROM edgemon.analyses {where}")),
    }


def count_server_detections(conn: psycopg.Connection) -> tuple[int, int]:
    """(rows, distinct natural keys) of the server's detections: equal when nothing is duplicated."""
    return conn.execute(f"SELECT count(*), count(DISTINCT (db_uuid, {DETECTION_KEY})) "
                        "FROM edgemon.detections").fetchone()
