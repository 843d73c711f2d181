"""Fleet sync under load: simulated recorders syncing into a real PostgreSQL server.

    nice -n 10 python bench/sync_load.py                      # 20 recorders x 90 days
    nice -n 10 python bench/sync_load.py --recorders 5 --days 30

Each recorder is a real SQLite database written through the schema's triggers (so its outbox is
the daemon's): per day ``--files`` recordings in the files ledger, ``--detections`` detections,
a heartbeat every 5 minutes, and for every second recorder (listen mode) 1440 coverage minutes.
Recorders 0 and 1 start 30 days behind (offline). Prints the row counts, then:

- rows per second into the server while the fleet syncs (``--workers`` sessions at once);
- bytes per detection on the wire (a detections-only database through a counting proxy);
- catch-up time of a recorder after 30 days offline, on localhost and on a throttled link
  (``--link-kbps``, a proxy that bounds the rate in each direction);
- the fleet views' query times on the full data, and ``detections_daily`` and ``edgemon fleet
  status`` again with that view as first released, and ``effort_daily`` as view revision 1 left
  it (the peers, same data, same run).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import multiprocessing
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from edgemon.storage.store import Store  # noqa: E402
from edgemon.sync.fleet_status import collect_fleet  # noqa: E402
from edgemon.sync.fleetdb import DeviceInfo  # noqa: E402
from edgemon.sync.fleetschema import NEWEST_BUNDLE, SCHEMA, detections_daily_sql  # noqa: E402
from edgemon.sync.fleetviews import _EFFORT_ONCE_PER_MINUTE  # noqa: E402
from edgemon.sync.sender import SyncConfig, sync_once  # noqa: E402
from devtools.postgres_server import postgres_server  # noqa: E402
from devtools.throttle_proxy import ThrottleProxy  # noqa: E402

LABELS = ("bird", "gibbon", "insect", "frog", "hornbill", "frog2")
DAY0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def add_days(path: Path, device: str, first: int, last: int, args, seed: int) -> dict[str, int]:
    """Days ``first``..``last``-1 of simulated work, one transaction per day; row counts added."""
    rng = random.Random(seed * 1000 + first)
    listen = int(device.split("-")[1]) % 2 == 1
    counts = dict(detections=0, files=0, coverage=0, heartbeats=0)
    with Store(path) as store:
        conn = store.db.conn
        for day in range(first, last):
            start = DAY0 + dt.timedelta(days=day)
            file_s = 86400 / args.files
            files, detections = [], []
            for f in range(args.files):
                t = start + dt.timedelta(seconds=f * file_s)
                source = f"{device}/{t:%Y%m%d_%H%M%S}.WAV"
                files.append((source, f"/media/audiomoth/{source}", 57_600_000, 1, "done", 1, None, file_s - 60,
                              iso(t), "filename", 0, "bundle-a", iso(t)))
                for k in range(args.detections // args.files):
                    off = round(rng.uniform(0, file_s - 64), 1)
                    detections.append((device, source, off, off + 3.0, iso(t + dt.timedelta(seconds=off)),
                                       iso(t + dt.timedelta(seconds=off + 3)), "filename", 0,
                                       rng.choice(LABELS), round(rng.uniform(0.5, 1.0), 4),
                                       '{"m0":0.91,"m1":0.88,"m2":0.9}', "bundle-a", iso(t)))
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT OR REPLACE INTO files (source, path, size, mtime_ns, state, attempts, error, "
                             "duration_s, start_utc, time_source, clock_suspect, bundle_id, updated_at) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", files)
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO detections (device_id, source, start_s, end_s, start_utc, end_utc, "
                             "time_source, clock_suspect, label, confidence, votes, bundle_id, created_at) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", detections)
            counts["detections"] += (conn.total_changes - before) // 2   # each insert also writes a change row
            if listen:
                conn.executemany("INSERT INTO coverage (source, minute_utc, device_id, analysed_s, end_utc, "
                                 "updated_at) VALUES ('mic', ?, ?, 59.5, ?, ?)",
                                 [(iso(start + dt.timedelta(minutes=m)), device,
                                   iso(start + dt.timedelta(minutes=m, seconds=59)), iso(start)) for m in range(1440)])
                counts["coverage"] += 1440
            conn.executemany("INSERT INTO heartbeats (run_id, mode, device_id, at_utc, started_utc, uptime_s, state, "
                             "bundle_id, disk_free_mb) VALUES (?, 'watch', ?, ?, ?, ?, 'ok', 'bundle-a', ?)",
                             [(f"run-{device}", device, iso(start + dt.timedelta(minutes=5 * b)), iso(DAY0),
                               day * 86400 + 300.0 * b, 20000.0 - day) for b in range(288)])
            conn.execute("COMMIT")
            counts["files"] += len(files)
            counts["heartbeats"] += 288
    return counts


def sync_one(job: tuple[str, str, str]) -> tuple[int, float]:
    path, device, url = job
    result = sync_once(path, DeviceInfo(device, "", timezone="Asia/Kuching", sync_interval_s=900.0),
                       SyncConfig(url=url))
    return result.changes, result.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recorders", type=int, default=20)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--offline-days", type=int, default=30)
    ap.add_argument("--files", type=int, default=48, help="recordings per day (30 min each)")
    ap.add_argument("--detections", type=int, default=240, help="detections per day")
    ap.add_argument("--workers", type=int, default=4, help="sync sessions at once")
    ap.add_argument("--link-kbps", type=float, default=1000.0, help="throttled link, kbit/s each way")
    args = ap.parse_args()
    # SIGTERM as an exception, so the PostgreSQL server started below is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = Path(tempfile.mkdtemp(prefix="edgemon-sync-load-"))

    atexit.register(shutil.rmtree, work, True)   # gigabytes at full size
    recorders = [(work / f"rec-{i:02d}.db", f"rec-{i:02d}") for i in range(args.recorders)]
    t0 = time.monotonic()
    total: dict[str, int] = {}
    for i, (path, device) in enumerate(recorders):
        upto = args.days - args.offline_days if i < 2 else args.days
        for k, v in add_days(path, device, 0, upto, args, i).items():
            total[k] = total.get(k, 0) + v
    print(f"generated {args.recorders} recorders x {args.days} days (recorders 0, 1: {args.days - args.offline_days} "
          f"days, then offline) in {time.monotonic() - t0:.0f} s: " + ", ".join(f"{v} {k}" for k, v in total.items()))

    with postgres_server() as sa_url:
        url = sa_url.replace("postgresql+psycopg://", "postgresql://")
        host, port = url.split("@")[1].split("/")[0].split(":")

        # Bytes per detection: a detections-only database through the counting proxy.
        probe = work / "probe.db"
        with Store(probe) as store:
            store.db.execute("ATTACH ? AS src", [str(recorders[-1][0])])
            store.db.execute("INSERT INTO detections SELECT * FROM src.detections LIMIT 20000")
            store.db.conn.commit()
            n_probe = store.db.execute("SELECT count(*) FROM detections").fetchone()[0]
        with ThrottleProxy((host, int(port))) as proxy:
            sync_one((str(probe), "probe", url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")))
            per_detection = (proxy.sent + proxy.received) / n_probe
            print(f"wire: {per_detection:.0f} bytes per detection ({proxy.sent / n_probe:.0f} up, "
                  f"{proxy.received / n_probe:.0f} down; {n_probe} detections, schema set-up included)")

        # The fleet syncs: every backlog at once, --workers sessions in parallel.
        t0 = time.monotonic()
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            done = pool.map(sync_one, [(str(p), d, url) for p, d in recorders])
        wall = time.monotonic() - t0
        changes = sum(c for c, _ in done)
        print(f"fleet sync: {changes} changes from {args.recorders} recorders in {wall:.1f} s with {args.workers} "
              f"workers: {changes / wall:.0f} rows/s into the server")

        # Recorders 0 and 1 come back after --offline-days days.
        for i in (0, 1):
            path, device = recorders[i]
            add_days(path, device, args.days - args.offline_days, args.days, args, i)
        changes, seconds = sync_one((str(recorders[0][0]), recorders[0][1], url))
        print(f"catch-up after {args.offline_days} days offline (localhost): {changes} changes in {seconds:.1f} s "
              f"({changes / seconds:.0f} rows/s)")
        rate = args.link_kbps * 1000 / 8
        with ThrottleProxy((host, int(port)), rate_bps=rate) as proxy:
            slow = url.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
            changes, seconds = sync_one((str(recorders[1][0]), recorders[1][1], slow))
            print(f"catch-up after {args.offline_days} days offline ({args.link_kbps:.0f} kbit/s link): {changes} "
                  f"changes in {seconds:.1f} s, {(proxy.sent + proxy.received) / 1e6:.1f} MB on the wire")

        with psycopg.connect(url) as conn:
            for table in ("detections", "files", "coverage", "heartbeats"):
                print(f"server {table}: {conn.execute(f'SELECT count(*) FROM {SCHEMA}.{table}').fetchone()[0]} rows")
            conn.execute("ANALYZE")
            took = {}
            for view in ("detections_daily", "effort_daily", "recorder_health"):
                t0 = time.monotonic()
                n = len(conn.execute(f"SELECT * FROM {SCHEMA}.{view}").fetchall())
                took[view] = time.monotonic() - t0
                print(f"view {view}: {n} rows in {took[view] * 1000:.0f} ms")
            # The peer: detections_daily as first released (every database's copy of a
            # recording's detections counted), on the same data in the same run.
            first = detections_daily_sql("first_detections_daily", NEWEST_BUNDLE)
            conn.execute(first.replace(f"CREATE VIEW {SCHEMA}.", "CREATE TEMP VIEW ", 1))
            t0 = time.monotonic()
            n = len(conn.execute("SELECT * FROM first_detections_daily").fetchall())
            peer = time.monotonic() - t0
            print(f"view detections_daily as first released: {n} rows in {peer * 1000:.0f} ms "
                  f"(the current one takes {took['detections_daily'] / peer:.2f}x as long)")
            # effort_daily as revision 1 left it (a recording under its database's device, not the
            # device of the lineage's database that analysed it; revision 4).
            conn.execute(_EFFORT_ONCE_PER_MINUTE.replace(f"CREATE OR REPLACE VIEW {SCHEMA}.effort_daily",
                                                         "CREATE TEMP VIEW revision1_effort_daily", 1))
            t0 = time.monotonic()
            n = len(conn.execute("SELECT * FROM revision1_effort_daily").fetchall())
            peer = time.monotonic() - t0
            print(f"view effort_daily as revision 1 left it: {n} rows in {peer * 1000:.0f} ms "
                  f"(the current one takes {took['effort_daily'] / peer:.2f}x as long)")
        t0 = time.monotonic()
        report = collect_fleet(url)
        status_s = time.monotonic() - t0
        print(f"edgemon fleet status (all views, 7 days): {status_s * 1000:.0f} ms, "
              f"{sum(bool(h['visit']) for h in report['health'])} recorder(s) flagged")
        with psycopg.connect(url, autocommit=True) as conn:   # the peer: the view as first released
            conn.execute(detections_daily_sql("detections_daily", NEWEST_BUNDLE, "CREATE OR REPLACE VIEW"))
        t0 = time.monotonic()
        collect_fleet(url)
        peer = time.monotonic() - t0
        print(f"edgemon fleet status with detections_daily as first released: {peer * 1000:.0f} ms "
              f"(the current views take {status_s / peer:.2f}x as long)")


if __name__ == "__main__":
    main()
