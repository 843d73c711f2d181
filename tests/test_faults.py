"""Faults a recorder meets in the field, each proven on real SQLite files and real audio: a full
disk, a database lock held by another process, a corrupt database at start, the host clock
stepping back an hour, the observer thread dying, and a 10,000-file backlog."""

from __future__ import annotations

import datetime
import io
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgemon.files import events
import edgemon.files.recordings
from edgemon.files.watcher import Watcher
from edgemon.health import HealthConfig, WatchMonitor
from edgemon.storage.recovery import corruption, open_or_recover
from edgemon.storage.store import Store, StoreError
import edgemon.storage.store
from devtools.recorder_db import make_recorder
from tests.conftest import hoots, tone
from tests.waits import wait_until
from tests.watch_helpers import (
    analyzer,
    damage_table,
    fast_config,
    query,
    watch_until_idle,
    write_wav,
)

REPO = Path(__file__).resolve().parents[1]
DETECTIONS = "SELECT source, label, start_s, end_s, confidence FROM detections ORDER BY source, start_s, label"


def recording(path: Path, seed: int, seconds: float = 8.0) -> Path:
    """Faint noise, then hoots that the embedded bundle labels (so files have detections: a helmeted
    hornbill needs three windows, 8 s; at 6 s the window the file ends on was counted as a third)."""
    freq = float(np.random.default_rng(seed).choice([500, 550]))
    return write_wav(path, np.concatenate([tone(0, 1.0, seed=seed), hoots(seconds - 1.0, freq, seed=seed + 1)]))


def ledger(db: Path) -> list[tuple]:
    return query(db, "SELECT source, state, attempts FROM files ORDER BY source")


