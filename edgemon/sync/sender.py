"""Send the recorder's rows to the fleet's PostgreSQL database, exactly once, through any outage.

A session: connect, migrate the fleet schema if needed, take the server-side lock of this
database, register its metadata, then send batches from the outbox after the sequence number the
server acknowledged. Each batch's rows and its acknowledgement commit in one server transaction;
only then does the local cursor move. A crash, a lost connection or a lost acknowledgement at any
point resends at most one batch, which the upsert by natural key absorbs. When sessions run, and
how failed ones are retried: ``edgemon.sync.service``.

Batches adapt to the link: a batch slower than ``batch_target_s`` halves the next one, a quick one
doubles it, between ``min_batch_rows`` and ``max_batch_rows``; memory stays bounded by one batch
whatever the backlog.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.status import collect_status
from edgemon.sync import fleetdb
from edgemon.sync.fleetdb import BusyError, DeviceInfo
from edgemon.sync.outbox import IdentityMoved, Outbox
from edgemon.utc import utc_iso

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SnapshotConfig:
    """What a session's status snapshot reads, as `edgemon status` does: the watched ``directory``
    (for the backlog on disk; None: the ledger alone), ``heartbeat_s`` (how old a heartbeat may be
    for 'running') and ``min_free_mb`` (the low-disk watermark, MB)."""

    directory: str | None = None
    heartbeat_s: float = 300.0
    min_free_mb: float | None = None


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """``url``: the fleet database (postgresql://, no password). Rows per batch start at
    ``batch_rows`` and adapt to keep a batch near ``batch_target_s`` seconds. ``interval_s``:
    seconds between sessions of the service; failed sessions back off from ``backoff_min_s``
    doubling to ``backoff_max_s``. ``retry_for_s``: how long a one-shot ``edgemon sync`` keeps
    retrying an unreachable server before it gives up (0: once). ``snapshot``: send the
    recorder's status at the end of each session (None: do not). ``daemons_bundle``: register the
    bundle of the database's newest heartbeat (a one-shot sync, maybe from a laptop without the
    recorder's settings), not the settings' (the service's own loop: it runs them, and its first
    session starts before the daemon's first heartbeat, so the newest is the last run's)."""

    url: str
    interval_s: float = 900.0
    batch_rows: int = 500
    min_batch_rows: int = 20
    max_batch_rows: int = 5000
    batch_target_s: float = 5.0
    backoff_min_s: float = 5.0
    backoff_max_s: float = 1800.0
    retry_for_s: float = 0.0
    snapshot: SnapshotConfig | None = SnapshotConfig()
    daemons_bundle: bool = True


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """One session: ``changes`` sent (rows and tombstones) in ``batches``, the sequence number the
    server holds now, what is left (``backlog``), and databases clashing on the device id."""

    target: str
    changes: int
    batches: int
    acked_seq: int
    backlog: int
    seconds: float
    clashes: tuple[str, ...] = ()

    def describe(self) -> str:
        line = (f"synced {self.changes} change(s) in {self.batches} batch(es) to {self.target} in "
                f"{self.seconds:.1f} s; acknowledged up to {self.acked_seq}, backlog {self.backlog}")
        if self.clashes:
            line += f"; WARNING: device id also used by database(s) {', '.join(self.clashes)}"
        return line


@dataclasses.dataclass
class Sent:
    """What sessions committed on the server so far, counted as they go (a session that fails
    half-way has still sent its committed batches)."""

    changes: int = 0
    batches: int = 0


def sync_once(db_path: str | Path, info: DeviceInfo, config: SyncConfig,
              stop: threading.Event | None = None, sent: Sent | None = None) -> SyncResult:
    """One session: send every change of the database at ``db_path`` the server lacks, or until
    ``stop`` is set. Raises a FleetDbError subclass (UnreachableError: worth retrying) or
    OutboxError; what was committed before the error stays committed on both sides (and counted
    in ``sent``, when given)."""
    started = time.monotonic()
    sent = Sent() if sent is None else sent
    before = dataclasses.replace(sent)   # this session's counts are what it adds
    target = fleetdb.target_name(fleetdb.check_url(config.url))
    # Around the whole block: closing a connection the server dropped raises too.
    try:
        with Outbox(db_path) as outbox, fleetdb.connect(config.url) as conn:
            info = dataclasses.replace(info, db_uuid=outbox.db_uuid, disk_free_mb=_free_mb(Path(db_path)),
                                       forked_from=outbox.forked_from(),
                                       **(_running_bundle(outbox, info) if config.daemons_bundle else {}))
            fleetdb.migrate(conn)
            info, token = _own_lineage(conn, outbox, target, info)
            held = fleetdb.prepare_staging(conn)
            for table in fleetdb.ADDED_BY_REVISION:   # rows a server lacking the table let go by
                if table in held:
                    outbox.send_again(table)
                else:
                    outbox.hold_for_later(table)
            for table, columns in fleetdb.ADDED_COLUMNS.items():   # and rows sent without a column
                for column in columns:
                    if column in held.get(table, ()):
                        outbox.send_again(table, column)
                    else:
                        outbox.hold_for_later(table, column)
            acked, waiting = fleetdb.register(conn, info, outbox.waiting, utc_iso(dt.datetime.now(dt.timezone.utc)))
            if outbox.cursor(target) > acked:
                log.warning("%s holds less than it acknowledged before (restored from a backup?): "
                            "resending from %d", target, acked)
            if outbox.pruned_behind(acked):
                log.warning("%s was forgotten (--forget-target) and the change log was pruned meanwhile: rows "
                            "deleted here since it last synced (detections re-analysed away) may stay on it", target)
            rows = config.batch_rows
            while stop is None or not stop.is_set():
                batch = outbox.batch(acked, rows)
                if batch is None:
                    break
                t0 = time.monotonic()
                offered = outbox.offer(target, batch.last_seq)   # before sending: a lost ack still matches
                waiting = max(0, waiting - batch.size)   # the views' backlog: acked + waiting (fleetdb.register)
                fleetdb.apply_batch(conn, info.db_uuid, batch, batch.last_seq + waiting, offered, token, held)
                outbox.advance(target, batch.last_seq)   # only after the server committed
                acked, token = batch.last_seq, offered
                sent.changes, sent.batches = sent.changes + batch.size, sent.batches + 1
                rows = _next_rows(rows, time.monotonic() - t0, config)
            backlog = outbox.waiting(acked)
            outbox.prune()
            _say_lagging(outbox, target)
            if config.snapshot is not None:
                _send_snapshot(conn, Path(db_path), info, config.snapshot)
            # After the batches, so that this database's own heartbeats are on the server too.
            found = tuple(fleetdb.clashes(conn, info))
            if found:
                log.warning("device id %r is also used by database(s) %s with overlapping heartbeats: "
                            "two recorders with one id? Their rows are kept apart by database UUID",
                            info.device_id, ", ".join(found))
            # Released now, not only at close: the server ends a closed session asynchronously, and
            # a sync started right after this one was refused as "another sync ... is running".
            fleetdb.unlock_database(conn, info.db_uuid)
    except fleetdb.DRIVER_ERRORS as e:
        raise fleetdb.classify(e, target) from None
    return SyncResult(target, sent.changes - before.changes, sent.batches - before.batches, acked, backlog,
                      time.monotonic() - started, found)


LAGGING_NOTICE_DAYS = 30


def _say_lagging(outbox: Outbox, target: str) -> None:
    """Name the targets that keep the change log's deletions while they no longer sync (a server
    retired, or this one under an old spelling of its URL): the log grows by every detection
    re-analysed away until they sync again or are forgotten (a review saw 75 kept after three
    rounds). Their age is read on the recorder's clock, for this line only."""
    cutoff = utc_iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=LAGGING_NOTICE_DAYS))
    idle = [(name, at) for name, _, at in outbox.lagging_targets(target) if at < cutoff]
    if idle:
        log.warning("sync target(s) not synced for over %d days keep this database's deletions for them: %s; if one "
                    "is retired, or is this server under another spelling of its URL, `edgemon sync "
                    "--forget-target TARGET` lets them go", LAGGING_NOTICE_DAYS,
                    "; ".join(f"{shown(name)} (last {at[:10]})" for name, at in idle))


