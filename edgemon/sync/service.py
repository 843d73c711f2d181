"""When sessions run: the service's loop (a session every interval, failures backing off with
jitter, so twenty recorders coming back together do not retry in step), its thread beside the
daemon, and the one-shot ``edgemon sync`` retried while the server is unreachable. One session is
``sender.sync_once``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from edgemon import __version__
from edgemon.analysis.bundle import MANIFEST, default_bundle_path
from edgemon.config import ConfigError, Settings, where_from
from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.storage.readonly import connect_read_only, newest_device_id
from edgemon.sync import fleetdb
from edgemon.sync.fleetdb import (AuthError, BusyError, DeviceInfo, SchemaBehindError, SchemaNewerError, SyncUrlError,
                                  UnreachableError)
from edgemon.sync.outbox import Outbox, OutboxError
from edgemon.sync.sender import Sent, SnapshotConfig, SyncConfig, SyncResult, sync_once

log = logging.getLogger(__name__)


def backoff_s(failures: int, config: SyncConfig, rng: random.Random = random.Random()) -> float:
    """Wait after ``failures`` consecutive failed sessions: doubling from the minimum, capped, with
    jitter in [50 %, 100 %] of it."""
    base = min(config.backoff_max_s, config.backoff_min_s * 2 ** max(0, failures - 1))
    return base * rng.uniform(0.5, 1.0)


def device_info(settings: Settings) -> DeviceInfo:
    """The recorder's metadata from the settings in force (``db_uuid`` is filled in by the session)."""
    service = settings.service   # its zone and position were checked as the settings were read
    tz = service.timezone
    manifest_path = Path(service.models or default_bundle_path()) / MANIFEST
    try:
        manifest = manifest_path.read_text()
        bundle_id = json.loads(manifest).get("bundle_id")
    except (OSError, ValueError):
        manifest, bundle_id = None, None  # the daemon reports a broken bundle; sync still sends rows
    plain = json.dumps(settings.as_json(), sort_keys=True, default=str)
    return DeviceInfo(device_id=service.device_id, db_uuid="", latitude=service.latitude,
                      longitude=service.longitude, timezone=tz, bundle_id=bundle_id,
                      bundle_manifest=manifest, edgemon_version=__version__,
                      settings_hash=hashlib.sha256(plain.encode()).hexdigest(),
                      sync_interval_s=service.sync_interval_s, heartbeat_s=service.heartbeat_s)


def sync_with_retries(db_path: str | Path, info: DeviceInfo, config: SyncConfig,
                      sleep=time.sleep, clock=time.monotonic) -> SyncResult:
    """``sync_once``, retried with backoff while the server is unreachable, for up to
    ``config.retry_for_s``, the last try at that time at the latest; then the last error is
    raised. The result counts what every attempt sent, not only the last one's."""
    started = clock()
    deadline, failures, sent = started + config.retry_for_s, 0, Sent()
    while True:
        try:
            result = sync_once(db_path, info, config, sent=sent)
            return dataclasses.replace(result, changes=sent.changes, batches=sent.batches,
                                       seconds=clock() - started)
        except (UnreachableError, BusyError) as e:
            failures += 1
            # A backoff that would overshoot ends in one last try at the deadline (it gave up
            # at 12 s of 20, and a server back at 15 s was missed).
            wait = min(backoff_s(failures, config), deadline - clock())
            if wait <= 0:
                raise
            log.warning("%s; retrying in %.0f s", e, wait)
            sleep(wait)


FIRST_START_GRACE_S = 60.0


def _created(path: Path) -> bool:
    """Whether the detections database at ``path`` exists with its tables (the daemon made it)."""
    try:
        with closing(connect_read_only(path, timeout_s=1.0)) as conn:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'detections'").fetchone() is not None
    except (sqlite3.Error, OSError):
        return False


def run_sync(db_path: str | Path, info: DeviceInfo, config: SyncConfig, stop: threading.Event) -> None:
    """The service's loop: a session every ``interval_s`` until ``stop``; failures back off
    (logged once per episode) and never end the loop: a recorder may be offline for weeks."""
    failures, last, started = 0, None, time.monotonic()
    while not stop.is_set():
        # A unit's first start: the daemon beside creates the database in a moment; until then
        # (a minute at most) there is nothing to send, and nothing to warn about.
        if time.monotonic() - started < FIRST_START_GRACE_S and not _created(Path(db_path)):
            stop.wait(min(config.interval_s, 1.0))
            continue
        try:
            result = sync_once(db_path, info, config, stop)
            if failures or result.changes:
                log.info(result.describe())
            failures, last, wait = 0, None, config.interval_s
        except Exception as e:  # a per-session boundary: the daemon's own work must go on
            failures += 1
            # Wrong credentials, a newer server or one its owner has yet to migrate will not mend
            # themselves soon: try seldom.
            permanent = isinstance(e, (AuthError, SchemaNewerError, SchemaBehindError, SyncUrlError))
            wait = config.backoff_max_s if permanent else backoff_s(failures, config)
            # Once per episode, and again whenever the kind of failure changes.
            if failures == 1 or permanent or type(e) is not type(last):
                # A failure no edgemon error names is a bug: its traceback, or the journal says
                # only its message ("sync failed: 'bundle_id'").
                log.warning("sync failed: %s; next try in %.0f s", e, wait, exc_info=not isinstance(e, EdgemonError))
            last = e
        stop.wait(wait)


