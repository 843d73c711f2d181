"""What export leaves on disk (issues 13 and 14): modes from the umask, Raven tables that
cursors append to, long source names, cells a spreadsheet would run, and nothing at all from a
database that is not one."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import warnings

import pytest
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.storage import raven_names as naming
from edgemon.storage.tables import RAVEN_COLUMNS
from edgemon.storage.export import ExportError, export_detections
from edgemon.storage.raven_names import MAX_NAME_BYTES
from edgemon.storage.store import Store
from tests.test_export import LIVE, REC1, REC2, commit, db_path, detection, read_csv  # noqa: F401 (fixture)

runner = CliRunner()
SUFFIX = ".BirdNET.selection.table.txt"


def read_table(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("fmt", ["csv", "birdnet", "jsonl", "raven"])
def test_exports_get_the_mode_the_umask_gives(db_path, tmp_path, umask_022, fmt):
    out = tmp_path / ("raven" if fmt == "raven" else f"out.{fmt}")
    if fmt == "raven":
        out.mkdir()
    export_detections(db_path, fmt, out, new=fmt == "raven")
    files = list(out.iterdir()) if fmt == "raven" else [out]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_raven_with_new_appends_and_never_replaces_delivered_rows(db_path, tmp_path):
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    live = out / f"live_mic0{SUFFIX}"
    with Store(db_path) as store:   # the stream gained rows since
        store.insert_detections([detection(LIVE, 20.0, "bird", 0.6, None),
                                 detection(LIVE, 15.0, "bird", 0.7, None)])
    assert export_detections(db_path, "raven", out, new=True) == 2
    rows = read_table(live)
    assert [(r["Selection"], r["Begin Time (s)"]) for r in rows] == [("1", "10.0"), ("2", "15.0"), ("3", "20.0")]
    assert len(read_table(out / f"20240501_060000{SUFFIX}")) == 3   # untouched by the second export
    assert export_detections(db_path, "raven", out, new=True) == 0
    assert len(read_table(live)) == 3


def test_raven_refuses_to_append_to_a_table_with_other_columns(db_path, tmp_path):
    out = tmp_path / "raven"
    out.mkdir()
    edited = out / f"live_mic0{SUFFIX}"
    edited.write_text("Selection\tView\tMy notes\n1\tSpectrogram 1\tkeep me\n")
    with pytest.raises(ExportError, match="live_mic0"):
        export_detections(db_path, "raven", out, new=True)
    assert "keep me" in edited.read_text()


def test_a_255_byte_source_name_gets_a_short_unique_table(db_path, tmp_path):
    long_a = "a" * 251 + ".wav"          # the longest legal name
    long_b = "a" * 240 + "b" * 11 + ".wav"
    with Store(db_path) as store:
        for name in (long_a, long_b):
            commit(store, name, [detection(name, 0.0, "bird", 0.9, None)])
    out = tmp_path / "raven"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "Exception ignored in generator" arrives as a warning
        assert export_detections(db_path, "raven", out) == 7
    names = sorted(p.name for p in out.glob(f"*{SUFFIX}"))
    assert len(names) == 5 and all(len(n.encode()) <= MAX_NAME_BYTES and n.endswith(SUFFIX) for n in names)
    longs = [n for n in names if n.startswith("aaaa")]
    assert len(longs) == 2 and longs[0] != longs[1]
    assert {read_table(out / n)[0]["Begin Path"] for n in longs} == {f"/data/{long_a}", f"/data/{long_b}"}


HOSTILE = '=HYPERLINK("http://evil.example/x","click")'


@pytest.fixture
def hostile_db(tmp_path):
    path = tmp_path / "hostile.db"
    with Store(path) as store:
        for i, name in enumerate(["-rm.wav", "@SUM(A1).wav", "+1.wav", "\tx.wav", "\rx.wav"]):
            commit(store, name, [detection(name, -0.5 + i, HOSTILE, 0.5, None)])
    return path


def test_formula_cells_are_neutralised_in_csv_and_birdnet(hostile_db, tmp_path):
    export_detections(hostile_db, "csv", tmp_path / "d.csv")
    rows = read_csv(tmp_path / "d.csv")
    assert {r["label"] for r in rows} == {"'" + HOSTILE}
    assert [r["source"] for r in rows] == ["'-rm.wav", "'@SUM(A1).wav", "'+1.wav", "\\tx.wav", "\\rx.wav"]
    assert rows[0]["start_s"] == "-0.5"                  # a number, not text: left as it is
    export_detections(hostile_db, "birdnet", tmp_path / "b.csv")
    birdnet = read_csv(tmp_path / "b.csv")
    assert {r["Scientific name"] for r in birdnet} == {"'" + HOSTILE} == {r["Common name"] for r in birdnet}
    assert birdnet[0]["Start (s)"] == "-0.5" and birdnet[0]["File"] == "/data/-rm.wav"


def test_formula_cells_are_neutralised_in_raven_tables(hostile_db, tmp_path):
    out = tmp_path / "raven"
    out.mkdir()
    export_detections(hostile_db, "raven", out)
    rows = [row for p in sorted(out.iterdir()) for row in read_table(p)]
    assert len(rows) == 5
    assert all(r["Species Code"] == r["Common Name"] == "'" + HOSTILE for r in rows)
    assert sorted(float(r["Begin Time (s)"]) for r in rows)[0] == -0.5


def test_jsonl_keeps_hostile_text_exact(hostile_db, tmp_path):
    export_detections(hostile_db, "jsonl", tmp_path / "d.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["label"] for r in rows} == {HOSTILE} and rows[3]["source"] == "\tx.wav"


@pytest.mark.parametrize("fmt", ["csv", "birdnet", "jsonl"])
def test_a_garbage_database_writes_nothing_before_its_error(tmp_path, capsys, fmt):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    out = tmp_path / "out.csv"
    with pytest.raises(ExportError, match="garbage.db"):
        export_detections(garbage, fmt, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["garbage.db"]
    with pytest.raises(ExportError, match="garbage.db"):
        export_detections(garbage, fmt)
    assert capsys.readouterr().out == ""
    result = runner.invoke(app, ["export-detections", "--db", str(garbage), "--format", fmt])
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.output.strip().splitlines()) == 1 and "garbage.db" in result.output


def test_a_sqlite_file_that_is_not_ours_is_named_and_left_alone(tmp_path):
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ExportError, match="not an edgemon database"):
        export_detections(other, "csv", new=True)
    conn = sqlite3.connect(other)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["t"]
    conn.close()


def test_a_failing_raven_table_gives_one_line_and_no_ignored_exception(db_path, tmp_path):
    """A table that cannot be written (here: a directory holds its name) stops the export with
    one line; the rows still being read are closed, not left to a finaliser's traceback."""
    out = tmp_path / "raven"
    (out / f"20240501_060000{SUFFIX}").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db_path),
                             "--format", "raven", "--output", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Exception ignored" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write {out / ('20240501_060000' + SUFFIX)}: Is a directory"]


