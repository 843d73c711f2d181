"""Named export cursors (issue 13): each tied to its filter, none skips a row another's filter
passed over, every matching row delivered exactly once; `edgemon status` lists them."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import os
import random
import sqlite3
import subprocess
import sys

import pytest
import sqlite_utils
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.status import collect_status, format_status
from edgemon.storage.cursors import CursorError
from edgemon.storage.export import export_detections
from edgemon.storage.schema import MIGRATIONS
from edgemon.storage.store import Store
from edgemon.utc import utc_iso
from tests.test_export import LIVE, REC1, commit, db_path, detection, read_csv  # noqa: F401 (fixture)

runner = CliRunner()


def ids(path) -> list[int]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_a_filtered_export_cannot_move_the_plain_cursor_past_rows(db_path, tmp_path):
    """The issue's sequence: `--new --label X`, then a plain `--new`, lost every other row."""
    out = tmp_path / "out.csv"
    assert export_detections(db_path, "csv", out, label=["frog"], new=True) == 2
    with pytest.raises(CursorError, match=r"'default'.*--label frog"):
        export_detections(db_path, "csv", out, new=True)
    every = tmp_path / "every.csv"
    assert export_detections(db_path, "csv", every, new=True, cursor_name="all") == 5
    assert [r["id"] for r in read_csv(every)] == ["1", "2", "3", "4", "5"]


def test_cli_cursor_per_destination_and_one_line_error(db_path, tmp_path):
    frogs = runner.invoke(app, ["export-detections", "--db", str(db_path), "--new", "--label", "frog"])
    assert frogs.exit_code == 0 and frogs.stdout.count("\n") == 3   # header + 2 frogs
    plain = runner.invoke(app, ["export-detections", "--db", str(db_path), "--new"])
    assert plain.exit_code == 1 and "'default'" in plain.output and "--label frog" in plain.output
    assert len(plain.output.strip().splitlines()) == 1 and plain.stdout == ""
    every = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "sync"])
    assert every.exit_code == 0 and every.stdout.count("\n") == 6   # header + all 5
    again = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "sync", "--quiet"])
    assert again.exit_code == 0 and again.stdout.count("\n") == 1
    bad = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "a\nb"])
    assert bad.exit_code == 1 and "cursor name" in bad.output


def test_every_matching_row_is_delivered_once_per_cursor(db_path, tmp_path):
    """Three cursors with different filters, rows arriving in rounds (a re-processed file among
    them): each cursor gets exactly the matching rows, none twice, none skipped."""
    filters = {"all": {}, "birds": {"label": ["bird"]},
               "sure_may": {"min_confidence": 0.8, "since": dt.datetime(2024, 5, 1),
                            "until": dt.datetime(2024, 6, 1)}}
    delivered: dict[str, list[int]] = {name: [] for name in filters}
    rng = random.Random(0)
    for round_ in range(12):
        with Store(db_path) as store:
            if round_ == 5:   # the recorder rewrote a file: its detections come back with new ids
                commit(store, REC1, [detection(REC1, 0.0, "bird", 0.95, "2024-05-01T06:00:00Z")])
            for _ in range(rng.randrange(4)):
                day = rng.choice(["2024-05-03", "2024-07-01", None])
                store.insert_detections([detection(
                    LIVE, rng.uniform(0, 1e4), rng.choice(["bird", "frog"]), round(rng.random(), 3),
                    None if day is None else f"{day}T06:00:00Z")])
        for name, filt in filters.items():
            out = tmp_path / f"{name}-{round_}.jsonl"   # one file a delivery (a cursor appends to its own)
            export_detections(db_path, "jsonl", out, new=True, cursor_name=name, **filt)
            delivered[name] += ids(out)
    conn = sqlite3.connect(db_path)
    everything = {i: (label, conf, utc) for i, label, conf, utc in conn.execute(
        "SELECT id, label, confidence, start_utc FROM detections")}
    gone = set(range(1, max(everything) + 1)) - set(everything)   # replaced by the rewrite
    conn.close()
    expect = {
        "all": set(everything),
        "birds": {i for i, (label, _, _) in everything.items() if label == "bird"},
        "sure_may": {i for i, (_, conf, utc) in everything.items()
                     if conf >= 0.8 and utc is not None and "2024-05-01" <= utc < "2024-06-01"}}
    for name in filters:
        assert len(delivered[name]) == len(set(delivered[name])), name        # never twice
        assert set(delivered[name]) - gone == expect[name], name              # never skipped


