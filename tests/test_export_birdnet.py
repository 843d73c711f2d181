"""Say what the model knows (issue 13): label names from the bundles the daemon ran, BirdNET's
CSV and Raven conventions, votes as objects, rounded confidences, a --min-confidence the
bundles cannot reach; `classify` writes export's columns and names the file it cannot read."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import sqlite3

import pytest
import soundfile
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.files.classify import classify_files, format_rows
from edgemon.storage.export import ExportError, export_detections
from edgemon.storage.store import Store
from edgemon.storage.tables import BIRDNET_COLUMNS, COLUMNS, RAVEN_COLUMNS
from tests.conftest import hoots
from tests.test_export import LIVE, REC1, db_path, detection, read_csv  # noqa: F401 (fixture)
from tests.watch_helpers import analyzer, write_wav

runner = CliRunner()
MANIFEST = {"bundle_id": "b1", "labels": ["background", "bird", "frog"], "confidence_max": 0.95,
            "label_names": {"bird": {"scientific": "Buceros rhinoceros", "common": "Rhinoceros hornbill"},
                            "background": {"scientific": None}, "frog": "not a mapping"}}


@pytest.fixture
def named_db(db_path):
    with Store(db_path) as store:
        store.record_bundle("b1", MANIFEST)
    return db_path


def test_record_bundle_stores_manifest_and_names_and_tolerates_gaps(named_db):
    conn = sqlite3.connect(named_db)
    assert json.loads(conn.execute("SELECT manifest FROM bundles").fetchone()[0]) == MANIFEST
    assert conn.execute("SELECT label, scientific_name, common_name FROM labels ORDER BY label").fetchall() == [
        ("background", None, None), ("bird", "Buceros rhinoceros", "Rhinoceros hornbill"), ("frog", None, None)]
    conn.close()
    with Store(named_db) as store:   # again, and from a manifest without the optional fields
        store.record_bundle("b1", {"labels": ["bird"]})
        store.record_bundle("b2", {})
    conn = sqlite3.connect(named_db)
    assert conn.execute("SELECT bundle_id, label, common_name FROM labels ORDER BY 1").fetchall() == [
        ("b1", "bird", None)]
    assert conn.execute("SELECT count(*) FROM bundles").fetchone()[0] == 2
    assert "detections_label_start_utc" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_birdnet_csv_has_birdnet_columns_and_names(named_db, tmp_path):
    out = tmp_path / "b.csv"
    assert export_detections(named_db, "birdnet", out) == 5
    with open(out, newline="") as f:
        assert next(csv.reader(f)) == list(BIRDNET_COLUMNS)
    rows = read_csv(out)
    assert rows[0] == {"Start (s)": "0.0", "End (s)": "3.0", "Scientific name": "Buceros rhinoceros",
                       "Common name": "Rhinoceros hornbill", "Confidence": "0.9", "File": f"/data/{REC1}"}
    assert (rows[1]["Scientific name"], rows[1]["Common name"]) == ("frog", "frog")   # BirdNET's way for no name
    assert rows[4]["File"] == LIVE


def test_csv_and_jsonl_carry_names_objects_and_rounded_confidence(named_db, tmp_path):
    with Store(named_db) as store:
        store.insert_detections([detection(LIVE, 40.0, "bird", 0.123456789, None)])
    export_detections(named_db, "csv", tmp_path / "d.csv")
    rows = read_csv(tmp_path / "d.csv")
    assert (rows[0]["scientific_name"], rows[0]["common_name"]) == ("Buceros rhinoceros", "Rhinoceros hornbill")
    assert (rows[1]["scientific_name"], rows[1]["common_name"]) == ("", "")   # unknown stays empty
    assert rows[5]["confidence"] == "0.1235"
    export_detections(named_db, "jsonl", tmp_path / "d.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert lines[0]["votes"] == {"m0": ["bird", 0.9]} and lines[5]["confidence"] == 0.1235
    assert lines[1]["common_name"] is None


def test_raven_tables_carry_birdnet_columns_and_names(named_db, tmp_path):
    out = tmp_path / "raven"
    out.mkdir()
    export_detections(named_db, "raven", out)
    with open(out / "20240501_060000.BirdNET.selection.table.txt", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0])[:12] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                                  "Low Freq (Hz)", "High Freq (Hz)", "Common Name", "Species Code",
                                  "Confidence", "Begin Path", "File Offset (s)"]
    assert (rows[0]["Common Name"], rows[0]["Species Code"], rows[0]["Scientific Name"]) == (
        "Rhinoceros hornbill", "bird", "Buceros rhinoceros")


def test_a_live_detection_with_a_clip_points_birdnet_and_raven_at_the_clip(named_db, tmp_path):
    """Found in review: live rows exported `live:mic0` as the file and Unix seconds as the offset,
    with the clip beside them unused. A row with a clip now names the clip and the seconds in it."""
    import dataclasses

    clip = str(tmp_path / "clips" / "20240501T070000000Z_bird.flac")
    with Store(named_db) as store:
        store.insert_detections([dataclasses.replace(detection(LIVE, 1714546800.25, "bird", 0.9, None), end_s=1714546804.75,
                                                     clip_path=clip, clip_offset_s=2.0, clip_end_s=6.5)])
        # A 300 s duet: its clip holds its first 60 s, and the selection ends where the clip does.
        store.insert_detections([dataclasses.replace(detection(LIVE, 1714547000.0, "bird", 0.9, None),
                                                     end_s=1714547300.0, clip_path=clip + ".long",
                                                     clip_offset_s=2.0, clip_end_s=62.0)])
    export_detections(named_db, "birdnet", tmp_path / "b.csv")
    live = [r for r in read_csv(tmp_path / "b.csv") if r["File"] == clip]
    assert [(r["Start (s)"], r["End (s)"]) for r in live] == [("2.0", "6.5")]
    assert [(r["Start (s)"], r["End (s)"]) for r in read_csv(tmp_path / "b.csv")
            if r["File"] == clip + ".long"] == [("2.0", "62.0")]
    assert read_csv(tmp_path / "b.csv")[4]["File"] == LIVE                   # no clip: in no file but its source
    out = tmp_path / "raven"
    out.mkdir()
    export_detections(named_db, "raven", out)
    tables = {table.name: list(csv.DictReader(io.StringIO(table.read_text()), delimiter="\t")) for table in out.iterdir()}
    # Each clip has its own table, as BirdNET names a recording's: Raven opens the clip beside it,
    # and the table's seconds are the clip's. What has no clip stays in its source's table.
    [row] = tables["20240501T070000000Z_bird.BirdNET.selection.table.txt"]
    assert (row["Begin Path"], row["Begin Time (s)"], row["End Time (s)"], row["File Offset (s)"]) == (clip, "2.0", "6.5", "2.0")
    [long] = tables["20240501T070000000Z_bird.flac.BirdNET.selection.table.txt"]
    assert (long["Begin Path"], long["End Time (s)"]) == (clip + ".long", "62.0")
    live_rows = tables[f"{LIVE.replace(':', '_')}.BirdNET.selection.table.txt"]
    assert live_rows and all(r["Begin Path"] == LIVE for r in live_rows)
    export_detections(named_db, "jsonl", tmp_path / "d.jsonl")
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [(r["clip_offset_s"], r["clip_end_s"]) for r in records if r["clip_path"]] == [(2.0, 6.5), (2.0, 62.0)]


def test_min_confidence_above_the_bundles_reach_is_an_error(named_db, tmp_path):
    with pytest.raises(ExportError, match=r"0\.97 is above 0\.95"):
        export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=0.97)
    assert not (tmp_path / "d.csv").exists()
    assert export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=0.95) == 1   # reachable: the live frog
    result = runner.invoke(app, ["export-detections", "--db", str(named_db), "--min-confidence", "0.99"])
    assert result.exit_code == 1 and "0.95" in result.output and result.stdout == ""


def test_min_confidence_compares_the_confidence_as_exports_show_it(named_db, tmp_path):
    """A newcomer saw 0.8762 in a CSV and had --min-confidence 0.8762 refused as above 0.876186;
    a later trial saw a row shown at 0.7907 left out by --min-confidence 0.7907."""
    with contextlib.closing(sqlite3.connect(named_db)) as conn, conn:   # stored unrounded, as a bundle's are
        conn.execute("UPDATE detections SET confidence = confidence - 0.000328")
    export_detections(named_db, "csv", tmp_path / "all.csv")
    shown = sorted(float(r["confidence"]) for r in read_csv(tmp_path / "all.csv"))
    assert len(shown) == 5 and all(round(v, 2) != v for v in shown)
    for value in shown:
        export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=value)
        kept = [float(r["confidence"]) for r in read_csv(tmp_path / "d.csv")]
        assert sorted(kept) == [v for v in shown if v >= value]
    with contextlib.closing(sqlite3.connect(named_db)) as conn, conn:   # shown as 0.22, half a step below 0.2201
        conn.execute("UPDATE detections SET confidence = 0.22005 WHERE id = (SELECT min(id) FROM detections)")
    assert export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=0.2201) == 4
    assert export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=0.22) == 5
    with Store(named_db) as store:
        store.record_bundle("b1", {**MANIFEST, "confidence_max": 0.876186})
    with pytest.raises(ExportError, match=r"0\.8763 is above 0\.8762, the highest"):
        export_detections(named_db, "csv", tmp_path / "d.csv", min_confidence=0.8763)


def test_no_reach_check_when_a_bundle_records_no_maximum(db_path, tmp_path):
    assert export_detections(db_path, "csv", tmp_path / "d.csv", min_confidence=0.99) == 0   # none recorded
    with Store(db_path) as store:
        store.record_bundle("b1", {"labels": ["bird"]})
    assert export_detections(db_path, "csv", tmp_path / "d.csv", min_confidence=0.99) == 0


@pytest.fixture(scope="module")
def hoot_recording(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("rec") / "20240501_060000.WAV", hoots(12.0))


def test_classify_csv_is_export_csv(hoot_recording, tmp_path):
    rows, errors = classify_files([hoot_recording], analyzer())
    assert rows and not errors
    text = format_rows(rows, "csv")
    assert next(csv.reader(io.StringIO(text))) == list(COLUMNS)
    first = next(csv.DictReader(io.StringIO(text)))
    assert first["start_utc"].startswith("2024-05-01T06:00:") and first["start_utc"].endswith("Z")
    assert len(first["start_utc"]) == len("2024-05-01T06:00:00.000Z")
    assert first["source"] == hoot_recording.name and first["time_source"] == "filename"   # as watch stores it
    assert len(first["confidence"].split(".")[1]) <= 4
    # The raw vote score is known without a database (a newcomer trial found the column empty).
    assert float(first["score"]) == pytest.approx(rows[0]["score"], abs=1e-4) and 0 < float(first["score"]) <= 1


def test_classify_names_a_missing_or_unreadable_file(tmp_path):
    missing, folder = tmp_path / "missing.WAV", tmp_path / "folder.WAV"
    folder.mkdir()
    rows, errors = classify_files([missing, folder], analyzer())
    assert rows == [] and errors == [f"{missing}: no such file", f"{folder}: a directory without WAV or FLAC recordings"]
    assert not any("System error" in e for e in errors)


def test_a_refused_bundle_record_does_not_stop_the_daemon(db_path, caplog):
    """The daemon records its bundle at start; a database that refuses writes (a full disk;
    here query_only) costs the label names, not the start."""
    with Store(db_path) as store:
        store.db.execute("PRAGMA query_only = ON")
        assert store.record_bundle("b1", MANIFEST) is False
        store.db.execute("PRAGMA query_only = OFF")
        assert store.record_bundle("b1", MANIFEST) is True
    assert "b1 not recorded" in caplog.text


def test_raven_reads_a_database_older_than_clip_offsets(named_db, tmp_path):
    """A database an edgemon before m011 wrote has no ``clip_offset_s``: every row stays in its
    source's table, as that edgemon exported it."""
    with sqlite3.connect(named_db) as conn:
        conn.execute("ALTER TABLE detections DROP COLUMN clip_end_s")
        conn.execute("ALTER TABLE detections DROP COLUMN clip_offset_s")
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(named_db, "raven", out) == 5
    assert "live_mic0.BirdNET.selection.table.txt" in {p.name for p in out.iterdir()}


