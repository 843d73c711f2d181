"""Health: sd_notify over a real unix datagram socket, watchdog pings only while the pipeline
moves, heartbeat rows, the disk watermark as back-pressure, and `edgemon status`."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.storage.disk_budget import HOLD, NO_CLIPS, OK, DiskBudget, DiskGuard
from edgemon.health import (
    CommitProgress,
    HealthConfig,
    Heartbeats,
    Notifier,
    Watchdog,
    WatchMonitor,
    WriterHold,
    watchdog_interval_s,
)
from edgemon.files.watcher import Watcher
from edgemon.status import collect_status, format_status
from edgemon.utc import parse_utc
from edgemon.storage.store import Store
from tests.conftest import hoots, tone
from tests.waits import poll_until, wait_until
from tests.watch_helpers import (
    analyzer,
    fast_config,
    files_done,
    query,
    watch_until_idle,
    write_wav,
)


class NotifySocket:
    """What systemd listens on: a unix datagram socket; collects (monotonic time, message)."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def close(self) -> list[tuple[float, str]]:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.messages


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    if not sock._stop.is_set():
        sock.close()


def test_notifier_speaks_sd_notify_over_a_datagram_socket(notify_socket, tmp_path):
    notifier = Notifier(notify_socket.address)
    assert notifier.ready("watching /media/moth")
    assert notifier.watchdog() and notifier.status("3 files\nok") and notifier.stopping()
    assert [m for _, m in notify_socket.close()] == [
        "READY=1\nSTATUS=watching /media/moth", "WATCHDOG=1", "STATUS=3 files ok", "STOPPING=1"]


def test_abstract_socket_names_and_absent_or_dead_sockets(tmp_path):
    abstract = NotifySocket(f"@edgemon-test-{time.monotonic_ns()}")
    assert Notifier.from_env({"NOTIFY_SOCKET": abstract.address}).ready()
    assert [m for _, m in abstract.close()] == ["READY=1"]
    assert not Notifier.from_env({}).ready()                         # not under systemd: a no-op
    assert not Notifier(str(tmp_path / "gone")).watchdog()           # systemd gone: False, no raise


def test_watchdog_interval_from_systemd_environment():
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000"}) == 150.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "300000000", "WATCHDOG_PID": "2"}, pid=2) == 150.0
    assert watchdog_interval_s({}) is None


def test_watchdog_withholds_pings_once_progress_stops(notify_socket, caplog):
    now = [100.0]
    progress = [100.0]
    dog = Watchdog(Notifier(notify_socket.address), lambda: progress[0], timeout_s=10, clock=lambda: now[0])
    assert dog.check()
    now[0] = 109.0
    assert dog.check()
    now[0] = 111.0                                   # 11 s without progress
    with caplog.at_level(logging.ERROR, logger="edgemon.health"):
        assert not dog.check() and not dog.check()
    assert sum("withholding watchdog pings" in r.message for r in caplog.records) == 1
    progress[0] = 111.0
    assert dog.check()
    messages = [m for _, m in notify_socket.close()]
    assert messages.count("WATCHDOG=1") == 3 and messages[2].startswith("STATUS=stalled")


class HangingAnalyzer:
    """The embedded analyzer, except that its ``hang_on_call``-th analysis sleeps ``hang_s`` before
    reading any audio: a stuck model, or a read stuck on a failing card."""

    def __init__(self, hang_on_call: int, hang_s: float):
        self.inner, self.hang_on_call, self.hang_s, self.calls = analyzer(), hang_on_call, hang_s, 0
        self.bundle = self.inner.bundle

    def analyse_blocks(self, blocks, lead=None):
        self.calls += 1
        if self.calls == self.hang_on_call:
            time.sleep(self.hang_s)
        return self.inner.analyse_blocks(blocks, lead=lead)


def stop_when_done(watcher, files: int, stop: threading.Event, then_s: float = 0.5, timeout_s: float = 60) -> None:
    poll_until(lambda: watcher.processed >= files, timeout_s)
    time.sleep(then_s)
    stop.set()


def test_watch_loop_pings_only_while_it_makes_progress(notify_socket, tmp_path):
    """READY, pings every 50 ms while files go through, none while the third analysis hangs for
    1.5 s (past the 0.5 s progress timeout), pings again after it, STOPPING at the end."""
    root = tmp_path / "rec"
    for i in range(4):
        write_wav(root / f"2024010{i + 1}_060000.WAV", tone(1000 * (i + 1), 4.0, seed=i))
    hanger = HangingAnalyzer(hang_on_call=3, hang_s=1.5)
    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"}
    with Store(tmp_path / "d.db") as store:
        monitor = WatchMonitor(store, tmp_path / "d.db", device_id="site", bundle_id=hanger.bundle.bundle_id,
                               config=HealthConfig(heartbeat_s=0.2, progress_timeout_s=0.5), env=env)
        watcher = Watcher(fast_config(root, settle_s=0.0, until_idle=False), hanger, store, on_tick=monitor.tick)
        stop = threading.Event()
        threading.Timer(0.1, lambda: stop_when_done(watcher, 4, stop)).start()
        with monitor.running(watcher):
            watcher.run(stop)
    messages = notify_socket.close()
    texts = [m for _, m in messages]
    assert texts[0].startswith("READY=1") and texts[-1].startswith("STOPPING=1")
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    gaps = np.diff(pings)
    assert sum(g > 0.9 for g in gaps) == 1, f"expected one long pause in pings, gaps {np.round(gaps, 2)}"
    assert np.argmax(gaps) < len(gaps) - 1          # and pings resumed after it
    assert sum(m.startswith("STATUS=stalled") for m in texts) == 1
    assert query(tmp_path / "d.db", "SELECT COUNT(*) FROM files WHERE state = 'done'") == [(4,)]
    beats = query(tmp_path / "d.db", "SELECT state, files_done, note FROM heartbeats ORDER BY id")
    assert beats[0] == ("ok", 0, "started") and beats[-1][:2] == ("stopping", 4) and len(beats) >= 3


