"""Triggered AudioMoth recordings (``…T.WAV``): where the recorder left silence out.

With an amplitude threshold set, an AudioMoth does not write the buffers that stay below it. When
writing resumes it writes one 256-sample marker in their place: the first 32 samples are +1 or -1,
the bits (least significant first) of how many 256-sample blocks the marker stands for, itself
included; the other 224 samples are 0. The file is shorter than the time it spans, so a sample's
offset is not its time since the start: a call after a silent stretch was stored as early as the
silence was long. ``silences`` finds the markers; ``SilentStretches.elapsed`` turns a file
offset into time since the recording started. The audio itself is analysed as written (the
markers are 16 ms of near-zero samples), and offsets into the file (``start_s``) stay offsets
into the file: that is where a review or Raven finds the call.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis import audio, wav_repair
from edgemon.files.recordings import triggered_name

MARKER_SAMPLES = 256
CODE_SAMPLES = 32                 # the count's bits, one +1 or -1 sample each
MAX_SILENCE_S = 2 * 86_400        # a count beyond this is audio that only looks like a marker
_READ_SAMPLES = 1 << 18          # ~10 MB of index arrays at a time


@dataclasses.dataclass(frozen=True)
class SilentStretches:
    """The markers of one recording: ``at_s`` (file offsets, seconds, ascending) and the silence
    each stands for beyond its own length (``left_out_s``)."""

    at_s: tuple[float, ...] = ()
    left_out_s: tuple[float, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.at_s)

    @property
    def total_s(self) -> float:
        return float(sum(self.left_out_s))

    def elapsed(self, offset_s: float) -> float:
        """Seconds since the recording started at file offset ``offset_s``: the offset plus the
        silence left out before it (a marker at or before the offset counts)."""
        before = bisect.bisect_right(self.at_s, offset_s)
        return offset_s + float(sum(self.left_out_s[:before]))

    def wall_time(self, start: dt.datetime | None, offset_s: float) -> dt.datetime | None:
        """The time at file offset ``offset_s`` of a recording that started at ``start``; None
        when the start is unknown or the time is past the calendar's end (a suspect name
        '99991231_235959.WAV': watch stored no time, while classify and reanalyse crashed)."""
        try:
            return None if start is None else start + dt.timedelta(seconds=self.elapsed(offset_s))
        except OverflowError:
            return None

    def event_times(self, start: dt.datetime | None, start_s: float,
                    end_s: float) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The wall times of an event at file offsets ``[start_s, end_s)``: those of its part in the
        burst (the audio between two markers) that holds most of it, so an event never spans a
        silence. A call just after a marker has its first window begin a little before it (windows
        every 2 s): timed from there, it was stored as early as the silence was long, minutes to
        hours, and lasted as long (an output trial). ``start_s``/``end_s`` stay file offsets."""
        if not self.at_s or start is None:
            return self.wall_time(start, start_s), self.wall_time(start, end_s)
        bounds = (0.0, *self.at_s, float("inf"))
        first = bisect.bisect_right(self.at_s, start_s)            # the burst start_s lies in
        last = max(first, bisect.bisect_left(self.at_s, end_s))   # the burst end_s lies in (its end excluded)
        burst = max(range(first, last + 1),
                    key=lambda k: (min(end_s, bounds[k + 1]) - max(start_s, bounds[k]), -k))
        left_out = float(sum(self.left_out_s[:burst]))
        try:
            return (start + dt.timedelta(seconds=max(start_s, bounds[burst]) + left_out),
                    start + dt.timedelta(seconds=min(end_s, bounds[burst + 1]) + left_out))
        except OverflowError:
            return None, None

    def note(self) -> str:
        return (f"triggered recording: {len(self.at_s)} silent stretch(es), {self.total_s:.1f} s in all, "
                f"left out by the recorder; detection times count them")


def silences_of(path: str | Path) -> SilentStretches:
    """``silences`` of a recording named as triggered (``[DEVICEID_]YYYYMMDD_HHMMSST.WAV``);
    none for any other name, without reading it."""
    return silences(path) if triggered_name(Path(path).name) else SilentStretches()


def silences(path: str | Path) -> SilentStretches:
    """The silent stretches a triggered recording's markers stand for; none for a file of more
    than one channel (AudioMoth records one). Read as the analysis reads the file (a header
    never finalised through ``wav_repair``), and as far as it can be decoded: a file cut short
    keeps the markers before the break (the last read before it, up to ``_READ_SAMPLES``, is
    lost), and one that cannot be read has none. Never raises for the file: the analysis has
    said what it could read (a review: a cut ``…T.FLAC`` was quarantined here, and crashed
    ``classify``)."""
    found: list[tuple[int, int]] = []
    rate = 0
    try:
        with audio.open_decoder(Path(path)) as (f, _, stream):
            if f.channels != 1:
                return SilentStretches()
            rate = f.samplerate
            start = 0            # file offset (samples) of the block's first sample
            carry = np.zeros(0, dtype=np.int16)
            while True:
                try:
                    block = f.read(_READ_SAMPLES, dtype="int16")
                    wav_repair.check(stream)
                except (soundfile.LibsndfileError, RuntimeError, OSError):
                    break        # where decoding stops, as for the analysis
                if not len(block):
                    break
                data = np.concatenate([carry, block])
                base = start - len(carry)
                found.extend((base + p, blocks) for p, blocks in _markers(data))
                start += len(block)
                # A marker across two reads is found in the next; one wholly in the carry (255
                # samples) cannot be, so none is found twice.
                carry = data[-(MARKER_SAMPLES - 1):]
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError):
        pass
    at, left = [], []
    for p, blocks in found:
        silent = (blocks - 1) * MARKER_SAMPLES / rate
        if 0 < silent <= MAX_SILENCE_S:
            at.append(p / rate)
            left.append(silent)
    return SilentStretches(tuple(at), tuple(left))


def _markers(data: np.ndarray) -> list[tuple[int, int]]:
    """(offset, blocks) of every marker wholly in ``data``: 32 samples of +-1, then 224 of 0."""
    n = len(data) - MARKER_SAMPLES + 1
    if n <= 0:
        return []
    unit = np.abs(data.astype(np.int32)) == 1
    zero = data == 0
    units = np.concatenate([[0], np.cumsum(unit)])
    zeros = np.concatenate([[0], np.cumsum(zero)])
    p = np.arange(n)
    coded = units[p + CODE_SAMPLES] - units[p] == CODE_SAMPLES
    blank = zeros[p + MARKER_SAMPLES] - zeros[p + CODE_SAMPLES] == MARKER_SAMPLES - CODE_SAMPLES
    weights = 1 << np.arange(CODE_SAMPLES, dtype=np.int64)
    return [(int(q), int(((data[q:q + CODE_SAMPLES] == 1) * weights).sum()))
            for q in np.flatnonzero(coded & blank)]
