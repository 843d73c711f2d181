"""Exports carry the start in the recorder's own time zone (settings ``timezone``): csv and jsonl
``start_local``, ISO 8601 with the offset in force at that instant, across DST changes."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.storage.export import ExportError, export_detections
from edgemon.storage.store import Store
from tests.test_export import commit, detection, read_csv

runner = CliRunner()
REC = "site1/20240331_000000.wav"
LIVE = "live:mic0"
# UTC start -> local start in Europe/Berlin: the spring gap, the autumn hour twice, and a summer day.
BERLIN = {
    "2024-03-31T00:59:59Z": "2024-03-31T01:59:59.000+01:00",   # last second of winter time
    "2024-03-31T01:00:00Z": "2024-03-31T03:00:00.000+02:00",   # 02:00-03:00 never happened
    "2024-10-27T00:30:00Z": "2024-10-27T02:30:00.000+02:00",   # 02:30 summer time ...
    "2024-10-27T01:30:00Z": "2024-10-27T02:30:00.000+01:00",   # ... and 02:30 again, winter time
    "2024-07-01T22:15:00.250Z": "2024-07-02T00:15:00.250+02:00",
}


@pytest.fixture
def db_path(tmp_path) -> Path:
    path = tmp_path / "detections.db"
    with Store(path) as store:
        commit(store, REC, [detection(REC, float(i), "bird", 0.9, start) for i, start in enumerate(BERLIN)])
        store.insert_detections([detection(LIVE, 10.0, "frog", 0.95, None)])   # no clock: no start time
    return path


def test_csv_and_jsonl_start_local_follow_dst_and_name_the_offset(db_path, tmp_path):
    export_detections(db_path, "csv", tmp_path / "d.csv", timezone="Europe/Berlin")
    rows = read_csv(tmp_path / "d.csv")
    assert {r["start_utc"]: r["start_local"] for r in rows if r["start_utc"]} == \
        {_store_text(u): local for u, local in BERLIN.items()}
    assert [r["start_local"] for r in rows if not r["start_utc"]] == [""]
    for r in rows:                                 # the same instant, only written in local time
        if r["start_utc"]:
            assert dt.datetime.fromisoformat(r["start_local"]) == dt.datetime.fromisoformat(r["start_utc"])

    export_detections(db_path, "jsonl", tmp_path / "d.jsonl", timezone="Asia/Kuching")
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    by_utc = {r["start_utc"]: r["start_local"] for r in records}
    assert by_utc[_store_text("2024-07-01T22:15:00.250Z")] == "2024-07-02T06:15:00.250+08:00"   # no DST there
    assert by_utc[_store_text("2024-03-31T01:00:00Z")] == "2024-03-31T09:00:00.000+08:00"
    assert by_utc[None] is None


def _store_text(utc: str) -> str:
    """The store's fixed-width UTC text of an ISO time ('...T00:59:59.000Z')."""
    when = dt.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def test_without_a_timezone_start_local_is_empty(db_path, tmp_path):
    export_detections(db_path, "csv", tmp_path / "d.csv")
    rows = read_csv(tmp_path / "d.csv")
    assert "start_local" in rows[0] and {r["start_local"] for r in rows} == {""}


def test_cli_takes_the_timezone_from_the_settings(db_path, tmp_path):
    settings = tmp_path / "edgemon.toml"
    settings.write_text('timezone = "Europe/Berlin"\n')
    out = runner.invoke(app, ["export-detections", "--db", str(db_path), "--config", str(settings), "--quiet"])
    assert out.exit_code == 0, out.output
    locals_ = [r["start_local"] for r in csv.DictReader(io.StringIO(out.stdout))]
    assert locals_[:2] == ["2024-03-31T01:59:59.000+01:00", "2024-03-31T03:00:00.000+02:00"]
    env = runner.invoke(app, ["export-detections", "--db", str(db_path), "--format", "jsonl", "--quiet"],
                        env={"EDGEMON_TIMEZONE": "Asia/Kuching"})
    assert json.loads(env.stdout.splitlines()[0])["start_local"] == "2024-03-31T08:59:59.000+08:00"


