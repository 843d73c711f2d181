"""One settled recording analysed and committed with its detections, or its failure recorded.

The watcher (``edgemon.files.watcher``) decides which file is taken and when; this module does
what taking it means. The attempt is committed before the analysis (``Store.begin_attempt``): a
file whose analysis was cut short before is analysed in a child process (``edgemon.files.isolate``),
whose death is then the file's failure, and after ``max_attempts`` of them it is quarantined. A
daemon killed for an unrelated reason never counts against the file it was working on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from edgemon.analysis import audio
from edgemon.analysis.analyzer import Analyzer
from edgemon.files.directory import file_version, mtime_ns
from edgemon.files.isolate import AnalysisDied, AnalysisFailed, AnalysisStopped, Isolated
from edgemon.files.medium import card_error
from edgemon.files.preroll import Listings, analyse_after, find_preroll
from edgemon.files.recordings import recording_time
from edgemon.files.triggered import SilentStretches, silences_of
from edgemon.safetext import shown
from edgemon.storage.fingerprint import digests, samples_digest
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store

log = logging.getLogger(__name__)


class StoppedNow(AnalysisStopped):
    """A second Ctrl-C or SIGTERM: the file in hand is given up, to be analysed again at the next start."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one file's analysis came to, for the watcher's counts."""
    finished: bool = False      # stored, or quarantined: needs no more attention this run
    stored: bool = False        # committed with its detections
    detections: int = 0
    audio_s: float = 0.0


def detection_rows(events: Sequence, *, device_id: str, source: str, start_utc: dt.datetime | None,
                   time_source: str, clock_suspect: bool, bundle_id: str,
                   left_out: SilentStretches = SilentStretches()) -> list[Detection]:
    """A recording's events as the rows stored for it: wall times from its start, past the
    silences a triggered recorder left out (``files.triggered.SilentStretches.event_times``). Watch and reanalyse both store these."""
    return [Detection(device_id=device_id, source=source, start_s=e.start_s, end_s=e.end_s,
                      start_utc=start, end_utc=end, time_source=time_source, clock_suspect=clock_suspect,
                      label=e.label, confidence=e.confidence, votes=e.votes, bundle_id=bundle_id, score=e.score)
            for e in events for start, end in [left_out.event_times(start_utc, e.start_s, e.end_s)]]


