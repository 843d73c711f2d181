"""Export: CSV, JSON Lines and Raven tables, filters, the --new cursor, reading beside a writer.
(Named cursors: test_export_cursors.py; files and hostile cells: test_export_files.py; BirdNET
compatibility and label names: test_export_birdnet.py.)"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

import pytest

from edgemon.storage.cursors import CursorError
from edgemon.storage.export import RAVEN_COLUMNS, ExportError, export_detections
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store

REC1 = "site1/20240501_060000.wav"
REC2 = "site2/20240502_060000.wav"
LIVE = "live:mic0"
UTC = dt.timezone.utc


def detection(source: str, start_s: float, label: str, confidence: float,
              start_utc: str | None) -> Detection:
    return Detection(device_id="rec01", source=source, start_s=start_s, end_s=start_s + 3.0,
                     start_utc=start_utc, end_utc=None, time_source="filename",
                     clock_suspect=False, label=label, confidence=confidence,
                     votes=json.dumps({"m0": [label, confidence]}), bundle_id="b1")


def commit(store: Store, source: str, detections: list[Detection]) -> None:
    store.commit_file(source, path=f"/data/{source}", size=100, mtime_ns=1, duration_s=60.0,
                      start_utc=None, time_source="filename", clock_suspect=False,
                      bundle_id="b1", detections=detections)


@pytest.fixture
def db_path(tmp_path) -> Path:
    """A database with two recordings (ids 1-3 and 4) and a live stream without clock (id 5)."""
    path = tmp_path / "detections.db"
    with Store(path) as store:
        commit(store, REC1, [detection(REC1, 0.0, "bird", 0.9, "2024-05-01T06:00:00Z"),
                             detection(REC1, 3.0, "frog", 0.4, "2024-05-01T06:00:03Z"),
                             detection(REC1, 6.0, "bird", 0.7, "2024-05-01T06:00:06Z")])
        commit(store, REC2, [detection(REC2, 1.5, "bird", 0.8, "2024-05-02T06:00:01.5Z")])
        store.insert_detections([detection(LIVE, 10.0, "frog", 0.95, None)])
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def cursor_of(db_path: Path, name: str = "default") -> int | None:
    conn = sqlite3.connect(db_path)
    row = conn.execute("SELECT last_id FROM export_cursors WHERE name = ?", [name]).fetchone()
    conn.close()
    return None if row is None else row[0]


def test_csv_file_holds_every_detection(db_path, tmp_path):
    out = tmp_path / "out.csv"
    assert export_detections(db_path, "csv", out) == 5
    rows = read_csv(out)
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    first = rows[0]
    assert (first["source"], first["label"], float(first["confidence"])) == (REC1, "bird", 0.9)
    assert (float(first["start_s"]), float(first["end_s"])) == (0.0, 3.0)
    assert first["start_utc"] == "2024-05-01T06:00:00.000Z"
    assert json.loads(first["votes"]) == {"m0": ["bird", 0.9]}
    assert rows[4]["start_utc"] == ""  # unknown time stays empty
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_csv_goes_to_stdout_without_output(db_path, capsys):
    assert export_detections(db_path) == 5
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5 and rows[3]["source"] == REC2


def test_jsonl_round_trips_values(db_path, tmp_path):
    out = tmp_path / "out.jsonl"
    assert export_detections(db_path, "jsonl", out) == 5
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[3]["start_utc"] == "2024-05-02T06:00:01.500Z"
    assert rows[3]["start_s"] == 1.5 and rows[3]["confidence"] == 0.8
    assert rows[4]["start_utc"] is None and rows[4]["source"] == LIVE


def test_raven_writes_one_table_per_source(db_path, tmp_path):
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out) == 5
    assert sorted(p.name for p in out.iterdir()) == [
        ".edgemon-raven-owner",   # whose tables these are: raven_names.claim_directory
        "20240501_060000.BirdNET.selection.table.txt", "20240502_060000.BirdNET.selection.table.txt",
        "live_mic0.BirdNET.selection.table.txt"]
    with open(out / "20240501_060000.BirdNET.selection.table.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == list(RAVEN_COLUMNS)
    assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    assert [float(r["Begin Time (s)"]) for r in rows] == [0.0, 3.0, 6.0]
    assert [float(r["End Time (s)"]) for r in rows] == [3.0, 6.0, 9.0]
    second = rows[1]
    assert (second["View"], second["Channel"], second["Low Freq (Hz)"],
            second["High Freq (Hz)"]) == ("Spectrogram 1", "1", "0", "8000")
    assert (second["Species Code"], float(second["Confidence"])) == ("frog", 0.4)
    assert second["Begin Path"] == f"/data/{REC1}"  # from the ledger
    assert float(second["File Offset (s)"]) == 3.0
    assert second["Begin Date Time (UTC)"] == "2024-05-01T06:00:03.000Z"
    with open(out / "live_mic0.BirdNET.selection.table.txt", newline="") as f:
        live = list(csv.DictReader(f, delimiter="\t"))
    assert live[0]["Begin Path"] == LIVE  # no ledger row for a stream


def test_raven_tells_apart_sources_with_one_stem(db_path, tmp_path):
    other = "site3/20240501_060000.wav"
    with Store(db_path) as store:
        commit(store, other, [detection(other, 0.0, "bird", 0.9, None)])
    out = tmp_path / "raven"
    out.mkdir()
    export_detections(db_path, "raven", out)
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("20240501"))
    assert len(names) == 2 and all(n.endswith(".BirdNET.selection.table.txt") for n in names)


@pytest.mark.parametrize("output", [None, "missing-dir"])
def test_raven_needs_an_output_directory(db_path, tmp_path, output):
    with pytest.raises(ExportError, match="directory"):
        export_detections(db_path, "raven", None if output is None else tmp_path / output)


def test_time_filters_compare_utc_and_drop_unknown_times(db_path, tmp_path):
    out = tmp_path / "out.csv"
    since = dt.datetime(2024, 5, 1, 8, 0, 3, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert export_detections(db_path, "csv", out, since=since) == 3
    assert [r["id"] for r in read_csv(out)] == ["2", "3", "4"]
    assert export_detections(db_path, "csv", out, until=dt.datetime(2024, 5, 1, 6, 0, 3)) == 1
    assert [r["id"] for r in read_csv(out)] == ["1"]  # naive = UTC; until is exclusive


def test_label_and_confidence_filters(db_path, tmp_path):
    out = tmp_path / "out.csv"
    assert export_detections(db_path, "csv", out, label=["frog"]) == 2
    assert {r["label"] for r in read_csv(out)} == {"frog"}
    assert export_detections(db_path, "csv", out, label=["bird"], min_confidence=0.8) == 2
    assert [r["id"] for r in read_csv(out)] == ["1", "4"]


def test_new_exports_each_detection_once(db_path, tmp_path):
    out = tmp_path / "out.jsonl"
    assert export_detections(db_path, "jsonl", out, new=True) == 5
    assert cursor_of(db_path) == 5
    written = out.read_text()
    # Nothing new: the file the cursor delivered to stays as it was (replacing it lost those rows).
    assert export_detections(db_path, "jsonl", out, new=True) == 0
    assert out.read_text() == written
    with Store(db_path) as store:
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None)])
    assert export_detections(db_path, "jsonl", out, new=True) == 1
    assert out.read_text().startswith(written)
    assert [json.loads(line)["start_s"] for line in out.read_text().splitlines()][-1] == 20.0
    # Cursors are independent by name.
    assert export_detections(db_path, "jsonl", tmp_path / "other.jsonl", new=True, cursor_name="other") == 6


def test_a_cursor_export_appends_to_its_file_under_one_header_and_refuses_another_format(db_path, tmp_path):
    """The README's `--output outbox/hornbills-$(date +%F).csv` run twice in a day replaced the
    morning's file with the afternoon's rows (or a bare header), and the cursor had moved past
    the morning's: they were never delivered again."""
    out = tmp_path / "today.csv"
    assert export_detections(db_path, "csv", out, new=True, cursor_name="outbox") == 5
    assert export_detections(db_path, "csv", out, new=True, cursor_name="outbox") == 0
    with Store(db_path) as store:
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None)])
    assert export_detections(db_path, "csv", out, new=True, cursor_name="outbox") == 1
    assert [r["id"] for r in read_csv(out)] == ["1", "2", "3", "4", "5", "6"]
    assert out.read_text().count("device_id") == 1                           # one header
    birdnet = tmp_path / "birdnet.csv"
    birdnet.write_text("something else\n")
    with pytest.raises(ExportError, match="birdnet.csv: not a file of this export format"):
        export_detections(db_path, "birdnet", birdnet, new=True, cursor_name="bn")
    assert birdnet.read_text() == "something else\n" and export_detections(db_path, "birdnet", tmp_path / "bn.csv",
                                                                          new=True, cursor_name="bn") == 6
    # A plain export (no cursor) would write it anew, losing what the cursor delivered: refused
    # (tests/test_export_cursors.py).
    with pytest.raises(ExportError, match="export cursor 'outbox' appends to this file"):
        export_detections(db_path, "csv", out, label=["frog"])
    assert len(read_csv(out)) == 6