def run_in_thread(db: Path, make_watcher, stop: threading.Event) -> tuple[threading.Thread, dict]:
    """Start ``make_watcher(store).run(stop)`` on a thread that opens (and so owns) the store."""
    made: dict = {}

    def run() -> None:
        try:
            with Store(db) as store:
                made["watcher"] = make_watcher(store)
                made["watcher"].run(stop)
        except BaseException as exc:  # handed to the test thread
            made["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, made


# --- disk full -------------------------------------------------------------------------------

def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


DISK_FULL_CHILD = textwrap.dedent('''
    """Runs inside a user+mount namespace with a 2 MB tmpfs at TMPFS holding the database."""
    import json, os, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from edgemon.storage.store import Store
    from edgemon.files.watcher import Watcher
    from tests.watch_helpers import analyzer, fast_config, query

    root, tmpfs, late, out = (Path(a) for a in sys.argv[2:6])
    db = tmpfs / "d.db"
    stop, made, report = threading.Event(), {}, {}

    def run():
        with Store(db) as store:
            made["w"] = Watcher(fast_config(root, settle_s=0.0, retry_s=0.3, until_idle=False), analyzer(), store)
            made["w"].run(stop)

    def wait(cond, what, timeout=60):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end or not thread.is_alive():
                raise SystemExit(f"gave up waiting for {what} (watcher alive: {thread.is_alive()})")
            time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)   # a failure here must end the process
    thread.start()
    wait(lambda: "w" in made and made["w"].processed == 3, "the first files")
    with open(tmpfs / "filler", "wb", buffering=0) as f:   # fill the file system to the last byte
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    f.write(b"\\0" * size)
            except OSError:
                pass
    report["free_bytes_when_full"] = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    for name in sorted(os.listdir(late)):                # new recordings arrive on the (other) card
        os.rename(late / name, root / name)
    wait(lambda: made["w"].store_error is not None, "a refused write")
    report["store_error"] = made["w"].store_error
    time.sleep(1.0)                                      # several retries while still full
    report["alive_while_full"] = thread.is_alive()
    report["done_while_full"] = query(db, "SELECT source FROM files WHERE state = 'done' ORDER BY source")
    report["sources_with_detections_while_full"] = query(db, "SELECT DISTINCT source FROM detections ORDER BY source")
    report["processed_while_full"] = made["w"].processed
    os.remove(tmpfs / "filler")                          # space comes back
    wait(lambda: made["w"].processed == 6, "the rest after space was freed")
    report["store_error_after"] = made["w"].store_error
    stop.set()
    thread.join()
    import sqlite3
    with sqlite3.connect(db) as src, sqlite3.connect(out) as dst:
        src.backup(dst)
    print(json.dumps(report))
''')


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")
def test_disk_full_rolls_back_holds_and_resumes_losing_nothing(tmp_path):
    root, late = tmp_path / "rec", tmp_path / "late"
    for i in range(3):
        recording(root / f"2024060{i + 1}_060000.WAV", seed=10 * i)
    for i in range(3, 6):
        recording(late / f"2024060{i + 1}_060000.WAV", seed=10 * i)
    reference_root = tmp_path / "all"
    for path in [*root.iterdir(), *late.iterdir()]:
        (reference_root / path.name).parent.mkdir(exist_ok=True)
        os.link(path, reference_root / path.name)
    watch_until_idle(reference_root, tmp_path / "reference.db")

    (tmp_path / "tmpfs").mkdir()
    (tmp_path / "child.py").write_text(DISK_FULL_CHILD)
    out = tmp_path / "final.db"
    script = (f"mount -t tmpfs -o size=2m tmpfs {shlex.quote(str(tmp_path / 'tmpfs'))} && exec "
              + shlex.join([sys.executable, str(tmp_path / "child.py"), str(REPO), str(root),
                            str(tmp_path / "tmpfs"), str(late), str(out)]))
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\ndisk full: {report['store_error']!r}; {report['free_bytes_when_full']} bytes free when full")

    assert "database or disk is full" in report["store_error"]
    assert report["alive_while_full"]                                    # no crash
    first = [[f"2024060{i + 1}_060000.WAV"] for i in range(3)]
    assert report["done_while_full"] == first                            # the failed batch rolled back
    assert report["sources_with_detections_while_full"] == first         # no half-stored file
    assert report["processed_while_full"] == 3 and report["store_error_after"] is None
    assert query(out, DETECTIONS) == query(tmp_path / "reference.db", DETECTIONS)   # nothing lost
    assert ledger(out) == [(f"2024060{i + 1}_060000.WAV", "done", 1) for i in range(6)]  # not counted as failures
    assert query(out, "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")
def test_sync_export_and_status_say_the_disk_is_full(tmp_path):
    """On a full disk SQLite cannot make a reader's -shm and says "disk I/O error": sync called the
    database "not a readable SQLite database", export and status said only the I/O error (a
    newcomer trial); the database itself is fine."""
    from devtools.recorder_db import make_recorder

    make_recorder(tmp_path / "src.db", "rec-a", files=3, per_file=4)
    (tmp_path / "card").mkdir()
    card = shlex.quote(str(tmp_path / "card"))
    edgemon = shlex.join([sys.executable, "-m", "edgemon"])
    db = f"{card}/E.db"
    script = "\n".join([
        f"mount -t tmpfs -o size=2m tmpfs {card} && cp {shlex.quote(str(tmp_path / 'src.db'))} {db} || exit 9",
        f"dd if=/dev/zero of={card}/filler bs=64k 2>/dev/null; dd if=/dev/zero of={card}/filler2 bs=512 2>/dev/null",
        f"{edgemon} sync --db {db} --device-id rec-a --to postgresql://x@127.0.0.1:9/fleet; echo rc=$?",
        f"{edgemon} export-detections --db {db} --format csv; echo rc=$?",
        f"{edgemon} status --db {db}; echo rc=$?",
        f"rm {card}/filler {card}/filler2; {edgemon} export-detections --db {db} --format csv | wc -l"])
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.stdout.count("rc=1") == 3, done.stdout + done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 3 and all("the disk holding it is full: free some space" in line for line in lines), lines
    assert "not a readable SQLite database" not in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "13"   # space freed: all 12 detections and the header

    # With a reader holding the database open (its -shm kept), a cursor export gets as far as its
    # lock, whose pid write met the full disk: a traceback (a review). Now one line, nothing delivered.
    reader = shlex.join([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                         "c.execute('SELECT 1 FROM detections').fetchall(); time.sleep(60)", f"{tmp_path}/card/E.db"])
    script = "\n".join([
        f"mount -t tmpfs -o size=2m tmpfs {card} && cp {shlex.quote(str(tmp_path / 'src.db'))} {db} || exit 9",
        f"{reader} >/dev/null 2>&1 & sleep 1",
        f"dd if=/dev/zero of={card}/filler bs=64k 2>/dev/null; dd if=/dev/zero of={card}/filler2 bs=512 2>/dev/null",
        f"{edgemon} export-detections --db {db} --cursor c1 --output {shlex.quote(str(tmp_path / 'out.csv'))}; "
        "echo rc=$?; kill $!"])
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert "rc=1" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and \
        "No space left on device (nothing was delivered; the cursor stays)" in done.stderr, done.stderr
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")
def test_reanalyse_on_a_full_disk_says_so_in_one_line(tmp_path):
    """A field-station trial: reanalyse whose write met a full disk ended in a traceback,
    "sqlite3.OperationalError: database or disk is full"."""
    from tests.review_helpers import make_review_db

    src, _ = make_review_db(tmp_path)   # its ledger names the recordings under tmp_path
    (tmp_path / "card").mkdir()
    card = shlex.quote(str(tmp_path / "card"))
    db = f"{card}/E.db"
    reader = shlex.join([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]); "
                         "c.execute('SELECT 1 FROM detections').fetchall(); time.sleep(60)", f"{tmp_path}/card/E.db"])
    script = "\n".join([
        f"mount -t tmpfs -o size=1m tmpfs {card} && cp {shlex.quote(str(src))} {db} || exit 9",
        f"{reader} >/dev/null 2>&1 & sleep 1",   # its -shm kept, as a review page's or an export's
        f"dd if=/dev/zero of={card}/filler bs=4k 2>/dev/null",
        f"{shlex.join([sys.executable, '-m', 'edgemon'])} reanalyse --db {db} --again; echo rc=$?; kill $!"])
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert "rc=1" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "database or disk is full" in last and "run the same command again" in last, \
        done.stderr[-2000:]


