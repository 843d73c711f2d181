"""``edgemon reanalyse``: recordings already analysed run through another bundle, its detections
stored beside the old ones; ``export-detections --bundle`` picks one bundle's."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request

import pytest
import soundfile

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.files.reanalyse import ReanalyseError, reanalyse
from tests.review_helpers import BUNDLE_ID, DETECTIONS, make_review_db, review_server


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
    assert reanalyse(db, analyzer).files == 0         # done already: a rerun goes on where it stopped
    again = reanalyse(db, analyzer, again=True)
    assert (again.files, again.detections) == (2, first.detections)
    assert _rows(db, "SELECT id, source, start_s, label FROM detections WHERE bundle_id = ? ORDER BY id", [new_id]) == stored


def test_an_interrupted_reanalyse_says_how_far_it_got(tmp_path, caplog):
    """A newcomer trial: Ctrl-C (or SIGTERM) left a bundle's detections on some recordings only,
    exported by --bundle as if whole, with no word of it."""
    db, _ = make_review_db(tmp_path)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    analyse_file, calls = analyzer.analyse_file, []

    def interrupted_at_the_second(path, lead=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return analyse_file(path, lead=lead)

    analyzer.analyse_file = interrupted_at_the_second
    with caplog.at_level(logging.WARNING, logger="edgemon"), pytest.raises(KeyboardInterrupt):
        reanalyse(db, analyzer)
    said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert len(said) == 1 and "after 1 of 2 recording(s)" in said[0] and "run the same command again" in said[0]
    assert _rows(db, "SELECT count(DISTINCT source) FROM detections WHERE bundle_id = ?",
                 [analyzer.bundle.bundle_id]) == [(1,)]


def test_reanalyse_refuses_a_recordings_directory_that_is_not_there(tmp_path):
    db, _ = make_review_db(tmp_path)
    with pytest.raises(ReanalyseError, match=r"--recordings .*nowhere: no such directory"):
        reanalyse(db, Analyzer(load_bundle(default_bundle_path())), tmp_path / "nowhere")
    with pytest.raises(ReanalyseError, match=r"--recordings .*review\.db: not a directory"):
        reanalyse(db, Analyzer(load_bundle(default_bundle_path())), db)


def test_a_recording_read_from_the_ledgers_path_instead_of_recordings_is_said(tmp_path, caplog):
    """--recordings COPY with a file missing from the copy read it from the card, saying nothing
    (a newcomer trial: "missing": [] and every file analysed, some from elsewhere)."""
    db, recordings = make_review_db(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(recordings, copy)
    (copy / "S01" / "20240501_060000.WAV").unlink()
    with caplog.at_level("WARNING", logger="edgemon"):
        result = reanalyse(db, Analyzer(load_bundle(default_bundle_path())), copy)
    assert result.files == 2 and not result.missing
    said = [r.getMessage() for r in caplog.records if "not under --recordings" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("S01/20240501_060000.WAV: not under --recordings as it was "
                                                 "analysed; read from the ledger's path"), said


def test_reanalyse_cli_counts_missing_recordings_and_export_filters_by_bundle(tmp_path):
    db, recordings = make_review_db(tmp_path)
    moved = tmp_path / "elsewhere"
    (recordings / "S01").rename(moved)
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "edgemon", "reanalyse", "--db", str(db), "--models",
                             str(default_bundle_path()), "--recordings", str(tmp_path / "empty")],
                            capture_output=True, text=True, timeout=120)
    # None on disk: not a success a script could take for done (it exited 0, without a word).
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: nothing analysed again: none of the 2 recording(s) is on disk (listed above)")
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
        assert "more than one bundle" not in out.stderr
    everything = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db)],
                                capture_output=True, text=True, timeout=60)
    assert {r["bundle_id"] for r in csv.DictReader(io.StringIO(everything.stdout))} == {BUNDLE_ID, new_id}
    # Every bundle's rows, so a call appears once per bundle: said (a newcomer's partner got each twice).
    assert "2 recording(s) hold detections of more than one bundle" in everything.stderr
    assert "--bundle ID" in everything.stderr
    with review_server(db, recordings) as (base, _):
        with urllib.request.urlopen(base + "/charts") as page:
            html = page.read().decode()
        assert "2 recording(s) hold detections of more than one bundle" in html and 'name="bundle"' in html
        with urllib.request.urlopen(base + f"/charts?bundle={new_id}") as page:
            assert "more than one bundle" not in page.read().decode()


def test_reanalyse_keeps_scores_names_and_reviews_and_never_replaces_a_changed_recording(tmp_path):
    """Found by a review: reanalyse stored no raw score and no bundle names, replaced detections of a
    truncated recording by what was left of it, and kept the id of a detection whose confidence it
    changed (a cursor that had passed it below --min-confidence never delivered it)."""
    db, recordings = make_review_db(tmp_path)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    new_id = analyzer.bundle.bundle_id
    reanalyse(db, analyzer, device_id="site-9")
    scored = _rows(db, "SELECT id, score, confidence FROM detections WHERE bundle_id = ? ORDER BY id", [new_id])
    assert scored and all(score is not None and 0 < score <= 1 for _, score, _ in scored)
    assert _rows(db, "SELECT count(*) FROM labels WHERE bundle_id = ? AND common_name IS NOT NULL", [new_id])[0][0] >= 4
    # A detection judged, then stored with another confidence (as an earlier version of the bundle's
    # calibration would have): found again, it is a new row, and its review follows it.
    first_id = scored[0][0]
    with sqlite3.connect(db) as conn:
        source, start_s, label = conn.execute("SELECT source, start_s, label FROM detections WHERE id = ?",
                                              [first_id]).fetchone()
        conn.execute("UPDATE detections SET confidence = 0.01 WHERE id = ?", [first_id])
        conn.execute("INSERT INTO reviews (detection_id, source, start_s, label, bundle_id, verdict, reviewer, "
                     "reviewed_at) VALUES (?, ?, ?, ?, ?, 'correct', 'me', '2026-12-04T00:00:00Z')",
                     [first_id, source, start_s, label, new_id])
    top = _rows(db, "SELECT max(id) FROM detections")[0][0]
    reanalyse(db, analyzer, again=True)
    moved = _rows(db, "SELECT id, confidence FROM detections WHERE source = ? AND start_s = ? AND label = ? "
                      "AND bundle_id = ?", [source, start_s, label, new_id])
    assert len(moved) == 1 and moved[0][0] > top and moved[0][1] == scored[0][2]
    assert _rows(db, "SELECT detection_id FROM reviews") == [(moved[0][0],)]
    unchanged = [i for i, _, _ in scored[1:]]
    assert [i for (i,) in _rows(db, "SELECT id FROM detections WHERE bundle_id = ? AND id != ? ORDER BY id",
                                [new_id, moved[0][0]])] == unchanged     # the rest kept their ids
    # A recording cut short since watch analysed it is left alone, named, and the command fails.
    before = _rows(db, "SELECT * FROM detections ORDER BY id")
    path = recordings / "S01/20240501_060000.WAV"
    samples, rate = soundfile.read(path)
    soundfile.write(path, samples[: rate * 5], rate, subtype="PCM_16")
    result = reanalyse(db, analyzer, again=True)
    assert result.files == 1 and len(result.changed) == 1 and "S01/20240501_060000.WAV" in result.changed[0]
    assert _rows(db, "SELECT * FROM detections ORDER BY id") == before
    cli = subprocess.run([sys.executable, "-m", "edgemon", "reanalyse", "--db", str(db), "--models",
                          str(default_bundle_path()), "--again"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and json.loads(cli.stdout)["changed"] == result.changed
    assert cli.stderr.strip().splitlines()[-1].startswith("error: 1 recording(s) not analysed again: 1 changed")


def test_a_recording_watch_found_empty_is_no_failure_of_reanalyse(tmp_path):
    """A newcomer trial: a WAV cut to its header, stored by watch as done with 0.0 s of audio,
    made every reanalyse end in "1 unreadable" and exit 1, whatever it did with the others."""
    from tests.watch_helpers import watch_until_idle

    db, recordings = make_review_db(tmp_path)
    whole = (recordings / "S01/20240501_060000.WAV").read_bytes()
    (recordings / "S01/20240503_060000.WAV").write_bytes(whole[:44])   # the header alone, sizes as before
    watch_until_idle(recordings, db)
    assert _rows(db, "SELECT state, duration_s FROM files WHERE source = 'S01/20240503_060000.WAV'") == [("done", 0.0)]
    result = reanalyse(db, Analyzer(load_bundle(default_bundle_path())))
    assert result.failed == [] and result.files == 2


def _zero_the_tail_in_place(path, keep: float) -> None:
    data = bytearray(path.read_bytes())
    cut = int(len(data) * keep)
    data[cut:] = bytes(len(data) - cut)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["WAV", "FLAC"])
def test_reanalyse_leaves_a_recording_written_again_at_its_size_alone(tmp_path, kind):
    """A review: a recording whose last two thirds were zeroed in place (same size, same header and
    first audio: a copy that set its size first, a damaged card) had its detections replaced, watch's
    own 5 by 1, and the command said nothing and exited 0; a FLAC damaged so decoded short. Without
    the tail digest (a ledger row from before it) the FLAC is told by the audio it no longer holds."""
    from tests.watch_helpers import watch_until_idle

    (tmp_path / "made").mkdir()
    _, made = make_review_db(tmp_path / "made")
    recordings, db = tmp_path / "rec", tmp_path / "w.db"
    name = f"S01/20240501_060000.{kind}"
    samples, rate = soundfile.read(made / "S01/20240501_060000.WAV")
    (recordings / "S01").mkdir(parents=True)
    soundfile.write(recordings / name, samples, rate, subtype="PCM_16")
    watch_until_idle(recordings, db)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    assert reanalyse(db, analyzer, again=True).files == 1     # watch's own bundle: again
    before = _rows(db, "SELECT * FROM detections ORDER BY id")
    assert before
    _zero_the_tail_in_place(recordings / name, keep=1 / 3)
    checks = ["tail"] if kind == "WAV" else ["tail", "duration"]
    for check in checks:
        if check == "duration":
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE files SET tail_digest = NULL")
        result = reanalyse(db, analyzer, again=True)
        assert result.files == 0 and len(result.changed) == 1 and name in result.changed[0], (check, result)
        assert _rows(db, "SELECT * FROM detections ORDER BY id") == before


def test_a_recording_without_detections_takes_the_recorders_device_id(tmp_path):
    """A review: `watch --device-id site-07` stored nothing in a recording, and `reanalyse` run
    where no settings name the recorder stored the new bundle's detections under 'edgemon'."""
    from edgemon.storage.rows import Heartbeat
    from edgemon.storage.store import Store

    db, _ = make_review_db(tmp_path)
    quiet = "S01/20240501_060000.WAV"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM detections WHERE source = ?", [quiet])
    with Store(db) as store:
        store.add_heartbeat(Heartbeat(run_id="r", mode="watch", device_id="site-07", at_utc="2024-05-02T06:00:00Z",
                                      started_utc="2024-05-02T06:00:00Z", uptime_s=0.0))
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    reanalyse(db, analyzer)
    assert _rows(db, "SELECT DISTINCT device_id FROM detections WHERE source = ? AND bundle_id = ?",
                 [quiet, analyzer.bundle.bundle_id]) == [("site-07",)]
    # The database's id changed later (the card moved to another site): a recording with no
    # detection of its own is the device's that was running when it was analysed, not the newest
    # (a review: stored and synced as the other site's)
    with sqlite3.connect(db) as conn:
        analysed_at = conn.execute("SELECT updated_at FROM files WHERE source = ?", [quiet]).fetchone()[0]
        conn.execute("DELETE FROM detections WHERE source = ?", [quiet])
    with Store(db) as store:
        store.add_heartbeat(Heartbeat(run_id="s", mode="watch", device_id="site-09", at_utc="2999-01-01T00:00:00Z",
                                      started_utc="2999-01-01T00:00:00Z", uptime_s=0.0))
    assert analysed_at < "2999"
    reanalyse(db, analyzer, again=True)
    assert _rows(db, "SELECT DISTINCT device_id FROM detections WHERE source = ? AND bundle_id = ?",
                 [quiet, analyzer.bundle.bundle_id]) == [("site-07",)]


