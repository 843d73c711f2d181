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