# --- another process holds the write lock ------------------------------------------------------

HOLD_LOCK = ("import sqlite3, sys, time\n"
             "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
             "conn.execute('BEGIN IMMEDIATE')\n"
             "print('locked', flush=True)\n"
             "time.sleep(float(sys.argv[2]))\n"
             "conn.execute('COMMIT')\n")


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.stdout.close()    # it prints nothing more; an open pipe would outlive the test
    return holder


@pytest.fixture(scope="module")
def three_recordings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("three")
    for i in range(3):
        recording(tmp / "rec" / f"2024070{i + 1}_060000.WAV", seed=100 + i)
    watch_until_idle(tmp / "rec", tmp / "reference.db")
    return tmp / "rec", query(tmp / "reference.db", DETECTIONS)


def test_a_held_write_lock_makes_edgemon_wait_and_lose_nothing(three_recordings, tmp_path):
    root, reference = three_recordings
    db = tmp_path / "d.db"
    Store(db).close()                                  # created and migrated, as a running unit's
    holder = hold_write_lock(db, 2.5)
    started = time.monotonic()
    watcher = watch_until_idle(root, db)
    waited = time.monotonic() - started
    assert holder.wait(10) == 0
    assert waited >= 2.0                               # it waited for the lock (busy timeout 30 s)
    assert watcher.store_error is None                 # ... without ever failing a write
    assert query(db, DETECTIONS) == reference
    assert ledger(db) == [(p.name, "done", 1) for p in sorted(root.iterdir())]


def test_a_lock_held_past_the_busy_timeout_holds_work_and_retries(three_recordings, tmp_path, monkeypatch, caplog):
    root, reference = three_recordings
    monkeypatch.setattr(edgemon.storage.store, "BUSY_TIMEOUT_MS", 200)
    db = tmp_path / "d.db"
    Store(db).close()
    holder = hold_write_lock(db, 2.0)
    watcher = watch_until_idle(root, db, retry_s=0.3)
    assert holder.wait(10) == 0
    assert "database write failed (database is locked)" in caplog.text
    assert watcher.store_error is None
    assert query(db, DETECTIONS) == reference
    assert ledger(db) == [(p.name, "done", 1) for p in sorted(root.iterdir())]   # not counted as failures


# --- corrupt database at start -----------------------------------------------------------------

def test_a_file_that_is_not_a_database_is_moved_aside_and_replaced(tmp_path, caplog):
    db = tmp_path / "d.db"
    garbage = b"not SQLite at all; an SD card wrote the wrong sector here. " * 200
    db.write_bytes(garbage)
    (tmp_path / "d.db-wal").write_bytes(b"stale wal")
    with open_or_recover(db) as store:
        assert store.integrity_check() == "ok"
        assert {"files", "detections", "heartbeats"} <= set(store.db.table_names())
    aside = {p.name[len("d.db.corrupt-YYYYMMDDTHHMMSSZ"):]: p for p in tmp_path.glob("d.db.corrupt-*")}
    assert aside[""].read_bytes() == garbage                          # moved, not deleted ...
    assert aside["-wal"].read_bytes() == b"stale wal"                 # ... with its WAL, untouched
    record = next(r for r in caplog.records if r.name == "edgemon.storage.recovery")
    assert record.levelname == "ERROR" and "is corrupt" in record.message and str(aside[""]) in record.message