def test_a_bundles_effort_is_the_recordings_it_analysed(tmp_path):
    """A review: after `reanalyse --models B` reached one recording of two (the other gone from
    disk), the charts of B drew the other as listened to and silent, and `export-detections
    --bundle B` said nothing of the recording it never heard."""
    from edgemon.review.charts import effort_hours

    db, recordings = make_review_db(tmp_path)
    gone = recordings / "S01/20240502_070000.WAV"
    assert gone.is_file()
    gone.rename(tmp_path / "elsewhere.WAV")
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    new_id = analyzer.bundle.bundle_id
    assert reanalyse(db, analyzer).files == 1
    assert effort_hours(db, new_id)[1] == pytest.approx({"2024-05-01": 20 / 3600})
    assert effort_hours(db, BUNDLE_ID)[1] == pytest.approx({"2024-05-01": 20 / 3600, "2024-05-02": 20 / 3600})
    cli = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db), "--bundle", new_id],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert f"{new_id} analysed 1 of the 2 finished recordings" in cli.stderr
    whole = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db), "--bundle",
                            BUNDLE_ID], capture_output=True, text=True, timeout=120)
    assert whole.returncode == 0 and "finished recordings" not in whole.stderr
    # watch analyses the recording B reached again (it grew): B's calls there are of the shorter
    # one, and its export said nothing (a review)
    with sqlite3.connect(db) as conn:
        later = "2999-01-01T00:00:00.000Z"
        conn.execute("UPDATE files SET updated_at = ? WHERE source = 'S01/20240501_060000.WAV'", [later])
        conn.execute("UPDATE analyses SET ledger_at = ? WHERE source = 'S01/20240501_060000.WAV' AND bundle_id = ?",
                     [later, BUNDLE_ID])
    for bundle_id, said in ((new_id, f"{new_id} analysed 0 of the 2 finished recordings in the ledger as they now are"),
                            (BUNDLE_ID, None)):
        cli = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db), "--bundle",
                              bundle_id], capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0 and (said in cli.stderr if said else "finished recordings" not in cli.stderr), \
            cli.stderr