def test_an_unknown_timezone_is_refused_before_any_output(db_path, tmp_path):
    with pytest.raises(ExportError, match="unknown IANA time zone 'Europe/Berlim'"):
        export_detections(db_path, "csv", tmp_path / "d.csv", timezone="Europe/Berlim")
    assert not (tmp_path / "d.csv").exists()


def test_cli_timezone_option_overrides_the_settings(db_path, tmp_path):
    """A newcomer's habit: `--timezone` on the command that writes the times, over the settings."""
    settings = tmp_path / "edgemon.toml"
    settings.write_text('timezone = "Europe/Berlin"\n')
    out = runner.invoke(app, ["export-detections", "--db", str(db_path), "--config", str(settings), "--quiet",
                              "--format", "jsonl", "--timezone", "Asia/Kuching"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout.splitlines()[0])["start_local"] == "2024-03-31T08:59:59.000+08:00"
    bad = runner.invoke(app, ["export-detections", "--db", str(db_path), "--timezone", "Asia/Kuchin"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    assert "Asia/Kuchin" in bad.output and "--timezone" in bad.output and bad.stdout == ""


def test_a_time_at_the_calendars_end_has_no_local_time_and_the_export_goes_on(tmp_path):
    """A recorder's name at 9999-12-31 (a clock set to its last day) stores its calls at that
    time; exported with a zone east of UTC, the whole export ended in an OverflowError."""
    path, source = tmp_path / "d.db", "99991231_230000.WAV"
    with Store(path) as store:
        commit(store, source, [detection(source, 1.0, "bird", 0.9, "9999-12-31T23:00:01Z"),
                               detection(source, 2.0, "bird", 0.9, "9999-12-31T23:00:02Z")])
    export_detections(path, "csv", tmp_path / "d.csv", timezone="Asia/Kuching")
    rows = read_csv(tmp_path / "d.csv")
    assert [(r["start_utc"][:4], r["start_local"]) for r in rows] == [("9999", ""), ("9999", "")]
    export_detections(path, "csv", tmp_path / "d.csv", timezone="America/Los_Angeles")   # west: still in the calendar
    assert read_csv(tmp_path / "d.csv")[0]["start_local"] == "9999-12-31T15:00:01.000-08:00"


def test_coverage_export_gives_each_minute_in_the_timezone(tmp_path):
    """A live recorder's effort is its coverage: `--coverage` left the minutes in UTC beside
    detections and recordings with start_local, so a Borneo dawn's minutes summed per local hour
    needed a conversion of their own (a live trial)."""
    from edgemon.storage.rows import CoverageMinute

    db = tmp_path / "live.db"
    with Store(db) as store:
        store.add_coverage([CoverageMinute(source=LIVE, device_id="d", minute_utc=minute, end_utc=end,
                                           analysed_s=60.0)
                            for minute, end in (("2026-12-07T15:59:00.000Z", "2026-12-07T16:00:00.000Z"),
                                                ("2026-12-07T16:00:00.000Z", "2026-12-07T16:01:00.000Z"))])
    settings = tmp_path / "edgemon.toml"
    settings.write_text('timezone = "Asia/Kuching"\n')
    out = runner.invoke(app, ["export-detections", "--db", str(db), "--config", str(settings), "--quiet",
                              "--output", str(tmp_path / "d.csv"), "--coverage", str(tmp_path / "c.csv")])
    assert out.exit_code == 0, out.output
    rows = read_csv(tmp_path / "c.csv")
    assert [r["minute_local"] for r in rows] == ["2026-12-07T23:59:00.000+08:00", "2026-12-08T00:00:00.000+08:00"]
    plain = runner.invoke(app, ["export-detections", "--db", str(db), "--quiet", "--format", "jsonl",
                                "--output", str(tmp_path / "d.jsonl"), "--coverage", str(tmp_path / "c.jsonl")])
    assert plain.exit_code == 0, plain.output
    assert [json.loads(line)["minute_local"] for line in (tmp_path / "c.jsonl").read_text().splitlines()] == [None, None]
