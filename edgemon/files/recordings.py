"""Recorder files: when a recording started (UTC, and how we know) and whether it is complete.

AudioMoth-style recorders name each file by its start time, put a comment and a GUANO chunk in the
WAV header, and write that header last, at close. This module reads those by hand (``struct``, a
bounded number of bytes, no audio decoding) so detections get wall-clock times and the daemon leaves
alone a file the recorder is still writing.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from edgemon.analysis.containers import MAX_FLAC_BLOCKS, wav_chunks
from edgemon.utc import UTC

MAX_HEADER_READ = 4 * 1024 * 1024  # bytes of non-audio chunks read from one file, at most
EARLIEST_PLAUSIBLE_YEAR = 2000  # recorders without a set clock start at 1970 (or their epoch)
FUTURE_SLACK = timedelta(days=1)  # host and recorder clocks and zones may differ by hours

# AudioMoth: [DEVICEID_]YYYYMMDD_HHMMSS[T].WAV, DEVICEID in hex; T marks a triggered recording.
# Other recorders and people put other prefixes before the same stamp (Song Meter
# "SMM07257_20230201_060000.wav", a site "S10_…", "site 7 …"): read the same way, since the
# alternative, the file's mtime, is the time a card was copied (a trial saw years-late detections).
# A copy keeps the name with a suffix file managers add ("… (1).WAV", "… - Copy.WAV", "… copy.WAV",
# "… 2.WAV"):
# its time is still the name's (a newcomer trial's copy was stored at the copy's mtime).
_DATED_NAME = re.compile(
    r"^(?:(?P<prefix>.*)[_ -])?(?P<date>\d{8})_(?P<time>\d{6})(?P<trig>T?)"
    r"(?P<copy> ?\(\d+\)| copy(?: \d+)?| - copy(?: \(\d+\))?| \d+)?\.(?:wav|flac)$", re.IGNORECASE
)
# Older AudioMoth firmware: eight hex digits of Unix time, e.g. 5A8C5A83.WAV.
_HEX_NAME = re.compile(r"^(?P<hex>[0-9A-F]{8})\.(?:wav|flac)$", re.IGNORECASE)
# "Recorded at 12:00:00 01/02/2024 (UTC+5:30) by AudioMoth ..." (day first; offset optional).
_COMMENT = re.compile(
    r"Recorded at (\d{1,2}):(\d{2}):(\d{2}) (\d{1,2})/(\d{1,2})/(\d{4}) "
    r"\(UTC(?:([+-])(\d{1,2})(?::(\d{2}))?)?\)"
)


@dataclass(frozen=True)
class RecordingTime:
    """When a recording started, where that came from, and whether the recorder clock looks off."""

    start_utc: datetime | None  # timezone-aware UTC
    source: str  # 'filename' | 'metadata' | 'mtime'
    suspect: bool  # clock plainly unset (year < 2000) or more than a day in the future
    detail: str  # which pattern or field gave the time, and why it is suspect


def _parse_filename(name: str) -> tuple[datetime, str, bool, bool] | None:
    """-> (UTC time, detail, whether the name holds wall-clock time that a zone could shift,
    whether a recorder wrote it: an AudioMoth name, not another prefix a person or tool added)."""
    base = Path(name).name
    if m := _DATED_NAME.match(base):
        d, t = m["date"], m["time"]
        try:
            start = datetime(int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]),
                             int(t[4:]), tzinfo=UTC)
        except ValueError:  # month 13, 31 February, hour 25 ...
            return None
        kind = "triggered " if m["trig"] else ""
        copy = f" (a copy's name: {m['copy'].strip()!r} after it)" if m["copy"] else ""
        if m["prefix"] is None or re.fullmatch(r"[0-9A-Fa-f]+", m["prefix"]):
            return start, f"{kind}AudioMoth name YYYYMMDD_HHMMSS{copy}", True, True
        # Wall clock of an unknown zone: UTC unless the header names the zone (as for AudioMoth).
        return start, f"name PREFIX_YYYYMMDD_HHMMSS read as UTC (prefix {m['prefix']!r}){copy}", True, False
    if (m := _HEX_NAME.match(base)) and not _is_date(m["hex"]):
        return datetime.fromtimestamp(int(m["hex"], 16), UTC), "hex Unix-time name", False, True
    return None


def _is_date(digits: str) -> bool:
    """Whether eight characters are a date YYYYMMDD (1990-2099): a person's "20230201.WAV" names
    a day, not hex Unix time (which would read as 1987; AudioMoth dates from 2017)."""
    try:
        return digits.isdigit() and 1990 <= datetime.strptime(digits, "%Y%m%d").year <= 2099
    except ValueError:
        return False


def time_from_filename(name: str) -> datetime | None:
    """AudioMoth file name (or path) -> start time as aware UTC datetime; None if none matches.

    ``[DEVICEID_]YYYYMMDD_HHMMSS[T].WAV|.FLAC`` (any case) is read as UTC, the AudioMoth default;
    ``XXXXXXXX.WAV`` (8 hex digits) is Unix time in seconds, unless the digits are a date
    ``YYYYMMDD`` (a day with no time: None). Invalid dates give None.
    """
    parsed = _parse_filename(name)
    return parsed[0] if parsed else None


def _read_fmt(body: bytes, meta: dict) -> None:
    if len(body) >= 16:
        fmt_tag, channels, rate, _byte_rate, block_align, bits = struct.unpack("<HHIIHH", body[:16])
        meta.update(audio_format=fmt_tag, channels=channels, sample_rate=rate,
                    block_align=block_align, bits_per_sample=bits)


def _text(raw: bytes) -> str:
    """C-string bytes -> str; recorders are not consistent about NUL padding or encoding."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def _read_list(body: bytes, meta: dict) -> None:
    if body[:4] != b"INFO":
        return
    info, i = meta.setdefault("info", {}), 4
    while i + 8 <= len(body):
        sub_id, sub_size = struct.unpack("<4sI", body[i:i + 8])
        info[sub_id.decode("latin-1")] = _text(body[i + 8:i + 8 + sub_size])
        i += 8 + sub_size + (sub_size & 1)
    for key, field in (("ICMT", "comment"), ("IART", "artist")):
        if key in info:
            meta[field] = info[key]