def _own_lineage(conn, outbox: Outbox, target: str, info: DeviceInfo) -> tuple[DeviceInfo, str | None]:
    """Lock this database's rows on the server and check that what the server acknowledged for
    its UUID is part of this database's own history; returns the info to sync under and the
    server's acknowledgement token (the compare-and-set value of the first batch).

    Sequence numbers are only unique within one history. A database restored from an older
    backup, or a cloned SD card, keeps its UUID and numbers new changes again from where its copy
    stopped, so the server would take them for changes it already holds and skip them. Such a
    database lacks the token of the server's last acknowledgement (or runs under another device
    id than the UUID was registered to); it then starts a new lineage (``Outbox.fork``: a new
    UUID) and sends all its rows again. The server keeps the old UUID's rows, so nothing it held
    is lost, and the natural keys let the fleet views count each row once per device.
    """
    _lock(conn, outbox, info.db_uuid)
    if outbox.identity_moved():
        # A session that read the same UUID forked it and let go of its lock: it syncs the new
        # lineage now, and forking again would leave a lineage that never syncs.
        fleetdb.unlock_database(conn, info.db_uuid)
        raise BusyError(f"{shown(outbox.path)}: another sync gave it a new sync identity just now, and is running")
    held = fleetdb.acknowledged(conn, info.db_uuid)
    reason = _diverged(held, outbox, info)
    if reason is None:
        return info, None if held is None else held.acked_token
    old = info.db_uuid
    try:
        new = outbox.fork()
    except IdentityMoved as e:
        raise BusyError(str(e)) from None
    log.warning("%s: %s; this database now syncs as %s and sends all its rows again (%s keeps the rows "
                "of %s)", shown(outbox.path), reason, new, target, old)
    fleetdb.unlock_database(conn, old)
    _lock(conn, outbox, new)
    return dataclasses.replace(info, db_uuid=new, forked_from=old), None