def test_disk_guard_watermarks_and_rechecks(caplog):
    free = [5000.0]
    now = [0.0]
    guard = DiskGuard(["/"], DiskBudget(min_free_mb=100, clips_min_free_mb=1000, check_s=10),
                      clock=lambda: now[0], usage=lambda p: type("U", (), {"free": free[0] * 2**20})())
    assert guard.check() == OK and guard.may_save_clips()
    free[0] = 500.0
    assert guard.check() == OK                   # not re-measured within check_s
    now[0] = 10.0
    with caplog.at_level(logging.INFO, logger="edgemon.storage.disk_budget"):
        assert guard.check() == NO_CLIPS and guard.may_work() and not guard.may_save_clips()
        free[0], now[0] = 50.0, 20.0
        assert guard.check() == HOLD and not guard.may_work()
        free[0], now[0] = 5000.0, 30.0
        assert guard.check() == OK
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]


def test_free_space_jittering_about_a_watermark_changes_the_state_once_not_at_every_check(tmp_path, caplog):
    """Found in the weeks review: a unit held at its watermark (nobody visits) saw free space move
    by a few MB about it, and every check switched the state: a log line and a heartbeat row each
    time, 8,640 of each a day at check_s 10. A state is left only once free space is a margin above
    the watermark that set it."""
    free, now = [101.0], [0.0]
    guard = DiskGuard([tmp_path], DiskBudget(min_free_mb=100, clips_min_free_mb=1000, check_s=10),
                      clock=lambda: now[0], usage=lambda p: type("U", (), {"free": free[0] * 2**20})())
    with Store(tmp_path / "d.db") as store:
        monitor = WatchMonitor(store, tmp_path / "d.db", device_id="site", bundle_id="b",
                               config=HealthConfig(heartbeat_s=300), env={}, clock=lambda: now[0])
        watcher = type("W", (), {"processed": 0, "audio_s": 0.0, "busy_s": 0.0, "store_error": None, "disk": guard,
                                 "state": property(lambda self: "hold_disk" if guard.state == HOLD else "ok")})()
        with caplog.at_level(logging.INFO, logger="edgemon.storage.disk_budget"):
            for i in range(200):   # 2,000 s at 99 and 101 MB in turn
                now[0], free[0] = 10.0 * i, 99.0 if i % 2 else 101.0
                guard.check()
                monitor.tick(watcher)
        beats = [s for (s,) in store.db.execute("SELECT state FROM heartbeats ORDER BY id")]
    assert [r.getMessage() for r in caplog.records] == [
        "disk: 101 MB free: below 1000 MB, not saving clips",
        "disk: 99 MB free: below min_free_mb (100 MB), holding new work until space is freed"]
    assert beats == ["ok", "hold_disk"] + ["hold_disk"] * 6   # one at the change, then every heartbeat_s
    now[0], free[0] = 2000.0, 115.0    # less than the margin (16 MB) above the watermark
    assert guard.check() == HOLD
    now[0], free[0] = 2010.0, 116.0
    assert guard.check() == NO_CLIPS and guard.may_work()


def test_below_the_watermark_the_watch_loop_holds_work_then_resumes(tmp_path):
    """Back-pressure, not a crash: nothing is processed while free space is under min_free_mb;
    all of it once space comes back."""
    root = tmp_path / "rec"
    for i in range(3):
        write_wav(root / f"2024010{i + 1}_060000.WAV", tone(1000, 2.0, seed=i))
    free = [10.0]
    made: dict = {}

    def run() -> None:   # the thread that opens the store owns it
        with Store(tmp_path / "d.db") as store:
            monitor = WatchMonitor(store, tmp_path / "d.db", device_id="site", bundle_id="b",
                                   config=HealthConfig(heartbeat_s=0.1), env={})
            disk = DiskGuard([tmp_path / "d.db"], DiskBudget(min_free_mb=100, check_s=0.05),
                             usage=lambda p: type("U", (), {"free": free[0] * 2**20})())
            made["watcher"] = Watcher(fast_config(root, settle_s=0.0, until_idle=False), analyzer(), store,
                                      on_tick=monitor.tick, disk=disk)
            made["watcher"].run(stop)

    stop = threading.Event()
    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.5)
    watcher = made["watcher"]
    held = watcher.processed
    free[0] = 10_000.0
    deadline = time.monotonic() + 30
    while watcher.processed < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)   # a heartbeat of the state after the hold
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    assert held == 0 and watcher.processed == 3
    states = [s for (s,) in query(tmp_path / "d.db", "SELECT state FROM heartbeats ORDER BY id")]
    assert "hold_disk" in states and states[-1] == "ok"