KILLED_MID_TRANSACTION = textwrap.dedent("""
    import os, sqlite3, sys
    from edgemon.storage.store import Store
    Store(sys.argv[1]).close()                                 # an edgemon database ...
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")               # ... in a rollback journal, as at creation
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES ('kept')")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("PRAGMA cache_size = 1")                      # spill: pages reach the file
    for _ in range(2000):
        conn.execute("INSERT INTO t VALUES (?)", [b"x" * 1000])
    os.kill(os.getpid(), 9)
""")


def test_a_hot_journal_left_by_a_kill_is_rolled_back_not_refused(tmp_path):
    """A daemon killed while it created its database leaves a hot rollback journal; the read-only
    corruption check cannot roll it back ("attempt to write a readonly database", seen in the
    kill -9 test) and the unit then refused to start. It is ordinary crash recovery, not damage."""
    db = tmp_path / "d.db"
    subprocess.run([sys.executable, "-c", KILLED_MID_TRANSACTION, str(db)], cwd=REPO)
    assert (tmp_path / "d.db-journal").stat().st_size > 0
    assert corruption(db) is None
    assert not list(tmp_path.glob("d.db.corrupt-*"))
    with open_or_recover(db) as store:
        assert store.integrity_check() == "ok"
        assert store.db.execute("SELECT x FROM t").fetchall() == [("kept",)]   # the open transaction undone


def test_damaged_pages_are_detected_at_start_and_the_daemon_runs_on(three_recordings, tmp_path):
    root, reference = three_recordings
    db = tmp_path / "d.db"
    watch_until_idle(root, db)
    data = bytearray(db.read_bytes())
    rng = np.random.default_rng(0)
    for page in range(2, len(data) // 4096):          # scribble over every b-tree page but the first
        at = page * 4096
        data[at:at + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    db.write_bytes(bytes(data))
    assert corruption(db) is not None

    daemon = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle",
                             "--settle-s", "0"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert daemon.returncode == 0, daemon.stderr[-3000:]
    assert "is corrupt" in daemon.stderr and "moved it aside to" in daemon.stderr
    assert query(db, DETECTIONS) == reference                          # a fresh database, filled again
    assert ledger(db) == [(p.name, "done", 1) for p in sorted(root.iterdir())]
    aside = [p for p in tmp_path.glob("d.db.corrupt-*") if p.name.endswith("Z")]
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)


def test_status_of_a_damaged_database_is_one_line_naming_it(tmp_path):
    """A newcomer trial: `edgemon status` ran the integrity check, then crashed with a traceback
    on the first query of the damaged table."""
    db = make_recorder(tmp_path / "d.db", "rec-a", files=3, per_file=4)
    damage_table(db, "detections")
    for fmt in ("text", "json"):
        result = subprocess.run([sys.executable, "-m", "edgemon", "status", "--db", str(db), "--format", fmt],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr[-2000:]
        assert str(db) in lines[0] and "damaged" in lines[0] and ".recover" in lines[0]


def test_errors_that_are_not_corruption_are_not_repaired(tmp_path):
    db = tmp_path / "dir.db"
    db.mkdir()                                         # cannot be opened: not a corrupt database
    with pytest.raises(StoreError):
        open_or_recover(db)
    assert db.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def _watch(root: Path, db: Path, *prefix: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                           "--until-idle", "--settle-s", "0", "--retry-s", "1"],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("name, content", [("detections.csv", b"source,label,start_s\nS01.WAV,duet,3.0\n"),
                                           ("20240101_060000.WAV", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 64)],
                         ids=["an export", "a recording"])
def test_a_db_path_that_names_another_kind_of_file_is_refused_untouched(tmp_path, name, content):
    """A newcomer's --db typo (the export beside the database, a recording): it was taken as a
    corrupt database, renamed to NAME.corrupt-..., and a fresh database made under its name."""
    root = tmp_path / "empty"
    root.mkdir()
    db = tmp_path / name
    db.write_bytes(content)
    daemon = _watch(root, db)
    assert daemon.returncode == 1 and "not a detections database; nothing was changed" in daemon.stderr
    assert db.read_bytes() == content and not list(tmp_path.glob("*.corrupt-*"))
    assert "Traceback" not in daemon.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["empty", name])   # no lock file beside it


def test_another_programs_sqlite_database_is_refused_untouched(tmp_path):
    """watch wrote twenty tables and triggers into it (and turned on WAL); every other command refused it."""
    root = tmp_path / "empty"
    root.mkdir()
    db = tmp_path / "birds.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE birds (name TEXT)")
        conn.execute("INSERT INTO birds VALUES ('argus')")
    conn.close()
    before = db.read_bytes()
    daemon = _watch(root, db)
    assert daemon.returncode == 1 and "not an edgemon database (it holds another program's tables: birds)" in daemon.stderr
    assert db.read_bytes() == before
    with pytest.raises(StoreError, match="not an edgemon database"):
        Store(db)
    assert db.read_bytes() == before