def _read_guano(body: bytes, meta: dict) -> None:
    """GUANO: UTF-8 lines of ``Key: value``; keys may hold ``|`` namespaces but never ``:``."""
    fields = {}
    for line in body.decode("utf-8", "replace").strip("\0").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    meta["guano"] = fields


_READERS = {b"fmt ": _read_fmt, b"LIST": _read_list, b"guan": _read_guano}
def _walk_chunks(f: BinaryIO, size: int, meta: dict) -> None:
    """Fill ``meta`` from the chunks after the 12-byte RIFF header (``containers.wav_chunks``).
    Seeks past audio rather than reading it. A chunk running past end of file is read as far as
    it goes."""
    budget = MAX_HEADER_READ
    for chunk_id, body_at, chunk_size in wav_chunks(f):
        if chunk_size > size - body_at:
            meta["truncated"] = True
        if chunk_id == b"data" and "data_offset" not in meta:
            meta["data_offset"], meta["data_size"] = body_at, chunk_size
        elif chunk_id in _READERS and budget > 0:
            body = f.read(min(chunk_size, budget))
            budget -= len(body)
            _READERS[chunk_id](body, meta)


def read_wav_metadata(path: str | Path) -> dict:
    """Header fields of a WAV file, read by hand with at most ~MAX_HEADER_READ bytes of reading.

    Always ``file_size`` (bytes). For a RIFF/WAVE file also, where present: ``riff_size`` and
    ``data_size`` (as declared, bytes), ``data_offset`` (bytes), ``sample_rate`` (Hz),
    ``channels``, ``bits_per_sample``, ``block_align`` (bytes per frame), ``audio_format``,
    ``info`` (all LIST/INFO fields), ``comment`` (ICMT), ``artist`` (IART), ``guano`` (dict of the
    ``guan`` chunk's ``Key: value`` lines) and ``truncated`` (a chunk runs past end of file).
    Truncated files and lying sizes give what was found. Raises ``OSError`` if unopenable.
    """
    with open(path, "rb") as f:
        meta: dict = {"file_size": os.fstat(f.fileno()).st_size}
        head = f.read(12)
        if len(head) == 12 and head[:4] == b"RIFF" and head[8:] == b"WAVE":
            meta["riff_size"] = struct.unpack("<I", head[4:8])[0]
            _walk_chunks(f, meta["file_size"], meta)
    return meta


