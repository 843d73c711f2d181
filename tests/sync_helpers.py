"""Recorders and a fleet server for the sync tests: real SQLite files written through ``Store``,
a real PostgreSQL server (tests/postgres_server.py) that can be stopped and restarted."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg

from edgemon.storage.store import CoverageMinute, Detection, Heartbeat, Store
from tests.postgres_server import _bin, postgres_server

LABELS = ("bird", "gibbon", "insect", "frog")


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
        subprocess.run(self.as_user + [_bin("pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(self.as_user + [_bin("pg_ctl"), "-D", self.data_dir, "-w", "-l",
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


def make_recorder(path: Path, device_id: str, *, files: int = 20, per_file: int = 10, seed: int = 0,
                  bundle_id: str = "bundle-a", start_day: str = "2024-05-01", heartbeats: int = 5,
                  clock_suspect_every: int = 0, coverage_minutes: int = 10) -> Path:
    """A recorder database with ``files`` analysed files of ``per_file`` detections each, live
    coverage minutes and heartbeats, written through ``Store`` like the daemon does."""
    rng = random.Random(seed)
    with Store(path) as store:
        for i in range(files):
            add_file(store, device_id, i, per_file, rng, bundle_id=bundle_id, start_day=start_day,
                     clock_suspect=bool(clock_suspect_every) and i % clock_suspect_every == 0)
        store.add_coverage(CoverageMinute(source="mic", device_id=device_id,
                                          minute_utc=f"{start_day}T05:{m:02d}:00Z",
                                          end_utc=f"{start_day}T05:{m:02d}:59Z", analysed_s=55.0,
                                          lost_dropped_s=5.0) for m in range(coverage_minutes))
        for b in range(heartbeats):
            store.add_heartbeat(Heartbeat(run_id=f"run-{seed}", mode="watch", device_id=device_id,
                                          at_utc=f"{start_day}T06:{b:02d}:00Z",
                                          started_utc=f"{start_day}T06:00:00Z", uptime_s=60.0 * b,
                                          disk_free_mb=5000.0, files_done=b))
    return path


def add_file(store: Store, device_id: str, i: int, per_file: int, rng: random.Random, *,
             bundle_id: str = "bundle-a", start_day: str = "2024-05-01", clock_suspect: bool = False) -> None:
    """Commit file number ``i`` (one minute of audio) with ``per_file`` random detections; called
    again for the same ``i`` it re-processes the file: its old detections are replaced."""
    source = f"{device_id}/{start_day.replace('-', '')}_{i // 60:02d}{i % 60:02d}00.wav"
    start = f"{start_day}T{i // 60:02d}:{i % 60:02d}:00Z"
    starts = sorted(rng.sample(range(0, 570), per_file))
    detections = [Detection(device_id=device_id, source=source, start_s=s / 10 + 0.1, end_s=s / 10 + 3.1,
                            start_utc=start, end_utc=None, time_source="filename", clock_suspect=clock_suspect,
                            label=rng.choice(LABELS), confidence=round(rng.uniform(0.5, 1), 3),
                            votes='{"m0": 0.9}', bundle_id=bundle_id) for s in starts]
    # Two detections at one start with one label would be one row: keep the natural key unique.
    unique = {(d.start_s, d.label): d for d in detections}
    store.commit_file(source, path=f"/data/{source}", size=1000 + i, mtime_ns=rng.randrange(10**12),
                      duration_s=60.0, start_utc=start, time_source="filename", clock_suspect=clock_suspect,
                      bundle_id=bundle_id, detections=list(unique.values()))


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
    }


def count_server_detections(conn: psycopg.Connection) -> tuple[int, int]:
    """(rows, distinct natural keys) of the server's detections: equal when nothing is duplicated."""
    return conn.execute(f"SELECT count(*), count(DISTINCT (db_uuid, {DETECTION_KEY})) "
                        "FROM edgemon.detections").fetchone()
