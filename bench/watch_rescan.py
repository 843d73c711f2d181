"""What watch's periodic rescan costs when every recording is analysed already (the steady state
of a unit whose card holds weeks of files): CPU seconds per rescan of N files, against the floor
any rescan pays (os.walk and one stat per file) measured in the same run.

    nice python bench/watch_rescan.py [N]      # N recordings, default 50 000 (about 35 days of 1-min files)
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from edgemon.analysis.analyzer import Analyzer  # noqa: E402
from edgemon.analysis.bundle import default_bundle_path, load_bundle  # noqa: E402
from edgemon.files.directory import mtime_ns  # noqa: E402
from edgemon.files.watcher import Watcher, WatchConfig  # noqa: E402
from edgemon.storage.store import Store  # noqa: E402

PER_DAY = 1440


def make_card(root: Path, db: Path, n: int) -> None:
    """``n`` tiny WAVs named by the minute, a folder a day, each already done in the ledger."""
    blob_path = root.parent / "blob.wav"
    soundfile.write(blob_path, np.zeros(160, np.float32), 16000, subtype="PCM_16")
    blob = blob_path.read_bytes()
    t0 = dt.datetime(2024, 1, 1)
    rows = []
    for i in range(n):
        at = t0 + dt.timedelta(minutes=i)
        path = root / at.strftime("%Y%m%d") / at.strftime("%Y%m%d_%H%M%S.WAV")
        if i % PER_DAY == 0:
            path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        st = path.stat()
        rows.append((path.relative_to(root).as_posix(), str(path), st.st_size, mtime_ns(st)))
    with Store(db) as store, store.db.conn:
        store.db.conn.executemany("INSERT INTO files (source, path, size, mtime_ns, state, attempts, updated_at) "
                                  "VALUES (?, ?, ?, ?, 'done', 1, '2024-01-01T00:00:00Z')", rows)


def cpu(fn) -> float:
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def floor(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            os.stat(os.path.join(dirpath, f))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    work = Path(tempfile.mkdtemp(prefix="edgemon-rescan-"))
    try:
        root, db = work / "rec", work / "recorder.db"
        root.mkdir()
        make_card(root, db, n)
        with Store(db) as store:
            watcher = Watcher(WatchConfig(root=root), Analyzer(load_bundle(default_bundle_path())), store)
            t0 = time.process_time()
            watcher.scan()
            first = time.process_time() - t0
            assert not watcher.pending and len(watcher.settled) == n, "every file should be settled"
            rescan = cpu(watcher.scan)
        walk = cpu(lambda: floor(root))
        print(f"{n} recordings: first scan {first:.2f} s CPU, each rescan {rescan:.2f} s CPU (best of 3); "
              f"os.walk + stat {walk:.2f} s: {rescan / walk:.1f}x the floor")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