class FileAnalysis:
    """Analyses a watcher's settled files into ``store`` (the settings as ``watcher.WatchConfig`` says).

    ``tick()`` marks progress (called at each decoded block), ``stopping_now()`` says whether a
    second signal asked to give up the file in hand, and ``writes_again()`` is called once the
    database has taken a write (the attempt), ending a hold on refused writes.
    """

    def __init__(self, analyzer: Analyzer, store: Store, isolated: Isolated, *, device_id: str,
                 clock_zone: dt.tzinfo | None, block_s: float, max_attempts: int,
                 tick: Callable[[], None], stopping_now: Callable[[], bool], writes_again: Callable[[], None]):
        self.device_id = device_id
        self.clock_zone = clock_zone    # the recorders' clock zone, for names without an offset (None: UTC)
        self.block_s = block_s
        self.max_attempts = max_attempts
        self.analyzer = analyzer
        self.store = store
        self.isolated = isolated
        self.tick = tick
        self.stopping_now = stopping_now
        self.writes_again = writes_again
        self.refused: set[str] = set()  # sources whose last attempt ended in a refused commit
        self.timed_by_mtime = 0         # files with no start time in name or header, this run
        self.card_error: str | None = None   # the first file the card could not give (pulled), until one is stored
        self.listings = Listings()      # where each file's pre-roll is looked for (``files.preroll``)

    def analyse(self, path: Path, source: str, st: os.stat_result, note: str | None = None) -> Outcome:
        """Analyse one stable file and commit it with its detections, or record its failure. A
        refused commit or failure record (``sqlite3.OperationalError``) is raised: the watcher holds
        work on it."""
        digest, tail = digests(path)   # before the analysis: what is analysed is at least this file
        decoded = samples_digest(path)
        interrupted = self.store.begin_attempt(source, path=path, size=st.st_size, mtime_ns=mtime_ns(st),
                                               after_refusal=source in self.refused)
        self.refused.discard(source)
        self.writes_again()
        if interrupted:
            log.warning("%s: its analysis was cut short %d time(s) in a row (edgemon stopped, or the analysis "
                        "died); analysing it in a separate process", shown(source), interrupted)
        try:
            before = find_preroll(path, source, self.analyzer, self.store, clock=self.clock_zone,
                                  listings=self.listings)
            analysis = (self.isolated.analyse(path, on_block=self.tick, preroll=before) if interrupted else
                        analyse_after(self.analyzer, self._blocks(path), before))
            # Read after the analysis, again: an unreadable file's error is then the decoder's,
            # which names what is wrong ("cannot read: Permission denied").
            when = recording_time(path, clock=self.clock_zone)
            left_out = silences_of(path)
        except StoppedNow:   # not a death: analysed again at the next start, in this process
            self.store.drop_attempt(source)
            log.warning("%s: given up, not stored; analysed again at the next start", shown(source))
            return Outcome()
        except AnalysisStopped:  # the unit is stopping: the attempt stays open, counted at the next start
            log.info("%s: analysis stopped with the daemon", shown(source))
            return Outcome()
        except Exception as exc:  # a per-file boundary: record it against the file and go on
            try:
                return self._failed(path, source, st, exc)
            except sqlite3.OperationalError:
                # Its record refused, as a commit can be (below): the attempt left open is no
                # death (a review: the retry said "cut short" and ran in a separate process).
                self.refused.add(source)
                raise
        if when.source == "mtime":
            self._say_timed_by_mtime(source, when)
        elif when.suspect:   # a recorder's clock unset or ahead: said, as status says it after
            log.warning("%s: the recorder's clock looks wrong (%s): its detections are stored at that time, marked "
                        "clock_suspect", shown(source), when.detail)
        bundle_id = self.analyzer.bundle.bundle_id
        detections = detection_rows(analysis.events, device_id=self.device_id, source=source,
                                    start_utc=when.start_utc, time_source=when.source, clock_suspect=when.suspect,
                                    bundle_id=bundle_id, left_out=left_out)
        note = "; ".join(n for n in (note, analysis.note, left_out and left_out.note()) if n) or None
        try:
            self.store.commit_file(source, path=path, size=st.st_size, mtime_ns=mtime_ns(st),
                                   duration_s=analysis.duration_s, start_utc=when.start_utc,
                                   time_source=when.source, clock_suspect=when.suspect,
                                   bundle_id=bundle_id, detections=detections,
                                   note=note, fingerprint=digest, tail_digest=tail, samples_digest=decoded,
                                   span_s=analysis.duration_s + left_out.total_s if left_out else None)
        except sqlite3.OperationalError:
            # Refused (a full disk), and the open attempt cannot always be ended on such a disk:
            # remembered, so the retry is not taken for a death (a newcomer trial: "cut short").
            self.refused.add(source)
            raise
        self.card_error = None
        log.info("%s: %.1f s of audio, %d detection(s)%s", shown(source), analysis.duration_s, len(detections),
                 f" [{shown(note)}]" if note else "")
        return Outcome(finished=True, stored=True, detections=len(detections), audio_s=analysis.duration_s)

    def _failed(self, path: Path, source: str, st: os.stat_result, exc: Exception) -> Outcome:
        """The analysis failed: counted against the file (quarantined after ``max_attempts``),
        unless the file was deleted meanwhile (a recorder's card emptied, a file moved away):
        whatever the decoder or the isolated child said then, it says nothing against the file."""
        if isinstance(exc, FileNotFoundError) or file_version(path) is None:
            log.info("%s: deleted while being processed", shown(source))
            self.store.drop_attempt(source)
            return Outcome()
        if (unreadable := card_error(path)) is not None:
            return self._card_failed(path, source, st, unreadable)
        state = self.store.record_failure(source, path=path, size=st.st_size, mtime_ns=mtime_ns(st),
                                          error=str(exc) if isinstance(exc, AnalysisFailed) else
                                          f"{type(exc).__name__}: {exc}",
                                          max_attempts=self.max_attempts,
                                          died=isinstance(exc, AnalysisDied))
        # the error names the file too, by its full path: said once
        log.warning("%s: attempt failed, now %s: %s", shown(source), state, shown(str(exc).removeprefix(f"{path}: ")))
        return Outcome(finished=state == "quarantined")

    def _card_failed(self, path: Path, source: str, st: os.stat_result, exc: OSError) -> Outcome:
        """The card cannot be read now (``files.medium``: pulled, or its reader failing): not the
        file's fault, so never quarantined for it (a card pulled mid-backlog had every waiting
        recording quarantined within 2 retries, never analysed once it was back). Recorded as
        failed, so the watcher tries it again after ``retry_s``; said once until a file is stored."""
        why = f"cannot read: {exc.strerror or exc} (the card removed, or failing)"
        # Not counted: a file that fails for good once the card is back gets its max_attempts (while
        # counted, hours out of the reader left it quarantined at its first real failure).
        self.store.record_failure(source, path=path, size=st.st_size, mtime_ns=mtime_ns(st), error=why,
                                  max_attempts=self.max_attempts, counted=False)
        log.log(logging.WARNING if self.card_error is None else logging.DEBUG,
                "%s: %s; not counted against it, tried again later", shown(source), why)
        self.card_error = self.card_error or f"{shown(source)}: {why}"
        return Outcome()

    def _say_timed_by_mtime(self, source: str, when) -> None:
        """Said as a warning the first time a run meets it (a card of such files would say it for
        each), then as information; ``edgemon status`` counts them."""
        self.timed_by_mtime += 1
        log.log(logging.WARNING if self.timed_by_mtime == 1 else logging.INFO,
                "%s: no start time in its name or header: timed by its modification time (%s), which is when "
                "it was last written: a copy's time if it was copied. Recorders' names "
                "[PREFIX_]YYYYMMDD_HHMMSS.WAV give the real time (the stamp must end the name: one followed by more, "
                "as in a clip cut from a recording, is not the file's start)", shown(source), when.detail)

    def _blocks(self, path: Path) -> audio.Blocks:
        """The file's audio blocks; each one marks progress, so a long file keeps the watchdog fed."""
        return audio.iter_blocks(path, self.block_s, self.analyzer.bundle.frontend.sample_rate,
                                 on_block=self._block_decoded)

    def _block_decoded(self) -> None:
        """A block of the file in hand decoded: progress, unless a second signal asked to stop now
        (``signals.stop_on_signals``)."""
        if self.stopping_now():
            raise StoppedNow("stopped at a second signal")
        self.tick()
