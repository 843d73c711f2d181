"""The fleet views where lineages fork: ``review_precision`` and ``effort_daily`` at this
edgemon's view revision, against view revision 3's forms on the same data in the same run.

    nice -n 10 python bench/fleet_views.py            # 20 devices, 4 200 recordings each
    nice -n 10 python bench/fleet_views.py --recordings 1000

A throwaway PostgreSQL server; rows written directly (COPY), as sync would leave them: per device
``--recordings`` finished ledger rows of half-hour recordings with six detections each, a verdict
on every second recording's first detection; two more devices are cards cloned from devices 0 and
1 under new device ids (``forked_from``) holding copies of their first ``--copied`` recordings,
detections and verdicts. Prints the row counts, each view's best of 3, and what the clones count
under (revision 4 counts a copied row under the device that made it; revision 3 under both).
Then ``detections_daily_all`` and ``effort_daily`` against revision 4's forms (revision 5 finds
each row's device through the ids databases were registered under; here every id is registered,
so the rows are the same).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.postgres_server import postgres_server  # noqa: E402
from edgemon.sync import fleetdb  # noqa: E402
from edgemon.sync.fleetschema import SCHEMA, detections_daily_sql  # noqa: E402
from edgemon.sync.fleetviews import (_BY_THE_SERVERS_CLOCK, _EFFORT_ONCE_PER_MINUTE, _FILE_EFFORT_BY_ANALYSER,  # noqa: E402
                                     _FROM_CURRENT_BY_SYNC, _effort_once_per_minute)

COLUMNS = {
    "detections": "db_uuid, source, start_s, label, bundle_id, device_id, end_s, start_utc, time_source, "
                  "clock_suspect, confidence, created_at",
    "files": "db_uuid, source, state, duration_s, start_utc, updated_at",
    "reviews": "db_uuid, source, start_s, label, bundle_id, reviewer, verdict, reviewed_at",
}


def fill(conn, devices: int, recordings: int, copied: int) -> dict[str, int]:
    rng = random.Random(1)
    dbs = [(str(uuid.uuid4()), f"rec-{i}", None) for i in range(devices)]
    clones = [(str(uuid.uuid4()), f"rec-{devices + i}", dbs[i][0]) for i in range(2)]
    for u, device, fork in dbs + clones:
        conn.execute(f"INSERT INTO {SCHEMA}.databases (db_uuid, device_id, timezone, forked_from) "
                     "VALUES (%s, %s, 'UTC', %s)", [u, device, fork])
    rows = {name: io.StringIO() for name in COLUMNS}
    for i, (u, device, _) in enumerate(dbs):
        for f in range(recordings):
            source = f"{device}/f{f:05d}.wav"
            start = f"2024-05-{1 + (f // 48) % 28:02d}T{(f % 48) // 2:02d}:{30 * (f % 2):02d}:00Z"
            holders = [u] + ([clones[i][0]] if i < 2 and f < copied else [])
            for holder in holders:
                rows["files"].write(f"{holder}\t{source}\tdone\t1800\t{start}\t2024-06-01T00:00:00Z\n")
            for k in range(6):
                s, label = k * 300.0 + 0.5, rng.choice("abcd")
                verdict = rng.choice(["correct", "wrong", "unsure"])
                for holder in holders:
                    rows["detections"].write(f"{holder}\t{source}\t{s}\t{label}\tb1\t{device}\t{s + 3}\t{start}\t"
                                             "filename\tf\t0.7\t2024-06-01T00:00:00Z\n")
                    if k == 0 and f % 2 == 0:
                        rows["reviews"].write(f"{holder}\t{source}\t{s}\t{label}\tb1\tann\t{verdict}\t"
                                              "2024-06-02T00:00:00Z\n")
    for name, buf in rows.items():
        buf.seek(0)
        with conn.cursor().copy(f"COPY {SCHEMA}.{name} ({COLUMNS[name]}) FROM STDIN") as copy:
            while chunk := buf.read(1 << 20):
                copy.write(chunk)
    conn.execute("ANALYZE")
    return {name: conn.execute(f"SELECT count(*) FROM {SCHEMA}.{name}").fetchone()[0] for name in COLUMNS}


def best_of_3(conn, sql: str) -> tuple[float, list]:
    times, rows = [], []
    for _ in range(3):
        t0 = time.monotonic()
        rows = conn.execute(sql).fetchall()
        times.append(time.monotonic() - t0)
    return min(times), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--recordings", type=int, default=4200, help="per device")
    ap.add_argument("--copied", type=int, default=2000, help="recordings each clone holds a copy of")
    args = ap.parse_args()
    with postgres_server() as url:
        conn = fleetdb.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        with conn.transaction():
            fleetdb.migrate(conn)
        conn.autocommit = True
        counts = fill(conn, args.devices, args.recordings, args.copied)
        print("rows: " + ", ".join(f"{n} {name}" for name, n in counts.items()))
        # Revision 3's forms, on the same data.
        precision3 = _BY_THE_SERVERS_CLOCK[_BY_THE_SERVERS_CLOCK.index(f"CREATE OR REPLACE VIEW {SCHEMA}.review_precision"):]
        conn.execute(precision3.replace(f"CREATE OR REPLACE VIEW {SCHEMA}.review_precision",
                                        "CREATE TEMP VIEW review_precision3", 1))
        conn.execute(_EFFORT_ONCE_PER_MINUTE.replace(f"CREATE OR REPLACE VIEW {SCHEMA}.effort_daily",
                                                     "CREATE TEMP VIEW effort_daily3", 1))
        clones = (f"rec-{args.devices}", f"rec-{args.devices + 1}")
        for view, measure in (("review_precision", "judged"), ("effort_daily", "files")):
            now, _ = best_of_3(conn, f"SELECT * FROM {SCHEMA}.{view}")
            then, _ = best_of_3(conn, f"SELECT * FROM {view}3")
            print(f"view {view}: {now * 1000:.0f} ms; as revision 3: {then * 1000:.0f} ms "
                  f"({now / then:.2f}x as long)")
            for name, relation in (("now", f"{SCHEMA}.{view}"), ("revision 3", f"{view}3")):
                under = dict(conn.execute(f"SELECT site, sum({measure})::bigint FROM {relation} "
                                          "WHERE site = ANY(%s) GROUP BY 1", [list(clones)]).fetchall())
                print(f"  {measure} counted under the clones' new ids, {name}: "
                      f"{sum(under.values())} (made by the devices they were cloned from)")
        # Revision 5 resolves each row's device through the registered ids: against revision 4's forms.
        revision4 = {"detections_daily_all": detections_daily_sql("detections_daily_all", _FROM_CURRENT_BY_SYNC,
                                                               "CREATE OR REPLACE VIEW"),
                     "effort_daily": _effort_once_per_minute(_FILE_EFFORT_BY_ANALYSER)}
        for view, text in revision4.items():
            conn.execute(text.replace(f"CREATE OR REPLACE VIEW {SCHEMA}.{view}", f"CREATE TEMP VIEW {view}4", 1))
            now, rows_now = best_of_3(conn, f"SELECT * FROM {SCHEMA}.{view}")
            then, rows_then = best_of_3(conn, f"SELECT * FROM {view}4")
            print(f"view {view}: {now * 1000:.0f} ms; as revision 4: {then * 1000:.0f} ms "
                  f"({now / then:.2f}x as long; same rows: {sorted(rows_now) == sorted(rows_then)})")


if __name__ == "__main__":
    main()