def test_a_time_filtered_cursor_takes_late_rows_of_its_window(db_path, tmp_path):
    """Rows stored late (a card read weeks after recording) still reach a cursor whose window
    they fall in: the position is an id, not a time."""
    out = tmp_path / "out.jsonl"
    window = dict(since=dt.datetime(2024, 5, 1), until=dt.datetime(2024, 5, 2), new=True)
    assert export_detections(db_path, "jsonl", out, **window) == 3
    with Store(db_path) as store:
        late = "site9/20240501_120000.wav"
        commit(store, late, [detection(late, 0.0, "bird", 0.5, "2024-05-01T12:00:00Z"),
                             detection(late, 9.0, "bird", 0.5, "2024-05-02T00:00:00Z")])
    assert export_detections(db_path, "jsonl", out, **window) == 1
    assert json.loads(out.read_text().splitlines()[-1])["start_utc"] == "2024-05-01T12:00:00.000Z"


def test_a_cursor_from_before_filters_adopts_its_next_filter(tmp_path, caplog):
    """A database from before m004 (cursor without filter) is upgraded by the first --new, with a
    warning: filtered exports may have moved it past rows its new filter wants (found in review)."""
    path = tmp_path / "old.db"
    with Store(path) as store:
        store.insert_detections([detection(LIVE, s, "bird", 0.9, None) for s in (0.0, 3.0)])
    conn = sqlite3.connect(path)   # back to m003's schema, with an old cursor at id 1
    conn.executescript("""
        ALTER TABLE export_cursors DROP COLUMN filter; ALTER TABLE export_cursors DROP COLUMN exported_at;
        ALTER TABLE export_cursors DROP COLUMN delivered; DROP TABLE bundles; DROP TABLE labels;
        DROP INDEX detections_label_start_utc;
        DELETE FROM _sqlite_migrations WHERE name LIKE 'm004%';
        INSERT INTO export_cursors VALUES ('default', 1, '2024-01-01T00:00:00.000Z');""")
    conn.close()
    assert collect_status(path)["export_cursors"][0]["filter"].startswith("none yet")
    out = tmp_path / "out.csv"
    assert export_detections(path, "csv", tmp_path / "plain.csv") == 2   # a plain export never writes
    assert export_detections(path, "csv", out, new=True, label=["bird"]) == 1
    assert [r for r in caplog.records if "predates stored filters" in r.getMessage() and "up to id 1" in r.getMessage()]
    with pytest.raises(CursorError, match="--label bird"):
        export_detections(path, "csv", out, new=True)
    assert MIGRATIONS.applied(sqlite_utils.Database(path))[-1].name.startswith("m004")


def test_status_lists_cursors(db_path, tmp_path):
    export_detections(db_path, "csv", tmp_path / "a.csv", new=True, label=["bird"], min_confidence=0.75,
                      cursor_name="birds")
    export_detections(db_path, "csv", tmp_path / "b.csv", new=True)
    cursors = collect_status(db_path)["export_cursors"]
    assert [(c["name"], c["filter"], c["last_id"], c["delivered"]) for c in cursors] == [
        ("birds", "--label bird --min-confidence 0.75", 5, 2), ("default", "no filter", 5, 5)]
    assert cursors[0]["exported_at"].endswith("Z")
    text = format_status(collect_status(db_path))
    assert "birds (--label bird --min-confidence 0.75): at id 5, 2 delivered" in text


