"""Recorder files: start times from names and headers, suspect clocks, and unfinished files."""

import os
import struct
import wave
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import soundfile

from edgemon.files.headers import read_wav_metadata
from edgemon.files.completeness import StabilityTracker, wav_header_consistent
from edgemon.files.recordings import (
    RecordingTime,
    audio_duration_s,
    recording_time,
    time_from_filename,
    time_from_metadata,
)

UTC = timezone.utc
NOW = datetime(2024, 6, 1, tzinfo=UTC)
COMMENT = ("Recorded at {} by AudioMoth 24F3190361DA5E53 at medium gain while battery was 4.2V "
           "and temperature was 21.3C.")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


# ---- crafting real WAV files byte by byte -----------------------------------------------------


def chunk(chunk_id: bytes, body: bytes, pad: bool = True) -> bytes:
    """One RIFF chunk; odd bodies get the pad byte RIFF requires unless ``pad`` is False."""
    return struct.pack("<4sI", chunk_id, len(body)) + body + (b"\0" * (len(body) % 2 * pad))


def info(**fields: str) -> bytes:
    """A LIST/INFO chunk, e.g. info(ICMT="...", IART="...")."""
    subs = b"".join(chunk(key.encode(), value.encode() + b"\0") for key, value in fields.items())
    return chunk(b"LIST", b"INFO" + subs)


def guano(**fields: str) -> bytes:
    lines = ["GUANO|Version: 1.0"] + [f"{key.replace('_', ' ')}: {v}" for key, v in fields.items()]
    return chunk(b"guan", "\n".join(lines).encode())


