"""A small real detections database with real recordings, and a running ``edgemon review``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import soundfile

from edgemon.storage.rows import Detection

from edgemon.storage.store import Store
from tests.conftest import hoots, tone

# (recording, start_s, end_s, label, confidence, member votes of 2 members over the windows)
DETECTIONS = [
    ("S01/20240501_060000.WAV", 2.0, 6.0, "hornbill_helmeted", 0.95, [1, 1]),
    ("S01/20240501_060000.WAV", 10.0, 14.0, "gibbon_duet", 0.45, [1, 0]),
    ("S01/20240502_070000.WAV", 4.0, 8.0, "hornbill_helmeted", 0.62, [1, 1]),
    ("S01/20240502_070000.WAV", 12.0, 16.0, "great_argus", 0.99, [1, 1]),
]
BUNDLE_ID = "default-test"
RECORDING_S = 20.0


def make_review_db(root: Path) -> tuple[Path, Path]:
    """Recordings (20 s WAV at 16 kHz) under ``root/recordings`` and ``root/review.db`` with their
    ledger rows and four detections, stored through ``Store`` as ``watch`` stores them."""
    recordings = root / "recordings"
    db = root / "review.db"
    with Store(db) as store:
        for name in sorted({d[0] for d in DETECTIONS}):
            path = recordings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, hoots(RECORDING_S) + tone(3000, RECORDING_S, seed=1) * 0.3, 16000, subtype="PCM_16")
            stamp = Path(name).stem
            start = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"
            dets = [Detection(device_id="S01", source=name, start_s=s, end_s=e, start_utc=_plus(start, s),
                              end_utc=_plus(start, e), time_source="filename", clock_suspect=False, label=label,
                              confidence=conf, votes=json.dumps({"windows": 1, "member_votes": votes}),
                              bundle_id=BUNDLE_ID)
                    for src, s, e, label, conf, votes in DETECTIONS if src == name]
            st = path.stat()
            store.commit_file(name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, duration_s=RECORDING_S,
                              start_utc=start, time_source="filename", clock_suspect=False,
                              bundle_id=BUNDLE_ID, detections=dets)
    return db, recordings


def _plus(start: str, seconds: float) -> str:
    return (dt.datetime.fromisoformat(start.replace("Z", "+00:00")) + dt.timedelta(seconds=seconds)).isoformat()


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def review_server(db: Path, recordings: Path | None, *extra: str, host: str = "127.0.0.1"):
    """``edgemon review`` as a subprocess; yields (base URL, the URL line it printed)."""
    port = free_port()
    cmd = [sys.executable, "-m", "edgemon", "review", "--db", str(db), "--host", host, "--port", str(port),
           "--reviewer", "tester", *extra]
    if recordings is not None:
        cmd += ["--recordings", str(recordings)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stderr.readline()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/static/review.css", timeout=2):
                    break
            except urllib.error.HTTPError as exc:
                exc.close()
                break       # it answers (401 without the token): it is up
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"edgemon review exited: {line}{proc.stderr.read()}")
                time.sleep(0.1)
        yield base, line.strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