def test_quiet_export_from_cron_says_nothing(db_path, tmp_path):
    def run(*extra):
        return subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db_path),
                               "--output", str(tmp_path / "out.csv"), "--cursor", "cron", *extra],
                              capture_output=True, text=True, timeout=60)

    loud = run()
    assert loud.returncode == 0 and "exported 5 detection(s) (cursor cron)" in loud.stderr
    quiet = run("--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_newcomer_mistakes_are_refused_before_a_cursor_is_tied_to_them(db_path, tmp_path):
    """Found by a newcomer's trial: a misspelled --label exported a bare header and tied the cursor
    to the typo for good; an empty --cursor silently became 'default'; --format raven without
    --output said 'got None'; --min-confidence -1 passed."""
    typo = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "sync", "--label", "bird_"])
    assert typo.exit_code == 1 and "'bird_'" in typo.output and "bird, frog" in typo.output
    assert runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "sync",
                               "--label", "bird"]).exit_code == 0   # the typo did not take the name
    empty = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", ""])
    assert empty.exit_code == 1 and "cursor name" in empty.output
    raven = runner.invoke(app, ["export-detections", "--db", str(db_path), "--format", "raven"])
    assert raven.exit_code == 2 and "--output DIR" in raven.output and "None" not in raven.output
    negative = runner.invoke(app, ["export-detections", "--db", str(db_path), "--min-confidence", "-1"])
    assert negative.exit_code == 2
    # A third trial: BirdNET's habit of percent (70) got three lines of usage that never said 70.
    percent = runner.invoke(app, ["export-detections", "--db", str(db_path), "--min-confidence", "70"])
    assert percent.exit_code == 2
    assert percent.output.strip() == "error: --min-confidence 70 is not a probability from 0 to 1 (did you mean 0.7?)"
    nan = runner.invoke(app, ["export-detections", "--db", str(db_path), "--min-confidence", "nan"])
    assert nan.exit_code == 2 and nan.output.strip() == "error: --min-confidence nan is not a probability from 0 to 1"
    # A second trial: an unknown --bundle exported a bare header (exit 0), as --label once did.
    bundle = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "b", "--bundle", "b2"])
    assert bundle.exit_code == 1 and "unknown bundle id(s) 'b2'" in bundle.output and "of b1" in bundle.output
    assert runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "b",
                               "--bundle", "b1"]).exit_code == 0


def test_two_exports_on_one_cursor_at_once_never_deliver_a_row_twice(tmp_path):
    """Found in review: two `--cursor NAME` exports started together both read the same position
    and delivered the same rows. Real processes: the first is held mid-output (its stdout pipe
    full, nobody reading) while the second runs; the second must wait for it, not deliver."""
    import csv
    import io
    import time

    path = tmp_path / "detections.db"
    with Store(path) as store:   # ~150 kB of CSV: more than a pipe holds
        for f in range(20):
            source = f"rec1/20240501_{f:02d}0000.wav"
            commit(store, source, [detection(source, float(s), "bird", 0.9, "2024-05-01T06:00:00Z")
                                   for s in range(60)])
    command = [sys.executable, "-m", "edgemon", "export-detections", "--db", str(path), "--cursor", "dest"]
    # Each `with` closes the process's pipes when it ends; `finally` kills it if the test failed.
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as first:
        try:
            head = first.stdout.readline()            # it has read its position and is writing rows
            time.sleep(0.5)                           # ... and now blocks on the full pipe
            with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as second:
                try:
                    time.sleep(3.0)
                    second_done_early = second.poll() is not None
                    rest = first.stdout.read()           # the buffered reader holds what followed the head
                    first_err = first.stderr.read()
                    first.wait(timeout=60)
                    second_out, second_err = second.communicate(timeout=60)
                finally:
                    second.kill()
        finally:
            first.kill()
    assert first.returncode == 0 and second.returncode == 0, (first_err, second_err)
    first_ids = [r["id"] for r in csv.DictReader(io.StringIO((head + rest).decode()))]
    second_ids = [r["id"] for r in csv.DictReader(io.StringIO(second_out.decode()))]
    assert not set(first_ids) & set(second_ids), f"{len(set(first_ids) & set(second_ids))} rows delivered twice"
    assert sorted(map(int, first_ids + second_ids)) == list(range(1, 1201))
    assert not second_done_early                  # it waited for the first, rather than racing it


