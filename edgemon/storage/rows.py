"""The rows the detections database stores, as the recorder's writers hand them over: a detection,
a live stream's coverage minute, a heartbeat; and each as the dict of its table's columns.

Kept apart from ``storage.store`` (the writer) so that what makes rows (the live worker, its
clips, coverage, health) need not import the database code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from edgemon.utc import utc_iso


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detected event in a recording or live stream.

    ``start_s``/``end_s`` are seconds from the start of ``source``. ``start_utc``/``end_utc`` are
    ISO 8601 times with a UTC offset ('Z' or '+00:00'), or None when the start time is unknown.
    ``time_source`` is one of TIME_SOURCES. ``votes`` is JSON text with the ensemble members'
    labels and probabilities; the store keeps it as it is.
    """

    device_id: str
    source: str
    start_s: float
    end_s: float
    start_utc: str | None
    end_utc: str | None
    time_source: str
    clock_suspect: bool
    label: str
    confidence: float
    votes: str
    bundle_id: str
    clip_path: str | None = None       # the detection's saved audio (live streams), if any
    clock_synced: bool | None = None   # host clock NTP-synchronised (host_clock times); None: unknown
    score: float | None = None         # the raw vote score; ``confidence`` is its calibrated probability
    clip_offset_s: float | None = None  # where in its clip the detection begins (seconds)
    clip_end_s: float | None = None     # and ends: a long event's clip holds only its first part


COVERAGE_LOSSES = ("overflow", "dropped", "device", "daemon")


@dataclasses.dataclass(frozen=True)
class CoverageMinute:
    """What happened to one UTC minute of a live stream; seconds add up over several writes.

    ``minute_utc`` is the minute's start. ``analysed_s`` went through the pipeline; the ``lost_*``
    seconds did not: ``overflow`` (the audio device's buffer overran), ``dropped`` (the capture
    queue was full: analysis slower than real time), ``device`` (device gone, stalled or being
    reopened), ``daemon`` (edgemon was not running). ``overflows`` and ``dropped_blocks`` count
    events. ``end_utc`` is the latest instant of the minute accounted for so far.
    """

    source: str
    device_id: str
    minute_utc: str | dt.datetime
    end_utc: str | dt.datetime
    analysed_s: float = 0.0
    lost_overflow_s: float = 0.0
    lost_dropped_s: float = 0.0
    lost_device_s: float = 0.0
    lost_daemon_s: float = 0.0
    overflows: int = 0
    dropped_blocks: int = 0
    clock_synced: bool | None = None


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """The daemon was alive at ``at_utc``: one row every few minutes, so an exported table shows
    when the unit ran and how it fared.

    ``run_id`` names one start of the daemon, which began at ``started_utc``; ``uptime_s`` is
    seconds since then on the monotonic clock, so it stays true when the host clock steps (order
    rows by ``id``, not by time). ``files_done``, ``audio_s`` (seconds of audio stored) and
    ``busy_s`` (seconds spent analysing and storing it) count from that start. ``state`` says
    whether work went on: 'ok', 'hold_disk' (free space below the watermark), 'hold_store' (the
    database refused a write), 'stopping'. ``disk_free_mb`` is free space where the database is,
    ``rss_mb`` the daemon's resident memory.
    """

    run_id: str
    mode: str
    device_id: str
    at_utc: str | dt.datetime
    started_utc: str | dt.datetime
    uptime_s: float
    state: str = "ok"
    bundle_id: str | None = None
    files_done: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0
    disk_free_mb: float | None = None
    rss_mb: float | None = None
    note: str | None = None


def detection_row(d: Detection, created_at: str) -> dict:
    row = dataclasses.asdict(d)
    row.update(start_utc=optional_utc(d.start_utc), end_utc=optional_utc(d.end_utc),
               clock_suspect=int(d.clock_suspect), clock_synced=optional_int(d.clock_synced),
               created_at=created_at)
    return row


def coverage_row(m: CoverageMinute, updated_at: str) -> dict:
    row = dataclasses.asdict(m)
    row.update(minute_utc=utc_iso(m.minute_utc), end_utc=utc_iso(m.end_utc),
               clock_synced=optional_int(m.clock_synced), updated_at=updated_at)
    return row


def optional_int(flag: bool | None) -> int | None:
    return None if flag is None else int(flag)


def optional_utc(value: str | dt.datetime | None) -> str | None:
    return None if value is None else utc_iso(value)


def heartbeat_row(beat: Heartbeat) -> dict:
    row = dataclasses.asdict(beat)
    row.update(at_utc=utc_iso(beat.at_utc), started_utc=utc_iso(beat.started_utc))
    return row
