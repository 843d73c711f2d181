"""The edge CLI driven through its test runner: classify, export-detections, info."""

from __future__ import annotations

import csv
import io
import json

import pytest
import soundfile
from typer.testing import CliRunner

from edgemon.cli import app
from tests.watch_helpers import watch_until_idle, write_wav

runner = CliRunner()


@pytest.fixture(scope="module")
def duet_recording(borneo_dir, tmp_path_factory):
    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[1]
    x = soundfile.read(clip, dtype="float32")[0]
    return write_wav(tmp_path_factory.mktemp("rec") / "20180301_060000.WAV", x)


def test_classify_prints_detections_as_csv_with_utc_times(duet_recording):
    result = runner.invoke(app, ["classify", str(duet_recording), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and rows[0]["label"] == "gibbon_duet"
    assert rows[0]["start_utc"].startswith("2018-03-01T06:00")


def test_classify_table_and_a_bad_file_among_good_ones(duet_recording, tmp_path):
    bad = tmp_path / "broken.WAV"
    bad.write_bytes(b"RIFF....junk")
    result = runner.invoke(app, ["classify", str(duet_recording), str(bad)])
    assert result.exit_code == 1
    assert "gibbon_duet" in result.stdout and "broken.WAV" in result.output
    assert "Traceback" not in result.output


def test_export_formats_and_incremental_sync(duet_recording, tmp_path):
    db = tmp_path / "d.db"
    watch_until_idle(duet_recording.parent, db)
    out = runner.invoke(app, ["export-detections", "--db", str(db), "--new"])
    assert out.exit_code == 0 and "gibbon_duet" in out.stdout
    again = runner.invoke(app, ["export-detections", "--db", str(db), "--new"])
    assert again.exit_code == 0 and "gibbon_duet" not in again.stdout   # already delivered
    jsonl = tmp_path / "d.jsonl"
    assert runner.invoke(app, ["export-detections", "--db", str(db), "--format", "jsonl",
                               "--output", str(jsonl), "--label", "gibbon_duet"]).exit_code == 0
    assert all(json.loads(line)["label"] == "gibbon_duet" for line in jsonl.read_text().splitlines())
    raven = tmp_path / "raven"
    raven.mkdir()
    assert runner.invoke(app, ["export-detections", "--db", str(db), "--format", "raven",
                               "--output", str(raven)]).exit_code == 0
    table = next(raven.glob("*.BirdNET.selection.table.txt")).read_text().splitlines()
    assert table[0].startswith("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)")
    none = runner.invoke(app, ["export-detections", "--db", str(db), "--since", "2019-01-01"])
    assert none.exit_code == 0 and len(none.stdout.splitlines()) == 1  # header only


@pytest.mark.parametrize("args, message", [
    (["export-detections", "--db", "/nonexistent/d.db"], "d.db"),
    (["export-detections", "--since", "yesterday"], "not an ISO 8601 time"),
    (["classify", "x.wav", "--format", "xml"], "--format"),
    (["info", "--models", "/nonexistent"], "manifest"),
])
def test_bad_options_give_one_line_errors(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