def test_heartbeats_are_rate_limited_and_never_raise(tmp_path, caplog):
    now = [0.0]
    with Store(tmp_path / "d.db") as store:
        beats = Heartbeats(store, mode="watch", device_id="d", bundle_id="b", every_s=60, clock=lambda: now[0])
        assert beats.beat() and not beats.beat()
        now[0] = 30.0
        assert beats.beat("hold_disk")           # a change of state is written at once
        now[0] = 95.0
        assert beats.beat("hold_disk")
    assert query(tmp_path / "d.db", "SELECT state, uptime_s FROM heartbeats ORDER BY id") == [
        ("ok", 0.0), ("hold_disk", 30.0), ("hold_disk", 95.0)]

    class FullStore:
        def add_heartbeat(self, beat):
            raise sqlite3.OperationalError("database or disk is full")

    beats.store = FullStore()
    now[0] = 200.0
    with caplog.at_level(logging.WARNING, logger="edgemon.health"):
        assert not beats.beat()
        now[0] = 300.0
        assert not beats.beat()
    assert caplog.text.count("heartbeat not stored") == 1


def test_commit_progress_follows_another_connections_coverage_commits(tmp_path):
    from edgemon.storage.rows import CoverageMinute

    def minute(m: int, analysed_s: float) -> list:
        return [CoverageMinute(source="live:mic", device_id="d", minute_utc=f"2024-05-01T06:{m:02d}:00Z",
                               end_utc=f"2024-05-01T06:{m:02d}:30Z", analysed_s=analysed_s)]

    now = [0.0]
    db = tmp_path / "d.db"
    progress = CommitProgress(db, clock=lambda: now[0])
    now[0] = 5.0
    assert progress() == 0.0                 # no database yet: the start counts
    with Store(db) as store:
        assert progress() == 0.0             # first look: a baseline, not a commit
        now[0] = 7.0
        store.add_coverage(minute(0, 10.0))
        assert progress() == 7.0
        now[0] = 9.0
        assert progress() == 7.0             # nothing committed since
        # A heartbeat is a commit, but not progress: a hung analysis kept the watchdog fed so.
        Heartbeats(store, mode="listen", device_id="d", bundle_id=None, every_s=0).beat(force=True)
        assert progress() == 7.0
        now[0] = 11.0
        store.add_coverage(minute(0, 20.0))  # the same minute, analysed further
        assert progress() == 11.0
        now[0] = 12.0
        store.add_coverage(minute(1, 5.0))
        assert progress() == 12.0
    progress.close()


def test_a_live_writer_retrying_a_refused_write_keeps_the_watchdog_fed(tmp_path, monkeypatch):
    """A review: while the writer retried a write another process's lock (or a full disk) refused,
    no coverage was committed, the watchdog's pings stopped and systemd killed the unit with
    SIGABRT, losing everything held. A writer that retries is holding, not hung."""
    from edgemon.live.store_writer import StoreWriter
    from edgemon.storage import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    db = tmp_path / "d.db"
    with Store(db):
        pass
    now = [0.0]
    commits = CommitProgress(db, clock=lambda: now[0])
    held = WriterHold(commits, clock=lambda: now[0])
    watchdog = Watchdog(Notifier.from_env({}), held, timeout_s=10.0, clock=lambda: now[0])
    assert held() == 0.0                   # the baseline
    now[0] = 20.0
    assert not watchdog.check()            # nothing committed, nothing retried: a stall
    other = sqlite3.connect(db)
    other.execute("BEGIN IMMEDIATE")
    writer = StoreWriter(db, retry_s=0.05, on_retry=held.retried)
    writer.submit(lambda store: store.db.execute("INSERT INTO sync_meta (key, value) VALUES ('x', 'y')"))
    finish = threading.Event()
    thread = threading.Thread(target=writer.run, args=(finish,))
    thread.start()
    try:
        wait_until(lambda: held() == 20.0, 30, "the writer to retry the refused write")
        now[0] = 25.0
        assert watchdog.check()            # fed again while the writer holds the write
    finally:
        other.rollback()
        other.close()
        finish.set()
        thread.join(30)
        commits.close()
    assert writer.done == 1 and writer.lost_at_exit == 0   # written once the lock went


