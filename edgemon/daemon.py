"""Long-running entry points: build the pieces from the settings in force, run until stopped, clean up."""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from edgemon.analysis.analyzer import Analyzer, make_analyzer
from edgemon.config import Settings
from edgemon.errors import BundleError
from edgemon.files.isolate import Isolated
from edgemon.files.directory import WatchRootError, check_root
from edgemon.files.watcher import WatchConfig, Watcher
from edgemon.health import (HealthConfig, Heartbeats, ListenHeartbeats, Notifier, WatchMonitor, listen_health,
                            watchdog_interval_s)
from edgemon.safetext import shown
from edgemon.signals import stop_on_signals
from edgemon.storage.disk_budget import MIN_ROOM_BYTES, DiskBudget, DiskGuard, free_bytes
from edgemon.storage.lock import hold_database
from edgemon.storage.recovery import open_or_recover, refuse_another_file
from edgemon.storage.store import Store
from edgemon.storage.readonly import newest_device_id
from edgemon.sync.service import sync_in_background

log = logging.getLogger(__name__)
TERMINAL_PROGRESS_S = 5.0   # backlog progress on a terminal; under systemd WatchConfig.progress_s


def record_refusal(db_path: Path, mode: str, device_id: str, reason: str) -> None:
    """Write a 'refused' heartbeat (``reason`` as its note) to an existing database, so that
    ``edgemon status`` shows why the unit is not analysing (a bundle that fails its self-check
    on this CPU, a broken bundle). Never creates a database and never raises."""
    if not Path(db_path).is_file():
        return
    try:
        with Store(db_path) as store:
            Heartbeats(store, mode=mode, device_id=device_id, bundle_id=None, every_s=0).beat(
                "refused", note=reason, force=True)
    except Exception as exc:  # a record of the refusal, never a second failure
        log.warning("could not record the refusal in %s: %s", shown(db_path), shown(exc))


def run_watch(config: WatchConfig, db_path: Path, models: Path | None = None, threads: int = 1,
              health: HealthConfig = HealthConfig(), disk: DiskBudget = DiskBudget()) -> int:
    """Watch ``config.root`` into the database at ``db_path``; returns files processed. A corrupt
    database is moved aside and a fresh one created; systemd hears READY, STATUS and watchdog pings.

    Nothing is created before the directory is known to be readable; the database's lock
    (``edgemon.storage.lock``) is held from before it is opened until the end, so a second daemon
    on the same database stops at once with a one-line error.
    """
    check_root(config.root)
    refuse_another_file(db_path)   # before the lock, which would leave its file beside a recording
    if sys.stderr.isatty():
        config = dataclasses.replace(config, progress_s=min(config.progress_s, TERMINAL_PROGRESS_S))
    with hold_database(db_path):
        try:
            analyzer = make_analyzer(models, threads)
        except BundleError as exc:
            record_refusal(db_path, "watch", config.device_id, str(exc))
            raise
        with open_or_recover(db_path) as store, \
                stop_on_signals(abandon="the file in hand is analysed again at the next start") as stop:
            store.check_writable()   # a read-only database would hold every file, and --until-idle never end
            store.record_bundle(analyzer.bundle.bundle_id, analyzer.bundle.manifest)   # names and reach for export
            return _watch(config, db_path, analyzer, store, stop, threads, health, disk)


def _watch(config: WatchConfig, db_path: Path, analyzer: Analyzer, store, stop: threading.Event, threads: int,
           health: HealthConfig, disk: DiskBudget) -> int:
    monitor = WatchMonitor(store, db_path, device_id=config.device_id, bundle_id=analyzer.bundle.bundle_id,
                           config=health)
    watcher = Watcher(config, analyzer, store, on_tick=monitor.tick,
                      isolated=Isolated(analyzer.bundle.path, threads=threads, block_s=config.block_s),
                      disk=DiskGuard([db_path], disk))
    log.info("watching %s into %s%s", shown(watcher.root), shown(db_path),
             "" if config.clock_zone is None else f" (names without a UTC offset read in {config.clock_zone})")
    with monitor.running(watcher):
        watcher.run(stop)
    return watcher.processed


def run_service(settings: Settings, mode: str | None = None, until_idle: bool = False,
                duration_s: float | None = None) -> None:
    """Run ``mode`` (default: the settings' own) as configured: ``edgemon run``, ``watch``, ``listen``
    (for ``duration_s`` seconds when given); with ``sync_url`` set, a thread syncs to the fleet
    database meanwhile. Sync starts first, so a sync_url holding a password is refused before any
    setting reaches the log."""
    with sync_in_background(settings):
        _run_mode(settings, mode, until_idle, duration_s)


def _warn_other_device(db_path: Path, device_id: str) -> None:
    """Say so when the database's newest rows came from another device id: the user may have
    renamed the recorder on purpose, but a wrong id splits one recorder in two in the fleet."""
    if not Path(db_path).is_file():
        return
    try:
        stored = newest_device_id(Path(db_path))
    except sqlite3.Error:
        return   # opening it says what is wrong, in its own words
    if stored is not None and stored != device_id:
        log.warning("%s: its newest rows were stored by device %r, these will be stored as %r: the fleet "
                    "counts them as two recorders (give --device-id %s, or set device_id, to continue the first)",
                    shown(db_path), shown(stored), shown(device_id), shown(stored))


