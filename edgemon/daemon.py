"""Long-running entry points: build the pieces from options, run until stopped, clean up."""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from edgemon.bundle import default_bundle_path, load_bundle
from edgemon.config import Settings
from edgemon.dbguard import open_or_recover
from edgemon.diskguard import DiskBudget
from edgemon.health import HealthConfig, WatchMonitor, listen_health
from edgemon.pipeline import Analyzer
from edgemon.sync import sync_in_background
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


def run_watch(config: WatchConfig, db_path: Path, models: Path | None = None, threads: int = 1,
              health: HealthConfig = HealthConfig(), disk: DiskBudget = DiskBudget()) -> int:
    """Watch ``config.root`` into the database at ``db_path``; returns files processed. A corrupt
    database is moved aside and a fresh one created; systemd hears READY, STATUS and watchdog pings."""
    analyzer = make_analyzer(models, threads)
    with open_or_recover(db_path) as store, stop_on_signals() as stop:
        monitor = WatchMonitor(store, db_path, device_id=config.device_id, bundle_id=analyzer.bundle.bundle_id,
                               config=health, disk=disk)
        watcher = Watcher(config, analyzer, store, on_tick=monitor.tick)
        log.info("watching %s into %s", watcher.root, db_path)
        with monitor.running(watcher):
            watcher.run(stop)
        return watcher.processed


def run_service(settings: Settings, mode: str | None = None, until_idle: bool = False) -> None:
    """Run ``mode`` (default: the settings' own) as configured: ``edgemon run``, ``edgemon watch``;
    with ``sync_url`` set, a thread syncs to the fleet database meanwhile. Sync starts first, so a
    sync_url holding a password is refused before any setting reaches the log."""
    with sync_in_background(settings):
        _run_mode(settings, mode, until_idle)


def _run_mode(settings: Settings, mode: str | None, until_idle: bool) -> None:
    settings.log(log)
    if (mode or settings["mode"]) == "watch":
        run_watch(settings.watch_config(until_idle), settings["db"], settings["models"], settings["threads"],
                  settings.health_config(), settings.disk_budget())
    else:
        from edgemon.listen import listen_main

        with listen_health(settings["db"], settings.health_config()):
            listen_main(settings.listen_config(), settings["db"], settings["models"], settings["threads"])