def pcm16(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def wav_bytes(seconds=0.5, rate=8000, before=(), after=(), riff_size=None, data_size=None):
    """A 16-bit mono PCM WAV: fmt, the ``before`` chunks, data, the ``after`` chunks."""
    audio = pcm16(seconds, rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    data_head = struct.pack("<4sI", b"data", len(audio) if data_size is None else data_size)
    body = (b"WAVE" + chunk(b"fmt ", fmt) + b"".join(before) + data_head + audio
            + b"".join(after))
    return struct.pack("<4sI", b"RIFF", len(body) if riff_size is None else riff_size) + body


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def write_wave_module(path, seconds=0.5, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16(seconds, rate))
    return path


# ---- file names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("20240101_120000.WAV", utc(2024, 1, 1, 12, 0, 0)),
    ("24F3190361DA5E53_20180217_080003.WAV", utc(2018, 2, 17, 8, 0, 3)),
    ("20240101_120000T.WAV", utc(2024, 1, 1, 12, 0, 0)),
    ("24F3190361DA5E53_20240101_235959T.WAV", utc(2024, 1, 1, 23, 59, 59)),
    ("20240101_120000.wav", utc(2024, 1, 1, 12, 0, 0)),
    ("20240229_000001.flac", utc(2024, 2, 29, 0, 0, 1)),
    ("/media/sd/DCIM/20240101_120000.WAV", utc(2024, 1, 1, 12, 0, 0)),
    ("5A8C5A83.WAV", utc(2018, 2, 20, 17, 27, 31)),  # `date -u -d @$((0x5A8C5A83))`
    ("5a8c5a83.wav", utc(2018, 2, 20, 17, 27, 31)),
    ("60000000.WAV", utc(2021, 1, 14, 8, 25, 36)),  # all digits, but no date: hex
    ("20231301.WAV", utc(1987, 2, 1, 9, 18, 57)),  # month 13: hex (an unset clock, flagged)
    # copies keep the name's time (a newcomer's "… (1).WAV" was stored at the copy's mtime)
    ("20240503_060000 (1).WAV", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000 copy.WAV", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000 copy 2.wav", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000 2.WAV", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000 - Copy.WAV", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000 - Copy (2).WAV", utc(2024, 5, 3, 6, 0, 0)),
    ("20240503_060000(1).WAV", utc(2024, 5, 3, 6, 0, 0)),
    # other recorders' and people's prefixes (a trial's Song Meter names were timed by the copy's mtime)
    ("SMM07257_20230201_060000.wav", utc(2023, 2, 1, 6, 0, 0)),
    ("S4A12345_20230202_060000.wav", utc(2023, 2, 2, 6, 0, 0)),
    ("S10_20230203_060000.wav", utc(2023, 2, 3, 6, 0, 0)),
    ("site 7 20240904_060000.WAV", utc(2024, 9, 4, 6, 0, 0)),
    ("SITE-A_20240101_120000.WAV", utc(2024, 1, 1, 12, 0, 0)),
    # a Song Meter whose clock a GPS set: "$" between date and time (they were timed by their mtime)
    ("ARIZONA-1_0_20161023$195550.wav", utc(2016, 10, 23, 19, 55, 50)),
    ("SM3_0+1_20161023$195550.wav", utc(2016, 10, 23, 19, 55, 50)),
    # a recording converted for classify keeps its name's time (a newcomer trial's MP3 was timed by its mtime)
    ("20240103_110000.mp3", utc(2024, 1, 3, 11, 0, 0)),
    ("S10_20240103_110000.OGG", utc(2024, 1, 3, 11, 0, 0)),
    # Frontier Labs BAR-LT: ISO 8601 with the recorder's own offset (they were timed by their mtime)
    ("20191125T000000+1000_REC.flac", utc(2019, 11, 24, 14, 0, 0)),
    ("20211004T200000+0000_Rec2_-18.1883+144.5414.flac", utc(2021, 10, 4, 20, 0, 0)),
    ("site3_20190101T093000-0330_REC.WAV", utc(2019, 1, 1, 13, 0, 0)),
    ("20190101T060000Z.wav", utc(2019, 1, 1, 6, 0, 0)),
    ("20181101_060000_REC [-27.3866 152.8761].flac", utc(2018, 11, 1, 6, 0, 0)),   # before BAR firmware 3
    ("20181101_060000_REC.flac", utc(2018, 11, 1, 6, 0, 0)),
    # a prefix with a newline in it (it was timed by the mtime), or a name as macOS writes it (NFD)
    ("site\n7_20180303_060000.flac", utc(2018, 3, 3, 6, 0, 0)),
    ("site\n7_20191125T000000+1000_REC.flac", utc(2019, 11, 24, 14, 0, 0)),
    ("Re\u0301gio\u0301n 20180302_060000.WAV", utc(2018, 3, 2, 6, 0, 0)),
])
def test_filename_patterns(name, expected):
    got = time_from_filename(name)
    assert got == expected and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("name", [
    "20241301_120000.WAV",  # month 13
    "20230229_120000.WAV",  # not a leap year
    "20240101_250000.WAV",  # hour 25
    "20240101_120000.WAV.part",
    "20240101_120000.WAV\n",   # a name ending in a newline is no recording's
    "5A8C5A83.WAV\n",
    "20240101_120000.txt",
    "SITE-A20240101_120000.WAV",  # no separator before the date
    "S10_20240101$120000$.wav",   # more after the stamp
    "20191125T000000+2400_REC.flac",   # an offset of a day
    "20191125T000000+1000_clip3.flac",   # more after the stamp than a BAR-LT writes
    "S10_20240101-120000.wav",
    "5A8C5A8.WAV",  # seven hex digits
    "20230201.WAV",  # a day, not hex Unix time (0x20230201 is 1987)
    "19991231.flac",
    "20240503_060000 (1) (2).WAV",
    "recording.wav",
    "",
])
def test_filename_without_a_time_gives_none(name):
    assert time_from_filename(name) is None


# ---- WAV metadata -----------------------------------------------------------------------------


def test_reads_fields_comment_artist_and_guano(tmp_path):
    comment = COMMENT.format("12:00:00 01/02/2024 (UTC)")
    path = write(tmp_path / "a.wav", wav_bytes(
        before=[info(ICMT=comment, IART="AudioMoth 24F3190361DA5E53"),
                guano(Timestamp="2024-02-01T12:00:00", Loc_Position="4.5 114.2")]))
    meta = read_wav_metadata(path)
    assert (meta["sample_rate"], meta["channels"], meta["bits_per_sample"]) == (8000, 1, 16)
    assert meta["comment"] == comment and meta["artist"] == "AudioMoth 24F3190361DA5E53"
    assert meta["guano"] == {"GUANO|Version": "1.0", "Timestamp": "2024-02-01T12:00:00",
                             "Loc Position": "4.5 114.2"}
    size = path.stat().st_size
    assert meta["riff_size"] == size - 8 and meta["file_size"] == size
    assert meta["data_size"] == 8000 and meta["data_offset"] == size - 8000
    assert "truncated" not in meta
    with wave.open(str(path)) as w:  # the crafted file is a WAV that a real reader accepts
        assert (w.getframerate(), w.getnframes()) == (8000, 4000)


def test_matches_what_wave_and_soundfile_write(tmp_path):
    meta = read_wav_metadata(write_wave_module(tmp_path / "w.wav", seconds=0.25, rate=16000))
    assert (meta["sample_rate"], meta["data_size"], meta["data_offset"]) == (16000, 8000, 44)
    soundfile.write(tmp_path / "s.wav", np.zeros((100, 2), np.float32), 48000, subtype="PCM_24")
    meta = read_wav_metadata(tmp_path / "s.wav")
    assert (meta["sample_rate"], meta["channels"], meta["bits_per_sample"]) == (48000, 2, 24)
    assert meta["data_size"] == 600


def test_guano_after_the_data_chunk_and_unpadded_odd_chunks(tmp_path):
    odd = chunk(b"junk", b"abc", pad=False)  # odd size, pad byte forgotten by its writer
    path = write(tmp_path / "a.wav", wav_bytes(before=[odd], after=[guano(Serial="X1")]))
    meta = read_wav_metadata(path)
    assert meta["guano"]["Serial"] == "X1" and meta["data_size"] == 8000


def test_truncated_file_and_lying_sizes_give_what_was_found(tmp_path):
    comment = COMMENT.format("12:00:00 01/02/2024 (UTC)")
    full = wav_bytes(before=[info(ICMT=comment)])
    meta = read_wav_metadata(write(tmp_path / "cut.wav", full[:len(full) // 2]))
    assert meta["comment"] == comment and meta["data_size"] == 8000 and meta["truncated"]
    liar = full[:12] + struct.pack("<4sI", b"fmt ", 10_000_000) + full[20:]
    meta = read_wav_metadata(write(tmp_path / "liar.wav", liar))
    assert meta["sample_rate"] == 8000 and meta["truncated"] and "data_offset" not in meta


def test_not_riff_gives_only_the_size(tmp_path):
    path = write(tmp_path / "x.wav", os.urandom(500))
    assert read_wav_metadata(path) == {"file_size": 500}


# ---- times from metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("stamp, expected", [
    ("12:00:00 01/02/2024 (UTC)", utc(2024, 2, 1, 12)),
    ("12:00:00 01/02/2024 (UTC+2)", utc(2024, 2, 1, 10)),
    ("12:00:00 01/02/2024 (UTC-5)", utc(2024, 2, 1, 17)),
    ("12:00:00 01/02/2024 (UTC+5:30)", utc(2024, 2, 1, 6, 30)),
    ("01:15:00 01/01/2024 (UTC+10)", utc(2023, 12, 31, 15, 15)),
    ("12:00:00 01/02/2024 (UTC-3:30)", utc(2024, 2, 1, 15, 30)),
    # AudioMoth Live and the USB Microphone apps write milliseconds
    ("19:00:00.123 01/02/2026 (UTC+8)", utc(2026, 2, 1, 11, 0, 0, 123000)),
    ("00:00:00.050 01/01/2026 (UTC)", utc(2026, 1, 1, 0, 0, 0, 50000)),
])
def test_audiomoth_comment_with_offsets(tmp_path, stamp, expected):
    path = write(tmp_path / "a.wav", wav_bytes(before=[info(ICMT=COMMENT.format(stamp))]))
    assert time_from_metadata(read_wav_metadata(path)) == expected


@pytest.mark.parametrize("stamp, expected", [
    ("2024-02-01T12:00:00", utc(2024, 2, 1, 12)),  # no offset: taken as UTC
    ("2024-02-01T12:00:00+02:00", utc(2024, 2, 1, 10)),
    ("2024-02-01 12:00:00.5-05:00", utc(2024, 2, 1, 17, 0, 0, 500000)),
    ("2024-02-01T12:00:00Z", utc(2024, 2, 1, 12)),
])
def test_guano_timestamp(tmp_path, stamp, expected):
    path = write(tmp_path / "a.wav", wav_bytes(after=[guano(Timestamp=stamp)]))
    got = time_from_metadata(read_wav_metadata(path))
    assert got == expected and got.utcoffset() == timedelta(0)


def test_guano_beats_comment_and_a_bad_guano_falls_back():
    comment = COMMENT.format("12:00:00 01/02/2024 (UTC)")
    meta = {"comment": comment, "guano": {"Timestamp": "2024-03-01T00:00:00"}}
    assert time_from_metadata(meta) == utc(2024, 3, 1)
    meta["guano"]["Timestamp"] = "yesterday"
    assert time_from_metadata(meta) == utc(2024, 2, 1, 12)
    assert time_from_metadata({"comment": COMMENT.format("12:00:00 31/02/2024 (UTC)")}) is None
    assert time_from_metadata({}) is None


# ---- recording_time: precedence and suspect clocks -------------------------------------------


def test_an_iso_name_with_its_offset_is_an_instant_that_no_clock_zone_moves(tmp_path):
    """A BAR-LT names its recording by its start and its own UTC offset: read as written, whatever
    ``clock_timezone`` says of names without one, and before the file's mtime."""
    path = write_wave_module(tmp_path / "20191125T060000+1000_REC.wav")
    got = recording_time(path, now=NOW, clock=ZoneInfo("Europe/Berlin"))
    assert (got.start_utc, got.source, got.suspect) == (utc(2019, 11, 24, 20), "filename", False)


def test_filename_beats_metadata(tmp_path):
    comment = COMMENT.format("09:00:00 01/02/2024 (UTC)")
    path = write(tmp_path / "20240101_120000.WAV", wav_bytes(before=[info(ICMT=comment)]))
    assert recording_time(path, now=NOW) == RecordingTime(
        utc(2024, 1, 1, 12), "filename", False, "AudioMoth name YYYYMMDD_HHMMSS")


def test_metadata_when_the_name_has_no_time(tmp_path):
    comment = COMMENT.format("09:00:00 01/02/2024 (UTC-3)")
    got = recording_time(write(tmp_path / "site_a.wav", wav_bytes(before=[info(ICMT=comment)])),
                         now=NOW)
    assert (got.start_utc, got.source, got.suspect) == (utc(2024, 2, 1, 12), "metadata", False)


# "20240601.WAV" read as hex was 1987, flagged, kept: the mtime is the better clock.
@pytest.mark.parametrize("name", ["clip.wav", "20240601.WAV"])
def test_mtime_minus_duration_when_nothing_else(tmp_path, name):
    path = write_wave_module(tmp_path / name, seconds=0.5)
    os.utime(path, ns=(0, 1_717_200_000_250_000_000))  # 2024-06-01 00:00:00.25 UTC
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source, got.suspect) == (utc(2024, 5, 31, 23, 59, 59, 750000),
                                                        "mtime", False)
    flac = tmp_path / "clip.flac"
    soundfile.write(flac, np.zeros(32000, np.float32), 16000)
    os.utime(flac, ns=(0, 1_717_200_000_000_000_000))
    assert recording_time(flac, now=NOW).start_utc == utc(2024, 5, 31, 23, 59, 58)


def test_mtime_minus_duration_for_a_container_the_header_reader_does_not_parse(tmp_path):
    """An RF64 WAV (long recordings are written so) named without a time was timed at its mtime,
    its end: every detection one recording late. A FLAC whose STREAMINFO gives no length (a
    streamed encode) has none to take off: libsndfile's 2**63 - 1 frames are no length."""
    path = tmp_path / "ZOOM0001.WAV"
    soundfile.write(path, np.zeros(8000, np.float32), 16000, subtype="PCM_16", format="RF64")
    os.utime(path, ns=(0, 1_717_200_000_250_000_000))  # 2024-06-01 00:00:00.25 UTC
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source, got.detail) == (utc(2024, 5, 31, 23, 59, 59, 750000), "mtime",
                                                       "file mtime minus 0.500 s of audio")
    flac = tmp_path / "stream.flac"
    soundfile.write(flac, np.zeros(8000, np.float32), 16000)
    data = bytearray(flac.read_bytes())
    data[21] &= 0xF0            # STREAMINFO's total samples (36 bits from byte 21): 0, unknown
    data[22:26] = bytes(4)
    flac.write_bytes(bytes(data))
    os.utime(flac, ns=(0, 1_717_200_000_000_000_000))
    got = recording_time(flac, now=NOW)
    assert (got.start_utc, got.detail) == (utc(2024, 6, 1), "file mtime")


