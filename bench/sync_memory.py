"""Memory of `edgemon sync` does not grow with the backlog: peak RSS of one session sending a
listen-mode recorder's 10 days, then another's 90 days (the same simulated days as
bench/sync_load.py), into a fresh PostgreSQL server.

    nice python bench/sync_memory.py
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import sync_load  # noqa: E402

from devtools.postgres_server import postgres_server  # noqa: E402


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="edgemon-sync-memory-"))
    atexit.register(shutil.rmtree, work, True)
    days_list = (10, 90)
    for days in days_list:
        sync_load.add_days(work / f"rec-01-{days}.db", "rec-01", 0, days,
                           types.SimpleNamespace(files=48, detections=240), 1)
    with postgres_server() as sa_url:
        url = sa_url.replace("postgresql+psycopg://", "postgresql://")
        for days in days_list:
            run = subprocess.run(["/usr/bin/time", "-f", "%M KB peak RSS, %e s wall", sys.executable, "-m", "edgemon",
                                  "sync", "--to", url, "--db", str(work / f"rec-01-{days}.db"), "--device-id",
                                  f"rec-{days}"], capture_output=True, text=True)
            print(f"{days} days: {run.stdout.strip()} | {run.stderr.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
