"""The time base of one live stream opening: which capture-clock instant each of its frames was
heard at, kept true through audio that never arrived and through device clock drift.

Capture-clock times are ``time.monotonic`` seconds (``Block.received_s``); turning them into host
(UTC) time is ``HostClock``'s job. Nothing here touches audio: a block is only its frame count
and the time its callback ran, so the rules can be tested with numbers alone.

The stream is anchored once, at its first block: sample 0 was heard at the callback time minus
the device's reported input latency (minus any frames dropped before that block). After that a
frame's time is ``anchor + position / rate``. The lag of each block's last frame behind its
callback is buffering delay; its smallest value over the first ``settle_s`` is the stream's own.
A lag that stays more than ``resync_s`` away from it for ``confirm_s`` is not jitter:

- behind: audio never arrived (an overflow nobody reported, a stall) or the device clock is
  slow; the missing frames are skipped (``position`` moves on) and returned as a ``Correction``
  for coverage to count as lost;
- ahead: the device clock is fast; the anchor moves back.

Either way the correction applies from the first block of the run on. An analysis segment that
spans it is not cut (its events would split): the segment keeps a list of (segment seconds,
capture time) points, and ``segment_time`` maps a point in the segment's audio through the last
one at or before it.
"""

from __future__ import annotations

import dataclasses
import math

MAX_PLAUSIBLE_LATENCY_S = 5.0   # PortAudio's latency outside [0, this] (or nan) is not believed


@dataclasses.dataclass(frozen=True)
class TimeBaseConfig:
    """Seconds. ``resync_s``: lag off its learnt value by more than this is a candidate correction;
    ``settle_s``: stream time over which the stream's own lag is learnt (and an overflow counts as
    the cause of a loss found this soon after it); ``confirm_s``: how long an off lag must last."""

    resync_s: float = 1.0
    settle_s: float = 5.0
    confirm_s: float = 2.0


@dataclasses.dataclass(frozen=True)
class Correction:
    """A confirmed correction. ``excess_s`` > 0: that much audio never arrived, ``cause`` is
    'overflow' (PortAudio reported one within ``settle_s`` before) or 'device', and capture-clock
    ``[lost_from_s, lost_to_s)`` is the stretch skipped; ``excess_s`` < 0: the stream ran ahead,
    ``cause`` is 'ahead' and nothing was skipped (``lost_from_s == lost_to_s``)."""

    excess_s: float
    cause: str
    lost_from_s: float
    lost_to_s: float


@dataclasses.dataclass
class _LagRun:
    """Blocks in a row whose lag is off by more than the tolerance, on one side."""

    sign: int
    segment: int | None      # the analysis segment open when it began (its serial)
    segment_frames: int      # where it began: frames into that segment, and into the stream
    position: int
    received: float
    extreme: float           # the smallest offset (behind) or largest (ahead) seen in the run