def test_a_flac_cut_short_is_not_timed_by_the_length_it_declares(tmp_path):
    """Found by a header fuzzer: a FLAC cut short (a copy that stalled) still declares its whole
    length in STREAMINFO; named without a time, it was timed by its mtime minus that length (an
    hour declared, 10 s held: every detection an hour early), as a WAV's data size no longer is."""
    flac = tmp_path / "site7 dawn.flac"
    soundfile.write(flac, np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32) * 0.1, 16000)
    data = bytearray(flac.read_bytes()[:flac.stat().st_size // 2])   # about 10 s of its 20
    total = 16000 * 3600                                               # STREAMINFO: an hour
    data[21] = (data[21] & 0xF0) | (total >> 32)
    data[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    flac.write_bytes(bytes(data))
    os.utime(flac, ns=(0, 1_717_200_000_000_000_000))                  # 2024-06-01 00:00 UTC
    got = recording_time(flac, now=NOW)
    assert (got.start_utc, got.detail) == (utc(2024, 6, 1), "file mtime")
    assert audio_duration_s(flac) is None


@pytest.mark.parametrize("subtype", ["IMA_ADPCM", "MS_ADPCM", "GSM610"])
def test_a_coded_wav_is_as_long_as_its_decoded_audio(tmp_path, subtype):
    """A block of an ADPCM or GSM WAV holds hundreds of frames: its length read as bytes over
    block_align was 1/505 of the audio, so such a recording timed by its mtime was stored a whole
    recording late (and the isolated child was given the 300 s floor for hours of audio)."""
    path = tmp_path / "clip.wav"
    soundfile.write(path, np.zeros(16000 * 4, np.float32), 16000, subtype=subtype)
    os.utime(path, ns=(0, 1_717_200_000_000_000_000))
    got = recording_time(path, now=NOW)
    assert abs((got.start_utc - utc(2024, 5, 31, 23, 59, 56)).total_seconds()) < 0.05
    assert audio_duration_s(path) is None   # not from the header: the decoder's length is used


def test_a_stamp_that_is_no_date_is_said_with_the_mtime(tmp_path):
    """A name such as 20230229_000000.WAV (no 29 February in 2023) was said to hold no start time,
    and the message asked for a name of the very form it has."""
    got = recording_time(write_wave_module(tmp_path / "20230229_000000.WAV"), now=NOW)
    assert got.source == "mtime" and got.detail.endswith("; the name's 20230229_000000 is no date and time")
    plain = recording_time(write_wave_module(tmp_path / "recording.WAV"), now=NOW)
    assert "name's" not in plain.detail


def test_mtime_without_a_duration_is_plain_mtime(tmp_path):
    path = write(tmp_path / "clip.wav", wav_bytes(seconds=0)[:20])  # no data chunk yet
    os.utime(path, ns=(0, 1_717_200_000_000_000_000))
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source, got.detail) == (utc(2024, 6, 1), "mtime", "file mtime")


def test_a_header_never_finalised_is_as_long_as_the_audio_after_it(tmp_path):
    """Its audio is read to end of file (``wav_repair``), so that is its length: for the start
    time from the mtime, and the isolated child's time limit (a review saw the 300 s floor)."""
    path = write(tmp_path / "clip.wav", wav_bytes(seconds=0.5, riff_size=0, data_size=0))  # still recording
    os.utime(path, ns=(0, 1_717_200_000_000_000_000))
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source) == (utc(2024, 5, 31, 23, 59, 59, 500000), "mtime")
    assert audio_duration_s(path) == 0.5


def test_unset_clock_is_flagged_not_replaced(tmp_path):
    got = recording_time(write_wave_module(tmp_path / "19700101_000010.WAV"), now=NOW)
    assert (got.start_utc, got.source, got.suspect) == (utc(1970, 1, 1, 0, 0, 10), "filename", True)
    assert "unset" in got.detail
    hex_name = recording_time(write_wave_module(tmp_path / "0000000A.WAV"), now=NOW)
    assert hex_name.suspect and hex_name.start_utc == utc(1970, 1, 1, 0, 0, 10)


def test_a_clock_reset_to_the_year_2000_is_flagged(tmp_path):
    """Found by a season trial: many real-time clocks (DS3231, PCF8523, a recorder's own) restart
    at 2000-01-01 when they lose power, and a card's 20000101_000000.WAV was stored as a good clock,
    its detections in the year 2000 without a word in the log or in status."""
    got = recording_time(write_wave_module(tmp_path / "20000101_000000.WAV"), now=NOW)
    assert (got.start_utc, got.source, got.suspect) == (utc(2000, 1, 1), "filename", True)
    assert "unset (year 2000)" in got.detail
    # Days after the reset, the clock is still the reset one.
    assert recording_time(write_wave_module(tmp_path / "20000104_221000.WAV"), now=NOW).suspect
    assert not recording_time(write_wave_module(tmp_path / "20010101_000000.WAV"), now=NOW).suspect


def test_sound_metadata_replaces_a_suspect_name(tmp_path):
    comment = COMMENT.format("12:00:00 01/02/2024 (UTC)")
    path = write(tmp_path / "19700101_000010.WAV", wav_bytes(before=[info(ICMT=comment)]))
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source, got.suspect) == (utc(2024, 2, 1, 12), "metadata", False)


