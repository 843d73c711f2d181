"""Graceful stop: SIGTERM or SIGINT sets the stop Event, whatever the main thread is doing."""

from __future__ import annotations

import subprocess
import sys

# Each loop: a signal lands while the main thread is inside stop.wait(0), which holds the Event's
# lock on and off. The handler used to call stop.set() right there, on the main thread: it waited
# for that lock forever (a review saw 16 of 20 SIGTERMs hang a waiting service).
STORM = """
import os, signal, threading
from edgemon.signals import stop_on_signals
for i in range(300):
    with stop_on_signals() as stop:
        threading.Timer(0.001 + (i % 10) * 0.0005, os.kill, (os.getpid(), signal.SIGTERM)).start()
        while not stop.wait(0):
            pass
print("stopped 300 times")
"""


def test_a_signal_during_a_wait_on_the_stop_event_stops_it():
    try:
        done = subprocess.run([sys.executable, "-c", STORM], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:   # run() kills the child: a deadlocked one ignores SIGTERM
        raise AssertionError("a signal deadlocked the wait on the stop event") from None
    assert done.returncode == 0 and done.stdout.strip() == "stopped 300 times", done.stderr[-1500:]


def test_a_second_ctrl_c_gives_up_the_file_in_hand_and_the_next_start_analyses_it(tmp_path):
    """A newcomer trial: a second Ctrl-C only said "stopping after the current file" again, and
    `watch --until-idle` went on with an hour's file (minutes on a Pi). It gives the file up now:
    nothing of it stored, no attempt left open, and the next start analyses it in this process."""
    import os
    import signal
    import sqlite3
    import time
    from pathlib import Path

    import numpy as np
    import soundfile

    root, db, log = tmp_path / "rec", tmp_path / "d.db", tmp_path / "stderr"
    root.mkdir()
    soundfile.write(root / "20240101_050000.WAV",
                    (0.01 * np.random.default_rng(0).standard_normal(16000 * 2700)).astype(np.float32), 16000,
                    subtype="PCM_16")      # 45 minutes: about 4 s of this 2-core machine's work, alone
    edgemon = str(Path(sys.executable).with_name("edgemon"))
    command = [edgemon, "watch", str(root), "--db", str(db), "--until-idle", "--settle-s", "0"]
    with open(log, "w") as stderr:
        child = subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while "watching" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.4)                 # the file begins as soon as it is listed
            child.send_signal(signal.SIGINT)
            time.sleep(0.3)
            child.send_signal(signal.SIGINT)
            rc = child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    said = log.read_text()
    assert rc == 130, said[-2000:]
    assert "20240101_050000.WAV: given up, not stored; analysed again at the next start" in said, said[-2000:]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM in_progress").fetchone()[0] == 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert again.returncode == 0 and "separate process" not in again.stderr, again.stderr[-2000:]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM files WHERE state = 'done'").fetchone()[0] == 1