def _wait_for_root(root: Path | None, every_s: float) -> bool:
    """The service (``edgemon run``) waits for a watched directory that is not there yet, a card
    not yet mounted, as a running watch waits for one that goes away: it exited at once, and
    systemd restarted it every 15 s, a journal of errors a day. False when stopped meanwhile.
    (``edgemon watch`` on the command line still says so and exits: a typo, most likely.) It looks
    every ``every_s`` seconds (the rescan interval)."""
    if root is None:
        return True   # the settings' own error says what is missing
    try:
        check_root(root)
        return True
    except WatchRootError as exc:
        if Path(root).exists():   # not a directory, or unreadable: no wait mends that
            raise
        log.warning("%s; waiting for it (a card not yet mounted?), looking every %g s", exc, every_s)
    if _wait_until(lambda: Path(root).is_dir(), f"waiting for {root}", every_s):
        log.info("%s is there now: watching it", shown(root))
        return True
    return False


def _wait_for_room(db_path: Path, every_s: float) -> bool:
    """The service waits while the disk holding its database has no room at all: SQLite cannot
    even check the database then (a disk I/O error, and systemd restarting the unit every 15 s).
    With a little room it starts and holds new work itself (``[disk]``). False when stopped."""
    def room() -> bool:
        return free_bytes(db_path) >= MIN_ROOM_BYTES

    if room():
        return True
    log.warning("the disk holding %s is full (%d bytes free): waiting for room (free some space on it), looking "
                "every %g s", shown(db_path), free_bytes(db_path), every_s)
    if _wait_until(room, f"disk full: waiting for room for {db_path}", every_s):
        log.info("the disk holding %s has room again: starting", shown(db_path))
        return True
    return False


def _wait_for_device(spec, every_s: float) -> bool:
    """The service (``edgemon run`` listening) waits for a microphone that is not there yet (not
    plugged in, its USB hub not powered yet), as it waits for a card not yet mounted: it exited,
    and systemd restarted it every 15 s for as long (a review). A spec that matches several
    devices is refused, since no wait mends it. False when stopped meanwhile."""
    from edgemon.live.capture import DeviceNotFoundError, reinitialise_portaudio, resolve_device, sd

    try:
        resolve_device(spec)
        return True
    except DeviceNotFoundError as exc:
        if "matches several" in str(exc):
            raise
        log.warning("%s; waiting for it (a microphone not plugged in yet?), looking every %g s", exc, every_s)

    def there() -> bool:
        try:
            reinitialise_portaudio()   # PortAudio lists the devices of its start only
            resolve_device(spec)
            return True
        except (DeviceNotFoundError, sd.PortAudioError):
            return False

    if _wait_until(there, f"waiting for input device {spec or '(default)'}", every_s):
        log.info("input device %s is there now: listening", spec or "(default)")
        return True
    return False


def _wait_until(ready: Callable[[], bool], status: str, every_s: float) -> bool:
    """Wait for ``ready()`` as a service: READY with ``status`` for systemd, watchdog pings while
    alive, a look every ``every_s`` seconds (at least 0.5). False when stopped by a signal."""
    notifier = Notifier.from_env()
    notifier.ready(status=status)
    ping = watchdog_interval_s()
    with stop_on_signals(status) as stop:
        while not stop.wait(max(0.5, min(every_s, ping or every_s))):   # rescan_s 0 spun a core
            notifier.watchdog()   # alive and waiting: nothing has hung
            if ready():
                return True
    return False


def _run_mode(settings: Settings, mode: str | None, until_idle: bool, duration_s: float | None) -> None:
    settings.log(log)
    service = settings.service
    _warn_other_device(service.db, service.device_id)
    if (mode or service.mode) == "watch":
        if mode is None and not until_idle and not (_wait_for_root(service.directory, service.rescan_s)
                                                    and _wait_for_room(service.db, service.rescan_s)):
            return   # stopped while waiting for the directory or for room
        run_watch(service.watch_config(until_idle), service.db, service.models, service.threads,
                  service.health_config(), service.disk_budget())
    else:
        # Here, not at the top: listen loads PortAudio (sounddevice), which watch mode never needs.
        from edgemon.live.capture import resolve_device
        from edgemon.live.threads import listen_main

        listen = service.listen_config(duration_s)
        if mode is None:
            if not _wait_for_device(listen.capture.device, service.rescan_s):
                return   # stopped while waiting for the microphone
        else:
            resolve_device(listen.capture.device)   # a wrong --device leaves no database or lock behind
        refuse_another_file(service.db)
        if mode is None and not _wait_for_room(service.db, service.rescan_s):
            return   # stopped while waiting for room
        with hold_database(service.db), listen_health(service.db, service.health_config()) as held:
            try:
                listen_main(listen, service.db, service.models, service.threads,
                            functools.partial(ListenHeartbeats, service.db, device_id=listen.device_id,
                                              every_s=service.heartbeat_s), on_writer_retry=held.retried)
            except BundleError as exc:   # as in watch: `status` says why the unit is not listening
                record_refusal(service.db, "listen", service.device_id, str(exc))
                raise