def test_future_clock_is_flagged(tmp_path):
    got = recording_time(write_wave_module(tmp_path / "20300101_000000.WAV"), now=NOW)
    assert got.suspect and got.source == "filename" and "ahead" in got.detail
    # Less than a day ahead (zones, drifting host clocks) is not suspect.
    near = recording_time(tmp_path / "20300101_000000.WAV", now=utc(2029, 12, 31, 1))
    assert not near.suspect
    old = write_wave_module(tmp_path / "old.wav")
    os.utime(old, ns=(0, 315_532_800_000_000_000))  # 1980: a recorder's FAT clock never set
    assert recording_time(old, now=NOW).suspect


def test_a_host_clock_not_yet_set_flags_no_recording_as_ahead(tmp_path, monkeypatch):
    """Found by a deploy review: a Pi booted at 1970, or at fake-hwclock's days-old time before
    timesyncd synced, stored every good recording as 'days ahead of the host', for good."""
    import edgemon.files.recordings as recordings

    timesync = tmp_path / "timesync"
    timesync.mkdir()                                      # timesyncd runs, and has not synced yet
    assert recordings.host_now(timesync) is None
    (timesync / "synchronized").touch()
    assert recordings.host_now(timesync) is not None
    assert recordings.host_now(tmp_path / "absent") is not None   # no timesyncd: the clock as it is

    path = write_wave_module(tmp_path / "20300101_000000.WAV")
    monkeypatch.setattr(recordings, "host_now", lambda: None)   # the host's clock cannot be trusted
    got = recording_time(path)
    assert not got.suspect and got.start_utc == utc(2030, 1, 1)
    unset = recording_time(write_wave_module(tmp_path / "19700101_000012.WAV"))
    assert unset.suspect and "unset" in unset.detail      # an unset recorder clock is still plain