def test_a_plain_raven_export_leaves_no_table_of_an_earlier_export_with_rows_it_filtered_out(named_db, tmp_path,
                                                                                              caplog):
    """Found by a BirdNET user's trial: a plain Raven export with --min-confidence into the
    directory of an earlier, unfiltered one rewrote only the tables of recordings with a row that
    passed, and left the others holding the earlier export's low-confidence rows. Every table of
    the database's recordings there now holds what this export selects: the header alone, if none."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(named_db, "raven", out) == 5
    site2 = out / "20240502_060000.BirdNET.selection.table.txt"
    assert len(site2.read_text().splitlines()) == 2
    assert export_detections(named_db, "raven", out, min_confidence=0.85) == 2   # REC1's 0.9 and the live 0.95
    with open(out / "20240501_060000.BirdNET.selection.table.txt", newline="") as f:
        assert [r["Confidence"] for r in csv.DictReader(f, delimiter="\t")] == ["0.9"]
    assert site2.read_text().splitlines() == ["\t".join(RAVEN_COLUMNS)]   # its 0.8 row is gone
    assert "table(s) an earlier export left in" in caplog.text and "rewritten with their header alone" in caplog.text
    import datetime as dt
    assert export_detections(named_db, "raven", out, since=dt.datetime(2030, 1, 1)) == 0   # nothing: all emptied
    tables = sorted(out.glob("*.BirdNET.selection.table.txt"))
    assert len(tables) == 3 and all(t.read_text().splitlines() == ["\t".join(RAVEN_COLUMNS)] for t in tables)


def test_classify_says_which_files_of_a_directory_it_did_not_read(hoot_recording, tmp_path, caplog):
    """Found by a BirdNET user's trial: `classify DIR` passed over the directory's MP3 and Ogg
    files without a word (BirdNET-Analyzer reads them in a folder), though classify reads such a
    file named alone. It now says how many it left out, and an error for a folder of them alone
    names them."""
    card = tmp_path / "card"
    card.mkdir()
    (card / hoot_recording.name).write_bytes(hoot_recording.read_bytes())
    soundfile.write(card / "20240501_070000.ogg", hoots(12.0), 16000)
    (card / "20240501_080000.mp3").write_bytes(b"ID3 not really")
    (card / "CONFIG.TXT").write_text("not audio")
    with caplog.at_level(logging.WARNING, logger="edgemon.files.classify"):
        rows, errors = classify_files([card], analyzer())
    assert rows and not errors and {r["source"] for r in rows} == {hoot_recording.name}
    said = [r.getMessage() for r in caplog.records if "other formats" in r.getMessage()]
    assert said == [f"{card}: 2 file(s) in other formats not classified (1 .mp3, 1 .ogg): a directory's WAV and "
                    f"FLAC files are; name such files to classify them"]
    (card / hoot_recording.name).unlink()
    rows, errors = classify_files([card], analyzer())
    assert rows == [] and errors == [f"{card}: a directory without WAV or FLAC recordings (it holds 1 .mp3, 1 .ogg: "
                                     f"name such files to classify them)"]
    rows, errors = classify_files([card / "20240501_070000.ogg"], analyzer())   # named, it is read
    assert not errors and {r["source"] for r in rows} <= {"20240501_070000.ogg"}