def test_a_bundles_day_chart_greys_the_days_it_never_analysed(tmp_path):
    """A season trial: after a partial `reanalyse` the new bundle's day chart left out the days it
    never analysed, where the README promises them grey ("not listening", not "no calls")."""
    from edgemon.review.charts import charts_svg

    db, recordings = make_review_db(tmp_path)
    (recordings / "S01/20240501_060000.WAV").rename(tmp_path / "elsewhere.WAV")   # gone from the card
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    assert reanalyse(db, analyzer).files == 1
    _, day_svg = charts_svg(db, analyzer.bundle.bundle_id)
    assert "<title>05-01: 0.00 h analysed</title>" in day_svg and "<title>05-02: 0.01 h analysed</title>" in day_svg
    assert re.findall(r">(\d\d-\d\d)</text>", day_svg) == ["05-01", "05-02"]


def test_a_stopped_reanalyse_goes_on_where_it_stopped(tmp_path):
    """A newcomer trial: each rerun of a stopped reanalyse began again at the first recording
    (`[1/16]`), so on a season of audio an interruption cost the whole run again."""
    db, _ = make_review_db(tmp_path)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    analyse_file, calls = analyzer.analyse_file, []

    def stopped_at_the_second(path, lead=None):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return analyse_file(path, lead=lead)

    analyzer.analyse_file = stopped_at_the_second
    with pytest.raises(KeyboardInterrupt):
        reanalyse(db, analyzer)
    analyzer.analyse_file = lambda path, lead=None: (calls.append(path.name), analyse_file(path, lead=lead))[1]
    rest = reanalyse(db, analyzer)
    assert (rest.files, rest.current) == (1, 1) and calls == ["20240501_060000.WAV", "20240502_070000.WAV",
                                                              "20240502_070000.WAV"]
    with sqlite3.connect(db) as conn:   # watch analysed the first again since (it grew): analysed again too
        conn.execute("UPDATE files SET updated_at = '2999-01-01T00:00:00.000Z' WHERE source = ?",
                     ["S01/20240501_060000.WAV"])
    assert reanalyse(db, analyzer).files == 1 and reanalyse(db, analyzer, again=True).files == 2