def test_an_export_whose_coverage_file_cannot_be_written_leaves_its_cursor(db_path, tmp_path):
    """The coverage file was written after the detections: when it failed, the cursor had already
    moved and a repeat delivered nothing."""
    out, args = tmp_path / "c2.csv", ["export-detections", "--db", str(db_path), "--cursor", "c2"]
    failed = runner.invoke(app, [*args, "--output", str(out), "--coverage", str(tmp_path / "no-such-dir" / "c.csv")])
    assert failed.exit_code == 1 and "no-such-dir" in failed.output and not out.exists()
    again = runner.invoke(app, [*args, "--output", str(out), "--coverage", str(tmp_path / "c.csv")])
    assert again.exit_code == 0 and [r["id"] for r in read_csv(out)] == ["1", "2", "3", "4", "5"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a file for another user")
def test_a_lock_file_root_creates_belongs_to_the_databases_owner(tmp_path):
    """An admin's `sudo edgemon export-detections --cursor …` left <db>.export.lock owned by root,
    mode 0644, and every later cursor export by the service user failed to open it."""
    from edgemon.storage.lock import hold_database, hold_exports

    db = tmp_path / "edgemon.db"
    db.write_bytes(b"")
    os.chown(db, 65534, 65534)
    with hold_exports(db) as export_lock:
        pass
    with hold_database(db) as daemon_lock:
        pass
    for lock in (export_lock, daemon_lock):
        assert (lock.stat().st_uid, lock.stat().st_gid) == (65534, 65534), lock


def test_a_reader_that_stops_early_ends_the_export_quietly_and_moves_no_cursor(tmp_path):
    """`export-detections | head -1` printed "error: cannot write to standard output: Broken pipe"."""
    from devtools.recorder_db import make_recorder

    db = make_recorder(tmp_path / "r.db", "site-01", files=200, per_file=10)
    export = f"{sys.executable} -m edgemon export-detections --db {db} --cursor nightly --format jsonl"
    # The reader reads one line and leaves; the writer has far more than a pipe buffer to write.
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {export} 2>{tmp_path / 'err'} | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 141 and len(done.stdout.splitlines()) == 1
    assert (tmp_path / "err").read_text() == ""
    out = tmp_path / "all.jsonl"
    again = subprocess.run([*export.split(), "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert len(out.read_text().splitlines()) == 2000      # the cursor did not move past what nobody read


def test_a_lock_file_planted_as_a_link_is_refused_and_its_target_untouched(tmp_path):
    """Whoever may write beside the database could point the lock at any file, which root would
    then truncate and hand over."""
    from edgemon.storage.lock import DatabaseInUseError, hold_exports

    db = tmp_path / "edgemon.db"
    db.write_bytes(b"")
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    precious.chmod(0o600)
    (tmp_path / "edgemon.db.export.lock").symlink_to(precious)
    with pytest.raises(DatabaseInUseError, match="cannot create the lock file"):
        with hold_exports(db):
            pass
    assert precious.read_text() == "keep me"
    assert (precious.stat().st_uid, oct(precious.stat().st_mode & 0o777)) == (os.getuid(), "0o600")


def test_output_dash_is_standard_output_and_coverage_needs_its_own_file(db_path, tmp_path, monkeypatch):
    """`--output -` wrote a file named '-' (status and review take '-' as standard output), and
    `--output X --coverage X` let the detections overwrite the coverage it reported (a newcomer trial)."""
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db_path),
                           "--format", "jsonl", "--output", "-", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5 and not (tmp_path / "-").exists()
    out = tmp_path / "d.csv"
    (tmp_path / "sub").mkdir()
    for coverage in (str(out), "-", str(tmp_path / "sub" / ".." / "d.csv")):
        refused = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out),
                                      "--coverage", coverage, "--cursor", "c3"])
        assert refused.exit_code == 2 and "--coverage needs a file of its own" in refused.output
        assert not out.exists()
    again = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out), "--cursor", "c3"])
    assert again.exit_code == 0 and len(read_csv(out)) == 5   # the refusals moved no cursor


