"""The detections store: schema, WAL, one-transaction commits, failure counting."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import pytest

from edgemon.storage.rows import Detection

from edgemon.storage.store import MIGRATIONS, WAL_SIZE_LIMIT_BYTES, Store, StoreError
from edgemon.utc import utc_iso

SOURCE = "site1/20240501_060000.wav"


def detection(start_s: float = 0.0, label: str | None = "bird", *, source: str = SOURCE,
              bundle_id: str = "bundle-a", confidence: float = 0.9) -> Detection:
    return Detection(
        device_id="rec01", source=source, start_s=start_s, end_s=start_s + 3.0,
        start_utc=f"2024-05-01T06:00:{int(start_s):02d}Z", end_utc=None, time_source="filename",
        clock_suspect=False, label=label, confidence=confidence,
        votes='{"m0": ["bird", 0.9]}', bundle_id=bundle_id)


def commit(store: Store, detections: list[Detection], *, source: str = SOURCE,
           bundle_id: str = "bundle-a", size: int = 1000) -> None:
    store.commit_file(source, path=f"/data/{source}", size=size, mtime_ns=123, duration_s=60.0,
                      start_utc="2024-05-01T06:00:00Z", time_source="filename",
                      clock_suspect=False, bundle_id=bundle_id, detections=detections)


def count(store: Store, where: str = "1", params: tuple = ()) -> int:
    return store.db.execute(f"SELECT count(*) FROM detections WHERE {where}", params).fetchone()[0]


@pytest.fixture
def store(tmp_path) -> Store:
    """A fresh store in a temp file, closed after the test."""
    with Store(tmp_path / "detections.db") as opened:
        yield opened


def test_schema_is_created_in_wal_mode(store, tmp_path):
    assert {"files", "detections", "export_cursors"} <= set(store.db.table_names())
    index_columns = {tuple(i.columns) for i in store.db["detections"].indexes}
    natural_key = ("source", "start_s", "label", "bundle_id")
    assert {("start_utc",), ("label",), natural_key} <= index_columns
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: a power cut loses no commit
    # journal_mode=wal is persistent: a fresh connection sees it too.
    other = sqlite3.connect(tmp_path / "detections.db")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.close()
    assert store.integrity_check() == "ok"


def test_reopening_keeps_data_and_migrates_once(tmp_path):
    with Store(tmp_path / "d.db") as store:
        commit(store, [detection(0.0)])
    with Store(tmp_path / "d.db") as store:
        assert count(store) == 1
        applied = [name for (name,) in store.db.execute("SELECT name FROM _sqlite_migrations ORDER BY rowid")]
        # Each migration once, in order; later ones (m002 live coverage, ...) are additive.
        assert applied[0] == "m001_initial" and applied == sorted(set(applied))
        assert MIGRATIONS.pending(store.db) == []


def test_a_database_from_a_newer_edgemon_is_refused_not_written(tmp_path):
    """A unit's card put back to an older image: sqlite-utils passes over a migration it does not
    know, and every write bypassed what the newer schema changed, without a word (a review)."""
    db = tmp_path / "d.db"
    with Store(db) as store:
        commit(store, [detection(0.0)])
        store.db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                         "VALUES ('edgemon.store', 'm099_from_the_future', '2027-01-01')")
        store.db.conn.commit()
    before = db.read_bytes()
    with pytest.raises(StoreError, match=r"d.db was written by a newer edgemon \(its schema has "
                                         r"m099_from_the_future, unknown to this one\): upgrade edgemon"):
        Store(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM detections").fetchone() == (1,)
    assert db.read_bytes() == before


def test_commit_file_stores_detections_and_ledger_row(store):
    commit(store, [detection(0.0), detection(3.0, "frog")])
    row = store.db.execute("SELECT * FROM detections WHERE label = 'frog'").fetchone()
    assert row is not None
    entry = store.file_entry(SOURCE)
    assert entry["state"] == "done" and entry["attempts"] == 1 and entry["error"] is None
    assert entry["path"] == f"/data/{SOURCE}" and entry["bundle_id"] == "bundle-a"
    assert entry["start_utc"] == "2024-05-01T06:00:00.000Z"
    assert store.file_entry("never/seen.wav") is None


def test_committing_the_same_file_twice_does_not_duplicate(store):
    dets = [detection(0.0), detection(3.0), detection(6.0, "frog")]
    commit(store, dets)
    commit(store, dets)
    assert count(store) == 3
    # A re-run that finds fewer events drops the old ones of that bundle.
    commit(store, dets[:1])
    assert count(store) == 1


def test_recommit_keeps_other_bundles_and_never_reuses_ids(store):
    commit(store, [detection(0.0)], bundle_id="bundle-a")
    old_max = store.db.execute("SELECT max(id) FROM detections").fetchone()[0]
    commit(store, [detection(0.0, bundle_id="bundle-b")], bundle_id="bundle-b")
    commit(store, [detection(0.0, confidence=0.8)], bundle_id="bundle-a")
    assert count(store, "bundle_id = 'bundle-b'") == 1
    new_id = store.db.execute(
        "SELECT id FROM detections WHERE bundle_id = 'bundle-a'").fetchone()[0]
    assert new_id > old_max + 1  # ids grow: an export cursor sees a re-processed row that changed


def test_a_file_committed_again_unchanged_keeps_its_rows_so_cursors_deliver_nothing_twice(store):
    # A newcomer trial touched a recording (a card copied again without -p does the same): watch
    # analysed it again, and every cursor export delivered its detections a second time.
    commit(store, [detection(0.0), detection(3.0, "frog")])
    ids = store.db.execute("SELECT id, label FROM detections ORDER BY id").fetchall()
    store.commit_file(SOURCE, path=f"/data/{SOURCE}", size=1000, mtime_ns=456, duration_s=60.0,
                      start_utc="2024-05-01T06:00:00Z", time_source="filename", clock_suspect=False,
                      bundle_id="bundle-a", detections=[detection(0.0), detection(3.0, "frog", confidence=0.5)])
    after = store.db.execute("SELECT id, label FROM detections ORDER BY id").fetchall()
    assert after[0] == ids[0]                                   # the same detection: the same row
    assert after[1][1] == "frog" and after[1][0] > ids[1][0]    # changed: a new row, delivered again
    assert store.file_entry(SOURCE)["mtime_ns"] == 456


def test_commit_file_is_all_or_nothing(store):
    commit(store, [detection(0.0), detection(3.0)])
    other = "site2/20240501_070000.wav"
    broken = [detection(0.0, source=other), detection(3.0, None, source=other)]  # label NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        commit(store, broken, source=other)
    assert store.file_entry(other) is None
    assert count(store, "source = ?", (other,)) == 0
    # A failed re-commit of a done file leaves its earlier detections in place (delete undone).
    with pytest.raises(sqlite3.IntegrityError):
        commit(store, [detection(9.0), detection(12.0, None)])
    assert count(store, "source = ?", (SOURCE,)) == 2
    assert store.file_entry(SOURCE)["attempts"] == 1
    assert not store.db.conn.in_transaction  # the store is usable afterwards
    commit(store, [detection(0.0, source=other)], source=other)
    assert store.file_entry(other)["state"] == "done"


def test_commit_file_rejects_detections_of_another_source(store):
    with pytest.raises(ValueError, match="site9"):
        commit(store, [detection(0.0, source="site9/x.wav")])
    assert store.file_entry(SOURCE) is None


def test_failures_are_counted_until_quarantine(store):
    commit(store, [detection(0.0, source="other.wav")], source="other.wav")
    states = [store.record_failure(SOURCE, path="/data/x.wav", size=10, mtime_ns=5,
                                   error=f"boom {i}", max_attempts=3) for i in range(3)]
    assert states == ["failed", "failed", "quarantined"]
    entry = store.file_entry(SOURCE)
    assert entry["state"] == "quarantined" and entry["attempts"] == 3
    assert entry["error"] == "boom 2"
    assert count(store) == 1  # failures leave detections alone


def test_a_rewritten_file_gets_fresh_attempts(store):
    for _ in range(2):
        store.record_failure(SOURCE, path="/d/x.wav", size=10, mtime_ns=5, error="e",
                             max_attempts=2)
    assert store.file_entry(SOURCE)["state"] == "quarantined"
    state = store.record_failure(SOURCE, path="/d/x.wav", size=20, mtime_ns=6, error="e",
                                 max_attempts=2)
    assert state == "failed" and store.file_entry(SOURCE)["attempts"] == 1


def test_insert_detections_for_a_live_stream_is_idempotent(store):
    live = [detection(0.0, source="live:mic0"), detection(3.0, source="live:mic0")]
    assert store.insert_detections(live) == 2
    store.insert_detections(live)
    assert count(store, "source = 'live:mic0'") == 2
    assert store.file_entry("live:mic0") is None


def test_times_are_stored_as_utc_text():
    assert utc_iso("2024-05-01T08:00:00+02:00") == "2024-05-01T06:00:00.000Z"
    assert utc_iso("2024-05-01T06:00:00.25Z") == "2024-05-01T06:00:00.250Z"
    with pytest.raises(ValueError):
        utc_iso("2024-05-01T06:00:00")  # no offset: zone unknown
    assert utc_iso("2024-05-01T06:00:00", naive_is_utc=True) == "2024-05-01T06:00:00.000Z"


def test_stored_detection_times_are_normalised(store):
    d = detection(0.0)
    store.insert_detections([Detection(**{**d.__dict__, "start_utc": "2024-05-01T08:00:00+02:00",
                                          "end_utc": "2024-05-01T08:00:03+02:00"})])
    row = store.db.execute("SELECT start_utc, end_utc FROM detections").fetchone()
    assert row == ("2024-05-01T06:00:00.000Z", "2024-05-01T06:00:03.000Z")


def test_unopenable_database_raises_store_error(tmp_path):
    with pytest.raises(StoreError, match="missing"):
        Store(tmp_path / "missing" / "d.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="garbage.db"):
        Store(garbage)


def test_a_database_from_before_sync_with_twin_heartbeats_still_opens(tmp_path):
    """Found in review: m007 copies every old heartbeat into the change log, whose keys are
    unique, while old heartbeats of one run could share an uptime to the millisecond; the
    migration then failed on every start and the database could not be opened at all."""
    import sqlite_utils

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    MIGRATIONS.apply(old, stop_before="m007_sync_outbox")
    beat = {"run_id": "r1", "mode": "watch", "device_id": "d", "at_utc": "2024-01-01T00:00:00.000Z",
            "started_utc": "2024-01-01T00:00:00.000Z", "uptime_s": 12.345, "state": "running"}
    old["heartbeats"].insert_all([beat, {**beat, "at_utc": "2024-01-01T00:00:00.001Z"}])
    old.close()
    with Store(path) as store:
        assert store.db.execute("SELECT count(*) FROM changes WHERE tbl = 'heartbeats'").fetchone()[0] == 1
        assert store.db.execute("SELECT count(*) FROM heartbeats").fetchone()[0] == 2


def test_processes_migrating_one_old_database_at_once_all_open_it(tmp_path):
    """Found in review: each process read the pending migrations, then applied them; a second
    process that read the list before the first committed applied m006 again and failed with
    "duplicate column name: score" (or m007: "table sync_meta already exists"). Real processes, started together, on old databases."""
    import subprocess
    import sys
    import time

    import sqlite_utils

    script = ("import sys, time; from edgemon.storage.store import Store\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "Store(sys.argv[1]).close()\n")
    for round_ in range(2):
        path = tmp_path / f"old-{round_}.db"
        old = sqlite_utils.Database(path)
        MIGRATIONS.apply(old, stop_before="m006_detection_score")
        old["detections"].insert_all(
            {"device_id": "d", "source": f"s{i // 50}.wav", "start_s": float(i % 50), "end_s": i % 50 + 3.0,
             "time_source": "filename", "clock_suspect": 0, "label": "bird", "confidence": 0.9,
             "bundle_id": "b", "created_at": "2024-01-01T00:00:00.000Z"} for i in range(5000))
        old.close()
        start = time.time() + 1.5        # after every interpreter has started
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(start)], stderr=subprocess.PIPE,
                                  text=True) for _ in range(5)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 5, "\n".join(errors)
        with Store(path) as store:
            assert MIGRATIONS.pending(store.db) == []
            names = [m.name for m in MIGRATIONS.applied(store.db)]
            assert len(names) == len(set(names))        # each migration recorded once


def test_a_database_in_rollback_mode_opens_once_another_process_has_written(tmp_path):
    """A full run under load: one of five processes opening an old database at once failed with
    "database is locked" at once. Switching to WAL upgrades a read to a write, and SQLite refuses
    that without waiting while another connection writes; it is waited for like any busy writer."""
    import sqlite3
    import threading
    import time

    import sqlite_utils

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    MIGRATIONS.apply(old, stop_before="m006_detection_score")
    old.close()
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)   # another process's write
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO detections (device_id, source, start_s, end_s, time_source, clock_suspect, label, "
                   "confidence, bundle_id, created_at) VALUES ('d', 's.wav', 0, 3, 'filename', 0, 'bird', 0.9, 'b', "
                   "'2024-01-01T00:00:00.000Z')")
    ends = threading.Timer(0.5, lambda: writer.execute("COMMIT"))
    ends.start()
    started = time.monotonic()
    try:
        with Store(path) as store:
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert store.db.execute("SELECT count(*) FROM detections").fetchone()[0] == 1
            assert MIGRATIONS.pending(store.db) == []
    finally:
        ends.join()
        writer.close()
    assert time.monotonic() - started >= 0.4       # it waited for the writer, it did not go round it


def test_a_database_written_before_the_package_move_opens_and_migrates(tmp_path):
    """The migrations' set name is stored in every database ('edgemon.store'); the move into
    edgemon/storage/ once renamed it, and every older database then failed to open (m001 again).
    tests/data/store_c97f0e3.db was written by commit c97f0e3 (migrations m001-m009)."""
    db = tmp_path / "old.db"
    shutil.copyfile(Path(__file__).parent / "data" / "store_c97f0e3.db", db)
    with Store(db) as store:
        rows = list(store.db.query("SELECT source, label, confidence FROM detections"))
        applied = {r["name"] for r in store.db.query("SELECT name FROM _sqlite_migrations")}
    assert rows == [{"source": "20240701_060000.WAV", "label": "gibbon_duet", "confidence": 0.61}]
    assert {"m001_initial", "m009_sync_reviews", "m010_sync_lineage"} <= applied


def test_a_detection_found_again_with_numeric_noise_keeps_its_row(tmp_path):
    """A review: reanalyse with the same bundle on another thread count moved confidences by 1e-4,
    and every detection became a new row (new ids: exports and reviews saw new detections)."""
    first = dataclasses.replace(detection(3.0, confidence=0.53467), score=0.61234, votes='{"m0": ["bird", 0.53467]}')
    with Store(tmp_path / "d.db") as store:
        store.replace_detections(SOURCE, "bundle-a", [first])
        stored = store.db.execute("SELECT id, confidence, score, votes FROM detections").fetchall()
        noisy = dataclasses.replace(first, confidence=0.53458, score=0.61241, votes='{"m0": ["bird", 0.53458]}')
        store.replace_detections(SOURCE, "bundle-a", [noisy])
        assert store.db.execute("SELECT id, confidence, score, votes FROM detections").fetchall() == stored
        # raw scores moved by 1.2e-4 moved a calibrated confidence by 0.0045 (a review): 12 of 73 rows were new
        store.replace_detections(SOURCE, "bundle-a", [dataclasses.replace(first, confidence=0.53017, score=0.61222)])
        assert store.db.execute("SELECT id, confidence, score, votes FROM detections").fetchall() == stored
        store.replace_detections(SOURCE, "bundle-a", [dataclasses.replace(first, confidence=0.56)])
        (new_id, confidence), = store.db.execute("SELECT id, confidence FROM detections").fetchall()
        assert new_id > stored[0][0] and confidence == 0.56   # a real change is a new row


def test_analyses_of_an_older_database_are_filled_without_trusting_the_clock(tmp_path):
    """m014 fills ``analyses`` from what an older edgemon left. A review: the first form dated every
    bundle's analysis to the ledger row as it now stands, so a bundle `reanalyse` ran before watch
    analysed the recording again (grown) looked current, and never ran again on the whole of it."""
    import sqlite_utils

    from edgemon.files.reanalyse import _analysed_since_changed, _ledger

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    MIGRATIONS.apply(old, stop_before="m014_analyses")
    grown_at = "2024-01-02T00:00:00.000Z"    # watch analysed it again, grown, after B's run
    old["files"].insert({"source": "a.wav", "path": "/r/a.wav", "size": 10, "mtime_ns": 1, "state": "done",
                         "attempts": 1, "duration_s": 40.0, "bundle_id": "watch-b", "updated_at": grown_at,
                         "time_source": "filename", "clock_suspect": 0})
    row = {"device_id": "d", "source": "a.wav", "end_s": 3.0, "time_source": "filename", "clock_suspect": 0,
           "label": "bird", "confidence": 0.9}
    old["detections"].insert_all([{**row, "start_s": 1.0, "bundle_id": "other-b", "created_at": "2024-01-01T00:00:00.000Z"},
                                  {**row, "start_s": 1.0, "bundle_id": "watch-b", "created_at": grown_at}])
    old.close()
    with Store(path) as store:
        rows = store.db.execute("SELECT bundle_id, duration_s, ledger_at FROM analyses ORDER BY bundle_id").fetchall()
    assert rows == [("other-b", None, None), ("watch-b", 40.0, grown_at)]
    assert [_analysed_since_changed(r) for r in _ledger(path, "other-b")[0]] == [False]   # run again
    assert [_analysed_since_changed(r) for r in _ledger(path, "watch-b")[0]] == [True]


def test_a_clock_set_back_cannot_make_an_old_analysis_look_current(tmp_path, monkeypatch):
    """A review: the recorder's clock ran three hours ahead while `reanalyse` ran, was set right,
    and watch then analysed the recording again (grown): compared by time, the bundle's analysis
    still looked newer and the grown recording was passed over."""
    import edgemon.storage.store as store_module
    from edgemon.files.reanalyse import _analysed_since_changed, _ledger

    path = tmp_path / "d.db"
    real_now = store_module._now
    with Store(path) as store:
        store.commit_file("a.wav", path="/r/a.wav", size=10, mtime_ns=1, duration_s=20.0, start_utc=None,
                          time_source="mtime", clock_suspect=False, bundle_id="watch-b", detections=[])
        monkeypatch.setattr(store_module, "_now", lambda: "2999-01-01T00:00:00.000Z")    # ahead
        store.replace_detections("a.wav", "other-b", [], 20.0)
        monkeypatch.setattr(store_module, "_now", real_now)                               # set right
        assert [_analysed_since_changed(r) for r in _ledger(path, "other-b")[0]] == [True]
        store.note_touched("a.wav", 5)       # touched, the same audio: still current
        assert [_analysed_since_changed(r) for r in _ledger(path, "other-b")[0]] == [True]
        store.commit_file("a.wav", path="/r/a.wav", size=20, mtime_ns=2, duration_s=40.0, start_utc=None,
                          time_source="mtime", clock_suspect=False, bundle_id="watch-b", detections=[])
    assert [_analysed_since_changed(r) for r in _ledger(path, "other-b")[0]] == [False]


def test_the_wal_a_held_reader_grew_is_cut_back_once_it_lets_go(store, tmp_path):
    """Found in the weeks review: while another connection held a read transaction (a person's
    sqlite3 shell), every commit stayed in the WAL, and the file stayed at that size (130 MB beside
    a 2 MB database) until the daemon stopped. It is now cut back at the next checkpoint."""
    wal = tmp_path / "detections.db-wal"
    reader = sqlite3.connect(tmp_path / "detections.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM files").fetchone()   # a snapshot, held
        for i in range(2000):
            source = f"site1/{i:05d}.wav"
            commit(store, [detection(float(k), source=source) for k in range(3)], source=source)
            if wal.stat().st_size > 2 * WAL_SIZE_LIMIT_BYTES:
                break
        assert wal.stat().st_size > 2 * WAL_SIZE_LIMIT_BYTES
        reader.execute("COMMIT")
    finally:
        reader.close()
    for i in range(3):
        commit(store, [], source=f"site2/{i:05d}.wav")
    assert wal.stat().st_size <= WAL_SIZE_LIMIT_BYTES


def test_an_older_database_a_running_daemon_holds_is_not_migrated_under_it(tmp_path):
    """An upgrade trial: the package upgraded while the service still ran the old version, and
    `edgemon review` (or `sync`) migrated the database under that daemon. It went on writing
    without what the new schema adds: the recordings it analysed next had no ``analyses`` rows,
    so its bundle counted as never having analysed them. Refused, naming the daemon, and left as
    it was; once the daemon is gone the same open migrates it."""
    import subprocess
    import sys

    db = tmp_path / "old.db"
    shutil.copyfile(Path(__file__).parent / "data" / "store_c97f0e3.db", db)   # m001-m009, by an older edgemon
    holder = ("import sys; from edgemon.storage.lock import hold_database\n"
              "with hold_database(sys.argv[1]):\n"
              "    print('held', flush=True); sys.stdin.read()\n")
    daemon = subprocess.Popen([sys.executable, "-c", holder, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline() == "held\n"
        with pytest.raises(StoreError, match=rf"in use by edgemon pid {daemon.pid}.*restart"):
            Store(db)
    finally:
        daemon.communicate("")
    import sqlite_utils
    assert "m010_sync_lineage" not in {m.name for m in MIGRATIONS.applied(sqlite_utils.Database(db))}
    with Store(db) as store:   # the daemon gone (restarted as the new version, say): migrated as before
        assert MIGRATIONS.pending(store.db) == []