def test_reanalyse_keeps_what_watch_stored_while_it_read_the_recording(tmp_path):
    """A review: `reanalyse` with watch's own bundle, while watch analysed the recording again
    (written anew), replaced watch's newer detections with those of the audio it had read."""
    from edgemon.storage.store import Store
    from tests.watch_helpers import watch_until_idle

    (tmp_path / "made").mkdir()
    _, made = make_review_db(tmp_path / "made")
    recordings, db = tmp_path / "rec", tmp_path / "w.db"
    name = "S01/20240501_060000.WAV"
    samples, rate = soundfile.read(made / name)
    (recordings / "S01").mkdir(parents=True)
    soundfile.write(recordings / name, samples, rate, subtype="PCM_16")
    watch_until_idle(recordings, db)
    assert _rows(db, "SELECT count(*) FROM detections") != [(0,)]
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    read = analyzer.analyse_file

    def read_while_watch_stores_anew(path, lead=None):
        analysis = read(path, lead=lead)
        ledger = _rows(db, "SELECT path, size, mtime_ns, duration_s, start_utc FROM files")[0]
        with Store(db) as other:   # watch, meanwhile: the recording written anew, and nothing found in it
            other.commit_file(name, path=ledger[0], size=ledger[1], mtime_ns=ledger[2] + 1, duration_s=ledger[3],
                              start_utc=ledger[4], time_source="filename", clock_suspect=False,
                              bundle_id=analyzer.bundle.bundle_id, detections=[])
        return analysis

    analyzer.analyse_file = read_while_watch_stores_anew
    result = reanalyse(db, analyzer, again=True)
    assert result.files == 0 and len(result.changed) == 1 and "watch analysed it again" in result.changed[0]
    assert _rows(db, "SELECT count(*) FROM detections") == [(0,)]      # watch's newer result stands