def test_coverage_seconds_are_exported_to_the_millisecond(tmp_path):
    """A minute written six times summed to 60.00000000000001 in a jsonl export (a soak trial)."""
    from edgemon.storage.export import export_coverage
    from edgemon.storage.rows import CoverageMinute

    db = tmp_path / "live.db"
    with Store(db) as store:
        for _ in range(3):
            store.add_coverage([CoverageMinute(source="live:mic", device_id="d", minute_utc="2024-05-01T06:00:00Z",
                                               end_utc="2024-05-01T06:00:59Z", analysed_s=19.9, lost_device_s=0.1)])
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT analysed_s, lost_device_s FROM coverage").fetchone()
    assert export_coverage(db, "jsonl", tmp_path / "c.jsonl") == 1
    row = json.loads((tmp_path / "c.jsonl").read_text())
    assert (row["analysed_s"], row["lost_device_s"]) == (59.7, 0.3) and stored[1] != 0.3


def test_a_season_of_coverage_is_exported_without_holding_it(tmp_path):
    """180 days of one live source held at once took a Pi 250 MB more (a review): the rows are
    streamed, so what the export holds does not grow with the minutes."""
    import tracemalloc

    from edgemon.storage.export import export_coverage
    from edgemon.storage.rows import CoverageMinute

    db = tmp_path / "live.db"
    start = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    with Store(db) as store:
        store.add_coverage([CoverageMinute(source="live:mic", device_id="d",
                                           minute_utc=utc_iso(start + dt.timedelta(minutes=m)),
                                           end_utc=utc_iso(start + dt.timedelta(minutes=m, seconds=59)),
                                           analysed_s=59.5, lost_device_s=0.5) for m in range(20_000)])
    tracemalloc.start()
    try:
        assert export_coverage(db, "csv", tmp_path / "c.csv") == 20_000
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(read_csv(tmp_path / "c.csv")) == 20_000
    assert peak < 4_000_000, f"{peak / 1e6:.1f} MB held for 20 000 minutes"   # all of them: 17.5 MB


def _copy_database(source, target) -> None:
    """A consistent copy over ``target`` (SQLite's backup API), as a restore from backup makes."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _keys(path, fmt) -> list[tuple]:
    """(source, start, label) of every row the export's file (or Raven directory) holds, in order."""
    if fmt == "birdnet":
        return [(r["File"], r["Start (s)"], r["Confidence"]) for r in read_csv(path)]
    if fmt == "raven":
        keys = []
        for table in sorted(path.glob("*.txt")):
            rows = list(csv.DictReader(table.read_text().splitlines(), delimiter="\t"))
            assert [int(r["Selection"]) for r in rows] == list(range(1, len(rows) + 1))   # numbered on
            keys += [(r["Begin Path"], r["Begin Time (s)"], r["Species Code"]) for r in rows]
        return sorted(keys, key=lambda k: "site4" in k[0])   # tables by name; the newest recording last
    records = read_csv(path) if fmt == "csv" else [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["source"], str(r["start_s"]), r["label"]) for r in records]


SITE3 = "site3/20240503_060000.wav"