@pytest.fixture(scope="module")
def watched_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status")
    root = tmp / "rec"
    # 8 s: a helmeted hornbill needs three windows (at 6 s the window the file ends on counted as a third)
    write_wav(root / "20240101_060000.WAV", hoots(8.0))
    write_wav(root / "20240102_060000.WAV", hoots(8.0, 550, seed=2))
    (root / "20240103_060000.WAV").write_bytes(b"RIFF not audio at all")
    db = tmp / "d.db"
    with Store(db) as store:
        monitor = WatchMonitor(store, db, device_id="site-07", bundle_id=analyzer().bundle.bundle_id, env={})
        watcher = Watcher(fast_config(root, settle_s=0.0, retry_s=0.05), analyzer(), store, on_tick=monitor.tick)
        with monitor.running(watcher):
            watcher.run(threading.Event())
    write_wav(root / "20240104_060000.WAV", tone(500, 3.0))   # arrives after the daemon stopped
    return db, root


def test_status_reports_what_the_issue_asks(watched_db):
    db, root = watched_db
    status = collect_status(db, directory=root, min_free_mb=1)
    assert status["service"]["state"] == "stopped" and status["service"]["files_done_this_run"] == 2
    assert status["mode"] == "watch" and status["device_id"] == "site-07"
    assert status["bundle_id"] == analyzer().bundle.bundle_id
    quarantined = status["backlog"].pop("quarantined_files")
    assert status["backlog"] == {"done": 2, "failed": 0, "quarantined": 1, "waiting": 1, "directory": str(root),
                                 "with_note": 0, "other_recordings": 0,
                                 "timed_by_mtime": {}, "timed_by_mtime_count": 0,
                                 "clock_suspect": {}, "clock_suspect_count": 0}
    assert list(quarantined) == ["20240103_060000.WAV"]
    assert status["last_file"]["source"] == "20240102_060000.WAV"
    assert status["last_detection"]["source"] == "20240102_060000.WAV"
    assert status["real_time_factor"] > 1
    assert status["dropped_audio"] is None                     # no live coverage in watch mode
    assert status["database"]["integrity"] == "ok" and status["disk"]["free_mb"] > 1
    # the file is named, with why (a newcomer had only the count)
    # ... and what to do about it (a newcomer trial: the line named the file, not how to try it again)
    assert status["problems"] == [f"1 file(s) quarantined (not analysed): 20240103_060000.WAV "
                                  f"({quarantined['20240103_060000.WAV']}); each is tried again once its size "
                                  f"or modification time changes (mend it, then `touch` it)"]
    status["backlog"]["quarantined_files"] = quarantined
    text = format_status(status)
    for label in ("service:", "backlog:", "last file:", "last detection:", "real-time factor:", "dropped audio:",
                  "disk free:", "database:", "bundle:", "problems:"):
        assert label in text
    # A directory given that is not there is said so (a newcomer trial: "? file(s) waiting in /nope").
    gone = format_status(collect_status(db, directory=root / "nope", min_free_mb=1))
    assert f"? file(s) waiting: {root / 'nope'}: directory not found" in gone


def test_a_watched_directory_pulled_mid_watch_is_one_problem_not_two(watched_db, tmp_path):
    # A newcomer trial: a card pulled mid-watch was listed twice, "watched directory … not found (a card
    # not mounted?)" and "cannot read directory … (No such file or directory): its recordings are skipped".
    db, _ = watched_db
    copy = tmp_path / "d.db"
    copy.write_bytes(db.read_bytes())
    card = tmp_path / "card"                      # never there: the watcher's last scan could not read it
    other = tmp_path / "card" / "locked"
    with Store(copy) as store:
        store.set_unreadable_dirs({str(card): "No such file or directory", str(other): "Permission denied"})
    problems = collect_status(copy, directory=card, min_free_mb=1)["problems"]
    about_card = [p for p in problems if str(card) in p and str(other) not in p]
    assert about_card == [f"watched directory {card} not found (a card not mounted?)"], problems
    assert any(str(other) in p for p in problems), problems     # a subdirectory's own line stays


