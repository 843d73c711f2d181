"""Restart safety: kill -9 the daemon at random moments over a backlog, restart it, and find no
duplicate and no missing detection, a sound database, and every file done."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time

import numpy as np
import soundfile

from edgemon.storage.store import Store
from tests.waits import poll_until
from tests.watch_helpers import files_done, query, write_wav

KILLS = 6
FILES = 16


def backlog(borneo_dir, root, files=FILES, clips=8):
    with open(borneo_dir / "lab" / "devel.csv") as f:
        names = [r["filename"] for r in csv.DictReader(f)]
    rng = np.random.default_rng(7)
    for i in range(files):
        parts = [soundfile.read(borneo_dir / "audio" / names[j], dtype="float32")[0]
                 for j in rng.choice(len(names), clips, replace=False)]
        write_wav(root / f"201803{10 + i // 6}_{6 + i % 6:02d}0000.WAV", np.concatenate(parts))


def start_daemon(root, db):
    cmd = [sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle",
           "--settle-s", "0", "--rescan-s", "0.2"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_daemon_until_idle(root, db):
    daemon = start_daemon(root, db)
    _, stderr = daemon.communicate(timeout=300)
    assert daemon.returncode == 0, stderr


def detections(db):
    return query(db, "SELECT source, label, start_s, end_s, confidence FROM detections ORDER BY source, start_s, label")


def test_kill_minus_nine_at_random_moments_loses_and_duplicates_nothing(borneo_dir, tmp_path):
    root = tmp_path / "rec"
    backlog(borneo_dir, root)
    # The reference is the same command left alone: in this process numpy's BLAS runs on every
    # core (the CLI pins it to one), which moves a float's last bits and, through the int8
    # members, a confidence's 4th decimal.
    started = time.monotonic()
    run_daemon_until_idle(root, tmp_path / "reference.db")
    whole_s = time.monotonic() - started   # start-up and the whole backlog, on this machine now
    reference = detections(tmp_path / "reference.db")

    db = tmp_path / "crashed.db"
    rng = np.random.default_rng(11)
    done_between = []
    for _ in range(KILLS):
        with start_daemon(root, db) as daemon:     # leaving the block closes its stderr pipe and reaps it
            # Kills land before, during and between files: within the time the whole backlog takes
            # (a fixed 0.8-2.2 s let a quiet machine finish it before the first kill).
            time.sleep(rng.uniform(0.3, 0.9) * whole_s)
            daemon.send_signal(signal.SIGKILL)
        done_between.append(files_done(db))  # 0 if killed before the schema existed
    run_daemon_until_idle(root, db)
    print(f"\nfiles done after each kill: {done_between}")
    assert done_between and min(done_between) < FILES  # the kills really interrupted the backlog

    assert detections(db) == reference                          # nothing missing, nothing extra
    keys = query(db, "SELECT COUNT(*), COUNT(DISTINCT source || start_s || label) FROM detections")[0]
    assert keys[0] == keys[1]                                    # no duplicates
    assert query(db, "SELECT state, COUNT(*) FROM files GROUP BY state") == [("done", FILES)]
    with Store(db) as store:
        assert store.integrity_check() == "ok"


def test_sigterm_stops_the_daemon_promptly_and_cleanly(borneo_dir, tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    backlog(borneo_dir, root, files=2, clips=2)
    daemon = subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                               "--settle-s", "0", "--rescan-s", "30"], stderr=subprocess.PIPE, text=True)
    poll_until(lambda: files_done(db) >= 2, 60, interval=0.2)
    time.sleep(1.0)  # both files done: now idle, waiting for the next rescan
    stopped = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=10)
    assert daemon.returncode == 0, stderr
    assert time.monotonic() - stopped < 3.0
    assert "stopping" in stderr
    assert query(db, "SELECT state, COUNT(*) FROM files GROUP BY state") == [("done", 2)]
    # its last word says what the run did (a season trial: nothing after "stopping")
    assert "stopped: 2 file(s) analysed this run" in stderr.strip().splitlines()[-1]


def test_until_idle_stopped_with_files_left_says_so_and_exits_as_the_signal(borneo_dir, tmp_path):
    """A newcomer trial: `watch --until-idle` stopped by SIGTERM with 11 of 16 files left exited 0,
    so `edgemon watch --until-idle && next-step` went on with an unfinished card."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    backlog(borneo_dir, root)
    daemon = start_daemon(root, db)
    poll_until(lambda: files_done(db) >= 1, 120, interval=0.05)
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=60)
    left = FILES - files_done(db)
    assert left > 0, "the backlog finished before the signal"
    assert daemon.returncode == 128 + signal.SIGTERM, stderr
    assert f"error: stopped with {left} file(s) not analysed yet" in stderr
    run_daemon_until_idle(root, db)                       # the same command finishes the card
    assert files_done(db) == FILES