def test_a_raven_export_that_fails_on_one_table_appends_to_none(db_path, tmp_path):
    """Found in review: tables were appended and renamed one by one, so a failure on a later
    table left the earlier ones extended while the cursor stayed; the export repeated after it
    appended the same rows again. Now all tables appear together or none does."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    first = out / f"20240501_060000{SUFFIX}"    # site1/…, written before site2/…'s table
    later = out / f"20240502_060000{SUFFIX}"
    with Store(db_path) as store:
        store.insert_detections([detection(REC1, 9.0, "bird", 0.6, "2024-05-01T06:00:09Z"),
                                 detection(REC2, 4.0, "bird", 0.6, "2024-05-02T06:00:04Z")])
    before, later_text = first.read_text(), later.read_text()
    later.unlink()
    later.mkdir()                   # the later table cannot be read or replaced now
    with pytest.raises(ExportError, match="20240502_060000"):
        export_detections(db_path, "raven", out, new=True)
    assert first.read_text() == before and not list(out.glob(".*.tmp"))
    later.rmdir()
    later.write_text(later_text)
    assert export_detections(db_path, "raven", out, new=True) == 2
    assert [r["Begin Time (s)"] for r in read_table(first)] == ["0.0", "3.0", "6.0", "9.0"]


def test_the_temp_files_of_a_killed_export_are_removed_by_the_next(db_path, tmp_path):
    """A kill -9 mid-export left its hidden temp files for good (59 MB beside a jsonl, 155 beside
    Raven tables; a newcomer trial). The next export removes those whose writer is gone, and
    leaves a running export's alone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    out = tmp_path / "out"
    out.mkdir()
    dead = [out / f".d.jsonl.{dead_pid}-0123abcd.tmp", out / f".20240501_060000.BirdNET.selection.ta.{dead_pid}-89abcdef.tmp"]
    running = out / f".d.jsonl.{os.getpid()}-0badcafe.tmp"
    others = [out / ".d.jsonl.tmp", out / "notes.1234-0123abcd.tmp"]   # not an export's temp name
    fresh = out / f".e.jsonl.{dead_pid}-00000000.tmp"   # written just now: maybe another machine's export
    hour_ago = time.time() - 3700
    for path in (*dead, running, *others, fresh):
        path.write_text("half an export")
        if path != fresh:
            os.utime(path, (hour_ago, hour_ago))
    assert export_detections(db_path, "jsonl", out / "d.jsonl") > 0
    assert not any(p.exists() for p in dead)
    assert running.exists() and fresh.exists() and all(p.exists() for p in others)
    assert sorted(p.name for p in out.iterdir()) == sorted(["d.jsonl", running.name, fresh.name,
                                                            *(p.name for p in others)])