def test_a_read_only_database_stops_watch_at_start_instead_of_holding_for_ever(three_recordings, tmp_path):
    """--until-idle on a read-only database logged one 'holding work' line and never ended."""
    root, _ = three_recordings
    db = tmp_path / "d.db"
    Store(db).close()
    db.chmod(0o444)
    prefix = ()
    if os.geteuid() == 0:   # root writes to any file: run the daemon without that privilege
        if not shutil.which("setpriv"):
            pytest.skip("needs setpriv (util-linux) to drop root's file-override privilege")
        prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--")
    daemon = _watch(root, db, *prefix, timeout=60)
    assert daemon.returncode == 1, daemon.stderr[-2000:]
    assert "the detections database cannot be written" in daemon.stderr and "Traceback" not in daemon.stderr


def test_a_db_in_a_directory_that_does_not_exist_is_named_as_such(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    daemon = _watch(root, tmp_path / "missing" / "d.db")
    assert daemon.returncode == 1 and "its directory" in daemon.stderr and "does not exist" in daemon.stderr
    assert "lock file" not in daemon.stderr


# --- the host clock steps back an hour ---------------------------------------------------------

class FakeHostClock:
    """Shifts every host-clock read on the watch path (``time.time``, ``datetime.now``) by
    ``offset`` seconds; the monotonic clock is untouched, as when NTP or a person steps the clock."""

    def __init__(self, monkeypatch):
        self.offset = 0.0
        self.real = real_time = time.time
        real_datetime = datetime.datetime
        clock = self

        class Shifted(real_datetime):
            @classmethod
            def now(cls, tz=None):
                return real_datetime.now(tz) + datetime.timedelta(seconds=clock.offset)

        monkeypatch.setattr(time, "time", lambda: real_time() + clock.offset)
        monkeypatch.setattr(datetime, "datetime", Shifted)
        monkeypatch.setattr(edgemon.files.recordings, "datetime", Shifted)


def test_host_clock_stepping_back_an_hour_skips_and_duplicates_nothing(tmp_path, monkeypatch):
    root = tmp_path / "rec"
    for i in range(3):
        recording(root / f"2024080{i + 1}_060000.WAV", seed=200 + i)
    clock = FakeHostClock(monkeypatch)
    stop = threading.Event()
    db = tmp_path / "d.db"

    def make(store):
        monitor = WatchMonitor(store, db, device_id="site", bundle_id=analyzer().bundle.bundle_id,
                               config=HealthConfig(heartbeat_s=0.1), env={})
        return Watcher(fast_config(root, settle_s=0.3, retry_s=0.3, until_idle=False), analyzer(), store,
                       on_tick=monitor.tick)

    thread, made = run_in_thread(db, make, stop)
    wait_until(lambda: "watcher" in made and made["watcher"].processed == 3, 60, "the first files")
    before = dict(query(db, "SELECT source, updated_at FROM files"))

    clock.offset = -3600.0
    store_now = datetime.datetime.fromisoformat(edgemon.storage.store._now().replace("Z", "+00:00")).timestamp()
    assert abs(clock.real() - store_now - 3600) < 5     # the store reads the stepped clock
    for name, seed in (("20240804_060000.WAV", 300), ("20240731_060000.WAV", 301)):   # one named before all
        path = recording(root / name, seed=seed)
        os.utime(path, (time.time(), time.time()))     # written after the step: an hour "older" mtime
    (root / "20240805_060000.WAV").write_bytes(b"RIFF garbage written after the step")
    os.utime(root / "20240805_060000.WAV", (time.time(), time.time()))
    took = wait_until(lambda: made["watcher"].processed == 5 and
                      ("20240805_060000.WAV", "quarantined", 3) in ledger(db), 30, "files after the step")
    stop.set()
    thread.join(30)
    assert "error" not in made, made.get("error")
    assert took < 15                                    # settle and retry timers did not move by an hour

    clock.offset = 0.0
    watch_until_idle(root, tmp_path / "reference.db")
    assert query(db, DETECTIONS) == query(tmp_path / "reference.db", DETECTIONS)    # none skipped, none twice
    assert ledger(db) == [(n, "done", 1) for n in ("20240731_060000.WAV", "20240801_060000.WAV",
                                                   "20240802_060000.WAV", "20240803_060000.WAV",
                                                   "20240804_060000.WAV")] + [("20240805_060000.WAV", "quarantined", 3)]
    after = dict(query(db, "SELECT source, updated_at FROM files"))
    assert all(after[s] == before[s] for s in before)  # the files done before the step were left alone
    assert after["20240804_060000.WAV"] < min(before.values())    # the store really saw the step
    beats = query(db, "SELECT at_utc, uptime_s FROM heartbeats ORDER BY id")
    assert min(b[0] for b in beats[len(before):]) < beats[0][0]   # wall time went back ...
    assert all(a[1] <= b[1] for a, b in zip(beats, beats[1:]))    # ... uptime never did


# --- the observer thread dies ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_observer_thread_is_detected_and_restarted(tmp_path, monkeypatch, caplog):
    """A handler bug kills watchdog's thread; with rescans 60 s apart, only a restarted observer
    finds the next files within seconds."""
    root = tmp_path / "rec"
    recording(root / "20240901_060000.WAV", seed=400)
    original = events.Hints.on_any_event
    poisoned = threading.Event()

    def poison(self, event):
        if "poison" in os.fsdecode(event.src_path) and not poisoned.is_set():
            poisoned.set()
            raise RuntimeError("a bug in an event handler")
        return original(self, event)

    monkeypatch.setattr(events.Hints, "on_any_event", poison)
    stop = threading.Event()
    thread, made = run_in_thread(
        tmp_path / "d.db",
        lambda store: Watcher(fast_config(root, settle_s=0.2, rescan_s=60, until_idle=False), analyzer(), store), stop)
    try:
        wait_until(lambda: "watcher" in made and made["watcher"].processed == 1, 60, "the first file")
        recording(root / "poison.wav", seed=401)
        wait_until(poisoned.is_set, 10, "the handler to fail")
        wait_until(lambda: made["watcher"].processed == 2, 10, "the file whose event killed the observer")
        recording(root / "20240902_060000.WAV", seed=402)
        wait_until(lambda: made["watcher"].processed == 3, 10, "a file seen by the restarted observer")
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in made, made.get("error")
    assert "file-system observer stopped; restarting it" in caplog.text


# --- a 10,000-file backlog ---------------------------------------------------------------------

def files_in_ledger(db: Path) -> int:
    """Rows in the ledger of a database another process may still be creating (read-only)."""
    try:
        with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:   # not there yet, or not migrated yet
        return 0


def test_a_10000_file_backlog_keeps_memory_bounded(tmp_path):
    """The daemon takes a directory of 10,000 short recordings; its own heartbeat rows (every
    0.5 s, with resident memory) show what the scan cost and that memory does not grow with the
    files processed. Stopped (SIGTERM) after 2,500 files to keep the test short; bench/soak.py
    --backlog 10000 runs all of them."""
    root = tmp_path / "rec"
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(1000, 0.1), 16000, format="WAV", subtype="PCM_16")
    original = buffer.getvalue()
    data = original.find(b"data") + 8
    for i in range(10_000):
        folder = root / f"{i // 1000:02d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        # 10,000 recordings (3 kB each): the first sample numbers each, or they are one recording's copies
        (folder / f"r{i:05d}.wav").write_bytes(original[:data] + i.to_bytes(2, "little") + original[data + 2:])
    (tmp_path / "empty.toml").write_text("")
    db = tmp_path / "d.db"
    env = dict(os.environ, EDGEMON_HEARTBEAT_S="0.5")
    with open(tmp_path / "daemon.log", "w") as log:    # a line per file: a pipe would fill and block it
        daemon = subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                                   "--settle-s", "0", "--config", str(tmp_path / "empty.toml")],
                                  cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until(lambda: daemon.poll() is not None or files_in_ledger(db) >= 2500, 240, "2,500 files")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    beats = query(db, "SELECT files_done, rss_mb, note FROM heartbeats ORDER BY id")
    start_rss = beats[0][1]                                     # before the scan
    early = next(b for b in beats if b[0] >= 250)
    end = beats[-1]
    per_1000 = (end[1] - early[1]) / (end[0] - early[0]) * 1000
    print(f"\n10,000-file backlog: RSS {start_rss:.1f} MB before the scan, {early[1]:.1f} MB at {early[0]} files, "
          f"{end[1]:.1f} MB at {end[0]} files: {per_1000:+.2f} MB per 1,000 files")
    assert end[0] >= 2500 and query(db, "SELECT COUNT(*) FROM files WHERE state = 'done'")[0][0] == end[0]
    assert early[1] - start_rss < 30                            # scanning 10,000 paths and warming up
    # SQLite's page cache (2 MB at most) still fills as the ledger grows (about 0.9 MB per 1,000
    # files here), and each analysed file stays known by its path (about 0.5 kB); a leak of one
    # decoded 0.1 s block per file would add 6 MB per 1,000 files. Alone here 1.5 MB; 2.15 once
    # in a full parallel run, where allocation peaks land differently.
    assert per_1000 < 3.0 and end[1] - early[1] < 10


