"""Recorder files: when a recording started (UTC, and how we know) and how long it is.

AudioMoth-style recorders name each file by its start time and put a comment and a GUANO chunk in
the WAV header. This module reads those (through ``edgemon.files.headers``: a bounded number of
bytes, no audio decoding) so detections get wall-clock times. Whether a file is complete yet is
``edgemon.files.completeness``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path

import soundfile

from edgemon.analysis import wav_repair
from edgemon.files.completeness import decodes_to_its_end
from edgemon.files.headers import read_metadata, read_wav_metadata
from edgemon.utc import UTC

# Recorders without a set clock start at 1970, or at their real-time clock's epoch, 2000-01-01
# (DS3231, PCF8523 and many recorders' own clocks restart there when they lose power).
EARLIEST_PLAUSIBLE_YEAR = 2001
FUTURE_SLACK = timedelta(days=1)  # host and recorder clocks and zones may differ by hours

# AudioMoth: [DEVICEID_]YYYYMMDD_HHMMSS[T].WAV, DEVICEID in hex; T marks a triggered recording.
# Other recorders and people put other prefixes before the same stamp (Song Meter
# "SMM07257_20230201_060000.wav", a site "S10_…", "site 7 …"): read the same way, since the
# alternative, the file's mtime, is the time a card was copied (a trial saw years-late detections).
# A copy keeps the name with a suffix file managers add ("… (1).WAV", "… - Copy.WAV", "… copy.WAV",
# "… 2.WAV"):
# its time is still the name's (a newcomer trial's copy was stored at the copy's mtime).
# A Frontier Labs BAR before firmware 3 adds "_REC" and perhaps its GPS position in brackets
# ("20181101_060000_REC [-27.3866 152.8761].flac"): a wall clock like the others.
# A Song Meter whose clock a GPS set puts "$" between date and time ("SM3_0_20161023$195550.wav"):
# the best-timed recordings were timed by their mtime.
# Any audio ``classify`` reads: an MP3 converted from a recording keeps its name (a newcomer trial
# saw 20240103_110000.mp3 timed by its mtime).
# DOTALL and \Z: a prefix may hold a newline (a name a person typed), and a name that ends in one
# ('….WAV\n') is no recording's name, as the watch's suffix test has it.
_AUDIO = r"\.(?:wav|flac|mp3|ogg|oga|opus|aiff?|w64|caf)\Z"
_DATED_NAME = re.compile(
    r"^(?:(?P<prefix>.*)[_ -])?(?P<date>\d{8})(?P<sep>[_$])(?P<time>\d{6})(?P<trig>T?)(?P<rec>_rec(?: \[.*\])?)?"
    r"(?P<copy> ?\(\d+\)| copy(?: \d+)?| - copy(?: \(\d+\))?| \d+)?" + _AUDIO, re.IGNORECASE | re.DOTALL
)
# Frontier Labs BAR-LT (the Australian Acoustic Observatory's sensors): the ISO 8601 basic time
# with the recorder's UTC offset, then "_REC" or "_Rec2" and perhaps its GPS position
# ("20191125T000000+1000_REC.flac", "20211004T200000+0000_Rec2_-18.1883+144.5414.flac"). The
# offset makes it an instant, not a wall clock; unread, such recordings were timed by their mtime.
_ISO_NAME = re.compile(
    r"^(?:(?P<prefix>.*)[_ -])?(?P<date>\d{8})T(?P<time>\d{6})(?P<zone>Z|[+-]\d{4})(?P<rec>_rec.*)?" + _AUDIO,
    re.IGNORECASE | re.DOTALL
)
# Older AudioMoth firmware: eight hex digits of Unix time, e.g. 5A8C5A83.WAV.
_HEX_NAME = re.compile(r"^(?P<hex>[0-9A-F]{8})" + _AUDIO, re.IGNORECASE)
# "Recorded at 12:00:00 01/02/2024 (UTC+5:30) by AudioMoth ..." (day first; offset optional).
# AudioMoth Live and the USB Microphone apps add milliseconds, "12:00:00.123": without them read,
# such a recording (named 20240201_120000_123.WAV) was timed by its mtime.
_COMMENT = re.compile(
    r"Recorded at (\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))? (\d{1,2})/(\d{1,2})/(\d{4}) "
    r"\(UTC(?:([+-])(\d{1,2})(?::(\d{2}))?)?\)"
)


@dataclass(frozen=True)
class RecordingTime:
    """When a recording started, where that came from, and whether the recorder clock looks off."""

    start_utc: datetime | None  # timezone-aware UTC
    source: str  # 'filename' | 'metadata' | 'mtime'
    suspect: bool  # clock plainly unset (year < 2001) or more than a day in the future
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
            maker = "Frontier Labs name YYYYMMDD_HHMMSS_REC" if m["rec"] else f"{kind}AudioMoth name YYYYMMDD_HHMMSS"
            return start, f"{maker}{copy}", True, True
        # Wall clock of an unknown zone: UTC unless the header names the zone (as for AudioMoth).
        return start, f"name PREFIX_YYYYMMDD{m['sep']}HHMMSS read as UTC (prefix {m['prefix']!r}){copy}", True, False
    if m := _ISO_NAME.match(base):
        return _iso_name_time(m)
    if (m := _HEX_NAME.match(base)) and not _is_date(m["hex"]):
        return datetime.fromtimestamp(int(m["hex"], 16), UTC), "hex Unix-time name", False, True
    return None


def _iso_name_time(m: re.Match) -> tuple[datetime, str, bool, bool] | None:
    """A BAR-LT name's instant (``_ISO_NAME``): its wall clock less its own UTC offset."""
    d, t, zone = m["date"], m["time"], m["zone"].upper()
    offset = timedelta() if zone == "Z" else \
        (1 if zone[0] == "+" else -1) * timedelta(hours=int(zone[1:3]), minutes=int(zone[3:]))
    try:
        start = datetime(int(d[:4]), int(d[4:6]), int(d[6:]), int(t[:2]), int(t[2:4]), int(t[4:]),
                         tzinfo=timezone(offset)).astimezone(UTC)
    except (ValueError, OverflowError):   # no such date, an offset of a day or more, past the calendar
        return None
    return start, f"name YYYYMMDDTHHMMSS{zone} (ISO 8601 with the recorder's UTC offset)", False, m["prefix"] is None