def test_a_recording_of_the_same_name_at_another_site_never_renames_a_delivered_table(db_path, tmp_path):
    """A cursor export went on in a second table, numbered from 1, once a second site's recording
    of the same file name arrived: both then got hashed names (a newcomer trial)."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    first = out / f"20240501_060000{SUFFIX}"
    assert len(read_table(first)) == 3
    other = "site3/20240501_060000.wav"
    with Store(db_path) as store:
        commit(store, other, [detection(other, 1.0, "bird", 0.9, None)])
        commit(store, REC1, [detection(REC1, 0.0, "bird", 0.9, None), detection(REC1, 40.0, "frog", 0.8, None)])
    assert export_detections(db_path, "raven", out, new=True) == 3
    rows = read_table(first)      # the first site's table goes on, numbered on
    assert [r["Selection"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert {r["Begin Path"] for r in rows} == {f"/data/{REC1}"}
    [hashed] = [p for p in out.iterdir() if p.name.startswith("20240501_060000.") and p != first]
    assert [r["Begin Path"] for r in read_table(hashed)] == [f"/data/{other}"]
    # A table an earlier edgemon named with the source's hash (it hashed every source of a shared
    # stem) is kept; a table of another name is not taken for it.
    again = tmp_path / "raven2"
    again.mkdir()
    own = f"20240501_060000.{naming._digest(REC1)[:naming.HASH_CHARS]}{SUFFIX}"
    (again / own).write_text("\t".join(RAVEN_COLUMNS) + "\n")
    (again / f"20240501_060000.0123456789{SUFFIX}").write_text("\t".join(RAVEN_COLUMNS) + "\n")
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert naming.raven_names(conn, again, ExportError)[REC1] == own
        assert naming.raven_names(conn, out, ExportError)[REC1] == first.name


def test_a_table_stays_its_recordings_whatever_arrives_later(db_path, tmp_path):
    """Two ways a later site's selections went into the first site's table (a review): the first
    recording re-processed to nothing (it had no detections, so the later one counted as first);
    and a directory where an earlier edgemon had already hashed both sites' tables, when a third
    site's recording of the name arrived."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    first = out / f"20240501_060000{SUFFIX}"
    site3, site4 = "site3/20240501_060000.wav", "site4/20240501_060000.wav"
    with Store(db_path) as store:
        commit(store, REC1, [])       # re-processed: nothing found this time
        commit(store, site3, [detection(site3, 1.0, "bird", 0.9, None)])
    assert export_detections(db_path, "raven", out, new=True) == 1
    assert {r["Begin Path"] for r in read_table(first)} == {f"/data/{REC1}"}
    old_rule = tmp_path / "old"
    old_rule.mkdir()
    (old_rule / first.name).write_text(first.read_text())   # REC1's table while it was alone
    with Store(db_path) as store:
        commit(store, REC1, [detection(REC1, 0.0, "bird", 0.9, None)])
    for source in (REC1, site3):   # what an earlier edgemon did once site3 arrived: both hashed
        (old_rule / f"20240501_060000.{naming._digest(source)[:naming.HASH_CHARS]}{SUFFIX}").write_text(
            "\t".join(RAVEN_COLUMNS) + "\n")
    with Store(db_path) as store:
        commit(store, site4, [detection(site4, 2.0, "bird", 0.9, None)])
    export_detections(db_path, "raven", old_rule, new=True, cursor_name="old")
    assert {r["Begin Path"] for r in read_table(old_rule / first.name)} == {f"/data/{REC1}"}
    tables_now = {p.name: {r["Begin Path"] for r in read_table(p)} for p in old_rule.glob("20240501_060000*")}
    assert sorted(map(sorted, tables_now.values())) == [[f"/data/{REC1}"], [f"/data/{REC1}"], [f"/data/{site3}"],
                                                        [f"/data/{site4}"]]