def _site3(store: Store) -> None:
    """What watch stores from a third recording (and derives again from it after a restore)."""
    commit(store, SITE3, [detection(SITE3, 0.0, "bird", 0.9, "2024-05-03T06:00:00Z"),
                          detection(SITE3, 3.0, "frog", 0.6, "2024-05-03T06:00:03Z")])


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "birdnet", "raven"])
def test_a_database_restored_from_a_copy_appends_no_row_twice(db_path, tmp_path, fmt, caplog):
    """A newcomer trial: a copy restored, watch derived the rows since from the recordings again,
    and the cursor export appended them to the file a second time (same keys, same ids). BirdNET
    and Raven tables, which carry no device or bundle, did so until the twentieth session."""
    out = tmp_path / ("raven" if fmt == "raven" else f"out.{fmt}")
    if fmt == "raven":
        out.mkdir()
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 5
    backup = tmp_path / "backup.db"
    _copy_database(db_path, backup)
    with Store(db_path) as store:
        _site3(store)
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 2
    _copy_database(backup, db_path)                      # the card restored from the copy
    with Store(db_path) as store:
        _site3(store)                                    # derived again from the recording: new ids
        commit(store, "site4/20240504_060000.wav",       # and a recording new since
               [detection("site4/20240504_060000.wav", 1.0, "bird", 0.8, "2024-05-04T06:00:01Z")])
    caplog.set_level("WARNING")
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 1
    keys = _keys(out, fmt)
    assert len(keys) == len(set(keys)) == 8 and keys[-1][0].endswith("site4/20240504_060000.wav")
    assert "already holds 2 of the rows this export found new" in caplog.text
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 0   # the cursor moved past them


def test_a_rebuilt_database_appends_nothing_the_file_holds(db_path, tmp_path):
    """A corrupt database moved aside and rebuilt from the recordings: a fresh cursor at 0."""
    out = tmp_path / "out.csv"
    assert export_detections(db_path, "csv", out, new=True, cursor_name="arch") == 5
    before = out.read_bytes()
    rebuilt = tmp_path / "rebuilt.db"
    with Store(rebuilt) as store, Store(db_path) as old:
        for source in (REC1, "site2/20240502_060000.wav"):
            rows = old.db.execute("SELECT start_s, label, confidence, start_utc FROM detections WHERE source = ?",
                                  [source]).fetchall()
            commit(store, source, [detection(source, s, label, c, utc) for s, label, c, utc in rows])
        store.insert_detections([detection(LIVE, 10.0, "frog", 0.95, None)])
    assert export_detections(rebuilt, "csv", out, new=True, cursor_name="arch") == 0
    assert out.read_bytes() == before


def test_two_recorders_appending_to_one_file_lose_nothing(tmp_path):
    """A review: keyed without the device, recorder B's rows (same AudioMoth names and offsets as
    A's, lower ids) were taken as already held and dropped for good."""
    out = tmp_path / "fleet.csv"
    for device in ("rec01", "rec02"):
        db = tmp_path / f"{device}.db"
        with Store(db) as store:
            commit(store, REC1, [dataclasses.replace(detection(REC1, s, "bird", 0.9, None), device_id=device)
                                 for s in (0.0, 3.0)])
        assert export_detections(db, "csv", out, new=True) == 2
    assert sorted((r["device_id"], r["start_s"]) for r in read_csv(out)) == [
        ("rec01", "0.0"), ("rec01", "3.0"), ("rec02", "0.0"), ("rec02", "3.0")]


def test_a_rebuild_spanning_several_exports_appends_no_row_twice(db_path, tmp_path):
    """A review: once the first export after a rebuild had appended a new row, the next saw a
    file whose last id was older than its rows and appended the rest of the re-derived rows."""
    out = tmp_path / "out.csv"
    with Store(db_path) as store:
        _site3(store)
    assert export_detections(db_path, "csv", out, new=True, cursor_name="arch") == 7
    rebuilt = tmp_path / "rebuilt.db"
    with Store(rebuilt) as store:           # night 1: two recordings re-derived, and a new one
        commit(store, SITE3, [detection(SITE3, 0.0, "bird", 0.9, "2024-05-03T06:00:00Z"),
                              detection(SITE3, 3.0, "frog", 0.6, "2024-05-03T06:00:03Z")])
        commit(store, "site4/x.wav", [detection("site4/x.wav", 1.0, "bird", 0.8, None)])
    assert export_detections(rebuilt, "csv", out, new=True, cursor_name="arch") == 1
    with Store(rebuilt) as store:           # night 2: the rest re-derived
        commit(store, REC1, [detection(REC1, 0.0, "bird", 0.9, "2024-05-01T06:00:00Z"),
                             detection(REC1, 3.0, "frog", 0.4, "2024-05-01T06:00:03Z"),
                             detection(REC1, 6.0, "bird", 0.7, "2024-05-01T06:00:06Z")])
    assert export_detections(rebuilt, "csv", out, new=True, cursor_name="arch") == 0
    keys = _keys(out, "csv")
    assert len(keys) == len(set(keys)) == 8


