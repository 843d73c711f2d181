"""The watcher asks its disk budget itself; health only reports. Below the free-space watermark
no new file starts, with or without a health monitor, and nothing a monitor returns holds work."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from edgemon.files.watcher import Watcher
from edgemon.health import WatchMonitor
from edgemon.storage.disk_budget import DiskBudget, DiskGuard
from edgemon.storage.store import Store
from tests.conftest import tone
from tests.watch_helpers import analyzer, fast_config, query, write_wav


def pretend_disk(free_mb: list[float], db) -> DiskGuard:
    """A disk budget of 100 MB over a pretend disk whose free space is ``free_mb[0]``."""
    return DiskGuard([db], DiskBudget(min_free_mb=100, check_s=0.05),
                     usage=lambda _: type("U", (), {"free": free_mb[0] * 2**20})())


def run_for_at_most(watcher: Watcher, seconds: float) -> None:
    """``watcher.run`` until it ends by itself, or is stopped after ``seconds``."""
    stop = threading.Event()
    deadline = threading.Timer(seconds, stop.set)
    deadline.start()
    try:
        watcher.run(stop)
    finally:
        deadline.cancel()


def recordings(root, n: int = 2) -> None:
    for i in range(n):
        write_wav(root / f"2024020{i + 1}_060000.WAV", tone(800, 2.0, seed=i))


def run_watcher(db, make, stop: threading.Event) -> tuple[threading.Thread, dict]:
    """``make(store)`` -> Watcher, run on a thread of its own (which owns the store)."""
    made: dict = {}

    def run() -> None:
        with Store(db) as store:
            made["watcher"] = make(store)
            made["watcher"].run(stop)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, made


def test_below_the_watermark_the_watcher_holds_by_itself_then_resumes(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recordings(root)
    free = [10.0]
    stop = threading.Event()
    thread, made = run_watcher(db, lambda store: Watcher(fast_config(root, settle_s=0.0, until_idle=False),
                                                         analyzer(), store, disk=pretend_disk(free, db)), stop)
    try:
        time.sleep(1.0)
        watcher = made["watcher"]
        assert watcher.processed == 0 and watcher.state == "hold_disk" and len(watcher.pending) == 2
        free[0] = 10_000.0
        deadline = time.monotonic() + 30
        while watcher.processed < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert watcher.processed == 2 and watcher.state == "ok"


def test_what_a_monitor_returns_holds_nothing_and_it_reports_the_watchers_hold(tmp_path):
    """Found in review: a health tick returning False held the watcher's work. Now an observer
    that says False is ignored, and the heartbeats carry the hold the watcher decided."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recordings(root)
    said_no: list[int] = []

    def refuses(watcher) -> bool:
        said_no.append(watcher.processed)
        return False

    with Store(db) as store:
        watcher = Watcher(fast_config(root, settle_s=0.0), analyzer(), store, on_tick=refuses)
        stop = threading.Event()
        deadline = threading.Timer(30, stop.set)   # a watcher still held would otherwise never go idle
        deadline.start()
        try:
            watcher.run(stop)
        finally:
            deadline.cancel()
    assert watcher.processed == 2 and said_no

    free = [10.0]
    later = tmp_path / "later"
    recordings(later, 1)
    with Store(tmp_path / "e.db") as store:
        monitor = WatchMonitor(store, tmp_path / "e.db", device_id="site", bundle_id="b", env={})
        watcher = Watcher(fast_config(later, settle_s=0.0, until_idle=False), analyzer(), store,
                          on_tick=monitor.tick, disk=pretend_disk(free, tmp_path / "e.db"))
        stop = threading.Event()
        threading.Timer(0.5, stop.set).start()
        with monitor.running(watcher):
            watcher.run(stop)
        assert monitor.tick(watcher) is None
    assert watcher.processed == 0
    beats = query(tmp_path / "e.db", "SELECT state, disk_free_mb FROM heartbeats ORDER BY id")
    assert ("hold_disk", 10.0) in beats