def test_name_in_the_recorders_zone_is_converted(tmp_path):
    # AudioMoth names files in its configured zone; the comment says which zone that was.
    comment = COMMENT.format("12:00:00 01/02/2024 (UTC+2)")
    path = write(tmp_path / "20240201_120000.WAV", wav_bytes(before=[info(ICMT=comment)]))
    got = recording_time(path, now=NOW)
    assert (got.start_utc, got.source) == (utc(2024, 2, 1, 10), "filename")
    assert "UTC+02:00" in got.detail


def test_a_recorder_set_to_local_time_is_read_in_its_clock_zone(tmp_path):
    """A Song Meter (or Swift) names files by its local clock and says no offset: with
    ``clock_timezone`` unset they were stored 8 h off on UTC+8, with no way to say otherwise."""
    kuching, berlin = ZoneInfo("Asia/Kuching"), ZoneInfo("Europe/Berlin")
    song_meter = write_wave_module(tmp_path / "SMM07257_20240201_060000.wav")
    assert recording_time(song_meter, now=NOW).start_utc == utc(2024, 2, 1, 6)        # unset: UTC
    got = recording_time(song_meter, now=NOW, clock=kuching)
    assert (got.start_utc, got.source, got.suspect) == (utc(2024, 1, 31, 22), "filename", False)
    assert "clock_timezone Asia/Kuching" in got.detail and "read as UTC" not in got.detail
    # Summer time: the offset in force at that instant, in winter and in summer.
    assert recording_time(write_wave_module(tmp_path / "S1_20240701_060000.wav"), now=NOW,
                          clock=berlin).start_utc == utc(2024, 7, 1, 4)
    # A GUANO time without an offset is on the same clock.
    path = write(tmp_path / "night.wav", wav_bytes(after=[guano(Timestamp="2024-02-01T06:00:00")]))
    got = recording_time(path, now=NOW, clock=kuching)
    assert (got.start_utc, got.source) == (utc(2024, 1, 31, 22), "metadata")
    # An offset the header gives wins, UTC included: an AudioMoth saying "(UTC)" keeps its name's UTC.
    for stamp, expected in (("06:00:00 01/02/2024 (UTC)", utc(2024, 2, 1, 6)),
                            ("06:00:00 01/02/2024 (UTC+2)", utc(2024, 2, 1, 4))):
        path = write(tmp_path / "20240201_060000.WAV", wav_bytes(before=[info(ICMT=COMMENT.format(stamp))]))
        assert recording_time(path, now=NOW, clock=kuching).start_utc == expected, stamp
    # A hex Unix-time name is no wall clock: no zone moves it.
    assert recording_time(write_wave_module(tmp_path / "5E0BE100.WAV"), now=NOW,
                          clock=kuching).start_utc == utc(2020, 1, 1)