def test_status_command_text_json_and_heartbeats_csv(watched_db, tmp_path):
    db, root = watched_db
    runner = CliRunner()
    text = runner.invoke(app, ["status", "--db", str(db), "--directory", str(root)])
    assert text.exit_code == 0, text.output
    assert "1 file(s) waiting" in text.output
    # the last heartbeat's state said as such, not beside the service's as if both were now (a newcomer trial)
    assert re.search(r"service: +stopped, last heartbeat \d+ s ago \(its state then: stopping\); ran ", text.output), \
        text.output
    as_json = runner.invoke(app, ["status", "--db", str(db), "--json"])
    assert json.loads(as_json.output)["backlog"]["done"] == 2
    assert json.loads(as_json.output)["database"]["integrity"] == "ok"
    # A scale trial: the check is most of status's time on a season's database; it may be left out.
    quick = runner.invoke(app, ["status", "--db", str(db), "--json", "--no-integrity"])
    assert json.loads(quick.output)["database"]["integrity"] == "not checked", quick.output
    out = tmp_path / "beats.csv"
    assert runner.invoke(app, ["status", "--db", str(db), "--heartbeats", str(out)]).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert rows[0]["note"] == "started" and rows[-1]["state"] == "stopping"
    missing = runner.invoke(app, ["status", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "not found" in missing.output
    gone = runner.invoke(app, ["status", "--db", str(db), "--directory", str(tmp_path / "unmounted")])
    assert gone.exit_code == 0 and f"watched directory {tmp_path / 'unmounted'} not found" in gone.output
    for unwritable, said in ((tmp_path / "no-such-dir" / "beats.csv", "cannot write heartbeats to {}: No such file"),
                             (tmp_path, "--heartbeats {} is a directory")):   # was a traceback
        failed = runner.invoke(app, ["status", "--db", str(db), "--heartbeats", str(unwritable)])
        assert failed.exit_code == 1 and failed.output.startswith(f"error: {said.format(unwritable)}"), failed.output
        assert len(failed.output.strip().splitlines()) == 1


def test_status_shows_its_times_in_the_recorders_time_zone(watched_db):
    """Found by the thirtieth session's review: with ``timezone`` set, exports and the review page
    said local times and status said UTC, 8 h off a Borneo field team's clock."""
    db, _ = watched_db
    runner = CliRunner()
    report = json.loads(runner.invoke(app, ["status", "--db", str(db), "--json"]).output)
    processed = report["last_file"]["processed_utc"]
    text = runner.invoke(app, ["status", "--db", str(db)], env={"EDGEMON_TIMEZONE": "Asia/Kuching"})
    assert text.exit_code == 0, text.output
    local = parse_utc(processed).astimezone(zoneinfo.ZoneInfo("Asia/Kuching")).isoformat(timespec="milliseconds")
    assert local.endswith("+08:00") and f"at {local}" in text.output, text.output
    assert processed not in text.output
    utc = runner.invoke(app, ["status", "--db", str(db)], env={"EDGEMON_TIMEZONE": None})
    assert f"at {processed}" in utc.output   # unset: as stored


def test_status_sees_a_silent_daemon(watched_db, tmp_path):
    import datetime as dt

    db, _ = watched_db
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE heartbeats SET state = 'ok' WHERE id = (SELECT max(id) FROM heartbeats)")
    status = collect_status(copy, now=later)
    assert status["service"]["state"] == "silent"
    assert any("no heartbeat for" in p for p in status["problems"])
    # its uptime is the last heartbeat's: it ran on after it (a listen killed 36 s in read "ran 0 s")
    assert "; ran at least " in format_status(status)
    # ... and at least until the last row it stored (a newcomer trial: a watch killed a minute in
    # with only its start's heartbeat read "ran at least 0 s")
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE heartbeats SET uptime_s = 0")
        started = conn.execute("SELECT started_utc FROM heartbeats ORDER BY id DESC LIMIT 1").fetchone()[0]
        stamp = (dt.datetime.fromisoformat(started.replace("Z", "+00:00")) + dt.timedelta(seconds=47))
        conn.execute("UPDATE files SET updated_at = ? WHERE state = 'done'",
                     [stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"])
        conn.execute("UPDATE detections SET created_at = ?", [(later - dt.timedelta(minutes=1)).isoformat()])
    status = collect_status(copy, now=later)   # a detection reanalyse stored later says nothing of it
    assert status["service"]["uptime_s"] == 47.0 and "; ran at least 47 s from " in format_status(status)


def test_status_says_a_killed_daemon_is_not_running_at_once(watched_db, tmp_path):
    """After a kill -9, status said "running" (and the uptime went on counting) until the last
    heartbeat was 11 minutes old (a soak trial); the lock file names the daemon's pid."""
    import datetime as dt

    from edgemon.utc import utc_iso

    db, _ = watched_db
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("UPDATE heartbeats SET state = 'ok', at_utc = ? WHERE id = (SELECT max(id) FROM heartbeats)",
                    [utc_iso(dt.datetime.now(dt.timezone.utc))])
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from edgemon.storage.lock import hold_database\n"
                               "with hold_database(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
                               str(copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert collect_status(copy)["service"]["state"] == "running"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    status = collect_status(copy)
    assert status["service"]["state"] == "silent" and status["service"]["process_gone"] == holder.pid
    assert any(f"its process (pid {holder.pid}) ended without stopping" in p for p in status["problems"])
    # Its memory is that of its last heartbeat, said so (a newcomer trial read it as memory in use).
    memory = next(line for line in format_status(status).splitlines() if line.startswith("memory:"))
    assert re.fullmatch(r"memory: +[0-9.]+ MB resident at its last heartbeat", memory), memory


def test_status_says_a_watch_starting_behind_another_write_is_starting_not_stopped(watched_db, tmp_path):
    """A field-station trial: a watch started while another process held the database's write lock
    (a reanalyse, a verdict, a sync) waits for it before its first heartbeat, and status said
    "stopped" (the last run's 'stopping' heartbeat) the whole time, a daemon running beside it."""
    db, root = watched_db
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    assert collect_status(copy)["service"]["state"] == "stopped"
    writer = sqlite3.connect(copy, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")   # another command's write, held while the watch starts
    watch = subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(copy), "--until-idle",
                              "--device-id", "site-07"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = copy.with_name(copy.name + ".lock")
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(watch.pid), 60, "the watch's lock")
        status = collect_status(copy)
        assert status["service"]["state"] == "starting" and status["service"]["starting_pid"] == watch.pid, status
        assert f"starting (pid {watch.pid}, no heartbeat yet" in format_status(status)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert watch.wait(timeout=120) == 0, watch.stderr.read()
    watch.stderr.close()
    assert collect_status(copy)["service"]["state"] == "stopped"   # its own 'stopping' beat now


def test_status_of_a_stopped_database_whose_lock_file_names_a_live_process_is_stopped(watched_db, tmp_path):
    """A diff review: a lock file newer than the last run's 'stopping' heartbeat, naming a pid some
    other process has (the card's data copied to a laptop with `cp -r`: the recorder's service had
    a low pid, which a laptop's own process holds; or a watch that failed at start, its pid reused
    since), made status say "starting (pid N, no heartbeat yet...)" for good. Nothing holds the
    lock: it is no daemon starting."""
    import os

    db, _ = watched_db
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    copy.with_name(copy.name + ".lock").write_text(f"{os.getpid()}\n")   # alive, and holding no lock
    status = collect_status(copy)
    assert status["service"]["state"] == "stopped", status["service"]
    assert "starting" not in format_status(status)


def test_quarantined_files_are_named_and_the_rest_counted(tmp_path):
    """A review found "and N more" counted from the 20 files listed, not from all of them."""
    db = tmp_path / "d.db"
    with Store(db) as store:
        for i in range(25):
            store.record_failure(f"f{i:02d}.WAV", path=tmp_path / f"f{i:02d}.WAV", size=1, mtime_ns=i,
                                 error="not audio", max_attempts=1)
    status = collect_status(db)
    assert len(status["backlog"]["quarantined_files"]) == 20 and status["backlog"]["quarantined"] == 25
    (line,) = [p for p in status["problems"] if "quarantined" in p]
    assert line.startswith("25 file(s) quarantined (not analysed): f") and line.count("(not audio)") == 3
    assert "and 22 more" in line


def test_a_listener_of_weeks_has_its_audio_said_in_days_not_in_exponents(tmp_path):
    """Found in the weeks review: past 11.6 days (10^6 s) of live audio, status said "0 s in all
    (of 1.5768e+07 s)"."""
    import datetime as dt

    from edgemon.storage.rows import CoverageMinute

    start = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    db = tmp_path / "live.db"
    with Store(db) as store:   # 12 days of minutes, 20 of them lost to the device
        store.add_coverage([CoverageMinute(source="live:mic", device_id="site-1",
                                           minute_utc=start + dt.timedelta(minutes=m),
                                           end_utc=start + dt.timedelta(minutes=m + 1),
                                           analysed_s=0.0 if m % 864 == 0 else 60.0,
                                           lost_device_s=60.0 if m % 864 == 0 else 0.0)
                            for m in range(12 * 1440)])
    status = collect_status(db, now=start + dt.timedelta(days=12), integrity=False)
    line = next(line for line in format_status(status).splitlines() if line.startswith("dropped audio:"))
    assert line == "dropped audio:    60 s in the last 24 h, 1200 s in all (of 12 d 0 h)"


@pytest.mark.parametrize("lost_s, problem", [(0.2, None), (1.3, None), (5.0, "5 s of live audio lost in the last 24 h")])
def test_live_audio_lost_is_a_problem_from_five_seconds(tmp_path, lost_s, problem):
    """A clean run's fraction of a second at the stream's start listed "0 s of live audio lost"; a
    newcomer trial saw every normal start lose 1.3 s and be listed among the problems."""
    import datetime as dt

    from edgemon.status import collect_status
    from edgemon.storage.rows import CoverageMinute
    from edgemon.storage.store import Store

    db = tmp_path / "live.db"
    with Store(db) as store:
        store.add_coverage([CoverageMinute(source="live:mic", device_id="site-1", minute_utc="2024-05-01T06:00:00Z",
                                           end_utc="2024-05-01T06:00:59Z", analysed_s=60.0 - lost_s,
                                           lost_device_s=lost_s)])
    status = collect_status(db, now=dt.datetime(2024, 5, 1, 7, tzinfo=dt.timezone.utc), integrity=False)
    lost = [p for p in status["problems"] if "live audio lost" in p]
    assert status["dropped_audio"]["last_24h"]["lost_s"] == lost_s
    assert lost == ([problem] if problem else [])


def test_the_service_waits_for_a_card_not_yet_mounted(notify_socket, tmp_path):
    """Found by a deploy review: `edgemon run` with its directory not there (a fresh install, the
    card not yet mounted) exited at once, and systemd restarted it every 15 s for as long."""
    import os
    import signal
    import subprocess
    import sys

    card, db = tmp_path / "media" / "card", tmp_path / "d.db"
    config = tmp_path / "edgemon.toml"
    config.write_text(f'mode = "watch"\ndb = "{db}"\n[watch]\ndirectory = "{card}"\nrescan_s = 0\nsettle_s = 0\n')
    def ticks(pid: int) -> int:   # a process's user + system CPU, in clock ticks
        stat = Path(f"/proc/{pid}/stat").read_text()
        return sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:13])

    # Waiting, not spinning (rescan_s 0 spun a core), and stopped while it waits at once, every time
    # (a review saw SIGTERM deadlock the wait 16 times in 20).
    for attempt in range(5):
        waiting = subprocess.Popen([sys.executable, "-m", "edgemon", "run", "--config", str(config)],
                                   stderr=subprocess.PIPE, text=True)
        poll_until(lambda: not waiting.stderr.readline().find("waiting for it") < 0, 60, interval=0)
        if attempt == 0:
            before = ticks(waiting.pid)
            time.sleep(2.0)
            assert ticks(waiting.pid) - before < 0.3 * os.sysconf("SC_CLK_TCK") * 2.0
        time.sleep(0.3)
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=20) == 0
        waiting.stderr.close()
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "2000000"}
    service = subprocess.Popen([sys.executable, "-m", "edgemon", "run", "--config", str(config)], env=env,
                               stderr=subprocess.PIPE, text=True)
    try:
        poll_until(lambda: any(m.startswith("READY=1\nSTATUS=waiting for") for _, m in notify_socket.messages),
                   60, interval=0.1)
        assert service.poll() is None and not db.exists()
        write_wav(card / "20240101_060000.WAV", tone(1000, 4.0))   # mounted
        poll_until(lambda: files_done(db) == 1, 60, interval=0.2)
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=60)
    assert service.returncode == 0, err[-2000:]
    assert "no such directory; waiting for it (a card not yet mounted?)" in err and "is there now: watching it" in err
    # Given on the command line, a missing directory is still refused at once (a typo, most likely).
    typo = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(card) + "x", "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert typo.returncode == 1 and "no such directory" in typo.stderr