def test_appending_keeps_earlier_rows_byte_for_byte_and_knows_each_format(db_path, tmp_path):
    """Found in review: earlier rows were read with universal newlines (a '\\r' in a field became
    '\\n'), any file passed as jsonl (which has no header), and a header without its newline was
    refused."""
    csv_out = tmp_path / "earlier.csv"
    header = "id,device_id,source,start_s,end_s,start_utc,end_utc,time_source,clock_suspect,label,scientific_name," \
             "common_name,confidence,votes,bundle_id,created_at,clip_path,clock_synced,start_local,score"
    earlier = (header + '\r\n0,x,"a\rb",0,1,,,,0,bird,,,0.5,,b1,,,,,\r\n').encode()
    csv_out.write_bytes(earlier)
    assert export_detections(db_path, "csv", csv_out, new=True, cursor_name="c") == 5
    assert csv_out.read_bytes().startswith(earlier) and csv_out.read_bytes().count(b"device_id") == 1
    bare = tmp_path / "bare.csv"
    bare.write_text(header)                                    # a header alone, no newline
    assert export_detections(db_path, "csv", bare, new=True, cursor_name="b") == 5
    assert [r["id"] for r in read_csv(bare)] == ["1", "2", "3", "4", "5"]
    not_jsonl = tmp_path / "out.jsonl"
    not_jsonl.write_text(header + "\n")
    with pytest.raises(ExportError, match="out.jsonl: not a file of this export format"):
        export_detections(db_path, "jsonl", not_jsonl, new=True, cursor_name="j")
    assert not_jsonl.read_text() == header + "\n"
    jsonl = tmp_path / "ok.jsonl"
    assert export_detections(db_path, "jsonl", jsonl, new=True, cursor_name="j") == 5
    with Store(db_path) as store:
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None)])
    assert export_detections(db_path, "jsonl", jsonl, new=True, cursor_name="j") == 1
    assert [json.loads(line)["id"] for line in jsonl.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_failed_write_leaves_the_cursor_for_a_repeat(db_path, tmp_path):
    birds = {"label": ["bird"], "new": True}
    assert export_detections(db_path, "csv", tmp_path / "first.csv", **birds) == 3
    assert cursor_of(db_path) == 5   # all examined: the frogs are not this cursor's to deliver
    with Store(db_path) as store:
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None),
                                 detection(LIVE, 30.0, "frog", 0.6, None)])
    with pytest.raises(ExportError, match="no-such-dir"):
        export_detections(db_path, "csv", tmp_path / "no-such-dir" / "out.csv", **birds)
    taken = tmp_path / "a-directory"  # the rename fails after the temp file was written
    taken.mkdir()
    with pytest.raises(ExportError, match="a-directory"):
        export_detections(db_path, "csv", taken, **birds)
    assert list(tmp_path.glob(".*.tmp")) == []
    assert cursor_of(db_path) == 5
    out = tmp_path / "repeat.csv"
    assert export_detections(db_path, "csv", out, **birds) == 1
    assert [r["id"] for r in read_csv(out)] == ["6"]
    assert cursor_of(db_path) == 7


