"""``edgemon reanalyse``: recordings already analysed run through another bundle, its detections
stored beside the old ones; ``export-detections --bundle`` picks one bundle's."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys

import pytest

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.files.reanalyse import ReanalyseError, reanalyse
from tests.review_helpers import BUNDLE_ID, DETECTIONS, make_review_db


def _rows(db, sql, params=()):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def test_reanalyse_stores_a_second_bundles_detections_beside_the_first(tmp_path):
    db, recordings = make_review_db(tmp_path)
    ledger_before = _rows(db, "SELECT * FROM files ORDER BY source")
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    new_id = analyzer.bundle.bundle_id
    first = reanalyse(db, analyzer)
    assert first.files == 2 and first.missing == [] and first.failed == []
    # The hoots in every recording are helmeted hornbills to the shipped bundle.
    assert first.detections >= 2
    assert _rows(db, "SELECT count(*) FROM detections WHERE bundle_id = ?", [BUNDLE_ID]) == [(len(DETECTIONS),)]
    assert _rows(db, "SELECT count(*) FROM detections WHERE bundle_id = ?", [new_id]) == [(first.detections,)]
    assert _rows(db, "SELECT DISTINCT device_id, time_source FROM detections WHERE bundle_id = ?", [new_id]) == [("S01", "filename")]
    start = _rows(db, "SELECT start_s, start_utc FROM detections WHERE bundle_id = ? AND source = ? ORDER BY start_s",
                  [new_id, "S01/20240501_060000.WAV"])[0]
    assert start[1].startswith("2024-05-01T06:00:") and start[1] > "2024-05-01T06:00:00"
    assert _rows(db, "SELECT * FROM files ORDER BY source") == ledger_before   # the ledger is untouched
    stored = _rows(db, "SELECT id, source, start_s, label FROM detections WHERE bundle_id = ? ORDER BY id", [new_id])
    with sqlite3.connect(db) as conn:   # a stale row of this bundle that the recording no longer yields
        conn.execute("INSERT INTO detections (device_id, source, start_s, end_s, label, confidence, bundle_id, "
                     "created_at, time_source, clock_suspect) VALUES ('S01', ?, 999.0, 1000.0, 'great_argus', 0.5, ?, "
                     "'2026-01-01T00:00:00Z', 'filename', 0)", ["S01/20240501_060000.WAV", new_id])
    # Run twice: the same rows, the same ids (they got new ids, orphaning their reviews), the stale one gone.
    again = reanalyse(db, analyzer)
    assert (again.files, again.detections) == (2, first.detections)
    assert _rows(db, "SELECT id, source, start_s, label FROM detections WHERE bundle_id = ? ORDER BY id", [new_id]) == stored


def test_reanalyse_refuses_a_recordings_directory_that_is_not_there(tmp_path):
    db, _ = make_review_db(tmp_path)
    with pytest.raises(ReanalyseError, match=r"--recordings .*nowhere: no such directory"):
        reanalyse(db, Analyzer(load_bundle(default_bundle_path())), tmp_path / "nowhere")


def test_reanalyse_cli_counts_missing_recordings_and_export_filters_by_bundle(tmp_path):
    db, recordings = make_review_db(tmp_path)
    moved = tmp_path / "elsewhere"
    (recordings / "S01").rename(moved)
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "edgemon", "reanalyse", "--db", str(db), "--models",
                             str(default_bundle_path()), "--recordings", str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["missing"] == ["S01/20240501_060000.WAV", "S01/20240502_070000.WAV"]
    moved.rename(recordings / "S01")
    result = subprocess.run([sys.executable, "-m", "edgemon", "reanalyse", "--db", str(db), "--models",
                             str(default_bundle_path())], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["files"] == 2
    new_id = load_bundle(default_bundle_path()).bundle_id
    for bundle, expected in ((BUNDLE_ID, {BUNDLE_ID}), (new_id, {new_id})):
        out = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db), "--bundle", bundle],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        assert rows and {r["bundle_id"] for r in rows} == expected
    everything = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db)],
                                capture_output=True, text=True, timeout=60)
    assert {r["bundle_id"] for r in csv.DictReader(io.StringIO(everything.stdout))} == {BUNDLE_ID, new_id}