def _impossible_stamp(name: str) -> str | None:
    """A recorder-style stamp in ``name`` that is no date and time ('20230229_000000': no 29
    February in 2023), else None: said with the mtime it is timed by, since the message asked for
    such a name when the name was one."""
    m = _DATED_NAME.match(Path(name).name)
    return f"{m['date']}{m['sep']}{m['time']}" if m and _parse_filename(name) is None else None


def triggered_name(name: str) -> bool:
    """Whether ``name`` is a triggered recording's (``…YYYYMMDD_HHMMSST.WAV``): its recorder left
    silent stretches out (``files.triggered``)."""
    m = _DATED_NAME.match(Path(name).name)
    return bool(m and m["trig"])


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


def _metadata_time(meta: dict, clock: tzinfo | None = None) -> tuple[datetime, str, bool] | None:
    """-> (aware time in the recorder's own UTC offset, detail, whether the header gave that offset
    itself, even UTC): GUANO Timestamp, else comment. A Timestamp without an offset is in
    ``clock``, the zone the recorder's clock was set to (None: UTC)."""
    stamp = meta.get("guano", {}).get("Timestamp", "")
    try:
        start = datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        start = None  # unreadable: fall back to the comment
    if start is not None and start.tzinfo is None and clock is not None:
        return start.replace(tzinfo=clock), f"GUANO Timestamp (no offset: in clock_timezone {clock})", False
    if start is not None and start.tzinfo is None:
        return start.replace(tzinfo=UTC), "GUANO Timestamp (no offset: taken as UTC)", False
    if start is not None:
        return start, "GUANO Timestamp with its UTC offset", True
    if m := _COMMENT.search(meta.get("comment", "")):
        hh, mi, ss, frac, dd, mo, yyyy, sign, off_h, off_m = m.groups()
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0))
        try:
            zone = timezone(-offset if sign == "-" else offset)
            start = datetime(int(yyyy), int(mo), int(dd), int(hh), int(mi), int(ss),
                             int((frac or "").ljust(6, "0")), tzinfo=zone)
        except ValueError:  # invalid date, or an offset of a day or more
            return None
        return start, "AudioMoth comment 'Recorded at HH:MM:SS[.mmm] DD/MM/YYYY (UTC±h)' with its UTC offset", True
    return None