def test_a_flac_keeps_the_comments_zone_and_time(tmp_path):
    """An AudioMoth recording kept as FLAC (its comment a Vorbis COMMENT) was stored at the name's
    wall clock read as UTC: 8 h late for a recorder on UTC+8."""
    comment = COMMENT.format("05:30:00 01/02/2023 (UTC+8)")
    for name in ("20230201_053000.flac", "walk transect A.flac"):
        with soundfile.SoundFile(tmp_path / name, "w", 16000, 1, format="FLAC") as f:
            f.comment = comment
            f.write(np.zeros(1600))
        got = recording_time(tmp_path / name, now=NOW)
        assert got.start_utc == utc(2023, 1, 31, 21, 30) and not got.suspect, (name, got)
    assert recording_time(tmp_path / "walk transect A.flac", now=NOW).source == "metadata"


def test_an_audiomoth_live_recording_is_timed_by_its_comment(tmp_path):
    """AudioMoth Live names a recording by its local start to the millisecond and says it, with
    its zone, in the comment: it was timed by its mtime (the comment's milliseconds unread)."""
    comment = ("Recorded at 19:00:00.123 01/02/2026 (UTC+8) by AudioMoth Live using "
               "48kHz AudioMoth USB Microphone.")
    path = write(tmp_path / "20260201_190000_123.WAV", wav_bytes(before=[info(ICMT=comment)]))
    got = recording_time(path, now=NOW.replace(year=2026))
    assert (got.start_utc, got.source, got.suspect) == (utc(2026, 2, 1, 11, 0, 0, 123000), "metadata", False)