def _read_vorbis_comment(body: bytes, meta: dict) -> None:
    """A FLAC VORBIS_COMMENT block: vendor string, then ``KEY=value`` entries, each length-prefixed
    (32-bit little-endian). ``COMMENT`` (or ``DESCRIPTION``) is the AudioMoth comment's place when
    a recording is kept as FLAC (a converter, or soundfile's ``comment``)."""
    fields, i = {}, 0
    try:
        vendor = struct.unpack_from("<I", body, i)[0]
        i += 4 + vendor
        count = struct.unpack_from("<I", body, i)[0]
        i += 4
        for _ in range(count):
            size = struct.unpack_from("<I", body, i)[0]
            key, sep, value = body[i + 4:i + 4 + size].decode("utf-8", "replace").partition("=")
            i += 4 + size
            if sep:
                fields[key.strip().upper()] = value.strip()
    except struct.error:   # cut short: what was read
        pass
    meta["info"] = fields
    for key in ("COMMENT", "DESCRIPTION"):
        if key in fields:
            meta["comment"] = fields[key]
            break


def read_flac_metadata(path: str | Path) -> dict:
    """Header fields of a FLAC file: ``file_size``, and from its VORBIS_COMMENT block ``info`` (the
    ``KEY=value`` fields, keys upper-cased) and ``comment``. At most ~MAX_HEADER_READ bytes read;
    no audio decoded. Raises ``OSError`` if unopenable."""
    with open(path, "rb") as f:
        meta: dict = {"file_size": os.fstat(f.fileno()).st_size}
        if f.read(4) != b"fLaC":
            return meta
        pos = 4
        for _ in range(MAX_FLAC_BLOCKS):
            f.seek(pos)
            block = f.read(4)
            if len(block) < 4:
                break
            size = int.from_bytes(block[1:], "big")
            if block[0] & 0x7F == 4 and size <= MAX_HEADER_READ:
                _read_vorbis_comment(f.read(size), meta)
            pos += 4 + size
            if block[0] & 0x80:   # the last metadata block
                break
    return meta


def read_metadata(path: Path) -> dict:
    """``read_wav_metadata`` or ``read_flac_metadata`` by the name's suffix; {} for other files."""
    suffix = path.suffix.lower()
    return read_wav_metadata(path) if suffix == ".wav" else read_flac_metadata(path) if suffix == ".flac" else {}