def time_from_metadata(meta: dict) -> datetime | None:
    """``read_wav_metadata`` result -> start time as aware UTC datetime, or None.

    GUANO ``Timestamp`` (ISO 8601; no offset means UTC) first, else the AudioMoth comment
    ``Recorded at HH:MM:SS[.mmm] DD/MM/YYYY (UTC[±H[:MM]])``, converted from its offset to UTC.
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
    """This host's UTC time, or None when it is not to be trusted: before 2001 (a Pi without a
    real-time clock boots at 1970, one whose clock battery died at 2000), or timesyncd running and
    not yet synchronised (fake-hwclock restores the time the Pi was switched off, days behind).
    Judged by it, every good recording looked days ahead, was stored as a suspect clock for good,
    and left the fleet's day tables."""
    now = datetime.now(UTC)
    if now.year < EARLIEST_PLAUSIBLE_YEAR:
        return None
    if timesync.is_dir() and not (timesync / "synchronized").exists():
        return None
    return now


def _flac_duration_s(path: Path) -> float | None:
    """Seconds of audio per the FLAC STREAMINFO block (sample rate 20 bits, total samples 36);
    None when the file ends before the last sample it declares."""
    with open(path, "rb") as f:
        head = f.read(42)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return None
    bits = int.from_bytes(head[18:26], "big")
    rate, samples = bits >> 44, bits & ((1 << 36) - 1)
    if not (rate and samples):
        return None
    # A FLAC cut short (a copy that stalled) still declares its whole length, as a WAV's data size
    # does, and only what it holds is audio: a name without a stamp was timed by its mtime minus
    # the hour it declared, 10 s held, and its detections stored an hour early.
    return samples / rate if decodes_to_its_end(path, samples) else None


# WAV formats whose every frame is ``block_align`` bytes: PCM, IEEE float, A-law, mu-law, and
# WAVE_FORMAT_EXTENSIBLE (a recorder's subformat is PCM or float). In a coded one (IMA or MS ADPCM,
# GSM 6.10) a block holds hundreds of frames: its length read so was 1/505 of the audio, and a
# recording timed by its mtime was stored a whole recording late.
_FRAMED_FORMATS = frozenset({1, 3, 6, 7, 0xFFFE})