def test_reanalyse_waits_for_another_process_holding_the_write_lock(tmp_path, monkeypatch):
    """A field-station trial: another process held the database's write lock past the busy
    timeout (30 s; 0.2 s here), and reanalyse ended in a traceback, "sqlite3.OperationalError:
    database is locked", its bundle not recorded either. It waits, as watch does, and says so."""
    import edgemon.files.reanalyse
    import edgemon.storage.store

    monkeypatch.setattr(edgemon.storage.store, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(edgemon.files.reanalyse, "BUSY_TIMEOUT_MS", 200)   # said once it has waited this
    db, _ = make_review_db(tmp_path)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")   # held from before reanalyse starts

    class LetGoOnceWaitedFor(logging.Handler):
        said: list[str] = []

        def emit(self, record):
            self.said.append(record.getMessage())
            if "waiting for it" in record.getMessage() and other.in_transaction:
                other.execute("ROLLBACK")

    said = LetGoOnceWaitedFor()
    logging.getLogger("edgemon.files.reanalyse").addHandler(said)
    try:
        result = reanalyse(db, analyzer)
    finally:
        logging.getLogger("edgemon.files.reanalyse").removeHandler(said)
        other.close()
    assert sum("held the write lock" in line for line in said.said) == 1, said.said
    assert result.files == 2 and result.failed == [] and result.changed == []
    assert _rows(db, "SELECT count(*) FROM detections WHERE bundle_id = ?",
                 [analyzer.bundle.bundle_id]) == [(result.detections,)]
    assert _rows(db, "SELECT bundle_id FROM bundles WHERE bundle_id = ?",
                 [analyzer.bundle.bundle_id]) == [(analyzer.bundle.bundle_id,)]   # recorded once it could be


def test_reanalyse_waiting_for_the_write_lock_takes_a_ctrl_c_while_it_is_held(tmp_path, monkeypatch):
    """A diff review: waiting for another process's write lock, reanalyse said "Ctrl-C stops", but
    each try sat in SQLite's own wait (the busy timeout), which no signal ends: a Ctrl-C stopped it
    28 s later. Here the busy timeout is an hour and the wait is said at once: the Ctrl-C is taken
    while the lock is still held (a guard lets go after 60 s, so the test fails, not hangs)."""
    import signal
    import threading

    import edgemon.files.reanalyse
    import edgemon.storage.store
    from edgemon.storage.store import Store

    monkeypatch.setattr(edgemon.storage.store, "BUSY_TIMEOUT_MS", 3_600_000)
    monkeypatch.setattr(edgemon.files.reanalyse, "BUSY_TIMEOUT_MS", 0)
    db, _ = make_review_db(tmp_path)
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    held = threading.Lock()
    record_bundle = Store.record_bundle

    def then_another_write_begins(self, *args, **kwargs):
        recorded = record_bundle(self, *args, **kwargs)
        other.execute("BEGIN IMMEDIATE")
        return recorded

    def let_go():
        with held:
            if other.in_transaction:
                other.execute("ROLLBACK")

    class CtrlCOnceWaitedFor(logging.Handler):
        def emit(self, record):
            if "waiting for it" in record.getMessage():
                with held:
                    still_held = other.in_transaction
                assert still_held
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(Store, "record_bundle", then_another_write_begins)
    # Ctrl-C as a terminal delivers it: a suite started in the background (`.ci/run &`) ignores SIGINT.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    guard = threading.Timer(60, let_go)
    guard.start()
    ctrl_c = CtrlCOnceWaitedFor()
    logging.getLogger("edgemon.files.reanalyse").addHandler(ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            reanalyse(db, analyzer)
    finally:
        logging.getLogger("edgemon.files.reanalyse").removeHandler(ctrl_c)
        signal.signal(signal.SIGINT, before)
        guard.cancel()
        let_go()
        other.close()
    assert _rows(db, "SELECT count(*) FROM detections WHERE bundle_id = ?", [analyzer.bundle.bundle_id]) == [(0,)]


def test_another_programs_database_is_named_as_such(tmp_path):
    """A review: reanalyse on another program's SQLite file said only "no such table: files"."""
    from edgemon.files.reanalyse import ReanalyseError

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = other.read_bytes()
    with pytest.raises(ReanalyseError, match="other.db: not an edgemon detections database .*nothing was changed"):
        reanalyse(other, Analyzer(load_bundle(default_bundle_path())))
    assert other.read_bytes() == before


def test_a_bundles_effort_is_the_live_hours_it_listened(tmp_path):
    """A live trial: the charts of a bundle that only re-analysed a recording drew the hours
    another bundle listened live as its own, silent ones; each listen run's bundle (its
    heartbeats) now says whose the coverage minutes are."""
    from edgemon.review.charts import effort_hours
    from edgemon.storage.rows import CoverageMinute, Heartbeat
    from edgemon.storage.store import Store

    db = tmp_path / "live.db"
    with Store(db) as store:
        for run, start, bundle in (("r1", "2026-12-07T15:30:00.000Z", "bundle-a"),
                                   ("r2", "2026-12-07T18:00:00.000Z", "bundle-b"),
                                   ("r3", "2026-12-07T20:00:00.000Z", "bundle-b")):
            store.add_heartbeat(Heartbeat(run_id=run, mode="listen", device_id="d", at_utc=start,
                                          started_utc=start, uptime_s=0.0, bundle_id=bundle))
        store.add_coverage([CoverageMinute(source="live:mic", device_id="d", minute_utc=minute, end_utc=end,
                                           analysed_s=36.0)
                            for minute, end in (("2026-12-07T15:30:00.000Z", "2026-12-07T15:31:00.000Z"),
                                                ("2026-12-07T18:00:00.000Z", "2026-12-07T18:01:00.000Z"),
                                                ("2026-12-07T20:05:00.000Z", "2026-12-07T20:06:00.000Z"))])
    assert effort_hours(db, "bundle-a")[0] == pytest.approx({15: 0.01})
    assert effort_hours(db, "bundle-b")[0] == pytest.approx({18: 0.01, 20: 0.01})
    assert effort_hours(db, "bundle-c")[0] == {}
    assert effort_hours(db)[0] == pytest.approx({15: 0.01, 18: 0.01, 20: 0.01})
