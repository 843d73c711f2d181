"""The analysis worker of ``edgemon listen``: blocks in, detections and coverage out.

See ``edgemon.live.threads`` for the threads, ``edgemon.live.timebase`` for the time base.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from edgemon.analysis import audio
from edgemon.analysis.analyzer import AnalysisStream, Analyzer
from edgemon.analysis.merging import Event
from edgemon.errors import EdgemonError
from edgemon.live.capture import BlockQueue, Capture, CaptureConfig, CaptureState
from edgemon.live.clips import Clip, ClipConfig, ClipSaver
from edgemon.live.coverage import CoverageLedger
from edgemon.live.hostclock import HostClock, host_clock_synced
from edgemon.live.store_writer import StoreWriter
from edgemon.live.timebase import Correction, TimeBase, TimeBaseConfig
from edgemon.storage.rows import Detection
from edgemon.utc import UTC

log = logging.getLogger(__name__)
EARLIEST_PLAUSIBLE_YEAR = 2000


class ListenError(EdgemonError):
    """Listening stopped because a part of it failed (the message says which)."""


@dataclasses.dataclass(frozen=True)
class ListenConfig:
    capture: CaptureConfig = CaptureConfig()
    device_id: str = "edgemon"
    clips: ClipConfig | None = None
    analysis_block_s: float = 0.5   # audio gathered before one resample + frontend + vote step
    resync_s: float = 1.0           # stream time vs capture clock tolerance before re-anchoring
    settle_s: float = 5.0           # stream time over which its own latency is learnt
    confirm_s: float = 2.0          # a lag off by resync_s this long is a loss (or drift), not jitter
    flush_s: float = 10.0           # coverage rows reach the database at least this often
    report_s: float = 60.0          # a progress line this often
    ntp_check_s: float = 600.0
    max_event_s: float = 60.0       # an event open this long is stored (a kill loses no more) and a new one begins
    duration_s: float | None = None  # stop after this long (tests, benchmarks); None: until signalled

    @property
    def time_base(self) -> TimeBaseConfig:
        """The stream time base's part of it (``edgemon.live.timebase``)."""
        return TimeBaseConfig(resync_s=self.resync_s, settle_s=self.settle_s, confirm_s=self.confirm_s)


@dataclasses.dataclass
class ListenSummary:
    source: str
    detections: int = 0
    seconds: dict = dataclasses.field(default_factory=dict)   # analysed and lost, by kind
    overflows: int = 0
    dropped_blocks: int = 0
    stream_opens: int = 0
    clips_saved: int = 0
    clips_skipped: int = 0