def _duration_s(path: Path, meta: dict) -> float | None:
    """Seconds of audio the file holds now, from its header; None when unknown."""
    if path.suffix.lower() == ".flac":
        return _flac_duration_s(path)
    if meta.get("audio_format") not in _FRAMED_FORMATS:
        return None   # the decoder knows (``_decoded_duration_s``)
    rate, frame = meta.get("sample_rate", 0), meta.get("block_align", 0)
    if not frame:
        frame = meta.get("channels", 0) * ((meta.get("bits_per_sample", 0) + 7) // 8)
    if not (rate and frame and "data_offset" in meta):
        return None
    held = meta["file_size"] - meta["data_offset"]
    declared = meta["data_size"]
    # A header never finalised says 0 (or all ones, or far less than follows it): what lies after
    # it is read as audio (``analysis.wav_repair``), so that is its length, and the isolated
    # child's time limit.
    unwritten = declared in (0, 0xFFFFFFFF) or wav_repair.declared_short(declared, held, "chunk_after_data" in meta)
    return (max(0, held) if unwritten else min(declared, held)) / frame / rate


def audio_duration_s(path: Path) -> float | None:
    """Seconds of audio a WAV or FLAC file holds, from its header (a few hundred bytes read; a
    FLAC's declared length only once its last sample is found decodable, so a FLAC cut short is
    not taken at its declared length); None when the header does not say or the file cannot be read."""
    path = Path(path)
    try:
        meta = read_wav_metadata(path) if path.suffix.lower() == ".wav" else {}
        return _duration_s(path, meta)
    except OSError:
        return None


# libsndfile's frame count for a stream whose length it does not know (a FLAC whose STREAMINFO
# says 0 samples is 2**63 - 1 frames): no length at all.
_UNKNOWN_FRAMES = 2**62


def _decoded_duration_s(path: Path) -> float | None:
    """Seconds of audio as the decoder's header reading gives them, for containers not read by
    hand here (RF64, W64, AIFF, MP3); None when it cannot tell."""
    try:
        info = soundfile.info(os.fsencode(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError):
        return None
    return info.frames / info.samplerate if 0 < info.frames < _UNKNOWN_FRAMES and info.samplerate > 0 else None


def _from_mtime(path: Path, meta: dict, now: datetime | None) -> RecordingTime:
    """The file's last write (the end of recording) minus its duration, if the header tells it."""
    mtime = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=path.stat().st_mtime_ns // 1000)
    # A header this module does not read (an RF64 WAV, as long recordings are written) still has
    # a length: without it the mtime, the recording's end, was taken for its start, and every
    # detection was stored one recording late.
    # A FLAC's decoder reads the same STREAMINFO: nothing more to learn from it.
    duration = _duration_s(path, meta) or (None if path.suffix.lower() == ".flac" else _decoded_duration_s(path))
    start = mtime - timedelta(seconds=duration) if duration else mtime
    detail = f"file mtime minus {duration:.3f} s of audio" if duration else "file mtime"
    reason = _suspect_reason(start, now)
    return RecordingTime(start, "mtime", bool(reason), f"{detail}; {reason}" if reason else detail)


def _name_in_zone(named: datetime, stamped: datetime) -> bool:
    """Whether a name read as UTC shows the same wall clock as a metadata time with an offset
    of its own (AudioMoth names files in its configured zone, so such a name is in that zone)."""
    gap = named.replace(tzinfo=None) - stamped.replace(tzinfo=None)
    return abs(gap) <= timedelta(seconds=2)


def _wall_clock_in_utc(wall: datetime, zone: tzinfo | None) -> datetime | None:
    """``wall``'s date and time on a clock in ``zone``, as UTC; None where UTC's calendar cannot
    hold it (a name of year 1 on a clock east of UTC, of 9999-12-31 west of it: such a file was
    analysed, then failed with an OverflowError at every attempt until quarantined, and ended
    ``classify`` in a traceback). Its wall clock is then read as UTC, flagged suspect as such a
    year always is."""
    try:
        return wall.replace(tzinfo=zone).astimezone(UTC)
    except OverflowError:
        return None


def recording_time(path: Path, now: datetime | None = None, clock: tzinfo | None = None) -> RecordingTime:
    """Start time of a recording in UTC: file name, else WAV or FLAC metadata, else file mtime.

    A suspect clock (year < 2001, or more than a day after ``now``, default the host's UTC time
    when it can be trusted, ``host_now``; a naive ``now`` is taken as UTC) is still returned,
    flagged, unless the next source (file name -> metadata) gives a sound time. When the WAV
    comment or GUANO says the recorder ran in a non-UTC zone and the file name shows that zone's
    wall clock, the name is converted with it. Otherwise a name's wall clock, and a GUANO time
    without an offset, are in ``clock`` (the ``clock_timezone`` setting: a recorder set to local
    time; None: UTC, an AudioMoth's default); a wall time a summer-time change skips or repeats
    takes the offset in force before the change (``fold`` 0).
    Raises ``OSError`` when the file cannot be read.
    """
    path = Path(path)
    now = host_now() if now is None else (now if now.tzinfo else now.replace(tzinfo=UTC))
    meta = read_metadata(path)
    stamped = _metadata_time(meta, clock)
    found: list[tuple[str, datetime, str]] = []
    if named := _parse_filename(path.name):
        start, detail, wall_clock, recorders = named
        if wall_clock and stamped and stamped[2] and _name_in_zone(start, stamped[0]):
            zone = stamped[0].tzinfo
            if stamped[0].utcoffset() and (moved := _wall_clock_in_utc(start, zone)) is not None:
                start = moved
                detail += f" in recorder zone {zone} (from {stamped[1]})"
        elif wall_clock and clock is not None and (moved := _wall_clock_in_utc(start, clock)) is not None:
            start = moved
            detail = detail.replace(" read as UTC", "") + f" in clock_timezone {clock}"
        found.append(("filename", start, detail))
    if stamped:
        # A stamp after another prefix may be a tool's (an export's time): the recorder's own
        # header time comes first then (a review saw a zoned GUANO time overridden by such a name).
        header = _wall_clock_in_utc(stamped[0], stamped[0].tzinfo) or stamped[0].replace(tzinfo=UTC)
        found.insert(0 if named and not named[3] else len(found), ("metadata", header, stamped[1]))
    for source, start, detail in found:
        if not _suspect_reason(start, now):
            return RecordingTime(start, source, False, detail)
    if found:
        source, start, detail = found[0]
        return RecordingTime(start, source, True, f"{detail}; {_suspect_reason(start, now)}")
    timed = _from_mtime(path, meta, now)
    if stamp := _impossible_stamp(path.name):
        timed = replace(timed, detail=f"{timed.detail}; the name's {stamp} is no date and time")
    return timed