def check_sync_url(settings: Settings, url: str | None = None) -> None:
    """``url`` (else the settings' ``sync_url``) as sync will take it: a PostgreSQL URL with no
    password in it, whose named passfile only its owner may read; ConfigError naming where it came
    from, never the URL. Checked where sync starts and by ``edgemon config``, not for every
    command: a broken sync setting must not stop a unit recording or exporting."""
    where = "option --to" if url else where_from("sync_url", settings.sources["sync_url"])
    url = url or settings.values["sync_url"]
    if url is None:
        return
    try:
        fleetdb.check_url(url, passfile=False)
    except SyncUrlError as e:
        raise ConfigError(f"{where}: {e}") from None
    except fleetdb.FleetDbError:   # no driver here: sync itself says so
        pass


SYNC_STOP_WAIT_S = 60.0   # how long the service waits for its sync thread on the way out


@contextmanager
def sync_in_background(settings: Settings) -> Iterator[threading.Thread | None]:
    """Run ``run_sync`` on a thread of its own while the block runs, when ``sync_url`` is set;
    the thread is stopped on the way out and waited for up to ``SYNC_STOP_WAIT_S`` (a session
    checks the stop between batches)."""
    url = settings.service.sync_url
    if url is None:
        yield None
        return
    check_sync_url(settings)  # a bad URL stops the start, in one line naming its source, not a thread later
    config = _sync_config(settings, url, daemons_bundle=False)   # the bundle it is about to run, not the last run's
    own_stop = threading.Event()
    thread = threading.Thread(target=run_sync, name="edgemon-sync", daemon=True,
                              args=(settings.service.db, device_info(settings), config, own_stop))
    thread.start()
    try:
        yield thread
    finally:
        own_stop.set()
        thread.join(timeout=SYNC_STOP_WAIT_S)
        if thread.is_alive():   # a daemon thread: it ends with the process
            log.warning("the sync thread is still in a session %.1f s after it was told to stop (a server that "
                        "stopped answering?); not waiting for it", SYNC_STOP_WAIT_S)


def _sync_config(settings: Settings, url: str, **given) -> SyncConfig:
    """The sync settings in force for ``url``, with ``given`` fields (``SyncConfig``'s) on top."""
    service = settings.service
    snapshot = SnapshotConfig(directory=service.directory, heartbeat_s=service.heartbeat_s,
                              min_free_mb=service.min_free_mb)
    return SyncConfig(url=url, interval_s=service.sync_interval_s, snapshot=snapshot, **given)


def sync_command(settings: Settings, url: str | None, retry_for_s: float = 0.0,
                 batch_rows: int = SyncConfig.batch_rows) -> SyncResult:
    """``edgemon sync``: one session to ``url`` (default: the settings' ``sync_url``) for the
    database and device in ``settings``, retried while the server is unreachable for up to
    ``retry_for_s`` seconds."""
    check_sync_url(settings, url)
    url = url or settings.service.sync_url
    if url is None:
        raise ConfigError("no sync target: give --to postgresql://... or set sync_url in [sync]")
    config = _sync_config(settings, url, retry_for_s=retry_for_s, batch_rows=batch_rows)
    info = device_info(settings)
    _check_device_id(Path(settings.service.db), info.device_id)
    return sync_with_retries(settings.service.db, info, config)


def forget_target(settings: Settings, target: str, to: str | None = None) -> str:
    """``edgemon sync --forget-target``: what was forgotten, as a line. ``to``: the command's
    ``--to``, a target in use too."""
    db_path = Path(settings.service.db)
    if not db_path.is_file():
        raise OutboxError(f"{shown(db_path)}: no detections database there")
    for url, why in ((settings.service.sync_url, "this recorder's sync_url: it is not forgotten while in use "
                                                 "(change sync_url first)"),
                     (to, "the --to given with it: a target is forgotten only once nothing syncs to it")):
        if url and fleetdb.target_name(fleetdb.check_url(url)) == target:
            # Its tokens gone, its next sync would find the server's acknowledgement foreign and
            # send everything again under a new identity (a review).
            raise ConfigError(f"{shown(target)} is {why}")
    with Outbox(db_path) as outbox:
        seq, tokens = outbox.forget_target(target)
        pruned = outbox.prune()
    return (f"forgot sync target {shown(target)} (acknowledged up to change {seq}, {tokens} token(s)); "
            f"{pruned} deletion(s) no target needs any more left the change log")


def _check_device_id(db_path: Path, device_id: str) -> None:
    """A one-shot sync under another id than the recorder stored its rows with would register a
    second recorder for them, and the fleet views (joined on the id) would lose its detections."""
    if not db_path.is_file():
        return  # the session says so, in its own words (as it refuses a file that is not edgemon's)
    try:
        stored = newest_device_id(db_path)
    except sqlite3.Error as e:
        raise OutboxError(f"cannot read detections database {db_path}: {e}") from e
    if stored is not None and stored != device_id:
        raise ConfigError(f"{db_path}: its newest rows were stored by device {stored!r}, not {device_id!r}: "
                          f"give --device-id {stored} (or set device_id), so that the fleet counts them as one recorder")