# ---- completeness -----------------------------------------------------------------------------


def test_complete_files_are_consistent(tmp_path):
    assert wav_header_consistent(write_wave_module(tmp_path / "w.wav")) == (
        True, "header consistent")
    odd_audio = wav_bytes(seconds=0.5, before=[info(ICMT="x")], after=[guano(Serial="abc")])
    assert wav_header_consistent(write(tmp_path / "a.WAV", odd_audio))[0]
    soundfile.write(tmp_path / "f.flac", np.zeros(100, np.float32), 16000)
    assert wav_header_consistent(tmp_path / "f.flac") == (True, "not a WAV")


def test_audiomoth_file_still_recording(tmp_path):
    path = write(tmp_path / "20240101_120000.WAV", wav_bytes(riff_size=0, data_size=0))
    assert wav_header_consistent(path) == (False, "RIFF size 0: header not yet finalised")


def test_truncated_file(tmp_path):
    full = write_wave_module(tmp_path / "w.wav").read_bytes()
    path = write(tmp_path / "cut.wav", full[:1044])
    assert wav_header_consistent(path) == (
        False, "data chunk declares 8000 bytes but file holds 1000")


def test_header_that_lies(tmp_path):
    path = write(tmp_path / "liar.wav", wav_bytes(data_size=9000, riff_size=None))
    ok, why = wav_header_consistent(path)
    assert not ok and why == "data chunk declares 9000 bytes but file holds 8000"
    grown = write(tmp_path / "grown.wav", wav_bytes() + b"\0" * 100)  # RIFF size left behind
    ok, why = wav_header_consistent(grown)
    assert not ok and why.startswith("RIFF size")


