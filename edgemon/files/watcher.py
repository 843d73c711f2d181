"""``edgemon watch``: every recording in a recorder's directory becomes detections, once.

File-system events are hints; the ledger in the database is the truth, and a periodic rescan
catches whatever the events missed. A file is taken only when its size and mtime have been stable
for ``settle_s`` and (for WAV and FLAC) its header agrees with its length, since recorders such as
the AudioMoth, and libsndfile's FLAC, write the header last. One thread classifies and writes; the watchdog observer only
enqueues paths. Source recordings are never modified or deleted.

A database write that fails (disk full, a lock held past the busy timeout) rolls back, is not
counted against the file, and holds all work for ``retry_s``; the file is then tried again. Below
the disk budget's lower watermark (``edgemon.storage.disk_budget``) no new file is started until
space comes back. The watcher decides both holds itself; health (``on_tick``) only reports them. The
observer (``edgemon.files.events``) is restarted, with a rescan, when it stops delivering events (a
handler raised, its inotify reader died, the card was unmounted).

What taking a file means (an attempt committed first, a file whose analysis died before analysed in
a child process, the detections committed with the file's ledger row) is ``edgemon.files.analyse_file``;
this module decides which file is taken, and when.

Hostile names and entries are recorded, once: a name that is not UTF-8 is stored escaped
(``safetext.stored_name``); a symlink loop or a dangling link is quarantined like an unreadable
file; a directory the scan cannot read is logged once and listed for ``edgemon status``. Every
name and error logged goes through ``safetext.shown``, so a name cannot forge a log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path
from edgemon.amounts import audio_amount
from edgemon.backoff import Backoff
from edgemon.files.analyse_file import FileAnalysis
from edgemon.files.backlog import BacklogProgress
from edgemon.files.clock_check import say_if_clock_moved
from edgemon.files.completeness import StabilityTracker, header_consistent
from edgemon.files.directory import (Listing, SettledVersions, WatchRootError, check_root, file_version,
                                     iter_audio, mtime_ns, skipped_because, source_of)
from edgemon.files.events import observing, start_observer, stop_observer
from edgemon.files.isolate import Isolated
from edgemon.files.medium import CARD_ERRNOS, CardUnreadableError
from edgemon.files.same_recording import SameRecording, complete_digests, same_recording, undigested_files
from edgemon.safetext import name_from_stored, shown, stored_name
from edgemon.signals import StoppedEarly
from edgemon.storage.disk_budget import HOLD, DiskGuard, DiskHoldError
from edgemon.storage.fingerprint import another_recording
from edgemon.storage.readonly import error_code
from edgemon.storage.store import DatabaseReplaced, Store

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    root: Path
    device_id: str = "edgemon"
    settle_s: float = 5.0          # size and mtime unchanged this long before a file is taken
    incomplete_grace_s: float = 120.0  # a WAV whose header never settles is read as far as it goes
    rescan_s: float = 30.0         # rescan of the directory, whatever the events said
    full_rescan_s: float = 3600.0  # a rescan that also stats the files it took as unchanged (see Watcher.scan)
    block_s: float = 10.0          # decode block: bounds memory for long recordings
    max_attempts: int = 3          # failures before a file is quarantined
    retry_s: float = 60.0          # wait before trying a failed file again
    until_idle: bool = False       # exit once nothing is left to do (tests, one-off backlogs)
    progress_s: float = 60.0       # seconds between backlog progress lines
    clock_zone: dt.tzinfo | None = None   # the recorders' clock zone, for names without an offset (None: UTC)


OBSERVER_RETRY_MAX_S = 3600.0   # an observer that cannot start is tried again at most this far apart
RESCAN_SHARE = 0.1        # of the time, at most, that rescans take (they are spaced out beyond rescan_s)
DIGESTS_PER_SCAN = 200   # files an older edgemon analysed whose digests one scan reads (~130 KiB each)


def may_still_be_written(why: str) -> bool:
    """A WAV or FLAC header that a recorder still writing would leave: empty, sizes or length not
    yet filled in (AudioMoth and libsndfile write them at close), or more data declared than is on disk yet. Other
    inconsistencies (not RIFF at all, no fmt chunk) will not heal by waiting."""
    return any(k in why for k in ("empty file", "not yet finalised", "declares"))


class Watcher:
    """Processes a directory's recordings into ``store``; ``run(stop)`` until ``stop`` is set.

    ``disk``: the disk budget asked before each new file (None: no budget, nothing held for
    space). ``on_tick(watcher)`` is called at every loop turn and decoded block to observe it
    (heartbeats, systemd status: ``health.WatchMonitor.tick``); what it returns is ignored.
    """

    def __init__(self, config: WatchConfig, analyzer: Analyzer, store: Store,
                 on_tick: Callable[[Watcher], object] | None = None, isolated: Isolated | None = None,
                 disk: DiskGuard | None = None):
        self.config = config
        self.analyzer = analyzer
        self.store = store
        self.root = config.root.resolve()
        # Files whose analysis died before (the daemon's, or a child's) are analysed in a child.
        self.isolated = isolated or Isolated(analyzer.bundle.path, block_s=config.block_s)
        self.hints: queue.Queue[Path] = queue.Queue()
        self.pending: set[Path] = set()
        self.stability = StabilityTracker(config.settle_s)
        # A header still being written is waited for incomplete_grace_s at one (size, mtime): a
        # file that grows waits anew, so one written for longer than the grace is not read at each pause.
        self.header_wait = StabilityTracker(config.incomplete_grace_s)
        self.header_said: dict[Path, tuple[int, int]] = {}   # the version each header wait was said for
        self.retry_at: dict[Path, float] = {}
        # Files the ledger already holds as finished, by (size, mtime_ns): a rescan then costs a
        # stat per file instead of a database lookup.
        self.settled = SettledVersions()
        # Each directory as the last scan listed it: a rescan lists again only those changed since.
        self.listings: dict[str, Listing] = {}
        self.full_scan_due = 0.0        # monotonic: the next rescan to stat every file
        self.processed = 0              # files analysed and stored this run, and their detections
        self.stored = 0
        self.last_progress = time.monotonic()   # for a watchdog ping: a loop turn, a block, a stored file
        self.on_tick = on_tick          # an observer: heartbeats and status (health.WatchMonitor.tick)
        self.disk = disk
        if disk is not None:
            disk.check(force=True)      # the first heartbeat already says how much space there is
        self.audio_s = 0.0              # seconds of audio stored, and seconds spent on them
        self.busy_s = 0.0
        self.store_error: str | None = None   # the last refused write, until a write succeeds
        self.hold_until = 0.0           # monotonic: no new work before this (the database refused a write)
        self.unreadable: dict[str, str] | None = None   # directories the last scan could not list
        self.attempted = 0              # files finished this run, whatever the outcome
        self.others: set[Path] = set()  # files left alone: another recording analysed under their name
        self.other_formats: dict[str, int] = {}   # audio files watch does not take, by suffix, at the last scan
        self.copies = 0                 # copies of recordings analysed already, met this run
        self.undigested: list | None = None   # recordings an older edgemon analysed: digests to read
        self.clock_checked = False      # analysed recordings' stored starts checked against clock_timezone
        self.digests_completed = 0
        self.progress = BacklogProgress(config.progress_s)
        self.stop: threading.Event | None = None   # run's: a second signal sets its ``now``
        self.analysis = FileAnalysis(analyzer, store, self.isolated, device_id=config.device_id,
                                     clock_zone=config.clock_zone, block_s=config.block_s,
                                     max_attempts=config.max_attempts, tick=self._tick,
                                     stopping_now=self._stopping_now, writes_again=self._writes_again)

    def source_of(self, path: Path) -> str:
        return source_of(self.root, path)

    def scan(self, quick: bool = False) -> None:
        """Every audio file under the root that the ledger does not hold as finished becomes
        pending (three ledger queries; a rescan of settled files costs a stat each). A file noted
        as a moved or copied recording, or as another recording under an analysed name, is
        settled too: it was read again at every start (a review: twice per file). What is no
        longer there is forgotten (a unit deleting what it analysed kept every name it ever saw).

        ``quick``: a directory unchanged since the last scan listed it (``iter_audio``'s
        ``listings``) is not listed again, nor its files stat'ed: a file added, removed or
        renamed changes its directory; a file changed in place is reported by an event, or found
        by the next full scan (``full_rescan_s``). An idle unit rescanned its whole card every 30 s,
        a stat per recording (a review of idle cost: 0.42 s of CPU a rescan of 50 000 analysed
        recordings here, 49 s an hour, against 0.6 s an hour on an empty card)."""
        unreadable: dict[str, str] = {}
        others: dict[str, int] = {}
        finished = noted = elsewhere = None
        listed = 0          # settled paths this scan listed: fewer than are settled, and some are gone
        skipped: list[str] = []
        for path in iter_audio(self.root, unreadable, others, self.listings, skipped if quick else None):
            version = file_version(path)
            if version is None:
                continue
            known = self.settled.get(path)
            listed += known is not None
            if known == version:
                continue
            if finished is None:
                finished, noted = self.store.finished_versions(), self.store.noted_versions()
                elsewhere = self.store.kept_elsewhere(self.root)
            noted_as = _still_noted(noted.get(stored_name(path)), version)
            source = self.source_of(path)
            # A recording back under its own name after a move: step has the ledger follow it.
            if (finished.get(source) == version and source not in elsewhere) or noted_as:
                listed += known is None
                self.settled[path] = version
                if noted_as == "other":
                    self.others.add(path)
            else:
                self.pending.add(path)
        listed += sum(self.settled.in_directory(directory) for directory in skipped)
        self._forget_the_gone(listed)
        self._note_unreadable(unreadable)
        self._note_other_formats(others)
        self._complete_digests()
        self._check_clock_zone()

    def _check_clock_zone(self) -> None:
        """Once a run: say when recordings analysed already would start at another time under the
        ``clock_timezone`` now in force (``files.clock_check``)."""
        if not self.clock_checked:
            self.clock_checked = True
            say_if_clock_moved(self.store, self.settled.items(), self.source_of, self.config.clock_zone)

    def _forget_the_gone(self, listed: int) -> None:
        """Drop the paths no longer there from what the watcher keeps per file: only when the scan
        listed fewer settled paths than are kept (a rebuild at every scan raised the daemon's
        peak memory with the card's size)."""
        if listed < len(self.settled):
            self.settled.keep_existing()
        self.others = {p for p in self.others if os.path.lexists(p)}
        for kept in (self.retry_at, self.header_said):
            for path in [p for p in kept if not os.path.lexists(p)]:
                del kept[path]

    def _scan_timed(self, full: bool = False) -> float:
        """Scan (``full``, or when ``full_rescan_s`` has passed since the last full scan: every
        file stat'ed; else quick); the monotonic time of the next rescan: ``rescan_s`` on, or
        longer where scans take long, so that rescanning (a fallback: events say what changes)
        takes at most ``RESCAN_SHARE`` of the time (a review: 100 000 recordings took 7 s a
        scan, every 30 s)."""
        started = time.monotonic()
        if full or started >= self.full_scan_due:
            self.full_scan_due = started + self.config.full_rescan_s
            self.scan()
        else:
            self.scan(quick=True)
        ended = time.monotonic()
        return ended + max(self.config.rescan_s, (ended - started) / RESCAN_SHARE)

    def _note_other_formats(self, found: dict[str, int]) -> None:
        """Say when the directory holds audio watch does not take (MP3s copied in): they were
        passed over without a word, and `--until-idle` said "0 file(s) analysed" (a newcomer
        trial). Said again only when the counts change."""
        if found and found != self.other_formats:
            counts = ", ".join(f"{n} {suffix}" for suffix, n in sorted(found.items()))
            log.warning("%d file(s) in formats watch does not analyse (%s): it takes WAV and FLAC; convert them, "
                        "or run `edgemon classify` on them", sum(found.values()), counts)
        self.other_formats = found

    def _complete_digests(self) -> None:
        """Recordings an older edgemon analysed get their digests, ``DIGESTS_PER_SCAN`` at each
        scan (a season's ledger on an SD card would hold new work for minutes); all at once in a
        run ``until_idle``, which scans once."""
        if self.undigested is None:   # listed once a run, at the first scan
            self.undigested = undigested_files(self.store, self.settled, self.source_of)
        if not self.undigested:
            return
        batch = self.undigested[:None if self.config.until_idle else DIGESTS_PER_SCAN]
        try:
            self.digests_completed += complete_digests(self.store, batch, self._tick)
        except sqlite3.OperationalError as exc:   # tried again at the next scan
            self._hold(exc)
            return
        del self.undigested[:len(batch)]
        if not self.undigested and self.digests_completed:
            log.info("%d recording(s) analysed by an earlier edgemon are now recognised when moved or copied",
                     self.digests_completed)

    def _note_unreadable(self, found: dict[str, str]) -> None:
        """Say once per run when a directory cannot be listed (its recordings are skipped) and
        when it can again; keep the list in the database for ``edgemon status``."""
        if found == self.unreadable:
            return
        if found != {name_from_stored(p): e for p, e in self.store.unreadable_dirs().items()}:
            try:
                self.store.set_unreadable_dirs(found)
            except sqlite3.OperationalError as exc:  # said and stored at a later scan
                self._hold(exc)
                return
            self._writes_again()
        known = self.unreadable or {}
        for path in sorted(found.keys() - known.keys()):
            log.warning("%s", skipped_because(shown(path), shown(found[path])))
        for path in sorted(known.keys() - found.keys()):
            log.info("directory %s can be read again", shown(path))
        self.unreadable = found

    def _report_progress(self) -> None:
        self.progress.update(done=self.attempted, waiting=self.pending, audio_s=self.audio_s, busy_s=self.busy_s,
                             held=sum(path in self.pending for path in self.header_said),
                             held_s=self.config.incomplete_grace_s)

    def run(self, stop: threading.Event) -> None:
        self.stop = stop
        check_root(self.root)
        observer = start_observer(self.root, self.hints)
        try:
            next_scan = self._scan_timed()
            restart = Backoff(self.config.rescan_s, OBSERVER_RETRY_MAX_S)
            next_observe = 0.0
            while not stop.is_set():
                # Its thread died (a handler raised) or the card went away: events stop and only
                # rescans would remain. Restarted at once; while that fails, after a rescan period,
                # then twice as long each time up to an hour: a failure that lasts (the inotify
                # watch limit of a card of many folders) rescanned the whole tree and said so
                # every 30 s, for ever (a review).
                if not observing(observer) and time.monotonic() >= next_observe:
                    log.warning("file-system observer stopped; restarting it and rescanning")
                    stop_observer(observer)
                    observer = start_observer(self.root, self.hints)
                    if observing(observer):
                        restart.reset()
                        next_observe = 0.0
                    else:
                        next_observe = time.monotonic() + restart.next()
                    next_scan = self._scan_timed(full=True)   # what changed in place meanwhile said nothing
                self._drain_hints()
                for path in sorted(self.pending):
                    if stop.is_set() or not self._may_work():
                        break
                    try:
                        done = self.step(path)
                    except sqlite3.OperationalError as exc:  # the database, not the file: full, or locked too long
                        self._hold(exc, path)
                        break
                    except (sqlite3.DatabaseError, DatabaseReplaced):   # the service restarts into a database
                        raise   # (a corrupt one moved aside by open_or_recover, a deleted one made anew)
                    except Exception as exc:   # a per-file boundary: one file's unforeseen failure stops no other
                        self._unforeseen(path, exc)
                        continue
                    if done:
                        self.pending.discard(path)
                        self.stability.forget(path)
                    # Between files, not only between passes: a backlog all there at the start is
                    # one pass, and it said nothing until it ended (a newcomer trial: 200 files).
                    self._report_progress()
                self._report_progress()
                self._release_idle_hold()
                self._refuse_a_disk_hold_until_idle()
                if self.config.until_idle and self.analysis.card_error is not None and self.pending:
                    raise CardUnreadableError(f"{len(self.pending)} file(s) not analysed: {self.analysis.card_error}; "
                                              f"what was analysed is stored: put the card back and run again")
                if self.config.until_idle and not self.pending:
                    if (why := (self.unreadable or {}).get(str(self.root))) is not None:   # a card failing
                        raise WatchRootError(f"{shown(self.root)}: cannot read the directory: {why}; its recordings "
                                             f"were not analysed (what was is stored): run again once it reads")
                    self._say_idle()
                    break
                if time.monotonic() >= next_scan:
                    next_scan = self._scan_timed()
                # Short waits while files are pending; otherwise until the next rescan, but never
                # more than a second, so a stop request is seen promptly.
                self._wait(min(self.config.settle_s / 2 or 0.05, 1.0) if self.pending else
                           min(max(0.05, next_scan - time.monotonic()), 1.0))
        finally:
            stop_observer(observer)
        if hasattr(stop, "signum"):   # a journal reader sees what the run did, as --until-idle's last line says
            log.info("stopped: %d file(s) analysed this run, %s of audio, %d detection(s); %d file(s) waiting",
                     self.processed, audio_amount(self.audio_s), self.stored, len(self.pending))
        if self.config.until_idle and self.pending and hasattr(stop, "signum"):
            # Stopped (Ctrl-C, SIGTERM) with files left: exit 0 read as "the card is done" to
            # `watch --until-idle && next-step` (a newcomer trial: 11 of 16 files left, status 0).
            raise StoppedEarly(f"stopped with {len(self.pending)} file(s) not analysed yet; what was analysed is "
                               f"stored, and the same command analyses the rest", stop.signum)

    def _refuse_a_disk_hold_until_idle(self) -> None:
        """``--until-idle`` below the disk watermark: no new file would ever start, and a one-off
        card read waited in silence for ever (a newcomer trial). What is stored stays stored."""
        if self.config.until_idle and self.pending and self.disk is not None and self.disk.state == HOLD:
            raise DiskHoldError(
                f"{len(self.pending)} file(s) not analysed: {self.disk.free_mb:.0f} MB free where the database is, "
                f"below min_free_mb ({self.disk.budget.min_free_mb:g} MB); free some space, or lower it ([disk] "
                f"min_free_mb in the settings file, or EDGEMON_MIN_FREE_MB), and run again")

    def _say_idle(self) -> None:
        """The one closing line of ``--until-idle``: what this run did (the backlog's own summary
        comes only after a progress line, so a short backlog ended without a word)."""
        quarantined = self.attempted - self.processed
        log.info("nothing left to do: %d file(s) analysed this run, %s of audio, %d detection(s)%s%s%s",
                 self.processed, audio_amount(self.audio_s), self.stored,
                 f"; {quarantined} file(s) quarantined (edgemon status lists them)" if quarantined else "",
                 f"; {len(self.others)} file(s) left alone: another recording was analysed under each name "
                 f"(one database per recorder)" if self.others else "",
                 self._analysed_by_others() if not self.processed else "")

    def _analysed_by_others(self) -> str:
        """Said when this run analysed nothing because another bundle already had: a retrained
        bundle watched over the same directory said "0 file(s) analysed" and nothing of why (a
        newcomer trial). ``reanalyse`` is how a bundle analyses recordings already analysed."""
        mine = self.analyzer.bundle.bundle_id
        try:
            others = self.store.db.execute(
                "SELECT count(*) FROM files f WHERE f.state = 'done' AND NOT EXISTS (SELECT 1 FROM analyses a "
                "WHERE a.source = f.source AND a.bundle_id = ?)", [mine]).fetchone()[0]
        except sqlite3.Error:
            return ""
        # The command as it is typed: after an upgrade the bundle is the embedded one, which has no
        # path a user knows, and "--models BUNDLE" sent them looking for one (an upgrade trial).
        bundle = self.analyzer.bundle.path
        models = "" if bundle.resolve() == default_bundle_path().resolve() else f" --models {shown(bundle)}"
        return (f"; {others} recording(s) here were analysed by another bundle, not by {mine}: "
                f"`edgemon reanalyse --db {shown(self.store.path)}{models}` runs it on them" if others else "")

    @property
    def state(self) -> str:
        """'hold_disk' (free space below the budget's watermark), 'hold_store' (the database
        refused a write) or 'ok': whether new work goes on, as heartbeats report it."""
        return ("hold_disk" if self.disk is not None and self.disk.state == HOLD else
                "hold_store" if self.store_error else "ok")

    def _tick(self) -> None:
        """Mark progress for the watchdog, re-measure the disk when due, let ``on_tick`` look, and
        say the backlog's progress when due: before a file (with --settle-s 0 the first file was
        done before the backlog was counted, and never counted) and while one is decoded (a long
        file said nothing for minutes; both from a newcomer trial)."""
        self.last_progress = time.monotonic()
        self._report_progress()
        if self.disk is not None:
            self.disk.check()
        if self.on_tick is not None:
            self.on_tick(self)

    def _may_work(self) -> bool:
        """Whether a new file may start now: not below the disk watermark, no database hold."""
        self._tick()
        return (self.disk is None or self.disk.state != HOLD) and time.monotonic() >= self.hold_until

    def _hold(self, exc: sqlite3.OperationalError, path: Path | None = None) -> None:
        """A write was refused and rolled back: nothing of the file is stored, nothing counted
        against it. Hold all work for ``retry_s``, then try again (the file stays pending); with
        ``--until-idle`` a full disk ends the run instead (nothing would free it: with min_free_mb 0
        a card read waited for ever, a newcomer trial)."""
        if self.config.until_idle and error_code(exc) == sqlite3.SQLITE_FULL:
            if path is not None:   # a refused commit is no death: the next run must not count one (a review)
                with contextlib.suppress(sqlite3.Error):
                    self.store.drop_attempt(self.source_of(path))
            raise DiskHoldError(f"{len(self.pending)} file(s) not analysed: the database's disk is full "
                                f"({shown(exc)}); free some space and run again")
        if self.store_error is None:
            log.warning("database write failed (%s); holding work, retrying every %.0f s", shown(exc),
                        self.config.retry_s)
        self.store_error = str(exc)
        self.hold_until = time.monotonic() + self.config.retry_s

    def _writes_again(self) -> None:
        """A write went through: the database accepts writes again, so the hold (and the
        'hold_store' state that heartbeats report) ends now, not at the next committed file."""
        if self.store_error is not None:
            log.info("database accepts writes again; work resumes")
            self.store_error = None

    def _release_idle_hold(self) -> None:
        """The hold has run out and nothing is pending (the file that met the refusal vanished or
        was quarantined): no work is held any more. A later refusal holds again."""
        if self.store_error is not None and not self.pending and time.monotonic() >= self.hold_until:
            log.info("database hold over: nothing left to retry")
            self.store_error = None

    def _drain_hints(self) -> None:
        while True:
            try:
                self.pending.add(self.hints.get_nowait())
            except queue.Empty:
                return

    def _stopping_now(self) -> bool:
        """A second signal asked to give up the file in hand (``signals.stop_on_signals``)."""
        return getattr(self.stop, "now", False)

    def _wait(self, seconds: float) -> None:
        self._tick()
        try:
            self.pending.add(self.hints.get(timeout=seconds))
        except queue.Empty:
            pass

    def step(self, path: Path) -> bool:
        """Try one file; True when it needs no more attention (done, quarantined or gone)."""
        try:
            st = path.stat()
        except OSError as exc:
            return self._unreachable(path, exc)
        version = (st.st_size, mtime_ns(st))
        if self.settled.get(path) == version:
            return True
        source = self.source_of(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device named .wav would block a reader forever
            self._quarantine_at_once(path, source, version, "not a regular file")
            return True
        entry = self.store.file_entry(source)
        same_file = entry is not None and (entry["size"], entry["mtime_ns"]) == version
        if same_file and entry["state"] in ("done", "quarantined"):
            if entry["state"] == "done" and entry["path"] != stored_name(path):
                self._back_at_its_name(path, source, entry["path"])
            self.settled[path] = version
            return True
        if time.monotonic() < self.retry_at.get(path, 0.0):
            return False
        if not self.stability.observe(path, *version):
            return False
        if entry is not None and another_recording(entry.get("fingerprint"), path):
            self._leave_alone(path, source, version, entry)
            return True
        if (same := same_recording(self.store, path, source, st, entry, self.config.clock_zone)) is not None:
            self._not_again(path, source, version, same)
            return True
        note = None
        ok, why = header_consistent(path)   # every watched path is a WAV or a FLAC
        if not ok and entry is not None and entry["state"] == "done" and st.st_size < entry["size"]:
            # Cut short since analysed (its header still says longer): analysed again, it would
            # replace the detections of the audio that is gone (a newcomer trial lost them). A
            # shorter recording saved under the name has a whole header and is analysed anew.
            self._quarantine_at_once(path, source, version, f"cut short since it was analysed ({entry['size']} "
                                     f"bytes then, {st.st_size} now; {why}): its detections are kept; if it was "
                                     f"cut by mistake, restore it and it is analysed again")
            return True
        if not ok and may_still_be_written(why):
            if not self.header_wait.observe(path, *version):
                self._say_header_wait(path, source, version, why)
                return False
            if st.st_size == 0:   # nothing to read as far as it goes: no retry can help until it grows
                self.header_wait.forget(path)
                self._quarantine_at_once(path, source, version, f"empty file (0 bytes) for "
                                         f"{self.config.incomplete_grace_s:.0f} s: no audio to analyse")
                return True
            note = f"header inconsistent ({why}); read as far as it goes"
        self.header_wait.forget(path)
        self.process(path, source, st, note)
        if self._stopping_now():   # given up (``StoppedNow``): still to do
            return False
        entry = self.store.file_entry(source)
        if entry is not None and entry["state"] == "failed":
            self.retry_at[path] = time.monotonic() + self.config.retry_s
            return False
        if entry is not None:
            self.settled[path] = (entry["size"], entry["mtime_ns"])
        self.retry_at.pop(path, None)
        return True

    def _unforeseen(self, path: Path, exc: Exception) -> None:
        """A failure no step expects (a bug, a value out of range): logged with its traceback and
        counted against the file like a failed decode, so it is quarantined after max_attempts
        instead of being tried (and, as an attempt left open, isolated) for ever."""
        source = self.source_of(path)
        log.error("%s: could not be handled (%s: %s)", shown(source), type(exc).__name__, shown(exc), exc_info=exc)
        self.retry_at[path] = time.monotonic() + self.config.retry_s
        try:
            st = path.stat()
            state = self.store.record_failure(source, path=path, size=st.st_size, mtime_ns=mtime_ns(st),
                                              error=f"{type(exc).__name__}: {exc}",
                                              max_attempts=self.config.max_attempts)
        except (OSError, sqlite3.Error, OverflowError, ValueError) as again:
            log.warning("%s: its failure could not be recorded either (%s); tried again in %.0f s", shown(source),
                        shown(again), self.config.retry_s)
            return
        log.warning("%s: attempt failed, now %s", shown(source), state)
        if state == "quarantined":
            self.pending.discard(path)
            self.attempted += 1   # finished, as a quarantined decode is: counted in the closing line

    def _unreachable(self, path: Path, exc: OSError) -> bool:
        """``path`` was listed but cannot be stat'ed. Gone: forget it. A recording analysed already:
        its done row is kept. A symlink loop or a dangling link: quarantined at once, once per
        version of the link. Any other error (a directory that can be listed but not entered, an
        I/O error of a failing card): a failed attempt, retried like an unreadable file. True when
        the file needs no more attention."""
        version = file_version(path)
        if version is None:
            self._say_gone(path)
            return True
        if self.settled.get(path) == version:
            return True
        source = self.source_of(path)
        entry = self.store.file_entry(source)
        if entry is not None and (entry["size"], entry["mtime_ns"]) == version and entry["state"] == "quarantined":
            self.settled[path] = version
            return True
        if entry is not None and entry["state"] == "done":
            # Analysed already: that it cannot be looked at now says nothing against the recording.
            # Counted as a failure, its done row became 'quarantined' at size 0 (gone from the
            # effort export, a problem in status) and it was analysed again once mended (a review).
            # Settled at this version: looked at again when a scan finds it changed. Before the
            # links' quarantine: a linked recording whose link dangles for a while (its disk
            # unmounted) is the same case (a diff review: it was quarantined as a dangling link).
            log.warning("%s: cannot stat (%s); analysed already, its ledger row and detections are kept",
                        shown(source), shown(exc.strerror or exc))
            self.settled[path] = version
            return True
        if isinstance(exc, FileNotFoundError) or exc.errno == errno.ELOOP:
            self._quarantine_at_once(path, source, version, "symbolic link loop" if exc.errno == errno.ELOOP else
                                     "dangling symbolic link (its target does not exist)")
            return True
        if time.monotonic() < self.retry_at.get(path, 0.0):
            return False
        # The card's own error (pulled, its reader failing) is not the file's: retried, not counted.
        state = self.store.record_failure(source, path=path, size=version[0], mtime_ns=version[1],
                                          error=f"cannot stat: {exc.strerror or exc}",
                                          max_attempts=self.config.max_attempts,
                                          counted=exc.errno not in CARD_ERRNOS)
        log.warning("%s: cannot stat (%s), now %s", shown(source), shown(exc.strerror or exc), state)
        if state == "quarantined":
            self.settled[path] = version
            self.attempted += 1
            return True
        self.retry_at[path] = time.monotonic() + self.config.retry_s
        return False

    def _say_header_wait(self, path: Path, source: str, version: tuple[int, int], why: str) -> None:
        """In a one-off run (``until_idle``) say once which file is waited for: a card's WAV cut
        short waited out its grace (120 s) without a line, and looked like a hang (a newcomer
        trial). A service says nothing: there a recorder writing its file is the usual case."""
        if self.config.until_idle and self.header_said.get(path) != version:
            self.header_said[path] = version
            log.info("%s: its header is not finished (%s); waiting up to %.0f s for it to be written, then it is "
                     "read as far as it goes", shown(source), why, self.config.incomplete_grace_s)

    def _say_gone(self, path: Path) -> None:
        """A path listed or hinted (a move's old path, a card emptied) that no longer exists. A
        recording analysed before it went keeps its detections: said as such, not as lost work."""
        source = self.source_of(path)
        self.settled.pop(path, None)
        # Forgotten here, not only by the loop once a step is done: a file deleted while its
        # header was awaited stayed in ``header_wait`` for as long as the daemon ran (a review).
        self.stability.forget(path)
        self.header_wait.forget(path)
        entry = self.store.file_entry(source)
        if entry is not None and entry["state"] == "done":
            log.info("%s: no longer there (moved or deleted after it was analysed); its detections are kept",
                     shown(source))
        else:
            log.info("%s: gone before it was processed", shown(source))

    def _back_at_its_name(self, path: Path, source: str, ledger_path: str) -> None:
        """A recording analysed as ``source`` is there again, unchanged, after a move that the
        ledger followed (``_not_again``): the ledger follows it back once its other path is gone.
        It kept naming the path the recording had left, so reanalyse and review took it for
        gone from disk (a review). A ledger path outside the tree (analysed while another
        directory, or the card at another mount point, was watched) is left as it was."""
        if not ledger_path.startswith(stored_name(self.root).rstrip("/") + "/"):
            return
        if os.path.lexists(name_from_stored(ledger_path)):   # there too (a copy): either holds it
            return
        self.store.keep_path(source, path)
        log.info("%s: analysed already, here again (no longer at %s); the ledger follows it", shown(source),
                 shown(ledger_path))

    def _leave_alone(self, path: Path, source: str, version: tuple[int, int], entry: dict) -> None:
        """Another recording under a name already analysed: a second recorder's card (AudioMoth
        names files by the minute, so two recorders on one schedule share names). Analysed, it
        would replace the first recording's detections and orphan their reviews, so it is left
        alone, and the ledger keeps describing the recording its detections came from. Said once
        (``status`` names it after), not at every start."""
        if self.store.note_other_recording(source, path=path, size=version[0], mtime_ns=version[1]):
            # A recorder whose clock is unset names its files from 1970 again after each battery
            # change: there the same recorder repeats a name, and renaming the file is the way.
            advice = ("the recorder's clock looks unset, so its names repeat: rename the file to have it analysed"
                      if entry.get("clock_suspect") else "give each recorder its own database (--db)")
            log.warning("%s: another recording than the one analysed under this name (%s); left alone, its "
                        "detections kept: %s", shown(source), shown(entry["path"]), advice)
        self.settled[path] = version
        self.others.add(path)

    def _not_again(self, path: Path, source: str, version: tuple[int, int], same: SameRecording) -> None:
        """A recording analysed already (``files.same_recording``): its detections are not stored
        twice. Said once per file, not at every start."""
        # Noted here before (moved or copied here): met again, it was touched since, not watched anew.
        noted_here = same.kind != "touched" and self.store.noted_same_recording(path) == same.source
        if same.kind == "touched":
            self.store.note_touched(source, version[1])
            log.info("%s: touched or copied again (same size and audio): not analysed again", shown(source))
            # Copied back to its name (a new mtime) after a move the ledger followed: settled here,
            # it kept the folder's path until the next start (a review: no audio for the page).
            if same.path != stored_name(path):
                self._back_at_its_name(path, source, same.path)
        elif self.store.note_same_recording(same.source, path=path, size=version[0], mtime_ns=version[1],
                                            moved=same.kind == "moved", converted=same.converted):
            if noted_here:   # a hardening trial: this was said as "when another directory was watched"
                log.info("%s: touched since it was found here as %s, analysed already (same size and audio): not "
                         "analysed again", shown(source), shown(same.source))
            elif same.path == stored_name(path):   # nothing moved: the watched directory is another one
                log.info("%s: analysed already as %s, when another directory was watched: not analysed again",
                         shown(source), shown(same.source))
            else:
                what = "moved or renamed from" if same.kind == "moved" else "a copy of"
                form = " (in another format)" if same.converted else ""
                # A move is the user's tidying, at info (a journal's warnings read as trouble, a
                # newcomer trial); a copy not analysed may surprise, so the run's first is a
                # warning, and the rest information (a card's folder copied twice gave a warning
                # per file, a season trial: thousands hide the warnings that matter).
                first_copy = same.kind != "moved" and self.copies == 0
                self.copies += same.kind != "moved"
                log.log(logging.WARNING if first_copy else logging.INFO,
                        "%s: %s %s%s, analysed already: not analysed again; its detections stay under %s%s",
                        shown(source), what, shown(same.path), form, shown(same.source),
                        " (more copies this run are logged as information)" if first_copy else "")
        self.settled[path] = version

    def _quarantine_at_once(self, path: Path, source: str, version: tuple[int, int], why: str) -> None:
        """A file no retry can help: recorded once as quarantined, and not looked at again
        until its size or mtime changes."""
        self.store.record_failure(source, path=path, size=version[0], mtime_ns=version[1], error=why, max_attempts=1)
        log.warning("%s: %s; quarantined", shown(source), why)
        self.settled[path] = version
        self.attempted += 1

    def process(self, path: Path, source: str, st: os.stat_result, note: str | None = None) -> None:
        """Analyse one stable file and commit it with its detections, or record its failure
        (``files.analyse_file``); counted for heartbeats and the run's closing line."""
        started = time.monotonic()
        outcome = self.analysis.analyse(path, source, st, note)
        self.attempted += outcome.finished
        if not outcome.stored:
            return
        self.processed += 1
        self.stored += outcome.detections
        self.audio_s += outcome.audio_s
        self.busy_s += time.monotonic() - started
        self.store_error = None
        self.last_progress = time.monotonic()


def _still_noted(noted: tuple[int, int, bool, str] | None, version: tuple[int, int]) -> str | None:
    """"twin" or "other" when a file noted as a moved or copied recording, or as another recording
    under an analysed name (``Store.noted_versions``), is as it was noted; else None (step decides).
    A copy whose original is gone is not: step then makes the copy the recording's ledger path
    (review and reanalyse read it there)."""
    if noted is None or noted[:2] != version:
        return None
    if noted[2]:
        return "other"
    return "twin" if os.path.lexists(name_from_stored(noted[3])) else None