def test_a_database_hold_ends_when_writes_go_through_not_at_the_next_committed_file(tmp_path, monkeypatch):
    """Found in review: after a refused write the watcher reported 'hold_store' until a file was
    committed: through a long analysis, and for ever when the file it held for had vanished."""
    monkeypatch.setattr(edgemon.storage.store, "BUSY_TIMEOUT_MS", 200)
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV", seed=1)
    Store(db).close()
    during_analysis: list = []

    def on_tick(w: Watcher) -> bool:   # the hold as heartbeats see it, while a file is being analysed
        if w.store.db.execute("SELECT count(*) FROM in_progress").fetchone()[0]:
            during_analysis.append(w.store_error)
        return True

    stop = threading.Event()
    holder = hold_write_lock(db, 1.5)
    thread, made = run_in_thread(db, lambda store: Watcher(fast_config(root, until_idle=False, retry_s=0.3),
                                                           analyzer(), store, on_tick=on_tick), stop)
    try:
        wait_until(lambda: "watcher" in made and made["watcher"].store_error is not None, 30, "a refused write")
        assert holder.wait(10) == 0
        wait_until(lambda: made["watcher"].processed == 1, 60, "the held file, analysed")
        assert during_analysis and set(during_analysis) == {None}   # over when its attempt was written
        holder = hold_write_lock(db, 1.5)                  # refused again, for a file that then vanishes
        late = recording(root / "20240701_070000.WAV", seed=2)
        wait_until(lambda: made["watcher"].store_error is not None, 30, "a second refused write")
        late.unlink()
        assert holder.wait(10) == 0
        wait_until(lambda: made["watcher"].store_error is None, 10, "the hold to end with nothing left to retry")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert "error" not in made, made.get("error")
    assert ledger(db) == [("20240701_060000.WAV", "done", 1)]