def test_stems_that_differ_only_in_case_get_two_tables(tmp_path):
    """'ABC_0600' and 'abc_0600' tables are one file on FAT, exFAT, Windows and macOS (a review)."""
    db = tmp_path / "d.db"
    with Store(db) as store:
        for source in ("site1/ABC_0600.WAV", "site2/abc_0600.wav"):
            commit(store, source, [detection(source, 0.0, "bird", 0.9, None)])
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = naming.raven_names(conn, tmp_path, ExportError)
    assert names["site1/ABC_0600.WAV"] == f"ABC_0600{SUFFIX}"
    assert names["site2/abc_0600.wav"].lower().startswith("abc_0600.") and len({n.lower() for n in names.values()}) == 2


def test_two_recorders_never_write_into_one_anothers_raven_tables(db_path, tmp_path):
    """Two Pis record on one schedule, so their recordings share names (/recordings/20240501_060000.WAV
    on both) and a table's Begin Path cannot tell them apart: a second database's export into the
    first's Raven directory appended its rows to the first recorder's tables (with a cursor) or
    replaced them (without). The directory now says whose tables it holds, and another recorder's
    database is refused in one line, with nothing written."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.db"
    with Store(other) as store:
        made = detection(REC1, 2.0, "frog", 0.8, "2024-05-01T06:00:02Z")
        commit(store, REC1, [dataclasses.replace(made, device_id="pi-07")])
    for new in (True, False):
        result = runner.invoke(app, ["export-detections", "--db", str(other), "--format", "raven",
                                     "--output", str(out), *(["--new"] if new else [])])
        assert result.exit_code != 0
        message = result.output.strip().splitlines()[-1]
        assert "holds the tables of recorder" in message and "pi-07" in message and "own --output" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # The same recorder's database again (a restored copy, a second card reader) goes on as before.
    with Store(db_path) as store:
        store.insert_detections([detection(REC1, 9.0, "bird", 0.6, "2024-05-01T06:00:09Z")])
    assert export_detections(db_path, "raven", out, new=True) == 1
    # Its own directory takes it.
    mine = tmp_path / "raven-pi-07"
    mine.mkdir()
    assert export_detections(other, "raven", mine) == 1


def test_recorders_left_on_the_default_device_id_are_told_apart_by_their_databases(tmp_path):
    """Found in review: every recorder left unconfigured is device 'edgemon', so two such Pis (or
    two renamed since, each keeping its first rows under 'edgemon') looked like one recorder and
    shared their tables. Their databases tell them apart; a database whose device id was changed
    is still the same recorder."""
    out = tmp_path / "raven"
    out.mkdir()
    dbs = []
    for name, later_id in (("a.db", "pi-01"), ("b.db", "pi-02")):
        path = tmp_path / name
        with Store(path) as store:
            made = detection(REC1, 2.0, "bird", 0.8, "2024-05-01T06:00:02Z")
            commit(store, REC1, [dataclasses.replace(made, device_id="edgemon")])
        dbs.append((path, later_id))
    assert export_detections(dbs[0][0], "raven", out, new=True) == 1
    with pytest.raises(ExportError, match="holds the tables of recorder edgemon .*another database"):
        export_detections(dbs[1][0], "raven", out, new=True)
    for path, later_id in dbs:     # both renamed, each keeping its first rows under 'edgemon'
        with Store(path) as store:
            made = detection(REC1, 5.0, "bird", 0.8, "2024-05-01T06:00:05Z")
            store.insert_detections([dataclasses.replace(made, device_id=later_id)])
    assert export_detections(dbs[0][0], "raven", out, new=True) == 1
    with pytest.raises(ExportError, match="holds the tables of recorder edgemon, pi-01"):
        export_detections(dbs[1][0], "raven", out, new=True)
    # A database that sync gave a new id (restored from a backup) stays the same recorder.
    with contextlib.closing(sqlite3.connect(dbs[0][0])) as conn, conn:
        old = conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()[0]
        conn.execute("UPDATE sync_meta SET value = 'a-new-lineage' WHERE key = 'db_uuid'")
        conn.execute("INSERT INTO sync_meta (key, value) VALUES ('forked_from', ?)", [old])
    with contextlib.closing(sqlite3.connect(dbs[0][0])) as conn, conn:
        conn.execute("DELETE FROM detections WHERE device_id = 'pi-01'")   # only 'edgemon' left
    with Store(dbs[0][0]) as store:
        made = detection(REC1, 8.0, "bird", 0.8, "2024-05-01T06:00:08Z")
        store.insert_detections([dataclasses.replace(made, device_id="edgemon")])
    assert export_detections(dbs[0][0], "raven", out, new=True) == 1


def test_a_cursors_raven_directory_is_its_own(db_path, tmp_path):
    """Found in a newcomer trial: a one-off filtered export into a cursor's Raven directory
    replaced the tables the cursor had delivered, and their other rows were lost for good (the
    cursor was past them); a second cursor into it appended every row again. The directory now
    notes which cursor delivers there, and the others are refused in one line, with nothing
    written."""
    cursor_dir, plain_dir = tmp_path / "field", tmp_path / "oneoff"
    cursor_dir.mkdir()
    plain_dir.mkdir()
    assert export_detections(db_path, "raven", cursor_dir, new=True, cursor_name="field") == 5
    before = {p.name: p.read_bytes() for p in cursor_dir.iterdir()}
    with pytest.raises(ExportError, match="is export cursor 'field''s: a plain export would replace"):
        export_detections(db_path, "raven", cursor_dir, label=["bird"])
    with pytest.raises(ExportError, match="is export cursor 'field''s, and cursor 'other' may take the same rows"):
        export_detections(db_path, "raven", cursor_dir, new=True, cursor_name="other")
    # A plain export that wrote nothing claims nothing.
    assert export_detections(db_path, "raven", plain_dir, since=dt.datetime(2030, 1, 1)) == 0
    assert export_detections(db_path, "raven", plain_dir, new=True, cursor_name="try") == 5
    (plain_dir / ".edgemon-raven-owner").unlink()
    for table in plain_dir.iterdir():
        table.unlink()
    assert export_detections(db_path, "raven", plain_dir, label=["bird"]) == 3
    with pytest.raises(ExportError, match="holds a plain export's tables: export cursor 'field'"):
        export_detections(db_path, "raven", plain_dir, new=True, cursor_name="field")
    assert export_detections(db_path, "raven", plain_dir) == 5          # plain again: rewritten whole
    assert {p.name: p.read_bytes() for p in cursor_dir.iterdir()} == before
    assert export_detections(db_path, "raven", cursor_dir, new=True, cursor_name="field") == 0


def test_cursors_of_disjoint_labels_share_a_raven_directory(db_path, tmp_path):
    """Found in review: "give this filter its own --cursor NAME" is what a second filter is told,
    and cursors by species into one directory each deliver their rows once; they share it, while a
    cursor whose labels overlap another's is refused."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True, cursor_name="birds", label=["bird"]) == 3
    assert export_detections(db_path, "raven", out, new=True, cursor_name="frogs", label=["frog"]) == 2
    with pytest.raises(ExportError, match="may take the same rows"):
        export_detections(db_path, "raven", out, new=True, cursor_name="all")
    rows = [row for p in sorted(out.glob(f"*{SUFFIX}")) for row in read_table(p)]
    assert len(rows) == 5