def test_the_service_waits_for_room_on_a_full_disk(notify_socket, tmp_path):
    """Found by a deploy review: with 0 bytes free (the service's user sees 0 at ext4's reserve)
    SQLite could not check the database ("disk I/O error"): the unit failed and was restarted every
    15 s. It now waits for room, then starts and works."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    disk = tmp_path / "sd"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("needs to mount a small tmpfs (root) to fill a real disk")
    try:
        card, db = tmp_path / "card", disk / "d.db"
        write_wav(card / "20240101_060000.WAV", tone(1000, 4.0))
        config = tmp_path / "edgemon.toml"
        config.write_text(f'mode = "watch"\ndb = "{db}"\n[watch]\ndirectory = "{card}"\nrescan_s = 0.5\n'
                          f'settle_s = 0\n[disk]\nmin_free_mb = 0\nclips_min_free_mb = 0\n')
        first = subprocess.run([sys.executable, "-m", "edgemon", "watch", "--config", str(config), "--until-idle"],
                               capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr[-2000:]
        with open(disk / "filler", "wb") as f:          # the card fills up
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        assert shutil.disk_usage(disk).free < 1 << 20
        refused = subprocess.run([sys.executable, "-m", "edgemon", "watch", "--config", str(config), "--until-idle"],
                                 capture_output=True, text=True, timeout=120)   # on the command line: one line, why
        assert refused.returncode == 1 and "the disk holding it is full" in refused.stderr, refused.stderr[-2000:]
        write_wav(card / "20240102_060000.WAV", tone(2000, 4.0))
        env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address}
        service = subprocess.Popen([sys.executable, "-m", "edgemon", "run", "--config", str(config)], env=env,
                                   stderr=subprocess.PIPE, text=True)
        try:
            poll_until(lambda: any("disk full: waiting for room" in m for _, m in notify_socket.messages), 60,
                       interval=0.1)
            assert service.poll() is None
            (disk / "filler").unlink()                  # room again
            poll_until(lambda: query(db, "SELECT count(*) FROM files WHERE state = 'done'") == [(2,)], 60,
                       interval=0.2)
        finally:
            service.send_signal(signal.SIGTERM)
            _, err = service.communicate(timeout=60)
        assert service.returncode == 0, err[-2000:]
        assert "is full" in err and "has room again: starting" in err
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_recorder_clock_that_looks_wrong_is_said_and_listed(tmp_path, caplog):
    """Found by a newcomer trial: a recording named 1970 (an AudioMoth whose clock was never set)
    was stored with clock_suspect = 1 without a word, and status said 'problems: none'."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "19700101_000012.WAV", tone(1000, 3.0))
    write_wav(root / "20240101_060000.WAV", tone(1000, 3.0, seed=1))
    with caplog.at_level(logging.WARNING, logger="edgemon.files.analyse_file"):
        watch_until_idle(root, db)
    assert "19700101_000012.WAV: the recorder's clock looks wrong (AudioMoth name" in caplog.text
    status = collect_status(db, directory=root)
    assert status["backlog"]["clock_suspect_count"] == 1
    assert [p for p in status["problems"] if "recorder clock that looks wrong" in p] == [
        "1 file(s) from a recorder clock that looks wrong (unset, or over a day ahead of this host): their "
        "detections' times are doubtful, and the fleet leaves them out of its days; set the recorder's clock: "
        "19700101_000012.WAV (1970-01-01T00:00:12.000Z)"]