class TimeBase:
    """Frames of one stream opening -> capture-clock seconds.

    Made at the stream's first block: ``rate`` Hz; ``received_s``, the capture clock when its
    callback ran; ``latency_s``, PortAudio's input latency (nan when unknown); ``frames``, the
    block's length; ``dropped_frames``, frames of this stream lost before it. ``position`` counts
    the stream's frames so far, dropped and lost ones included.

    Per block, in order: ``skip`` for frames dropped before it, ``overflowed`` when PortAudio
    flagged one, ``check`` (which may return a ``Correction``), then ``advance`` by its frames.
    """

    def __init__(self, rate: float, received_s: float, latency_s: float, frames: int, dropped_frames: int = 0,
                 config: TimeBaseConfig = TimeBaseConfig()):
        self.config = config
        self.rate = rate
        # nan fails the comparison too
        self.latency_s = latency_s if 0.0 <= latency_s <= MAX_PLAUSIBLE_LATENCY_S else frames / rate
        self.anchor = received_s - self.latency_s - dropped_frames / rate   # capture time of sample 0
        self.position = 0
        self._lag_base: float | None = None
        self._lag_min = math.inf
        self._settled_at = received_s + config.settle_s
        self._last_overflow: float | None = None
        self._run: _LagRun | None = None
        self._segments = 0
        self._segment: int | None = None    # serial of the open segment
        self._segment_frames = 0            # frames in it so far
        # (segment seconds, capture time) from which the segment's audio maps to time: one at its
        # start, one more for each correction inside it.
        self._segment_times: list[tuple[float, float]] = []

    def at(self, position: float | None = None) -> float:
        """Capture-clock time of a stream position (frames at ``rate``; default: the current one)."""
        return self.anchor + (self.position if position is None else position) / self.rate

    def advance(self, frames: int) -> tuple[float, float]:
        """``frames`` were heard: the capture-clock stretch they cover, [start, end)."""
        start = self.at()
        self.position += frames
        if self._segment is not None:
            self._segment_frames += frames
        return start, self.at()

    def skip(self, frames: int) -> tuple[float, float]:
        """``frames`` of the stream are missing (dropped): the stretch they would have covered.
        The open segment, if any, must have been ended first (missing audio cuts a segment)."""
        start = self.at()
        self.position += frames
        return start, self.at()

    def overflowed(self, received_s: float) -> None:
        """PortAudio flagged an input overflow on the block received at ``received_s``."""
        self._last_overflow = received_s

    def check(self, received_s: float, frames: int) -> Correction | None:
        """Compare the stream's time with the capture clock for a block of ``frames`` received at
        ``received_s`` (before ``advance``); a ``Correction`` when a run of off lags is confirmed."""
        lag = received_s - self.at(self.position + frames)
        if self._lag_base is None:
            self._lag_min = min(self._lag_min, lag)
            if received_s >= self._settled_at:
                self._lag_base = self._lag_min
            return None
        off = lag - self._lag_base
        resync = self.config.resync_s
        sign = 1 if off > resync else -1 if off < -resync else 0
        run = self._run
        if sign == 0 or (run is not None and (run.sign != sign or run.segment != self._segment)):
            self._run = run = None
        if sign == 0:
            return None
        if run is None:
            self._run = run = _LagRun(sign, self._segment, self._segment_frames, self.position, received_s, off)
        run.extreme = min(run.extreme, off) if sign > 0 else max(run.extreme, off)
        if received_s - run.received < self.config.confirm_s:
            return None
        self._run = None
        excess = run.extreme
        corrected = self.at(run.position) + excess   # the true time of the run's first frame
        if excess > 0:
            recent = self._last_overflow is not None and self._last_overflow >= run.received - self.config.settle_s
            lost = self.skip(int(round(excess * self.rate)))
            correction = Correction(excess, "overflow" if recent else "device", *lost)
        else:
            self.anchor += excess
            correction = Correction(excess, "ahead", self.at(), self.at())
        if self._segment is not None:
            self._segment_times.append((run.segment_frames / self.rate, corrected))
        return correction

    def pending_from(self) -> float | None:
        """Seconds into the open segment's audio where a run of off lags began that is neither
        confirmed nor dismissed yet (None: none): times after it may still be corrected."""
        run = self._run
        if run is None or run.segment is None or run.segment != self._segment:
            return None
        return run.segment_frames / self.rate

    # --- analysis segments: stretches of contiguous audio -------------------------------------

    def start_segment(self) -> None:
        """A segment starts at the current position."""
        self._segments += 1
        self._segment = self._segments
        self._segment_frames = 0
        self._segment_times = [(0.0, self.at())]

    def end_segment(self) -> None:
        """The open segment is over (after its last ``segment_time`` question)."""
        self._segment = None

    def segment_time(self, seconds: float) -> float:
        """Capture-clock time of a point ``seconds`` into the open segment's audio."""
        base, at = next((b, t) for b, t in reversed(self._segment_times) if b <= seconds)
        return at + seconds - base
