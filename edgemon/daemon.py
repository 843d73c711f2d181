"""Long-running entry points: build the pieces from options, run until stopped, clean up."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from edgemon.bundle import default_bundle_path, load_bundle
from edgemon.pipeline import Analyzer
from edgemon.store import Store
from edgemon.watch import WatchConfig, Watcher

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals():
    """An Event set by SIGTERM or SIGINT, so the loop finishes its file and exits cleanly."""
    stop = threading.Event()
    previous = {}

    def handler(signum, frame):
        log.info("signal %d: stopping after the current file", signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def make_analyzer(models: Path | None, threads: int = 1) -> Analyzer:
    bundle = load_bundle(models or default_bundle_path())
    log.info("bundle %s: %d member(s), labels %s", bundle.bundle_id, len(bundle.members), ", ".join(bundle.labels))
    return Analyzer(bundle, threads=threads)


def run_watch(config: WatchConfig, db_path: Path, models: Path | None = None, threads: int = 1) -> int:
    """Watch ``config.root`` into the database at ``db_path``; returns files processed."""
    analyzer = make_analyzer(models, threads)
    with Store(db_path) as store, stop_on_signals() as stop:
        watcher = Watcher(config, analyzer, store)
        log.info("watching %s into %s", watcher.root, db_path)
        watcher.run(stop)
        return watcher.processed