def _metadata_time(meta: dict) -> tuple[datetime, str] | None:
    """-> (aware time in the recorder's own UTC offset, detail): GUANO Timestamp, else comment."""
    stamp = meta.get("guano", {}).get("Timestamp", "")
    try:
        start = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        start = None  # unreadable: fall back to the comment
    if start is not None and start.tzinfo is None:
        return start.replace(tzinfo=UTC), "GUANO Timestamp (no offset: taken as UTC)"
    if start is not None:
        return start, "GUANO Timestamp"
    if m := _COMMENT.search(meta.get("comment", "")):
        hh, mi, ss, dd, mo, yyyy, sign, off_h, off_m = m.groups()
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        try:
            zone = timezone(-offset if sign == "-" else offset)
            start = datetime(int(yyyy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=zone)
        except ValueError:  # invalid date, or an offset of a day or more
            return None
        return start, "AudioMoth comment 'Recorded at HH:MM:SS DD/MM/YYYY (UTC±h)'"
    return None


def time_from_metadata(meta: dict) -> datetime | None:
    """``read_wav_metadata`` result -> start time as aware UTC datetime, or None.

    GUANO ``Timestamp`` (ISO 8601; no offset means UTC) first, else the AudioMoth comment
    ``Recorded at HH:MM:SS DD/MM/YYYY (UTC[±H[:MM]])``, converted from its offset to UTC.
    """
    found = _metadata_time(meta)
    return found[0].astimezone(UTC) if found else None


def _suspect_reason(start: datetime, now: datetime | None) -> str:
    """Why a recorder clock looks wrong ('' when it looks fine). ``now`` None: the host's clock
    cannot be trusted, so a time ahead of it says nothing about the recorder's."""
    if start.year < EARLIEST_PLAUSIBLE_YEAR:
        return f"clock looks unset (year {start.year})"
    if now is not None and start > now + FUTURE_SLACK:
        return f"clock {(start - now).total_seconds() / 86400:.1f} days ahead of the host"
    return ""


TIMESYNC = Path("/run/systemd/timesync")   # systemd-timesyncd: 'synchronized' appears once it has synced


def host_now(timesync: Path = TIMESYNC) -> datetime | None:
    """This host's UTC time, or None when it is not to be trusted: before 2000 (a Pi without a
    real-time clock boots at 1970), or timesyncd running and not yet synchronised (fake-hwclock
    restores the time the Pi was switched off, days behind). Judged by it, every good recording
    looked days ahead, was stored as a suspect clock for good, and left the fleet's day tables."""
    now = datetime.now(UTC)
    if now.year < EARLIEST_PLAUSIBLE_YEAR:
        return None
    if timesync.is_dir() and not (timesync / "synchronized").exists():
        return None
    return now


def _flac_duration_s(path: Path) -> float | None:
    """Seconds of audio per the FLAC STREAMINFO block (sample rate 20 bits, total samples 36)."""
    with open(path, "rb") as f:
        head = f.read(42)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    bits = int.from_bytes(head[18:26], "big")
    rate, samples = bits >> 44, bits & ((1 << 36) - 1)
    return samples / rate if rate and samples else None


def _duration_s(path: Path, meta: dict) -> float | None:
    """Seconds of audio the file holds now, from its header; None when unknown."""
    if path.suffix.lower() == ".flac":
        return _flac_duration_s(path)
    rate, frame = meta.get("sample_rate", 0), meta.get("block_align", 0)
    if not frame:
        frame = meta.get("channels", 0) * ((meta.get("bits_per_sample", 0) + 7) // 8)
    if not (rate and frame and "data_offset" in meta):
        return None
    held = meta["file_size"] - meta["data_offset"]
    declared = meta["data_size"]
    # A header never finalised says 0 (or all ones): what lies after it is read as audio
    # (``analysis.wav_repair``), so that is its length, and the isolated child's time limit.
    return (min(declared, held) if declared not in (0, 0xFFFFFFFF) else max(0, held)) / frame / rate


def audio_duration_s(path: Path) -> float | None:
    """Seconds of audio a WAV or FLAC file holds, from its header alone (a few hundred bytes
    read); None when the header does not say or the file cannot be read."""
    path = Path(path)
    try:
        meta = read_wav_metadata(path) if path.suffix.lower() == ".wav" else {}
        return _duration_s(path, meta)
    except OSError:
        return None


def _from_mtime(path: Path, meta: dict, now: datetime | None) -> RecordingTime:
    """The file's last write (the end of recording) minus its duration, if the header tells it."""
    mtime = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=path.stat().st_mtime_ns // 1000)
    duration = _duration_s(path, meta)
    start = mtime - timedelta(seconds=duration) if duration else mtime
    detail = f"file mtime minus {duration:.3f} s of audio" if duration else "file mtime"
    reason = _suspect_reason(start, now)
    return RecordingTime(start, "mtime", bool(reason), f"{detail}; {reason}" if reason else detail)


def _name_in_zone(named: datetime, stamped: datetime) -> bool:
    """Whether a name read as UTC shows the same wall clock as a metadata time with a non-zero
    offset (AudioMoth names files in its configured zone, so such a name is local time)."""
    if not stamped.utcoffset():
        return False
    gap = named.replace(tzinfo=None) - stamped.replace(tzinfo=None)
    return abs(gap) <= timedelta(seconds=2)


def recording_time(path: Path, now: datetime | None = None) -> RecordingTime:
    """Start time of a recording in UTC: file name, else WAV or FLAC metadata, else file mtime.

    A suspect clock (year < 2000, or more than a day after ``now``, default the host's UTC time
    when it can be trusted, ``host_now``; a naive ``now`` is taken as UTC) is still returned,
    flagged, unless the next source (file name -> metadata) gives a sound time. When the WAV
    comment or GUANO says the recorder ran in a non-UTC zone and the file name shows that zone's
    wall clock, the name is converted with it.
    Raises ``OSError`` when the file cannot be read.
    """
    path = Path(path)
    now = host_now() if now is None else (now if now.tzinfo else now.replace(tzinfo=UTC))
    meta = read_metadata(path)
    stamped = _metadata_time(meta)
    found: list[tuple[str, datetime, str]] = []
    if named := _parse_filename(path.name):
        start, detail, wall_clock, recorders = named
        if wall_clock and stamped and _name_in_zone(start, stamped[0]):
            zone = stamped[0].tzinfo
            start = start.replace(tzinfo=zone).astimezone(UTC)
            detail += f" in recorder zone {zone} (from {stamped[1]})"
        found.append(("filename", start, detail))
    if stamped:
        # A stamp after another prefix may be a tool's (an export's time): the recorder's own
        # header time comes first then (a review saw a zoned GUANO time overridden by such a name).
        found.insert(0 if named and not named[3] else len(found), ("metadata", stamped[0].astimezone(UTC), stamped[1]))
    for source, start, detail in found:
        if not _suspect_reason(start, now):
            return RecordingTime(start, source, False, detail)
    if found:
        source, start, detail = found[0]
        return RecordingTime(start, source, True, f"{detail}; {_suspect_reason(start, now)}")
    return _from_mtime(path, meta, now)


def wav_header_consistent(path: str | Path) -> tuple[bool, str]:
    """(True, reason) when a WAV's header describes the bytes on disk; (False, why) otherwise.

    AudioMoth writes its header at close, so a file it is still writing has zero RIFF and data
    sizes. Non-WAV files (e.g. FLAC) give (True, "not a WAV"): use ``StabilityTracker`` for them.
    """
    path = Path(path)
    if path.suffix.lower() != ".wav":
        return True, "not a WAV"
    try:
        meta = read_wav_metadata(path)
    except OSError as exc:
        return False, f"cannot read: {exc}"
    size = meta["file_size"]
    if size == 0:
        return False, "empty file (0 bytes)"
    if "riff_size" not in meta:
        return False, "not a RIFF/WAVE file"
    riff = meta["riff_size"]
    if riff in (0, 0xFFFFFFFF):
        return False, f"RIFF size {riff}: header not yet finalised"
    if "sample_rate" not in meta:
        return False, "no fmt chunk"
    if "data_offset" not in meta:
        return False, "no data chunk"
    declared, held = meta["data_size"], size - meta["data_offset"]
    if declared == 0:
        return False, "data size 0: header not yet finalised"
    if declared > held:
        return False, f"data chunk declares {declared} bytes but file holds {held}"
    if riff not in (size - 8, size - 9):  # size - 9: a trailing pad byte left out of the count
        return False, f"RIFF size {riff} but file holds {size - 8} bytes after the RIFF header"
    return True, "header consistent"


class StabilityTracker:
    """Says when a file has stopped changing: the same (size, mtime_ns) for ``min_age_s`` seconds.

    Ages come from the injected monotonic ``clock`` (seconds), never wall time, so a host clock
    step (a Pi without RTC syncing NTP) neither releases a file early nor holds it forever.
    Not thread-safe: one thread (the ingest loop) owns it.
    """

    def __init__(self, min_age_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if min_age_s < 0:
            raise ValueError(f"min_age_s must be >= 0, got {min_age_s}")
        self.min_age_s = min_age_s
        self._clock = clock
        self._seen: dict[str, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen)

    def observe(self, path: str | Path, size: int, mtime_ns: int) -> bool:
        """Record one look at ``path`` (size in bytes, mtime in ns); True once it is stable."""
        key, now = os.fspath(path), self._clock()
        seen = self._seen.get(key)
        if seen is None or seen[:2] != (size, mtime_ns):
            self._seen[key] = (size, mtime_ns, now)
            return self.min_age_s == 0
        return now - seen[2] >= self.min_age_s

    def forget(self, path: str | Path) -> None:
        """Drop what is known about ``path`` (ingested or deleted)."""
        self._seen.pop(os.fspath(path), None)
