"""Reviews travel with sync: keyed by their five-part natural key, updated and deleted like every
synced row, into a fleet table and a per-site precision view; an older fleet schema migrates."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.recorder_db import make_recorder
from edgemon.review.reviews import add_verdict, precision_by_class
from edgemon.sync import fleetdb
from edgemon.sync.fleetschema import MIGRATIONS, SCHEMA_VERSION
from edgemon.sync.outbox import Outbox, natural_columns
from tests.test_sync import fleet, run_sync, server  # noqa: F401  (fixtures: one server per module)

psycopg = pytest.importorskip("psycopg")

# A reviewer name holding what would break a separator-joined key: quote, comma, unit separator.
ODD = 'Dr. "O\'Neil", \x1f field team'
REVIEW_KEY = "source, start_s, label, bundle_id, reviewer"


def detection_ids(db: Path, label: str | None = None) -> list[int]:
    conn = sqlite3.connect(db)
    try:
        where, args = ("WHERE label = ?", [label]) if label else ("", [])
        return [r[0] for r in conn.execute(f"SELECT id FROM detections {where} ORDER BY id", args)]
    finally:
        conn.close()


def local_reviews(db: Path) -> set[tuple]:
    conn = sqlite3.connect(db)
    try:
        return set(conn.execute(f"SELECT {REVIEW_KEY}, verdict, new_label FROM reviews"))
    finally:
        conn.close()


def server_reviews(fleet) -> set[tuple]:
    with fleet.connect() as conn:
        return {tuple(r) for r in conn.execute(f"SELECT {REVIEW_KEY}, verdict, new_label FROM edgemon.reviews")}


def test_outbox_carries_reviews_by_their_five_part_key(tmp_path):
    db = make_recorder(tmp_path / "a.db", "rec-a", files=2, per_file=3, heartbeats=0, coverage_minutes=0)
    first = detection_ids(db)[0]
    add_verdict(db, first, "correct", "ann")
    add_verdict(db, first, "wrong", ODD)            # same detection, another reviewer: another row
    with Outbox(db) as outbox:
        seq = outbox.last_seq()
        batch = outbox.batch(0, 1000)
        rows = {r["reviewer"]: r for r in batch.upserts["reviews"]}
        assert set(rows) == {"ann", ODD} and rows[ODD]["verdict"] == "wrong"
        assert not {"id", "detection_id", "sync_key4"} & set(rows["ann"])   # local ids never travel
        add_verdict(db, first, "unsure", "ann")     # an update moves the key to the end of the log
        again = outbox.batch(seq, 1000)
        assert [(r["reviewer"], r["verdict"]) for r in again.upserts["reviews"]] == [("ann", "unsure")]
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM reviews WHERE reviewer = ?", [ODD])
        gone = outbox.batch(again.last_seq, 1000)
        d = rows[ODD]
        assert gone.deletes["reviews"] == [(d["source"], d["start_s"], d["label"], d["bundle_id"], ODD)]


def test_reviews_sync_and_give_precision_per_site(fleet, tmp_path):
    db = make_recorder(tmp_path / "a.db", "site-03", files=10, per_file=6, seed=21)
    birds = detection_ids(db, "bird")
    verdicts = ["correct", "correct", "wrong", "unsure", "relabel", "correct"]
    for i, verdict in zip(birds, verdicts):
        add_verdict(db, i, verdict, "ann", new_label="frog" if verdict == "relabel" else None)
    add_verdict(db, birds[2], "correct", ODD)       # the later verdict on a detection counts
    assert run_sync(db, fleet.url, device_id="site-03").returncode == 0
    assert server_reviews(fleet) == local_reviews(db)

    local = {p.label: p for p in precision_by_class(db)}["bird"]
    with fleet.connect() as conn:
        view = conn.execute("SELECT site, judged, correct, precision, low, high FROM edgemon.review_precision "
                            "WHERE label = 'bird'").fetchall()
    assert len(view) == 1 and view[0][:3] == ("site-03", local.judged, local.correct)
    assert view[0][3:] == pytest.approx((local.precision, local.low, local.high), abs=1e-9)

    with sqlite3.connect(db) as conn:               # a verdict withdrawn, another changed: both travel
        conn.execute("DELETE FROM reviews WHERE reviewer = ?", [ODD])
    add_verdict(db, birds[0], "wrong", "ann")
    assert run_sync(db, fleet.url, device_id="site-03").returncode == 0
    assert server_reviews(fleet) == local_reviews(db)
    status = subprocess.run([sys.executable, "-m", "edgemon", "fleet", "status", "--db", fleet.url],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    shown = status.stdout.split("precision per site and class, from reviews")[1]
    assert "site-03" in shown and "bird" in shown


def test_a_fleet_database_of_version_2_migrates_and_keeps_its_rows(fleet, tmp_path):
    with fleet.connect() as conn:                   # what the previous edgemon created
        conn.execute("CREATE SCHEMA edgemon")
        conn.execute("CREATE TABLE edgemon.schema_version (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        for version, ddl in enumerate(MIGRATIONS[:2], 1):
            conn.execute(ddl)
            conn.execute("INSERT INTO edgemon.schema_version (version) VALUES (%s)", [version])
    old = make_recorder(tmp_path / "old.db", "site-01", files=3, seed=22)
    with Outbox(old) as outbox, fleetdb.connect(fleet.url) as conn:   # synced under version 2
        batch = outbox.batch(0, 10_000)
        batch.upserts.pop("reviews")
        conn.execute("INSERT INTO edgemon.databases (db_uuid, device_id) VALUES (%s, 'site-01')", [outbox.db_uuid])
        with conn.transaction(), conn.cursor() as cur:
            for table in ("detections", "files"):   # the columns of version 2: no score yet
                every = [*natural_columns(table), *fleetdb.COLUMNS[table]]
                keep = [i for i, c in enumerate(every) if c != "score"]
                cur.executemany(
                    f"INSERT INTO edgemon.{table} (db_uuid, {', '.join(every[i] for i in keep)}) "
                    f"VALUES (%s{', %s' * len(keep)})",
                    [(outbox.db_uuid, *(fleetdb._values(table, r)[i] for i in keep)) for r in batch.upserts[table]])
    with fleet.connect() as conn:
        before = conn.execute("SELECT count(*) FROM edgemon.detections").fetchone()[0]
    assert before > 0

    new = make_recorder(tmp_path / "new.db", "site-02", files=3, seed=23)
    add_verdict(new, detection_ids(new)[0], "correct", "ann")
    result = run_sync(new, fleet.url, device_id="site-02")
    assert result.returncode == 0, result.stderr
    with fleet.connect() as conn:
        assert fleetdb.schema_version(conn) == SCHEMA_VERSION == 4
        assert conn.execute("SELECT count(*) FROM edgemon.detections WHERE device_id = 'site-01'").fetchone()[0] == before
        assert conn.execute("SELECT count(*) FROM edgemon.reviews").fetchone()[0] == 1
