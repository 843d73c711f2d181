"""Each sync session upserts the recorder's status snapshot (what `edgemon status --json` says) as
one row per recorder database, and `edgemon fleet status` shows the problems it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devtools.recorder_db import make_recorder
from edgemon.status import collect_status
from tests.test_sync import fleet, run_sync, server, uuid_of  # noqa: F401  (fixtures: one server per module)

psycopg = pytest.importorskip("psycopg")


def test_status_snapshot_is_upserted_per_database_and_shown(fleet, tmp_path):
    a = make_recorder(tmp_path / "a.db", "site-01", files=5, seed=31)
    b = make_recorder(tmp_path / "b.db", "site-02", files=5, seed=32)
    env = {**os.environ, "EDGEMON_MIN_FREE_MB": "1e12"}   # every disk is below this watermark
    for db, site in ((a, "site-01"), (b, "site-02")):
        result = run_sync(db, fleet.url, device_id=site, env=env)
        assert result.returncode == 0, result.stderr
    with fleet.connect() as conn:
        first = dict(conn.execute("SELECT device_id, received_at FROM edgemon.status_snapshots").fetchall())
    assert set(first) == {"site-01", "site-02"}
    assert run_sync(a, fleet.url, device_id="site-01", env=env).returncode == 0   # again: replaced, not added
    with fleet.connect() as conn:
        rows = conn.execute("SELECT db_uuid::text, received_at, problems, status FROM edgemon.status_snapshots "
                            "WHERE device_id = 'site-01'").fetchall()
    assert len(rows) == 1 and rows[0][0] == uuid_of(a) and rows[0][1] > first["site-01"]
    problems, status = rows[0][2], rows[0][3]
    local = collect_status(a, min_free_mb=1e12, integrity=False)
    assert status["backlog"] == local["backlog"] and status["last_detection"] == local["last_detection"]
    assert status["problems"] == problems and any("below the" in p and "watermark" in p for p in problems)
    assert any("no heartbeat for" in p for p in problems)   # the recorder's heartbeats are from 2024

    out = subprocess.run([sys.executable, "-m", "edgemon", "fleet", "status", "--db", fleet.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    reported = out.stdout.split("problems the recorders reported in their last status (2):")[1].split("\n\n")[0]
    assert reported.count("site-01") == len(problems) and "watermark" in reported
    as_json = subprocess.run([sys.executable, "-m", "edgemon", "fleet", "status", "--db", fleet.url, "--json"],
                             capture_output=True, text=True, timeout=60)
    health = {h["site"]: h for h in json.loads(as_json.stdout)["health"]}
    assert health["site-01"]["reported_problems"] == problems and health["site-02"]["status_at"]


def test_fleet_status_text_shows_control_characters_escaped_never_raw():
    """What the fleet database holds came from recorders, some of an older edgemon that took any
    device id: one holding an escape sequence and a newline coloured the terminal and forged a
    line of its own ("NEEDS A VISIT (0)") in every table it appeared in (a review)."""
    import datetime as dt

    from edgemon.sync.fleet_status import format_fleet

    site = "s\x1b[31mRED\nNEEDS A VISIT (0)"
    at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    health = {"site": site, "db_uuid": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "last_sync": at, "visit": ["silent"],
              "status_at": at, "reported_problems": ["file a\nb.wav timed by its modification time"]}
    report = {"schema_version": 4, "view_revision": 99, "health": [health], "precision": [],
              "detections": [{"site": site, "day": at.date(), "species": "gibbon\x1b[0m", "detections": 1}],
              "effort": [{"site": site, "day": at.date(), "files": 1}]}
    text = format_fleet(report)
    assert "\x1b" not in text
    lines = text.splitlines()
    assert not any(line.startswith(("NEEDS A VISIT (0)", "b.wav")) for line in lines), text
    assert sum("s\\x1b[31mRED\\nNEEDS A VISIT (0)" in line for line in lines) == 5   # visit, health, problem, detections, effort
    assert any("file a\\nb.wav timed" in line for line in lines)