def test_the_listening_service_waits_for_a_microphone_not_plugged_in_yet(tmp_path):
    """A review: `edgemon run` listening exited 1 when its microphone was not there at start, and
    systemd restarted it every 15 s for as long. It waits, as for a card not yet mounted; given on
    the command line, a wrong --device is still refused at once (a typo, most likely)."""
    import signal
    import subprocess
    import sys

    db = tmp_path / "d.db"
    config = tmp_path / "edgemon.toml"
    config.write_text(f'mode = "listen"\ndb = "{db}"\n[watch]\nrescan_s = 0.5\n[listen]\ndevice = "no such mic"\n')
    waiting = subprocess.Popen([sys.executable, "-m", "edgemon", "run", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        said = []
        poll_until(lambda: said.append(waiting.stderr.readline()) or "waiting for it" in said[-1], 60, interval=0)
        assert "(a microphone not plugged in yet?)" in said[-1] and waiting.poll() is None
        time.sleep(1.2)                      # looked for again meanwhile, still waiting
        assert waiting.poll() is None and not db.exists()
        waiting.send_signal(signal.SIGTERM)
        assert waiting.wait(timeout=30) == 0
    finally:
        if waiting.poll() is None:
            waiting.kill()
        waiting.stderr.close()
    typo = subprocess.run([sys.executable, "-m", "edgemon", "listen", "--device", "no such mic", "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    last = typo.stderr.strip().splitlines()[-1]     # no inputs at all on a machine without an audio server
    assert typo.returncode == 1 and ("no such mic" in last or "no audio input devices found" in last), last


def test_a_listener_whose_microphone_gives_nothing_says_so_in_its_heartbeat_and_status(tmp_path):
    """A review: through a 12 s unplug every heartbeat said "ok" and status "running (ok)"."""
    from edgemon.health import ListenHeartbeats

    db = tmp_path / "live.db"
    hearing = [None]
    beats = ListenHeartbeats(db, device_id="site-1", bundle_id="b", every_s=3600.0,
                             counters=lambda: {"audio_s": 1.0}, hearing=lambda: hearing[0])
    with Store(db) as store:
        beats.tick(store)                     # started
        beats.tick(store)                     # not due: nothing new
        hearing[0] = "device_lost"
        beats.tick(store)                     # at once, not at the next hour
        rows = store.db.execute("SELECT state, note FROM heartbeats ORDER BY id").fetchall()
        assert rows == [("ok", "started"), ("no_audio", "no audio from the microphone (device_lost)")]
        status = collect_status(db)
        assert status["service"]["heartbeat_state"] == "no_audio"
        assert "listening but hearing nothing: no audio from the microphone (device_lost)" in status["problems"]
        hearing[0] = None
        beats.tick(store)                     # back: said at once too
        assert store.db.execute("SELECT state FROM heartbeats ORDER BY id DESC LIMIT 1").fetchone()[0] == "ok"


def test_a_listener_that_stops_on_purpose_writes_no_no_audio_beat():
    """A live trial: every Ctrl-C or --duration-s stop wrote "no_audio" ("no audio from the
    microphone (stopped)") before its "stopping" beat, a silent microphone to status and the fleet."""
    from edgemon.live.capture import CaptureState
    from edgemon.live.threads import silence_of

    assert silence_of(CaptureState.STOPPED) is None
    assert [silence_of(s) for s in (CaptureState.STARTING, CaptureState.RUNNING)] == [None, None]
    assert [silence_of(s) for s in (CaptureState.STALLED, CaptureState.DEVICE_LOST, CaptureState.REOPENING)] == \
        ["stalled", "device_lost", "reopening"]


def test_status_names_the_bundle_of_a_last_detection_that_is_not_the_recorders(watched_db, tmp_path):
    """After `reanalyse` with another bundle the last row is that bundle's, its confidence on that
    bundle's scale: an upgrade trial saw 0.96 beside the old bundle's id, which had stored 0.55."""
    import shutil
    import sqlite3

    db, root = watched_db
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    assert "by bundle" not in format_status(collect_status(copy, directory=root, min_free_mb=1))
    with sqlite3.connect(copy) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(detections)") if r[1] != "id"]
        picked = ", ".join("'other-0123456789ab'" if c == "bundle_id" else c for c in columns)
        conn.execute(f"INSERT INTO detections ({', '.join(columns)}) SELECT {picked} FROM detections "
                     "ORDER BY id DESC LIMIT 1")
    status = collect_status(copy, directory=root, min_free_mb=1)
    assert status["bundle_id"] == analyzer().bundle.bundle_id
    assert status["last_detection"]["bundle_id"] == "other-0123456789ab"
    line = next(line for line in format_status(status).splitlines() if "last detection" in line)
    assert line.endswith(", by bundle other-0123456789ab")