def _lock(conn, outbox: Outbox, db_uuid: str) -> None:
    """``fleetdb.lock_database``, its refusal naming the file (the UUID alone tells a person nothing)."""
    try:
        fleetdb.lock_database(conn, db_uuid)
    except BusyError as e:
        raise BusyError(f"{shown(outbox.path)}: {e}") from None


def _diverged(held: fleetdb.Acknowledged | None, outbox: Outbox, info: DeviceInfo) -> str | None:
    """Why the server's record of this database's UUID is not this database's history (None: it is)."""
    if held is None:
        return None
    if held.device_id != info.device_id:
        # Device id decides: a UUID belongs to one recorder; a cloned card given a new id (or a
        # renamed recorder) is never merged into the rows of the id it was registered under.
        return (f"it synced as {info.db_uuid} for device {shown(held.device_id)!r}, now as device "
                f"{shown(info.device_id)!r} (a cloned card, or a renamed recorder)")
    if held.acked_token is not None and not outbox.offered(held.acked_token):
        return (f"the server acknowledged changes up to {held.acked_seq} that this database never sent "
                f"(restored from an older backup, or a cloned card that synced elsewhere)")
    if held.acked_token is None and held.acked_seq > outbox.high_seq():
        # Acknowledged before tokens existed: only a shorter history can be told apart.
        return (f"the server acknowledged changes up to {held.acked_seq}, beyond this database's "
                f"{outbox.high_seq()} (restored from an older backup?)")
    return None


def _send_snapshot(conn, db_path: Path, info: DeviceInfo, snapshot: SnapshotConfig) -> None:
    """Upsert the recorder's status (``edgemon status --json``) as its one snapshot row. Without
    the integrity check: a quick_check of a season's database every session would cost a Pi
    minutes. A status that cannot be read is logged and skipped: the rows were sent anyway."""
    taken = utc_iso(dt.datetime.now(dt.timezone.utc))
    try:
        report = collect_status(db_path, directory=snapshot.directory, heartbeat_s=snapshot.heartbeat_s,
                                min_free_mb=snapshot.min_free_mb, integrity=False)
    except (EdgemonError, OSError, sqlite3.Error) as e:
        log.warning("status snapshot not sent: %s", e)
        return
    fleetdb.record_status(conn, info, report, taken)


def _next_rows(rows: int, seconds: float, config: SyncConfig) -> int:
    if seconds > 2 * config.batch_target_s:
        return max(config.min_batch_rows, rows // 2)
    if seconds < config.batch_target_s / 2:
        return min(config.max_batch_rows, rows * 2)
    return rows


def _running_bundle(outbox: Outbox, info: DeviceInfo) -> dict:
    """The bundle the recorder's daemon ran (``Outbox.running_bundle``), with the manifest the
    settings give when the database never recorded it (``Store.record_bundle`` refused on a full
    disk) and they name that very bundle: else its id went with no manifest, wiping the server's."""
    running = outbox.running_bundle()
    if running.get("bundle_manifest") is None and running.get("bundle_id") == info.bundle_id:
        running.pop("bundle_manifest", None)
    return running


def _free_mb(db_path: Path) -> float | None:
    try:
        return round(shutil.disk_usage(db_path.resolve().parent).free / 2**20, 1)
    except OSError:
        return None


