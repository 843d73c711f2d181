"""What the sync outbox's triggers cost the recorder's writer: milliseconds per file commit
(40 detections; every file committed, then re-processed) with and without the triggers.

    nice python bench/outbox_cost.py
"""

from __future__ import annotations

import atexit
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgemon.storage.schema import SYNC_KEYS  # noqa: E402
from edgemon.storage.store import Store  # noqa: E402
from devtools.recorder_db import add_file  # noqa: E402

FILES, DETECTIONS = 300, 40


def ms_per_commit(path: Path, triggers: bool) -> float:
    with Store(path) as store:
        if not triggers:
            for table in SYNC_KEYS:
                for op in ("insert", "update", "delete"):
                    store.db.execute(f"DROP TRIGGER changes_{table}_{op}")
        rng = random.Random(1)
        t0 = time.perf_counter()
        for _ in range(2):      # the second pass re-processes: deletes and rewrites detections
            for i in range(FILES):
                add_file(store, "rec", i, DETECTIONS, rng)
        return (time.perf_counter() - t0) / (2 * FILES) * 1000


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgemon-outbox-cost-"))
    atexit.register(shutil.rmtree, work, True)
    for run in range(2):     # alternate, so drift on a shared machine hits both alike
        for triggers in (False, True):
            ms = ms_per_commit(work / f"{run}-{triggers}.db", triggers)
            print(f"{'with' if triggers else 'without'} outbox triggers: {ms:.2f} ms per file commit "
                  f"({DETECTIONS} detections)")


if __name__ == "__main__":
    main()
