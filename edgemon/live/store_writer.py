"""The writer thread of ``edgemon listen``: the one thread that writes the live path's
detections and coverage, fed by a bounded queue of jobs (watch mode has none: its watcher writes)."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edgemon.storage.readonly import error_code
from edgemon.storage.recovery import CORRUPTION_CODES
from edgemon.storage.store import DatabaseReplaced, Store, StoreError

log = logging.getLogger(__name__)

# Shutting down, the writes left get this many seconds in all, each retried this soon, so that the
# writer ends inside the listener's wait for it (``threads.JOIN_TIMEOUT_S``, 60 s) even when the
# write under way when stop came waited out the full busy timeout (30 s).
EXIT_WRITES_S = 20.0
EXIT_RETRY_S = 2.0


class WriterBeats(Protocol):
    """What writes heartbeat rows on the writer's thread (``edgemon.health.ListenHeartbeats``)."""

    def tick(self, store: Store) -> None: ...

    def last(self, store: Store) -> None: ...


class StoreWriter:
    """The database's one writer: jobs (functions of the Store) arrive on a bounded queue.

    A job that fails on a database error is retried every ``retry_s`` (a full disk may be
    cleared), so nothing is dropped while the queue has room; jobs that find it full are counted
    and logged. A damaged database (SQLITE_CORRUPT, SQLITE_NOTADB) is raised, not retried.
    """

    def __init__(self, db_path: Path, maxsize: int = 10_000, retry_s: float = 5.0, retries_at_exit: int = 2,
                 on_retry: Callable[[], None] | None = None):
        self.db_path = Path(db_path)
        self.on_retry = on_retry   # told of each refused write retried (``health.WriterHold``)
        self.jobs: queue.Queue[Callable[[Store], object]] = queue.Queue(maxsize)
        self.retry_s = retry_s
        self.retries_at_exit = retries_at_exit
        self.done = 0
        self.refused = 0
        self.lost_at_exit = 0
        self.closed = False   # run() has returned: a job submitted now is never written
        self._lock = threading.Lock()          # closing, and submitting, as one step each
        self._exit_deadline: float | None = None   # monotonic: stopping, writes after it are not tried

    def submit(self, job: Callable[[Store], object]) -> None:
        with self._lock:
            if self.closed:   # an analysis thread that outlived the writer (its drain ran past the wait)
                self.lost_at_exit += 1
                log.error("store writer: already stopped; one write lost (%d so far)", self.lost_at_exit)
                return
            try:
                self.jobs.put_nowait(job)
                return
            except queue.Full:
                self.refused += 1
        log.error("store writer: %d jobs waiting, job refused (%d so far)", self.jobs.maxsize, self.refused)

    def run(self, finish: threading.Event, beats: WriterBeats | None = None) -> None:
        """Write until ``finish`` is set and the queue is empty; ``beats`` writes its heartbeat
        rows here, on the thread that owns the store, between jobs."""
        try:
            with Store(self.db_path) as store:
                while not (finish.is_set() and self.jobs.empty()):
                    if beats is not None:
                        beats.tick(store)
                    try:
                        job = self.jobs.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    self._do(store, job, finish)
                if beats is not None:
                    beats.last(store)
        finally:
            with self._lock:
                self.closed = True
                while not self.jobs.empty():   # left by an error: counted, not silently dropped
                    self.jobs.get_nowait()
                    self.lost_at_exit += 1

    def _do(self, store: Store, job: Callable[[Store], object], finish: threading.Event) -> None:
        failures = 0
        while True:
            if self._exit_deadline is not None and time.monotonic() >= self._exit_deadline:   # set once stopping
                # Stopping, the database refusing, the writer's budget spent: the rest are given up
                # untried, counted (each waited out its tries before: a review saw 20 writes queued
                # under another process's lock take 141 s, past the listener's wait).
                self._give_up()
                return
            try:
                job(store)
                self.done += 1
                return
            except (sqlite3.Error, StoreError) as exc:
                if isinstance(exc, DatabaseReplaced) or (isinstance(exc, sqlite3.Error) and
                                                         error_code(exc) in CORRUPTION_CODES):
                    # Damaged, or deleted under it: no retry mends it. The listener stops, and the
                    # service restarts into open_or_recover, which moves a damaged one aside (before,
                    # every write failed for good) or makes the deleted one anew.
                    raise
                failures += 1
                log.error("store writer: %s: %s (retrying in %.0f s)", self.db_path, exc, self.retry_s)
                # Shutting down, the database still refuses: after one write given up, the rest are
                # given up at their first failure, counted, rather than each waiting out its retries
                # (a full disk made the writer outlive the listener's 60 s wait, uncounted).
                if finish.is_set():
                    if failures > self.retries_at_exit or self.lost_at_exit:
                        self._give_up()
                        return
                    self._shorten_tries(store)
                if self.on_retry is not None:
                    self.on_retry()
                time.sleep(min(self.retry_s, EXIT_RETRY_S) if finish.is_set() else self.retry_s)

    def _give_up(self) -> None:
        with self._lock:
            self.lost_at_exit += 1
        log.error("store writer: shutting down; one write lost (%d so far)", self.lost_at_exit)

    def _shorten_tries(self, store: Store) -> None:
        """Stopping, a write refused: the writes left get ``EXIT_WRITES_S`` from now in all, each
        try waiting at most what is left of it for another process's lock (not 30 s). Writes that
        succeed are never cut short: a long queue on a slow card is written whole."""
        now = time.monotonic()
        if self._exit_deadline is None:
            self._exit_deadline = now + EXIT_WRITES_S
        left = max(0.001, self._exit_deadline - now)
        store.db.execute(f"PRAGMA busy_timeout = {int(left * 1000) + 1}")