@pytest.mark.parametrize("fmt", ["birdnet", "raven"])
def test_another_bundles_row_on_the_same_window_is_appended(db_path, tmp_path, fmt):
    """BirdNET and Raven rows carry no bundle: a re-analysis's row (`edgemon reanalyse`) on a window
    already in the table still arrives, at another confidence and (a review found it dropped, with
    a warning about a restore that never was) at one that is shown alike to four decimals."""
    out = tmp_path / ("raven" if fmt == "raven" else "out.csv")
    if fmt == "raven":
        out.mkdir()
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 5
    for bundle, confidence in (("b2", 0.85), ("b3", 0.90001)):   # REC1's bird at 0.0 is 0.9 in b1
        with Store(db_path) as store:
            store.insert_detections([dataclasses.replace(
                detection(REC1, 0.0, "bird", confidence, "2024-05-01T06:00:00Z"), bundle_id=bundle)])
        assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 1
    assert len(_keys(out, fmt)) == 7


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_detection_changed_since_it_was_delivered_is_appended(db_path, tmp_path, fmt, caplog):
    """A newcomer trial: a recording analysed again once it had grown (a FLAC still being written)
    changed an event's end, and the cursor export withheld the new row as one the file held
    ("restored from a copy?"): the file kept the event cut short for good."""
    out = tmp_path / f"out.{fmt}"
    assert export_detections(db_path, fmt, out, new=True, cursor_name="partner") == 5
    grown = [detection(REC1, 0.0, "bird", 0.9, "2024-05-01T06:00:00Z"),
             detection(REC1, 3.0, "frog", 0.4, "2024-05-01T06:00:03Z"),
             dataclasses.replace(detection(REC1, 6.0, "bird", 0.7, "2024-05-01T06:00:06Z"), end_s=12.0)]
    with Store(db_path) as store:
        commit(store, REC1, grown)   # the two found again alike keep their ids; the third is a new row
    caplog.set_level("WARNING")
    assert export_detections(db_path, fmt, out, new=True, cursor_name="partner") == 1
    assert "already holds" not in caplog.text
    records = read_csv(out) if fmt == "csv" else [json.loads(line) for line in out.read_text().splitlines()]
    assert [float(r["end_s"]) for r in records if r["source"] == REC1 and float(r["start_s"]) == 6.0] == [9.0, 12.0]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "birdnet", "raven"])
def test_a_rebuild_on_another_cpu_appends_nothing_for_confidences_moved_by_noise(db_path, tmp_path, fmt, caplog):
    """A review: rows derived again after a rebuild, on another thread count or CPU, moved their
    confidence by 1e-4 (0.9 shown as 0.9001), and the export appended every one of them again."""
    out = tmp_path / ("raven" if fmt == "raven" else f"out.{fmt}")
    if fmt == "raven":
        out.mkdir()
    assert export_detections(db_path, fmt, out, new=True, cursor_name="arch") == 5
    rebuilt = tmp_path / "rebuilt.db"
    with Store(rebuilt) as store, Store(db_path) as old:
        for source in (REC1, "site2/20240502_060000.wav"):
            rows = old.db.execute("SELECT start_s, label, confidence, start_utc FROM detections WHERE source = ?",
                                  [source]).fetchall()
            # moved by noise: 1e-4, and 0.0045 where the calibration's slope amplified it (a review)
            commit(store, source, [detection(source, s, label, c + (0.0045 if i % 2 else 0.00009), utc)
                                   for i, (s, label, c, utc) in enumerate(rows)])
    caplog.set_level("WARNING")
    assert export_detections(rebuilt, fmt, out, new=True, cursor_name="arch") == 0
    assert len(_keys(out, fmt)) == 5 and "already holds 4 of the rows" in caplog.text


