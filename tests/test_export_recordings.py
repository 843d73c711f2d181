"""export-detections --recordings: the recordings analysed, the effort behind the detections."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.storage.export import export_recordings
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store
from tests.test_export import read_csv

runner = CliRunner()


def detection(source: str, start_s: float, start_utc: str, suspect: bool = False) -> Detection:
    return Detection(device_id="rec01", source=source, start_s=start_s, end_s=start_s + 4.0, start_utc=start_utc,
                     end_utc=None, time_source="filename", clock_suspect=suspect, label="gibbon_duet",
                     confidence=0.9, votes=json.dumps({"windows": 1}), bundle_id="b1")


def season(path):
    """A card's recordings: one with two detections, one silent, one triggered (spanning more time
    than its audio), one with an unset clock, and one that failed."""
    with Store(path) as store:
        def done(source, start, duration_s, detections=(), suspect=False, span_s=None):
            store.commit_file(source, path=f"/card/{source}", size=100, mtime_ns=1, duration_s=duration_s,
                              start_utc=start, time_source="filename", clock_suspect=suspect, bundle_id="b1",
                              detections=list(detections), span_s=span_s)
        done("20240501_220000.WAV", "2024-05-01T22:00:00Z", 600.0,
             [detection("20240501_220000.WAV", 10.0, "2024-05-01T22:00:10Z"),
              detection("20240501_220000.WAV", 300.0, "2024-05-01T22:05:00Z")])
        done("20240501_221000.WAV", "2024-05-01T22:10:00Z", 600.0)
        done("20240502_220000T.WAV", "2024-05-02T22:00:00Z", 120.5, span_s=600.0)
        done("19700101_000000.WAV", "1970-01-01T00:00:00Z", 600.0,
             [detection("19700101_000000.WAV", 7.0, "1970-01-01T00:00:07Z", suspect=True)], suspect=True)
        store.record_failure("20240502_221000.WAV", path="/card/20240502_221000.WAV", size=44, mtime_ns=1,
                             error="cannot decode")


def test_every_recording_analysed_is_a_row_with_its_effort(tmp_path, caplog):
    """Found by a season trial: a card of 7.6 h gave 265 detections and no way but SQL to know which
    hours were listened to; --coverage, the only effort an export wrote, held live streams only, so
    it gave a header and 0 rows, and a minute with no call looked like a minute not recorded."""
    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    season(db)
    caplog.set_level("INFO")
    done = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(tmp_path / "d.csv"),
                               "--recordings", str(out)])
    assert done.exit_code == 0, done.output
    assert "exported 4 recording(s), 32.0 min of audio analysed" in caplog.text
    rows = read_csv(out)
    assert [(r["source"], r["start_utc"], r["end_utc"], r["duration_s"], r["clock_suspect"], r["detections"])
            for r in rows] == [
        ("19700101_000000.WAV", "1970-01-01T00:00:00.000Z", "1970-01-01T00:10:00.000Z", "600.0", "1", "1"),
        ("20240501_220000.WAV", "2024-05-01T22:00:00.000Z", "2024-05-01T22:10:00.000Z", "600.0", "0", "2"),
        ("20240501_221000.WAV", "2024-05-01T22:10:00.000Z", "2024-05-01T22:20:00.000Z", "600.0", "0", "0"),
        # A triggered recording spans its left-out silences, as its detections' times do.
        ("20240502_220000T.WAV", "2024-05-02T22:00:00.000Z", "2024-05-02T22:10:00.000Z", "120.5", "0", "0")]
    assert {r["bundle_id"] for r in rows} == {"b1"} and {r["time_source"] for r in rows} == {"filename"}


def test_recordings_take_the_time_filter_and_jsonl(tmp_path):
    db, out = tmp_path / "d.db", tmp_path / "recordings.jsonl"
    season(db)
    count, seconds = export_recordings(db, "jsonl", out, since=None, until=None)
    assert (count, seconds) == (4, 1920.5)
    count, seconds = export_recordings(db, "jsonl", out, since=dt.datetime(2024, 5, 1, 22, 10),
                                       until=dt.datetime(2024, 5, 3))
    assert (count, seconds) == (2, 720.5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["source"], r["duration_s"], r["clock_suspect"]) for r in rows] == [
        ("20240501_221000.WAV", 600.0, 0), ("20240502_220000T.WAV", 120.5, 0)]


def test_recordings_need_a_file_of_their_own(tmp_path):
    db, out = tmp_path / "d.db", tmp_path / "d.csv"
    season(db)
    for recordings in (str(out), "-", str(tmp_path / "cov.csv"), str(db)):
        refused = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(out),
                                      "--coverage", str(tmp_path / "cov.csv"), "--recordings", recordings])
        assert refused.exit_code in (1, 2), refused.output
        assert "--recordings" in refused.output or "another option's file" in refused.output, refused.output
        assert not out.exists() and not (tmp_path / "cov.csv").exists()


def test_recordings_of_a_bundle_are_the_ones_it_analysed(tmp_path):
    """Found at the twenty-ninth session's close: `export-detections --bundle B2 --recordings F`
    wrote every recording of the ledger with the ledger's bundle and its detection counts, so a
    season re-analysed on one recording looked listened to by B2 everywhere, with B1's calls."""
    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    season(db)
    source = "20240501_221000.WAV"
    found = Detection(device_id="rec01", source=source, start_s=20.0, end_s=24.0, start_utc="2024-05-01T22:10:20Z",
                      end_utc=None, time_source="filename", clock_suspect=False, label="great_argus",
                      confidence=0.8, votes=None, bundle_id="b2")
    with Store(db) as store:   # as reanalyse stores it: this recording only, 590 s of it read
        store.replace_detections(source, "b2", [found], duration_s=590.0)
    done = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(tmp_path / "d.csv"),
                               "--bundle", "b2", "--recordings", str(out)])
    assert done.exit_code == 0, done.output
    assert [(r["source"], r["duration_s"], r["detections"], r["bundle_id"]) for r in read_csv(out)] == [
        (source, "590.0", "1", "b2")]
    # Both bundles: each recording once per bundle that analysed it, with that bundle's count.
    count, seconds = export_recordings(db, "jsonl", out, bundle=["b1", "b2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (count, seconds) == (5, 1920.5 + 590.0)
    assert [(r["source"], r["bundle_id"], r["detections"]) for r in rows if r["source"] == source] == [
        (source, "b1", 0), (source, "b2", 1)]
    # A triggered recording analysed by a bundle still spans its silences.
    assert [r["end_utc"] for r in rows if r["source"] == "20240502_220000T.WAV"] == ["2024-05-02T22:10:00.000Z"]
    assert export_recordings(db, "csv", out, bundle=["never"]) == (0, 0.0)


def season_before_analyses(db) -> str:
    """``season`` with bundle b2 reanalysing one recording (its source returned), in a database
    from before the ``analyses`` table."""
    season(db)
    source = "20240501_221000.WAV"
    found = Detection(device_id="rec01", source=source, start_s=20.0, end_s=24.0, start_utc="2024-05-01T22:10:20Z",
                      end_utc=None, time_source="filename", clock_suspect=False, label="great_argus",
                      confidence=0.8, votes=None, bundle_id="b2")
    with Store(db) as store:
        store.replace_detections(source, "b2", [found], duration_s=590.0)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE analyses")
    return source


def test_recordings_of_a_bundle_in_a_database_from_before_analyses(tmp_path):
    """A review: a database from before the `analyses` table (copied off a recorder, opened by no
    edgemon since to write) gave `--bundle B2 --recordings F` no recording at all for a bundle that
    `reanalyse` had run, while its detections exported: its calls with no effort behind them. The
    recordings a bundle stored detections of are ones it analysed, as the table's migration fills it."""
    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    source = season_before_analyses(db)
    assert export_recordings(db, "csv", out, bundle=["b2"]) == (1, 600.0)   # how much it read, no one knows
    assert [(r["source"], r["detections"], r["bundle_id"]) for r in read_csv(out)] == [(source, "1", "b2")]
    count, _ = export_recordings(db, "jsonl", out, bundle=["b1", "b2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == 5 and [(r["bundle_id"], r["detections"]) for r in rows if r["source"] == source] == [
        ("b1", 0), ("b2", 1)]
    assert export_recordings(db, "csv", out, dt.datetime(2024, 5, 2), bundle=["b2"]) == (0, 0.0)


def test_a_recording_across_the_range_s_edge_is_its_part_inside_it(tmp_path):
    """Found on Borneo (UTC+8): a recording from 23:58 to 00:02 local, exported by local day
    (`--since 2024-05-02T00:00+08:00`), left the day's recordings without it while its detections
    after midnight were in the day's detections (calls with no effort behind them), and the day
    before counted its whole four minutes with only the calls before midnight."""
    db = tmp_path / "d.db"
    with Store(db) as store:
        store.commit_file("SMA01234_20240501_235800.wav", path="/card/SMA01234_20240501_235800.wav", size=100,
                          mtime_ns=1, duration_s=240.0, start_utc="2024-05-01T15:58:00Z", time_source="filename",
                          clock_suspect=False, bundle_id="b1",
                          detections=[detection("SMA01234_20240501_235800.wav", 60.0, "2024-05-01T15:59:00Z"),
                                      detection("SMA01234_20240501_235800.wav", 150.0, "2024-05-01T16:00:30Z")])
        # a triggered recording spanning 10 min with 2 min of audio, crossing the same midnight
        store.commit_file("20240501_155500T.WAV", path="/card/20240501_155500T.WAV", size=100, mtime_ns=1,
                          duration_s=120.0, start_utc="2024-05-01T15:55:00Z", time_source="filename",
                          clock_suspect=False, bundle_id="b1", detections=[], span_s=600.0)
    kuching = dt.timezone(dt.timedelta(hours=8))
    midnight = dt.datetime(2024, 5, 2, tzinfo=kuching)
    out = tmp_path / "r.jsonl"

    def rows(**times):
        count, seconds = export_recordings(db, "jsonl", out, **times)
        got = [json.loads(line) for line in out.read_text().splitlines()]
        assert count == len(got)
        return [(r["source"], r["start_utc"], r["end_utc"], r["duration_s"], r["detections"]) for r in got], seconds

    assert rows(since=midnight, until=midnight + dt.timedelta(days=1)) == ([
        ("20240501_155500T.WAV", "2024-05-01T16:00:00.000Z", "2024-05-01T16:05:00.000Z", 60.0, 0),
        ("SMA01234_20240501_235800.wav", "2024-05-01T16:00:00.000Z", "2024-05-01T16:02:00.000Z", 120.0, 1)], 180.0)
    assert rows(since=midnight - dt.timedelta(days=1), until=midnight) == ([
        ("20240501_155500T.WAV", "2024-05-01T15:55:00.000Z", "2024-05-01T16:00:00.000Z", 60.0, 0),
        ("SMA01234_20240501_235800.wav", "2024-05-01T15:58:00.000Z", "2024-05-01T16:00:00.000Z", 120.0, 1)], 180.0)
    # A range the recordings end at, or begin at, holds none of them.
    assert rows(since=dt.datetime(2024, 5, 1, 16, 5))[0] == []
    assert rows(until=dt.datetime(2024, 5, 1, 15, 55))[0] == []
    # No filter: every recording whole, as before.
    assert rows() == ([
        ("20240501_155500T.WAV", "2024-05-01T15:55:00.000Z", "2024-05-01T16:05:00.000Z", 120.0, 0),
        ("SMA01234_20240501_235800.wav", "2024-05-01T15:58:00.000Z", "2024-05-01T16:02:00.000Z", 240.0, 2)], 360.0)


def test_recordings_carry_their_local_start_with_a_time_zone(tmp_path):
    """A Borneo trial: the detections had start_local, the recordings behind them only UTC."""
    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    season(db)
    export_recordings(db, "csv", out, timezone="Asia/Kuching")
    rows = {r["source"]: r["start_local"] for r in read_csv(out)}
    assert rows["20240501_220000.WAV"] == "2024-05-02T06:00:00.000+08:00"
    export_recordings(db, "csv", out)
    assert {r["start_local"] for r in read_csv(out)} == {""}
    done = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(tmp_path / "d.csv"),
                               "--recordings", str(out), "--timezone", "Asia/Kuching", "--quiet"])
    assert done.exit_code == 0, done.output
    assert read_csv(out)[1]["start_local"] == "2024-05-02T06:00:00.000+08:00"


def test_a_recording_running_past_the_calendars_end_is_a_row_without_an_end(tmp_path):
    """A suspect name at 9999-12-31 23:50 of 20 minutes ends past the calendar: the export ended
    in an OverflowError, the whole file unwritten; its end is empty, as its detections' times are
    past that point."""
    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    with Store(db) as store:
        store.commit_file("99991231_235000.WAV", path="/card/a", size=1, mtime_ns=1, duration_s=1200.0,
                          start_utc="9999-12-31T23:50:00Z", time_source="filename", clock_suspect=True,
                          bundle_id="b1", detections=[detection("99991231_235000.WAV", 1.0, "9999-12-31T23:50:01Z",
                                                                suspect=True)])
    assert export_recordings(db, "csv", out, timezone="Asia/Kuching") == (1, 1200.0)
    row, = read_csv(out)
    assert (row["start_utc"], row["end_utc"], row["detections"]) == ("9999-12-31T23:50:00.000Z", "", "1")
    # Cut at a bound inside it: the part up to the bound, with its end.
    assert export_recordings(db, "csv", out, since=dt.datetime(9999, 12, 31, 23, 55),
                             until=dt.datetime(9999, 12, 31, 23, 58)) == (1, 180.0)
    row, = read_csv(out)
    assert (row["start_utc"], row["end_utc"]) == ("9999-12-31T23:55:00.000Z", "9999-12-31T23:58:00.000Z")
    count, seconds = export_recordings(db, "csv", out, since=dt.datetime(9999, 12, 31, 23, 55))
    assert (count, round(seconds, 3)) == (1, 300.0)   # to the calendar's end
    row, = read_csv(out)
    assert (row["start_utc"], row["end_utc"]) == ("9999-12-31T23:55:00.000Z", "")


def test_a_bundles_charts_count_the_effort_its_recordings_export_counts_before_analyses(tmp_path):
    """In a database from before the `analyses` table, a bundle's charts counted every recording of
    the ledger as its effort (0.53 h for a bundle that reanalysed one 10-minute recording) while
    `--bundle B --recordings F` gave that one recording: the two effort figures disagreed."""
    from edgemon.review.charts import effort_hours

    db, out = tmp_path / "d.db", tmp_path / "recordings.csv"
    season_before_analyses(db)
    from edgemon.utc import parse_utc

    for bundle in ("b1", "b2"):   # the charts' hours are the rows' spans (a triggered one's silences included)
        export_recordings(db, "csv", out, bundle=[bundle])
        spans = sum((parse_utc(r["end_utc"]) - parse_utc(r["start_utc"])).total_seconds() for r in read_csv(out))
        by_hour, by_day = effort_hours(db, bundle)
        assert round(sum(by_day.values()) * 3600, 3) == round(spans, 3), bundle
    assert effort_hours(db, "b2")[1] == {"2024-05-01": 600 / 3600}


def test_a_recordings_detections_count_those_the_exports_label_and_confidence_filter_pass(tmp_path):
    """Found by a field check: with --label great_argus --min-confidence 0.8, the detections file
    held 2 rows of a recording whose effort row said 6 detections (every species, every
    confidence), so calls per hour from "the two files alone" counted the other species."""
    db = tmp_path / "d.db"
    source = "20240501_060000.WAV"

    def call(start_s: float, label: str, confidence: float) -> Detection:
        return Detection(device_id="rec01", source=source, start_s=start_s, end_s=start_s + 4.0,
                         start_utc=f"2024-05-01T06:00:{int(start_s):02d}Z", end_utc=None, time_source="filename",
                         clock_suspect=False, label=label, confidence=confidence,
                         votes=json.dumps({"windows": 1}), bundle_id="b1")

    with Store(db) as store:
        store.commit_file(source, path=f"/card/{source}", size=100, mtime_ns=1, duration_s=60.0,
                          start_utc="2024-05-01T06:00:00Z", time_source="filename", clock_suspect=False,
                          bundle_id="b1", detections=[call(0, "great_argus", 0.9), call(10, "great_argus", 0.5),
                                                      call(20, "gibbon_duet", 0.95), call(30, "gibbon_duet", 0.3)])
    for options, expected in (([], 4), (["--label", "great_argus"], 2), (["--min-confidence", "0.8"], 2),
                              (["--label", "great_argus", "--min-confidence", "0.8"], 1)):
        out, rec = tmp_path / "d.csv", tmp_path / "r.csv"
        done = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(out), "--recordings", str(rec),
                                   *options])
        assert done.exit_code == 0, done.output
        assert len(read_csv(out)) == expected
        assert [r["detections"] for r in read_csv(rec)] == [str(expected)], options