class Listener:
    """The analysis worker: blocks -> (mix, resample, analysis) -> detections and coverage jobs.

    A composition: ``TimeBase`` says when each frame was heard, ``CoverageLedger`` accounts every
    second, the bundle's ``AnalysisStream`` turns one segment (contiguous audio) into events,
    ``ClipSaver`` keeps their audio, and the ``StoreWriter`` stores what comes out.

    ``run(drain)`` works until ``drain`` is set and the block queue is empty; set ``drain`` only
    once the capture has stopped, so the last blocks are analysed.
    """

    def __init__(self, config: ListenConfig, analyzer: Analyzer, blocks: BlockQueue, writer: StoreWriter,
                 source: str, previous_end: float | None = None, capture: Capture | None = None,
                 host: HostClock | None = None, clock_synced: Callable[[], bool | None] = host_clock_synced):
        self.config = config
        self.analyzer = analyzer
        self.blocks = blocks
        self.writer = writer
        self.source = source
        self.capture = capture
        self.host = host or HostClock()
        self._clock_synced_fn = clock_synced
        self.clock_synced = clock_synced()
        self.rate16 = analyzer.bundle.frontend.sample_rate
        self.ledger = CoverageLedger(source, config.device_id)
        started = self.host.wall(blocks.clock())
        if self.ledger.add_daemon_gap(previous_end, started) == 0.0:
            self.ledger.accounted_until = started
        self.clips = ClipSaver(config.clips, self.rate16) if config.clips else None
        self.detections = 0
        self.stream: int | None = None
        self.time: TimeBase | None = None      # the current stream's
        self.segment: AnalysisStream | None = None
        self.resampler: audio.Resampler | None = None
        self._buffer: list[np.ndarray] = []    # mono device-rate audio not yet analysed
        # Detections emitted while a timing correction was pending (by id, with their events),
        # those of them ready to store, and the times the settled ones get (``_settle``).
        self._unsettled: dict[int, tuple[Event, Detection]] = {}
        self._held: list[tuple[int, Detection]] = []
        self._timed: dict[int, dict] = {}
        self._buffered = 0
        now = time.monotonic()
        self._next_flush, self._next_report, self._next_ntp = (now + config.flush_s, now + config.report_s,
                                                               now + config.ntp_check_s)

    # --- time and coverage -------------------------------------------------------------------

    def _wall(self, capture_s: float) -> float:
        return self.host.wall(capture_s)

    def _account(self, kind: str, span: tuple[float, float]) -> None:
        """Capture-clock stretch ``span`` goes into coverage as ``kind``."""
        self.ledger.add(kind, self._wall(span[0]), self._wall(span[1]))

    def _corrected(self, correction: Correction | None) -> None:
        if correction is None:
            return
        if correction.excess_s > 0:
            log.warning("%s: %.2f s of audio never arrived (%s); later times corrected", self.source,
                        correction.excess_s, correction.cause)
            self._account(correction.cause, (correction.lost_from_s, correction.lost_to_s))
        else:
            log.warning("%s: stream %.2f s ahead of the clock; later times corrected", self.source,
                        -correction.excess_s)

    def _lose(self, kind: str, frames: int) -> None:
        """``frames`` of the current stream are missing: end the segment, account them, skip them."""
        self._end_segment()
        self._account(kind, self.time.skip(frames))

    # --- blocks ------------------------------------------------------------------------------

    def _new_stream(self, block) -> None:
        self._end_segment()
        self.stream = block.stream
        self.time = TimeBase(block.rate, block.received_s, block.latency_s, len(block.samples),
                             block.dropped_frames, self.config.time_base)
        gap = self.ledger.add("device", self.ledger.accounted_until or self._wall(self.time.at(0)),
                              self._wall(self.time.at(0)))
        log.info("%s: stream %d at %g Hz, input latency %.3f s%s", self.source, block.stream, block.rate,
                 self.time.latency_s, f"; {gap:.1f} s not heard before it" if gap > 0.05 else "")

    def take(self, block) -> None:
        """Account one block and queue its audio for analysis."""
        if block.stream != self.stream:
            self._new_stream(block)
        clock = self.time
        if block.dropped_frames:
            self.ledger.count("dropped_blocks", self._wall(clock.at()), block.dropped_blocks)
            self._lose("dropped", block.dropped_frames)
        frames = len(block.samples)
        if block.overflow:
            self.ledger.count("overflows", self._wall(clock.at()))
            clock.overflowed(block.received_s)
        self._corrected(clock.check(block.received_s, frames))
        self._settle()
        if self.segment is None:
            self._start_segment()
        self._account("analysed", clock.advance(frames))
        self._buffer.append(audio.mono(block.samples))
        self._buffered += frames
        if self._buffered >= self.config.analysis_block_s * clock.rate:
            self._analyse()

    def _start_segment(self) -> None:
        self.segment = self.analyzer.stream(eager=True)
        self.time.start_segment()
        self.resampler = audio.Resampler(self.time.rate, self.rate16)
        self._save_waiting_clips()

    def _analyse(self, last: bool = False) -> None:
        if self.segment is None:
            return
        x = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32)
        self._buffer, self._buffered = [], 0
        x = self.resampler.push(x, last=last)
        if self.clips:
            self._clips_done(self.clips.push(x))
        self._emit(self.segment.push(x) if len(x) else [])
        since = self.segment.open_since_s
        if since is not None and self.segment.duration_s - since >= self.config.max_event_s:
            self._emit(self.segment.cut())
        if self.clips:
            self.clips.follow(self.segment.open_since_s)

    def _end_segment(self) -> None:
        """Analyse what is buffered and close the segment: its open event is stored now."""
        if self.segment is None:
            return
        self._analyse(last=True)
        self._emit(self.segment.finish())
        self._save_waiting_clips()
        self._settle(force=True)
        self.segment = None
        self.time.end_segment()

    def _emit(self, events: list[Event]) -> None:
        pending = self.time.pending_from()
        for event in events:
            detection = self._detection(event)
            if pending is not None and event.end_s > pending:
                # Its times may yet be corrected (audio that never arrived, confirmed confirm_s
                # after it went missing): stored once the run is settled, timed then (a review saw
                # an event's end 4 s early, for good).
                self._unsettled[id(detection)] = (event, detection)   # the detection kept: its id stays its own
            if not self.clips:   # with clips, stored once its clip is decided (``_clips_done``)
                self._store(detection)
            self.detections += 1
            log.info("%s: %s %s .. %s (%.2f)", self.source, event.label,
                     detection.start_utc.isoformat(timespec="milliseconds"),
                     detection.end_utc.time().isoformat(timespec="milliseconds"), event.confidence)
            if self.clips:
                self.clips.request(detection, event.start_s, event.end_s)

    def _detection(self, event: Event) -> Detection:
        """An event of the open segment as a stored row, at host (UTC) time."""
        # Rounded to the millisecond once, before both forms: start_utc is stored to the
        # millisecond (truncated), so rounding start_s alone set them 1 ms apart.
        start = round(self._wall(self.time.segment_time(event.start_s)), 3)
        end = round(self._wall(self.time.segment_time(event.end_s)), 3)
        when = dt.datetime.fromtimestamp(start, UTC)
        return Detection(
            device_id=self.config.device_id, source=self.source, start_s=start,
            end_s=end, start_utc=when, end_utc=dt.datetime.fromtimestamp(end, UTC),
            time_source="host_clock", clock_suspect=when.year < EARLIEST_PLAUSIBLE_YEAR,
            label=event.label, confidence=event.confidence, votes=event.votes,
            bundle_id=self.analyzer.bundle.bundle_id, clock_synced=self.clock_synced, score=event.score)

    def _clips_done(self, done: list[tuple[Detection, Clip | None]]) -> None:
        """Store each detection with its clip, or without one (skipped, or not written): one row,
        complete when first seen, so a cursor export never delivers it before its clip path."""
        for detection, clip in done:
            self._store(detection if clip is None else
                        dataclasses.replace(detection, clip_path=str(clip.path), clip_offset_s=clip.offset_s,
                                            clip_end_s=clip.end_s), id(detection))

    def _store(self, detection: Detection, key: int | None = None) -> None:
        """Hand ``detection`` to the writer; ``key``: the id of the detection as ``_emit`` made it
        (its clip fields are added to a copy). One whose times may still be corrected waits."""
        key = id(detection) if key is None else key
        if key in self._unsettled:
            self._held.append((key, detection))
            return
        timed = self._timed.pop(key, None)
        if timed is not None:
            detection = dataclasses.replace(detection, **timed)
        self.writer.submit(lambda store, d=detection: store.insert_detections([d]))

    def _settle(self, force: bool = False) -> None:
        """Once the timing correction pending when they were emitted is confirmed or dismissed
        (``force``: the segment ends, and no later block can confirm it), time the detections
        it held as the segment's audio now maps, and store those whose clips are decided."""
        if not self._unsettled or (not force and self.time.pending_from() is not None):
            return
        for key, (event, _) in self._unsettled.items():
            timed = self._detection(event)
            self._timed[key] = {f: getattr(timed, f) for f in ("start_s", "end_s", "start_utc", "end_utc",
                                                              "clock_suspect")}
        self._unsettled = {}
        held, self._held = self._held, []
        for key, detection in held:
            self._store(detection, key)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, drain: threading.Event) -> None:
        try:
            self._loop(drain)
        except BaseException:
            # Whatever stopped the loop, what was heard is still stored: the detections waiting
            # for their clips first (the analysis may be what failed, and fail again at the
            # segment's end), then the open event, then the coverage not yet flushed.
            # Detections held for a pending timing correction are stored as they are timed now
            # if the segment cannot end (the analysis may be what failed: a review saw them lost).
            # The clips written first keep the open event's audio: its clip is written when the
            # segment ends (else an event held for a run that may join it lost its clip).
            settle = functools.partial(self._settle, force=True)
            for step in (self._write_waiting_clips, settle, self._end_segment, settle, self._flush_coverage):
                try:
                    step()
                except Exception:   # the first error is the one to report
                    log.exception("%s: could not store what was in memory after an error", self.source)
            raise

    def _save_waiting_clips(self) -> None:
        """Write the clips still waiting (the segment ends) and store their detections."""
        if self.clips:
            self._clips_done(self.clips.new_segment())

    def _write_waiting_clips(self) -> None:
        """Write the clips still waiting and store their detections; the segment goes on."""
        if self.clips:
            self._clips_done(self.clips.write_waiting())

    def _loop(self, drain: threading.Event) -> None:
        poll = self.config.capture.poll_s
        while True:
            try:
                block = self.blocks.queue.get(timeout=poll)
            except queue.Empty:
                self._analyse()
                if drain.is_set():
                    break
                self._idle()
                self._periodic()
                continue
            self.take(block)
            self._periodic()
        stream, frames, dropped = self.blocks.take_undelivered()
        if frames and stream == self.stream:
            self.ledger.count("dropped_blocks", self._wall(self.time.at()), dropped)
            self._lose("dropped", frames)
        self._end_segment()
        self._idle(stopping=True)
        self._flush_coverage()

    def _idle(self, stopping: bool = False) -> None:
        """Nothing queued: if the device has been silent past the stall limit, that time is lost
        to the device; say so now rather than when (if ever) it comes back. When stopping with
        the device lost, it was lost up to now: left unaccounted, the next run would count those
        seconds as the daemon's."""
        now = self.blocks.clock()
        last = self.blocks.last_callback_s
        to_the_end = stopping and self._device_lost_at_stop()
        stall = 2 * self.config.capture.block_s if to_the_end else self.config.capture.stall_s
        if last is None or now - last > stall:
            self._end_segment()
            self.ledger.add("device", self.ledger.accounted_until, self.host.wall(now if to_the_end else now - stall))

    def _device_lost_at_stop(self) -> bool:
        """Whether the capture was anything but running when it stopped (no capture: the caller
        feeds the blocks itself, and silence is all there is to go by)."""
        if self.capture is None:
            return True
        states = [state for _, state, _ in self.capture.transitions if state is not CaptureState.STOPPED]
        return bool(states) and states[-1] is not CaptureState.RUNNING

    def _periodic(self) -> None:
        now = time.monotonic()
        step = self.host.check()   # every call: cheap, and before the flag is re-read
        if step:
            log.warning("host clock stepped by %+.3f s; later times follow it", step)
            self.ledger.shift(step)
        if step or now >= self._next_ntp:
            self._next_ntp = now + self.config.ntp_check_s
            self.clock_synced = self._clock_synced_fn()
        if now >= self._next_flush:
            self._next_flush = now + self.config.flush_s
            self._flush_coverage()
        if now >= self._next_report:
            self._next_report = now + self.config.report_s
            self._report()

    def _flush_coverage(self) -> None:
        rows = self.ledger.take(self.clock_synced)
        if rows:
            self.writer.submit(lambda store: store.add_coverage(rows))

    def _report(self) -> None:
        t = self.ledger.totals
        state = self.capture.state.value if self.capture else "-"
        log.info("%s: %s; analysed %.0f s, lost %.0f s (overflow %.0f, dropped %.0f, device %.0f, daemon %.0f); "
                 "%d detection(s); queue %d/%d; overflows %d, dropped blocks %d", self.source, state,
                 t["analysed"], sum(t[k] for k in ("overflow", "dropped", "device", "daemon")), t["overflow"],
                 t["dropped"], t["device"], t["daemon"], self.detections, self.blocks.queue.qsize(),
                 self.blocks.queue.maxsize, self.blocks.overflows, self.blocks.dropped_blocks)

    def summary(self) -> ListenSummary:
        return ListenSummary(
            source=self.source, detections=self.detections,
            seconds={k: round(v, 3) for k, v in self.ledger.totals.items()},
            overflows=self.blocks.overflows, dropped_blocks=self.blocks.dropped_blocks,
            stream_opens=self.capture.opens if self.capture else 0,
            clips_saved=self.clips.saved if self.clips else 0,
            clips_skipped=self.clips.skipped if self.clips else 0)