def test_a_database_rebuilt_after_corruption_keeps_its_raven_directory(tmp_path):
    """A newcomer trial: under the default device id, the database `watch` rebuilt after moving a
    corrupt one aside was refused by its own Raven directory for good, by a message naming the one
    path as two databases. The rebuilt database notes the id it replaces where that can be read."""
    from edgemon.storage.recovery import open_or_recover
    from tests.watch_helpers import damage_table

    db, out = tmp_path / "d.db", tmp_path / "raven"
    out.mkdir()
    made = dataclasses.replace(detection(REC1, 2.0, "bird", 0.8, "2024-05-01T06:00:02Z"), device_id="edgemon")
    with Store(db) as store:
        commit(store, REC1, [made])
    assert export_detections(db, "raven", out, new=True) == 1
    damage_table(db, "detections")
    with open_or_recover(db) as store:          # moved aside, a fresh one: the recording analysed again
        commit(store, REC1, [made])
    assert list(tmp_path.glob("d.db.corrupt-*"))
    export_detections(db, "raven", out, new=True)    # the row is there already: left out, not refused
    another = tmp_path / "other.db"                # another unconfigured recorder is still refused,
    with Store(another) as store:                  # and told how a restarted one would go on
        commit(store, REC1, [made])
    with pytest.raises(ExportError, match=r"in another database .* remove .*\.edgemon-raven-owner"):
        export_detections(another, "raven", out, new=True)
