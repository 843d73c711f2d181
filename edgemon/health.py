"""Health of the running daemon: systemd notifications, a watchdog that only pings while the
pipeline moves, and heartbeat rows in the database.

sd_notify(3) is spoken here in plain Python (no libsystemd binding): newline-separated
``KEY=value`` fields in one datagram to the unix socket named by ``$NOTIFY_SOCKET`` ('@' starts
an abstract name). Outside systemd, or without ``Type=notify``, the variable is absent and every
notification is a no-op.

Watchdog rule: ``WATCHDOG=1`` is sent every half ``WatchdogSec`` only while the pipeline's own
progress mark (a monotonic time the working thread sets as it completes a step: a loop turn, a
decoded block, a stored file) is younger than ``progress_timeout_s``. A timer that pinged
regardless would keep a hung daemon (a read stuck on a failing SD card, a stuck model) alive
for ever; withholding the ping lets systemd kill it (SIGABRT: Python prints every thread's
stack) and restart it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edgemon.amounts import audio_amount
from edgemon.storage.disk_budget import MB
from edgemon.storage.readonly import connect_read_only
from edgemon.storage.rows import Heartbeat
from edgemon.storage.store import Store
from edgemon.utc import UTC

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HealthConfig:
    """``heartbeat_s``: seconds between heartbeat rows; ``progress_timeout_s``: pipeline silence
    after which watchdog pings are withheld (systemd then restarts the unit)."""

    heartbeat_s: float = 300.0
    progress_timeout_s: float = 240.0


class Notifier:
    """Sends sd_notify messages to ``address`` (a socket path, or '@name' for an abstract one);
    with no address every call does nothing and returns False. Safe to call from any thread."""

    def __init__(self, address: str | None):
        self.address = address or None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET"))

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` ('READY=1', 'STATUS=...') as one message; True when it was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(f.replace("\n", " ") for f in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, target)
        except OSError as exc:  # systemd gone or a bad address: health reporting must never stop the work
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval_s(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between pings systemd expects (half its ``WatchdogSec``, from ``$WATCHDOG_USEC``),
    or None when no watchdog is armed for this process (``$WATCHDOG_PID`` names another)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    watched = env.get("WATCHDOG_PID")
    if usec <= 0 or (watched and watched != str(os.getpid() if pid is None else pid)):
        return None
    return usec / 2e6


class Watchdog:
    """Pings systemd's watchdog every ``interval_s`` while ``progress()`` (a monotonic time) is at
    most ``timeout_s`` old; otherwise withholds the ping and says why, once per stall.

    Use as a context manager: a thread runs ``check`` from ``__enter__`` to ``__exit__``; with no
    interval (no watchdog armed) no thread is started.
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], float], timeout_s: float,
                 interval_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.notifier = notifier
        self.progress = progress
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stalled = False
        self.pings = 0

    def check(self) -> bool:
        """One decision: ping (True) or withhold (False)."""
        age = self._clock() - self.progress()
        if age <= self.timeout_s:
            if self.stalled:
                log.info("pipeline moving again; watchdog pings resume")
                self.stalled = False
            self.notifier.watchdog()
            self.pings += 1
            return True
        if not self.stalled:
            log.error("pipeline made no progress for %.0f s; withholding watchdog pings so systemd "
                      "restarts edgemon", age)
            self.notifier.status(f"stalled: no progress for {age:.0f} s")
            self.stalled = True
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()

    def __enter__(self) -> Watchdog:
        if self.interval_s:
            self._thread = threading.Thread(target=self._run, name="edgemon-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def rss_mb() -> float | None:
    """Resident memory of this process in MB (Linux), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class Heartbeats:
    """Writes a ``Heartbeat`` row every ``every_s`` seconds (and at once when the state changes).

    Must be called on the thread that owns ``store``. A refused write (disk full) is logged once
    per episode and never raised: a heartbeat is a record, not a reason to stop.
    """

    def __init__(self, store: Store, *, mode: str, device_id: str, bundle_id: str | None, every_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC)):
        self.store = store
        self.mode, self.device_id, self.bundle_id = mode, device_id, bundle_id
        self.every_s = every_s
        self._clock, self._wall = clock, wall
        self.run_id = uuid.uuid4().hex[:12]
        self.started = clock()
        self.started_utc = wall()
        self._next = self.started
        self._state: str | None = None
        self._failing = False

    def uptime_s(self) -> float:
        return self._clock() - self.started

    def due(self, state: str) -> bool:
        return self._clock() >= self._next or state != self._state

    def beat(self, state: str = "ok", *, files_done: int = 0, audio_s: float = 0.0, busy_s: float = 0.0,
             disk_free_mb: float | None = None, note: str | None = None, force: bool = False) -> bool:
        """Write a row if one is due (or ``force``); True when a row was stored."""
        if not force and not self.due(state):
            return False
        self._next = self._clock() + self.every_s
        self._state = state
        beat = Heartbeat(run_id=self.run_id, mode=self.mode, device_id=self.device_id, at_utc=self._wall(),
                         started_utc=self.started_utc, uptime_s=round(self.uptime_s(), 3), state=state,
                         bundle_id=self.bundle_id, files_done=files_done, audio_s=round(audio_s, 3),
                         busy_s=round(busy_s, 3),
                         disk_free_mb=None if disk_free_mb is None else round(disk_free_mb, 1),
                         rss_mb=None if (rss := rss_mb()) is None else round(rss, 1), note=note)
        try:
            self.store.add_heartbeat(beat)
        except sqlite3.Error as exc:
            if not self._failing:
                log.warning("heartbeat not stored: %s", exc)
                self._failing = True
            return False
        self._failing = False
        return True


class WatchMonitor:
    """The service side of ``edgemon watch``, in a few calls from the daemon and the watch loop.
    It observes; it never decides whether work goes on (the watcher asks its disk budget itself).

    ``tick(watcher)`` runs on the watch loop's thread (which owns the store) at every turn and
    every decoded block: it writes heartbeats and updates systemd's STATUS line with the
    watcher's state (``ok``, ``hold_disk``, ``hold_store``) and free space.
    ``running(watcher)`` wraps ``watcher.run``: READY=1, watchdog pings on
    ``watcher.last_progress``, and STOPPING=1 with a last heartbeat at the end.
    """

    def __init__(self, store: Store, db_path: str | Path, *, device_id: str, bundle_id: str | None,
                 config: HealthConfig = HealthConfig(), notifier: Notifier | None = None,
                 env: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.db_path = Path(db_path)
        self.notifier = notifier if notifier is not None else Notifier.from_env(env)
        self.interval_s = watchdog_interval_s(env)
        self.heartbeats = Heartbeats(store, mode="watch", device_id=device_id, bundle_id=bundle_id,
                                     every_s=config.heartbeat_s, clock=clock)
        self._clock = clock
        self._status_at: float | None = None
        self.state = "ok"

    def tick(self, watcher) -> None:
        """Heartbeat and status when due."""
        self.state = watcher.state
        if self.heartbeats.due(self.state):
            self.heartbeats.beat(self.state, **self._counters(watcher), note=watcher.store_error)
            self._status(watcher)

    @staticmethod
    def _free_mb(watcher) -> float | None:
        return None if watcher.disk is None else watcher.disk.free_mb

    def _counters(self, watcher) -> dict:
        return dict(files_done=watcher.processed, audio_s=watcher.audio_s,
                    busy_s=watcher.busy_s, disk_free_mb=self._free_mb(watcher))

    def _status(self, watcher) -> None:
        audio_s, busy_s = watcher.audio_s, watcher.busy_s
        rtf = f", {audio_s / busy_s:.0f}x real time" if busy_s > 0 else ""
        held = {"hold_disk": f"; HOLDING: {self._free_mb(watcher) or 0:.0f} MB free",
                "hold_store": "; HOLDING: database refused a write"}.get(self.state, "")
        self.notifier.status(f"{watcher.processed} file(s), {audio_amount(audio_s)} of audio{rtf}{held}")

    @contextmanager
    def running(self, watcher) -> Iterator[None]:
        self.heartbeats.beat("ok", force=True, **self._counters(watcher), note="started")
        self.notifier.ready(f"watching {watcher.root}")
        try:
            with Watchdog(self.notifier, lambda: watcher.last_progress, self.config.progress_timeout_s,
                          self.interval_s, self._clock):
                yield
        finally:
            self.notifier.stopping("stopping")
            self.heartbeats.beat("stopping", force=True, **self._counters(watcher))


NO_AUDIO = "no_audio"   # a listener's heartbeat state while its microphone gives nothing


class ListenHeartbeats:
    """Heartbeat rows for ``edgemon listen``, as ``watch`` writes them (``edgemon status`` says
    whether the service runs, ``sync`` and the fleet see the device id and a clash of two
    recorders under one id). Called by the store writer's thread, which owns the store:
    ``tick`` between jobs, ``last`` as it stops. ``counters()`` gives the seconds of audio
    analysed so far; free space is measured beside the database."""

    def __init__(self, db_path: str | Path, *, device_id: str, bundle_id: str | None, every_s: float,
                 counters: Callable[[], dict], hearing: Callable[[], str | None] = lambda: None):
        self.db_path = Path(db_path)
        self.device_id, self.bundle_id, self.every_s = device_id, bundle_id, every_s
        self.counters = counters
        # None while audio comes; else why not (the capture's state): the beat is then "no_audio",
        # at once, and status and the fleet say so (every beat said "ok" through an unplugged
        # microphone, a review).
        self.hearing = hearing
        self.beats: Heartbeats | None = None

    def _values(self) -> dict:
        try:
            free = shutil.disk_usage(self.db_path.resolve().parent).free / MB
        except OSError:
            free = None
        return {**self.counters(), "disk_free_mb": free}

    def tick(self, store: Store) -> None:
        if self.beats is None:
            self.beats = Heartbeats(store, mode="listen", device_id=self.device_id, bundle_id=self.bundle_id,
                                    every_s=self.every_s)
            self.beats.beat("ok", force=True, note="started", **self._values())
        else:
            silent = self.hearing()
            state = "ok" if silent is None else NO_AUDIO
            if self.beats.due(state):
                self.beats.beat(state, note=None if silent is None else f"no audio from the microphone ({silent})",
                                **self._values())

    def last(self, store: Store) -> None:
        if self.beats is not None:
            self.beats.beat("stopping", force=True, **self._values())


class CommitProgress:
    """A progress mark for a pipeline whose writer lives elsewhere: the monotonic time at which
    another connection to ``db_path`` was last seen to commit live coverage (the newest coverage
    minute, its seconds or its ``updated_at`` changed).

    In listen mode coverage rows are committed every few seconds, with or without a working
    device, so they stop only when the analysis or the writer hangs. Other commits do not count:
    the writer's own heartbeats kept a hung analysis looking alive (a review). Call from one
    thread (the watchdog's): the read-only connection is opened there, lazily.
    """

    def __init__(self, db_path: str | Path, clock: Callable[[], float] = time.monotonic):
        self.db_path = Path(db_path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._seen = False
        self._mark: tuple | None = None
        self.last = clock()

    def __call__(self) -> float:
        try:
            if self._conn is None:
                if not self.db_path.is_file():
                    return self.last
                self._conn = connect_read_only(self.db_path, timeout_s=5.0, check_same_thread=False)
            # Its seconds too: two commits of one minute in the same second of updated_at were one mark.
            mark = self._conn.execute(
                "SELECT minute_utc, updated_at, end_utc, analysed_s + lost_overflow_s + lost_dropped_s + "
                "lost_device_s + lost_daemon_s FROM coverage ORDER BY minute_utc DESC LIMIT 1").fetchone()
        except sqlite3.Error:   # locked, or no coverage table yet
            return self.last
        mark = None if mark is None else tuple(mark)
        if self._seen and mark != self._mark:
            self.last = self._clock()
        self._seen, self._mark = True, mark
        return self.last

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class WriterHold:
    """``CommitProgress``, and the last time the live writer retried a write the database refused
    (a full disk, another process's lock): a writer holding what was heard until it can be
    stored is not hung. Without it the watchdog's pings stopped after ``progress_timeout_s``,
    systemd killed the unit with SIGABRT, and everything held was lost (a review). A hang inside
    a write, or in the analysis, still stops the pings: neither retries."""

    def __init__(self, commits: CommitProgress, clock: Callable[[], float] = time.monotonic):
        self.commits = commits
        self._clock = clock
        self._retried: float | None = None

    def retried(self) -> None:
        """Called by the writer at each refused write it will try again."""
        self._retried = self._clock()

    def __call__(self) -> float:
        seen = self.commits()
        return seen if self._retried is None else max(seen, self._retried)


@contextmanager
def listen_health(db_path: str | Path, config: HealthConfig = HealthConfig(),
                  env: Mapping[str, str] = os.environ) -> Iterator[WriterHold]:
    """READY=1, watchdog pings while the listener commits to ``db_path`` (or its writer retries a
    refused write: pass the ``WriterHold`` yielded to ``listen_main``), STOPPING=1 at the end: the
    systemd side of ``edgemon listen``, around ``listen_main``."""
    notifier = Notifier.from_env(env)
    commits = CommitProgress(db_path)
    progress = WriterHold(commits)
    notifier.ready("listening")
    try:
        with Watchdog(notifier, progress, config.progress_timeout_s, watchdog_interval_s(env)):
            yield progress
    finally:
        notifier.stopping("stopping")
        commits.close()