def test_not_a_wav_and_empty_and_missing(tmp_path):
    assert wav_header_consistent(write(tmp_path / "r.WAV", os.urandom(4096))) == (
        False, "not a RIFF/WAVE file")
    ok, why = wav_header_consistent(write(tmp_path / "e.WAV", b""))
    assert not ok and "empty" in why
    ok, why = wav_header_consistent(tmp_path / "gone.wav")
    assert not ok and why.startswith("cannot read")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_stability_needs_min_age_of_unchanged_size_and_mtime():
    clock = FakeClock()
    tracker = StabilityTracker(min_age_s=5.0, clock=clock)
    assert not tracker.observe("a.wav", 100, 1)
    clock.t += 4.75
    assert not tracker.observe("a.wav", 100, 1)
    clock.t += 0.25
    assert tracker.observe("a.wav", 100, 1)
    assert not tracker.observe("a.wav", 200, 1)  # grew: start over
    clock.t += 3
    assert not tracker.observe("a.wav", 200, 2)  # touched: start over
    clock.t += 4.75
    assert not tracker.observe("a.wav", 200, 2)
    clock.t += 0.25
    assert tracker.observe("a.wav", 200, 2)


def test_stability_paths_are_independent_and_forgettable(tmp_path):
    clock = FakeClock()
    tracker = StabilityTracker(min_age_s=2.0, clock=clock)
    tracker.observe(tmp_path / "a.wav", 1, 1)
    clock.t += 2
    assert not tracker.observe(tmp_path / "b.wav", 1, 1)
    assert tracker.observe(str(tmp_path / "a.wav"), 1, 1)  # a Path and its str are one file
    tracker.forget(tmp_path / "a.wav")
    assert not tracker.observe(tmp_path / "a.wav", 1, 1)
    assert StabilityTracker(min_age_s=0, clock=clock).observe("c.wav", 1, 1)
    with pytest.raises(ValueError):
        StabilityTracker(min_age_s=-1)


def test_a_header_time_comes_before_a_stamp_after_another_prefix(tmp_path):
    """A stamp after a prefix a tool or person added may be an export's time: the recorder's own
    header time wins there (found by a review), while an AudioMoth name still comes first, and a
    prefixed name that agrees with a zoned header is read in that zone."""
    stamped = [guano(Timestamp="2023-02-01T06:00:00+08:00")]
    tool = recording_time(write(tmp_path / "S10_export_20240601_101010.wav", wav_bytes(after=stamped)), now=NOW)
    assert (tool.start_utc, tool.source) == (utc(2023, 1, 31, 22), "metadata")
    song_meter = recording_time(write(tmp_path / "SMM07257_20230201_060000.wav", wav_bytes(after=stamped)), now=NOW)
    assert song_meter.start_utc == utc(2023, 1, 31, 22)
    moth = recording_time(write(tmp_path / "20240601_101010.WAV", wav_bytes(after=stamped)), now=NOW)
    assert (moth.start_utc, moth.source) == (utc(2024, 6, 1, 10, 10, 10), "filename")
    alone = recording_time(write(tmp_path / "S10_20230203_060000.wav", wav_bytes()), now=NOW)
    assert (alone.start_utc, alone.source) == (utc(2023, 2, 3, 6), "filename")


def test_a_name_at_the_calendars_end_in_a_clock_zone_is_still_timed(tmp_path):
    """A name of year 1 on a clock east of UTC (or of 9999-12-31 west of it) has no UTC time: it
    raised OverflowError after the analysis (watch: a failed attempt each time, then quarantine;
    classify: a traceback). Its wall clock is read as UTC, flagged suspect like any such year."""
    east, west = timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))
    for name, clock, expected in (("00010101_000000.WAV", east, datetime(1, 1, 1, tzinfo=timezone.utc)),
                                  ("SM4_00010101_000000.wav", east, datetime(1, 1, 1, tzinfo=timezone.utc)),
                                  ("99991231_235959.WAV", west, datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc))):
        got = recording_time(write_wave_module(tmp_path / name), now=NOW, clock=clock)
        assert (got.start_utc, got.source, got.suspect) == (expected, "filename", True), name
    # A GUANO time without an offset, on that clock, likewise.
    path = write(tmp_path / "night.wav", wav_bytes(after=[guano(Timestamp="0001-01-01T00:00:00")]))
    got = recording_time(path, now=NOW, clock=east)
    assert (got.start_utc, got.source, got.suspect) == (datetime(1, 1, 1, tzinfo=timezone.utc), "metadata", True)