def test_the_recordings_and_detections_come_from_one_snapshot(tmp_path, monkeypatch):
    """A field-station trial: with watch storing recordings while export-detections --recordings
    ran, 1 export in 40 listed a detection whose recording the recordings file lacked: the two
    files were read in two transactions, and watch committed between them. Here watch commits
    just before the detections are read."""
    import edgemon.storage.export as export_module

    db = tmp_path / "d.db"
    season(db)
    select = export_module._select

    def watch_commits_meanwhile(*args, **kwargs):
        with Store(db) as store:   # watch, in another connection: a recording and its detection
            store.commit_file("20240503_220000.WAV", path="/card/20240503_220000.WAV", size=100, mtime_ns=1,
                              duration_s=600.0, start_utc="2024-05-03T22:00:00Z", time_source="filename",
                              clock_suspect=False, bundle_id="b1",
                              detections=[detection("20240503_220000.WAV", 5.0, "2024-05-03T22:00:05Z")])
        return select(*args, **kwargs)

    monkeypatch.setattr(export_module, "_select", watch_commits_meanwhile)
    done = runner.invoke(app, ["export-detections", "--db", str(db), "--output", str(tmp_path / "d.csv"),
                               "--recordings", str(tmp_path / "r.csv")])
    assert done.exit_code == 0, done.output
    recordings = {r["source"]: int(r["detections"]) for r in read_csv(tmp_path / "r.csv")}
    detections = [r["source"] for r in read_csv(tmp_path / "d.csv")]
    assert set(detections) <= set(recordings), (detections, recordings)
    assert {s: detections.count(s) for s in recordings} == recordings