def test_until_idle_below_the_watermark_ends_in_one_line_keeping_what_is_stored(tmp_path):
    """A newcomer trial: `watch --until-idle` on a disk below min_free_mb waited for ever, in silence."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recordings(root, 1)
    done = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stored = query(db, "SELECT COUNT(*) FROM files WHERE state = 'done'")
    recordings(tmp_path / "more", 2)
    for path in (tmp_path / "more").iterdir():
        path.rename(root / f"2024030{len(list(root.iterdir()))}_060000.WAV")
    huge = {**os.environ, "EDGEMON_MIN_FREE_MB": "1e12"}   # more than any disk here holds
    done = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle"],
                          capture_output=True, text=True, timeout=120, env=huge)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "2 file(s) not analysed" in errors[0] and "EDGEMON_MIN_FREE_MB" in errors[0], errors[0]
    assert query(db, "SELECT COUNT(*) FROM files WHERE state = 'done'") == stored


def refuse_once(store: Store, method: str, message: str, then=None) -> list:
    """``store``'s ``method`` refused once with SQLite's ``message`` (the disk full, the lock held
    too long), then done as usual, ``then`` called before each later call; the list of refusals
    still to come (empty once it refused)."""
    import sqlite3

    real, refusals = getattr(store, method), [1]

    def refused_once(*args, **kwargs):
        if refusals:
            refusals.pop()
            raise sqlite3.OperationalError(message)
        if then is not None:
            then()
        return real(*args, **kwargs)

    setattr(store, method, refused_once)
    return refusals


def test_a_commit_the_disk_refused_is_not_taken_for_a_death(tmp_path, caplog):
    """A newcomer trial: after a full disk refused a file's commit (its attempt already begun), the
    retry said the analysis "was cut short (edgemon stopped, or the analysis died)" and ran it in
    a separate process."""
    from edgemon.status import collect_status

    root, db = tmp_path / "rec", tmp_path / "d.db"
    recordings(root, 1)
    seen_open: list = []
    with Store(db) as store:
        refusals = refuse_once(store, "commit_file", "database or disk is full",
                               then=lambda: seen_open.extend(collect_status(db, integrity=False)["interrupted"].items()))
        watcher = Watcher(fast_config(root, settle_s=0.0), analyzer(), store)
        run_for_at_most(watcher, 60)
    assert not refusals and watcher.processed == 1
    assert "database write failed" in caplog.text and "cut short" not in caplog.text
    assert seen_open == []   # status, during the retry, counts no death either (a review)


def test_a_refused_failure_record_is_not_taken_for_a_death(tmp_path, caplog):
    """Found in review: a file that failed to decode, whose failure the database then refused to
    record (locked past the busy timeout, a full disk), was said at its retry to have been "cut
    short (edgemon stopped, or the analysis died)" and was analysed in a separate process, as a
    refused commit was before (test above)."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    (root / "20240201_060000.WAV").write_bytes(b"this is a shopping list, not audio\n" * 50)
    with Store(db) as store:
        refusals = refuse_once(store, "record_failure", "database is locked")
        watcher = Watcher(fast_config(root, settle_s=0.0), analyzer(), store)
        run_for_at_most(watcher, 60)
    assert not refusals
    assert query(db, "SELECT state, attempts FROM files") == [("quarantined", 3)]
    assert "database write failed" in caplog.text and "cut short" not in caplog.text


def _a_full_database_error():
    """SQLite's own error for a full database (SQLITE_FULL), from a database held to one page."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("PRAGMA max_page_count = 1")
        try:
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        except sqlite3.OperationalError as exc:
            return exc
    raise AssertionError("SQLite found room")


def test_until_idle_on_a_full_database_ends_in_one_line(tmp_path):
    """A newcomer trial: with min_free_mb 0, `watch --until-idle` onto a full disk held its work
    and retried for ever ("database or disk is full"). A busy or locked database is still waited out."""
    import pytest

    from edgemon.storage.disk_budget import DiskHoldError

    full = _a_full_database_error()
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recordings(root, 3)
    with Store(db) as store:
        def refused(*args, **kwargs):
            raise full

        store.commit_file = refused
        watcher = Watcher(fast_config(root, settle_s=0.0), analyzer(), store)
        with pytest.raises(DiskHoldError, match=r"3 file\(s\) not analysed: the database's disk is full"):
            run_for_at_most(watcher, 20)    # the deadline would end it with no error
    # The refused commit is no death: the next run must not call the file cut short (a review).
    assert query(db, "SELECT count(*) FROM in_progress") == [(0,)]