def test_a_rebuilt_database_says_what_the_damaged_one_still_holds(tmp_path, caplog):
    """A newcomer trial: after damage to the detections' pages the database was moved aside and a
    fresh one started; its 50 verdicts and its export cursor stayed in the old file without a word,
    and `edgemon status` said "problems: none"."""
    import logging

    from edgemon.review import reviews
    from edgemon.status import collect_status, format_status
    from edgemon.storage.export import export_detections
    from tests.review_helpers import make_review_db

    db, _ = make_review_db(tmp_path)
    detections = reviews.list_detections(db, order="time")
    reviews.add_verdict(db, detections[0]["id"], "wrong", "ann")
    reviews.add_verdict(db, detections[1]["id"], "correct", "ann")
    assert export_detections(db, "csv", tmp_path / "sync.csv", new=True, cursor_name="sync") == len(detections)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'detections'").fetchone()
    data = bytearray(db.read_bytes())
    data[(page - 1) * 4096:(page - 1) * 4096 + 64] = b"\x0d\x00\x00\xff\xff" * 12 + b"\xff" * 4
    db.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="edgemon.storage.recovery"), open_or_recover(db):
        pass
    (aside,) = [p for p in tmp_path.glob("review.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert f"{aside} holds 2 verdict(s) and 1 export cursor(s) that the fresh database does not have" in caplog.text
    problems = collect_status(db)["problems"]
    assert any("started afresh" in p and str(aside) in p and "2 verdict(s)" in p for p in problems), problems
    assert "problems: none" not in format_status(collect_status(db))
    aside.rename(tmp_path / "elsewhere.db")              # dealt with: no longer a problem
    assert not any("started afresh" in p for p in collect_status(db)["problems"])


def test_a_database_rebuilt_under_a_relative_name_is_named_from_anywhere(tmp_path, monkeypatch):
    """Found by a review: the moved file was noted by the relative name the unit used (the default
    `db` is `edgemon.db`), and `status` run from elsewhere no longer listed it."""
    from edgemon.status import collect_status

    monkeypatch.chdir(tmp_path)
    Path("edgemon.db").write_bytes(b"not SQLite at all; an SD card wrote the wrong sector here. " * 200)
    with open_or_recover(Path("edgemon.db")):
        pass
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert any("started afresh" in p for p in collect_status(tmp_path / "edgemon.db")["problems"])


# --- the database deleted under a running daemon --------------------------------------------------

def test_a_database_deleted_while_watch_runs_stops_it_in_one_line(tmp_path):
    """A hardening trial: `rm detections.db*` while watch ran ("to start afresh"): the daemon went on
    storing into the deleted file, logging each file's detections, and all of it was gone when it
    stopped. It now stops at its next write, in one line; started again, it makes the database anew
    and analyses the card's recordings into it."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV", seed=100)
    daemon = subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--settle-s", "0"],
                              stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        def first_done() -> bool:
            try:
                return ledger(db)[:1] == [("20240701_060000.WAV", "done", 1)]
            except sqlite3.Error:   # not created and migrated yet
                return False

        wait_until(first_done, 60, "the first recording analysed")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        recording(root / "20240702_060000.WAV", seed=101)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 1, stderr[-2000:]
    [line] = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert f"the detections database {db} was deleted or replaced while edgemon used it: stopping" in line, stderr
    assert "Traceback" not in stderr
    watch_until_idle(root, db)                                  # started again: both analysed into a new one
    assert [r[:2] for r in ledger(db)] == [("20240701_060000.WAV", "done"), ("20240702_060000.WAV", "done")]


def test_a_database_replaced_under_a_store_refuses_the_next_write(tmp_path):
    """The listener's writer and every other writer go through ``Store``: a file put in the
    database's place (a copy restored over it) is not written through the old one's handle."""
    from edgemon.live.store_writer import StoreWriter
    from edgemon.storage.store import DatabaseReplaced

    db = tmp_path / "d.db"
    with Store(db) as store:
        store.set_unreadable_dirs({})
        shutil.copy(db, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", db)
        with pytest.raises(DatabaseReplaced, match="was deleted or replaced while edgemon used it"):
            store.set_unreadable_dirs({"x": "gone"})
    writer = StoreWriter(db, retry_s=0.01)
    finish = threading.Event()
    writer.submit(lambda s: (db.unlink(), s.set_unreadable_dirs({"x": "gone"})))
    finish.set()
    with pytest.raises(DatabaseReplaced):        # raised, not retried until the writer gives up
        writer.run(finish)


def test_a_listeners_thread_that_finds_its_database_deleted_says_so_in_one_line(caplog):
    """The second diff review: listen's writer stopped on a deleted database with a traceback in
    the journal, and the run ended in "the writer thread failed: DatabaseReplaced: …"."""
    from edgemon.live.threads import _Threads
    from edgemon.storage.store import DatabaseReplaced

    stop = threading.Event()
    threads = _Threads(stop)

    def writer() -> None:
        raise DatabaseReplaced("the detections database d.db was deleted or replaced while edgemon used it")

    with caplog.at_level("ERROR", logger="edgemon"):
        threads.start("writer", writer).join(5)
    assert stop.is_set() and [type(e) for _, e in threads.errors] == [DatabaseReplaced]
    [record] = caplog.records
    assert record.exc_info is None and record.getMessage() == (
        "writer thread stopped: the detections database d.db was deleted or replaced while edgemon used it")