def test_a_label_filter_on_the_background_class_is_refused(db_path):
    """A newcomer trial: `--label background` exported nothing, silently (the background class is
    never stored), and the refusal of an unknown label listed it among the known ones."""
    with Store(db_path) as store:
        store.record_bundle("b1", {"labels": ["background", "bird", "frog"], "background_label": "background"})
    silent = runner.invoke(app, ["export-detections", "--db", str(db_path), "--label", "background"])
    assert silent.exit_code == 1 and "background class, never stored" in silent.output, silent.output
    assert "bird, frog" in silent.output
    typo = runner.invoke(app, ["export-detections", "--db", str(db_path), "--label", "gibon"])
    assert typo.exit_code == 1 and "unknown label(s) 'gibon'" in typo.output and "background" not in typo.output


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "birdnet"])
def test_a_plain_export_is_refused_a_file_a_cursor_appends_to(db_path, tmp_path, fmt):
    """A newcomer trial: `export-detections --label X --output sync/day.csv` replaced the file a
    cursor had delivered 48 rows to with 1 row, and the cursor never sent the 46 lost ones again."""
    from edgemon.storage.export_files import ExportError

    out = tmp_path / "sync" / f"day.{fmt}"
    out.parent.mkdir()
    delivered = export_detections(db_path, fmt, out, new=True, cursor_name="sync")
    assert delivered == 5
    before = out.read_bytes()
    with pytest.raises(ExportError, match=r"export cursor 'sync' appends to this file"):
        export_detections(db_path, fmt, out, label=["frog"])
    assert out.read_bytes() == before
    linked = tmp_path / "link"
    linked.symlink_to(out.parent)                       # the same file by another name
    with pytest.raises(ExportError, match="'sync'"):
        export_detections(db_path, fmt, linked / out.name)
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--format", fmt, "--output", str(out)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and str(out) in result.output
    assert export_detections(db_path, fmt, tmp_path / f"elsewhere.{fmt}") == 5      # elsewhere, as before
    out.unlink()                                        # deleted on purpose: written anew
    assert export_detections(db_path, fmt, out) == 5


def test_coverage_and_a_cursor_file_from_before_the_upgrade_are_refused_too(db_path, tmp_path):
    """Found by a review: `--coverage` still replaced a cursor's file (and was written before a
    refused --output); and a file a cursor had filled before its database noted cursor files was
    unprotected until the cursor delivered a new row."""
    out = tmp_path / "day.csv"
    assert export_detections(db_path, "csv", out, new=True, cursor_name="sync") == 5
    before = out.read_bytes()
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(tmp_path / "x.csv"),
                                 "--coverage", str(out)])
    assert result.exit_code == 1 and "--coverage" in result.output and "'sync'" in result.output
    assert out.read_bytes() == before and not (tmp_path / "x.csv").exists()
    elsewhere = tmp_path / "coverage.csv"
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out),
                                 "--coverage", str(elsewhere)])
    assert result.exit_code == 1 and not elsewhere.exists() and out.read_bytes() == before
    with sqlite3.connect(db_path) as conn:    # as a database migrated to m015 after the cursor's exports
        conn.execute("DELETE FROM cursor_outputs")
    assert export_detections(db_path, "csv", out, new=True, cursor_name="sync") == 0   # nothing new, but noted
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out)])
    assert result.exit_code == 1 and out.read_bytes() == before