def test_missing_database_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="nowhere.db"):
        export_detections(tmp_path / "nowhere.db", "csv", tmp_path / "out.csv")
    assert not (tmp_path / "nowhere.db").exists()


def test_unknown_format_is_an_export_error(db_path):
    with pytest.raises(ExportError, match="xml"):
        export_detections(db_path, "xml")


@pytest.mark.timeout(10)
def test_export_reads_beside_an_open_write_transaction(db_path, tmp_path):
    writer = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO detections (device_id, source, start_s, end_s, time_source, "
            "clock_suspect, label, confidence, bundle_id, created_at) "
            "VALUES ('rec01', 'uncommitted.wav', 0, 3, 'mtime', 0, 'bat', 0.99, 'b1', 'now')")
        out = tmp_path / "out.csv"
        assert export_detections(db_path, "csv", out) == 5
        assert "uncommitted.wav" not in out.read_text()
        assert writer.in_transaction  # the writer was never disturbed
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_cursor_that_cannot_move_keeps_the_files_from_moving(db_path, tmp_path, monkeypatch):
    """Found in review: the file was renamed into place and the cursor moved after, in its own
    transaction; when that failed (database locked, disk full), the rows were in the file but not
    behind the cursor, and a repeat appended them again. Now the cursor's write transaction is
    taken before the renames and committed right after them."""
    import edgemon.storage.cursors as cursors

    out = tmp_path / "out.csv"
    assert export_detections(db_path, "csv", out, new=True) == 5
    before = out.read_bytes()
    with Store(db_path) as store:
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None)])
    monkeypatch.setattr(cursors, "BUSY_TIMEOUT_S", 0.1)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")                  # another writer holds the database
    try:
        with pytest.raises(CursorError, match="cannot advance export cursor 'default'.*locked"):
            export_detections(db_path, "csv", out, new=True)
        assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
        assert cursor_of(db_path) == 5
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert export_detections(db_path, "csv", out, new=True) == 1        # delivered once, not twice
    assert [r["id"] for r in read_csv(out)] == ["1", "2", "3", "4", "5", "6"]
