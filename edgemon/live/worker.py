"""The analysis worker of ``edgemon listen``: blocks in, detections and coverage out.

See ``edgemon.live.threads`` for the threads and the time base.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

from edgemon.analysis.analyzer import AnalysisStream, Analyzer, Event
from edgemon.errors import EdgemonError
from edgemon.live.capture import BlockQueue, Capture, CaptureConfig
from edgemon.live.clips import ClipConfig, ClipSaver
from edgemon.live.coverage import CoverageLedger
from edgemon.live.hostclock import HostClock, host_clock_synced
from edgemon.live.store_writer import StoreWriter
from edgemon.storage.store import Detection
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
    duration_s: float | None = None  # stop after this long (tests, benchmarks); None: until signalled


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


@dataclasses.dataclass
class _LagRun:
    """Blocks in a row whose lag is off by more than the tolerance, on one side."""

    sign: int
    segment: object
    segment_frames: int      # where it began: device frames into the segment, and the stream
    position: int
    received: float
    extreme: float           # the smallest offset (behind) or largest (ahead) seen in the run


class Listener:
    """The analysis worker: blocks -> (resample, pipeline) -> detections and coverage jobs.

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
        self.rate = 0.0
        self.anchor = 0.0          # capture-clock time of the current stream's sample 0
        self.position = 0          # frames of the current stream so far, dropped ones included
        self.segment: AnalysisStream | None = None
        # (segment seconds, capture-clock time) from which the segment's audio maps to time:
        # one at its start, one more for each re-anchoring inside it.
        self.segment_times: list[tuple[float, float]] = []
        self.segment_frames = 0    # device frames in the current segment
        self.resampler = None
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        now = time.monotonic()
        self._next_flush, self._next_report, self._next_ntp = (now + config.flush_s, now + config.report_s,
                                                               now + config.ntp_check_s)
        self._timing_reset(blocks.clock())

    # --- time and coverage -------------------------------------------------------------------

    def _at(self, position: float) -> float:
        """Capture-clock time of a stream position (frames at the device rate)."""
        return self.anchor + position / self.rate

    def _wall(self, position: float) -> float:
        return self.host.wall(self._at(position))

    def _timing_reset(self, now: float) -> None:
        self._lag_base: float | None = None
        self._lag_min = math.inf
        self._settled_at = now + self.config.settle_s
        self._last_overflow: float | None = None
        self._run: _LagRun | None = None

    def _check_timing(self, received: float, frames: int) -> None:
        """Compare the stream's time with the capture clock. The lag of a block's last sample
        behind its callback is the buffering delay; its smallest value over the first
        ``settle_s`` is the stream's own. A lag that stays more than ``resync_s`` away from it
        for ``confirm_s`` is audio that never arrived (or device clock drift): from the first
        block of that run on, the stream's audio maps to the corrected time."""
        lag = received - self._at(self.position + frames)
        if self._lag_base is None:
            self._lag_min = min(self._lag_min, lag)
            if received >= self._settled_at:
                self._lag_base = self._lag_min
            return
        off = lag - self._lag_base
        sign = 1 if off > self.config.resync_s else -1 if off < -self.config.resync_s else 0
        run = self._run
        if sign == 0 or (run is not None and run.sign != sign) or (run is not None and run.segment is not self.segment):
            self._run = run = None
        if sign == 0:
            return
        if run is None:
            self._run = run = _LagRun(sign, self.segment, self.segment_frames, self.position, received, off)
        run.extreme = min(run.extreme, off) if sign > 0 else max(run.extreme, off)
        if received - run.received < self.config.confirm_s:
            return
        self._run = None
        excess = run.extreme
        corrected = self._at(run.position) + excess   # the true time of the run's first sample
        if excess > 0:
            recent = self._last_overflow is not None and self._last_overflow >= run.received - self.config.settle_s
            kind = "overflow" if recent else "device"
            log.warning("%s: %.2f s of audio never arrived (%s); later times corrected", self.source, excess, kind)
            lost = int(round(excess * self.rate))
            self.ledger.add(kind, self._wall(self.position), self._wall(self.position + lost))
            self.position += lost
        else:
            log.warning("%s: stream %.2f s ahead of the clock; later times corrected", self.source, -excess)
            self.anchor += excess
        if self.segment is not None:
            # The segment is not cut (its events would split); later audio maps to the corrected time.
            self.segment_times.append((run.segment_frames / self.rate, corrected))

    def _lose(self, kind: str, frames: int) -> None:
        """``frames`` of the current stream are missing: end the segment, account them, skip them."""
        self._end_segment()
        self.ledger.add(kind, self._wall(self.position), self._wall(self.position + frames))
        self.position += frames

    # --- blocks ------------------------------------------------------------------------------

    def _new_stream(self, block) -> None:
        self._end_segment()
        frames = len(block.samples)
        latency = block.latency_s if 0.0 <= block.latency_s <= 5.0 else frames / block.rate  # nan fails
        self.stream, self.rate, self.position = block.stream, block.rate, 0
        self.anchor = block.received_s - latency - block.dropped_frames / block.rate
        gap = self.ledger.add("device", self.ledger.accounted_until or self._wall(0), self._wall(0))
        log.info("%s: stream %d at %g Hz, input latency %.3f s%s", self.source, block.stream, block.rate,
                 latency, f"; {gap:.1f} s not heard before it" if gap > 0.05 else "")
        self._timing_reset(block.received_s)

    def take(self, block) -> None:
        """Account one block and queue its audio for analysis."""
        if block.stream != self.stream:
            self._new_stream(block)
        if block.dropped_frames:
            self.ledger.count("dropped_blocks", self._wall(self.position), block.dropped_blocks)
            self._lose("dropped", block.dropped_frames)
        frames = len(block.samples)
        if block.overflow:
            self.ledger.count("overflows", self._wall(self.position))
            self._last_overflow = block.received_s
        self._check_timing(block.received_s, frames)
        if self.segment is None:
            self._start_segment()
        self.ledger.add("analysed", self._wall(self.position), self._wall(self.position + frames))
        self.position += frames
        self.segment_frames += frames
        samples = block.samples
        self._buffer.append(samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32))
        self._buffered += frames
        if self._buffered >= self.config.analysis_block_s * self.rate:
            self._analyse()

    def _start_segment(self) -> None:
        self.segment = self.analyzer.stream(eager=True)
        self.segment_times = [(0.0, self._at(self.position))]
        self.segment_frames = 0
        self.resampler = None if self.rate == self.rate16 else soxr.ResampleStream(
            self.rate, self.rate16, 1, dtype="float32", quality="HQ")
        if self.clips:
            self._clips_done(self.clips.new_segment())

    def _analyse(self, last: bool = False) -> None:
        if self.segment is None:
            return
        x = np.concatenate(self._buffer) if self._buffer else np.zeros(0, np.float32)
        self._buffer, self._buffered = [], 0
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x, last=last)
        if self.clips:
            self._clips_done(self.clips.push(x))
        self._emit(self.segment.push(x) if len(x) else [])

    def _end_segment(self) -> None:
        """Analyse what is buffered and close the segment: its open event is stored now."""
        if self.segment is None:
            return
        self._analyse(last=True)
        self._emit(self.segment.finish())
        if self.clips:
            self._clips_done(self.clips.new_segment())
        self.segment = None

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            start, end = self.host.wall(self._segment_time(event.start_s)), self.host.wall(self._segment_time(event.end_s))
            when = dt.datetime.fromtimestamp(start, UTC)
            detection = Detection(
                device_id=self.config.device_id, source=self.source, start_s=round(start, 3),
                end_s=round(end, 3), start_utc=when, end_utc=dt.datetime.fromtimestamp(end, UTC),
                time_source="host_clock", clock_suspect=when.year < EARLIEST_PLAUSIBLE_YEAR,
                label=event.label, confidence=event.confidence, votes=event.votes,
                bundle_id=self.analyzer.bundle.bundle_id, clock_synced=self.clock_synced, score=event.score)
            self.writer.submit(lambda store, d=detection: store.insert_detections([d]))
            self.detections += 1
            log.info("%s: %s %s .. %s (%.2f)", self.source, event.label, when.isoformat(timespec="milliseconds"),
                     dt.datetime.fromtimestamp(end, UTC).time().isoformat(timespec="milliseconds"), event.confidence)
            if self.clips:
                self.clips.request(detection, event.start_s, event.end_s)

    def _segment_time(self, seconds: float) -> float:
        """Capture-clock time of a point ``seconds`` into the current segment's audio."""
        base, at = next((b, t) for b, t in reversed(self.segment_times) if b <= seconds)
        return at + seconds - base

    def _clips_done(self, done: list[tuple[Detection, Path | None]]) -> None:
        for detection, path in done:
            if path is not None:
                self.writer.submit(lambda store, d=detection, p=str(path): store.set_clip_path(d, p))

    # --- the loop ----------------------------------------------------------------------------

    def run(self, drain: threading.Event) -> None:
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
            self.ledger.count("dropped_blocks", self._wall(self.position), dropped)
            self._lose("dropped", frames)
        self._end_segment()
        self._idle()
        self._flush_coverage()

    def _idle(self) -> None:
        """Nothing queued: if the device has been silent past the stall limit, that time is lost
        to the device; say so now rather than when (if ever) it comes back."""
        now = self.blocks.clock()
        last = self.blocks.last_callback_s
        stall = self.config.capture.stall_s
        if last is None or now - last > stall:
            self._end_segment()
            self.ledger.add("device", self.ledger.accounted_until, self.host.wall(now - stall))

    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next_ntp:
            self._next_ntp = now + self.config.ntp_check_s
            self.clock_synced = self._clock_synced_fn()
        if now >= self._next_flush:
            self._next_flush = now + self.config.flush_s
            step = self.host.check()
            if step:
                log.warning("host clock stepped by %+.3f s; later times follow it", step)
                self.ledger.shift(step)
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
