"""Decoding: any WAV/FLAC soundfile reads -> 16 kHz mono float32, or a clear error naming the file."""

import struct

import numpy as np
import pytest
import soundfile

from edgemon.analysis import audio
from edgemon.errors import AudioError
from edgemon.files.completeness import wav_header_consistent
from edgemon.files.recordings import audio_duration_s, recording_time
from edgemon.storage.fingerprint import fingerprint


def sine(rate, seconds, freq=1000.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def dominant_hz(x, rate=16000):
    spectrum = np.abs(np.fft.rfft(x))
    return np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000, 192000])
def test_resamples_to_16k_keeping_pitch(tmp_path, rate):
    path = tmp_path / f"r{rate}.wav"
    soundfile.write(path, sine(rate, 1.0), rate)
    x = audio.load(path)
    assert x.dtype == np.float32 and abs(len(x) - 16000) <= 1
    assert abs(dominant_hz(x) - 1000) < 5


def test_stereo_is_mixed_to_mono(tmp_path):
    stereo = sine(16000, 0.5, channels=2)
    stereo[:, 1] = 0
    soundfile.write(tmp_path / "s.wav", stereo, 16000)
    x = audio.load(tmp_path / "s.wav")
    np.testing.assert_allclose(x, stereo[:, 0] / 2, atol=1e-4)


def test_8bit_and_flac(tmp_path):
    soundfile.write(tmp_path / "u8.wav", sine(16000, 0.5), 16000, subtype="PCM_U8")
    soundfile.write(tmp_path / "f.flac", sine(16000, 0.5), 16000)
    for name in ("u8.wav", "f.flac"):
        assert abs(dominant_hz(audio.load(tmp_path / name)) - 1000) < 5


@pytest.mark.parametrize("content", [b"", b"this is not audio at all" * 10, b"RIFF\x00\x00\x00\x00WAVE"])
def test_non_audio_is_an_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.WAV"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="bad.WAV"):
        audio.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="nope.wav"):
        audio.load(tmp_path / "nope.wav")


def test_empty_audio(tmp_path):
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no audio"):
        audio.load(tmp_path / "empty.wav")


def test_nan_samples_are_refused_for_training_and_silenced_on_the_recorder(tmp_path):
    """A training clip with NaN is corrupt; a recording with one glitch is still a night of audio
    (a hostile-input trial saw one NaN sample quarantine a whole recording)."""
    x = sine(16000, 2.0)
    x[100], x[20000], x[30000] = np.nan, np.inf, 1e20   # and a corrupt word read as a float (a review)
    soundfile.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN, infinite or impossibly large"):
        audio.load(tmp_path / "nan.wav")
    blocks = audio.iter_blocks(tmp_path / "nan.wav", block_seconds=1.0)
    decoded = np.concatenate(list(blocks))
    assert len(decoded) == len(x) and np.isfinite(decoded).all() and decoded[100] == decoded[30000] == 0
    assert blocks.note == "3 NaN, infinite or impossibly large sample(s) read as silence"


def test_an_empty_file_says_so(tmp_path):
    (tmp_path / "empty.WAV").write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.WAV: empty file \(0 bytes\)"):
        audio.load(tmp_path / "empty.WAV")


def test_a_header_with_no_audio_after_it_says_so(tmp_path):
    """A newcomer trial: a WAV whose writer stopped after its header read "Error in WAV file. No
    'data' chunk marker." (libsndfile's words)."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    (tmp_path / "header.WAV").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(AudioError, match=r"header\.WAV: a WAV header and no audio after it \(no data chunk\)"):
        list(audio.iter_blocks(tmp_path / "header.WAV"))


@pytest.mark.parametrize("rate", [16000, 48000])
def test_blocks_equal_whole_file(tmp_path, rate):
    soundfile.write(tmp_path / "long.wav", sine(rate, 7.3, freq=440), rate)
    whole = audio.load(tmp_path / "long.wav")
    joined = np.concatenate(list(audio.iter_blocks(tmp_path / "long.wav", block_seconds=1.0)))
    assert abs(len(joined) - len(whole)) <= 2
    n = min(len(joined), len(whole))
    # Streaming and one-shot soxr agree away from the edges.
    np.testing.assert_allclose(joined[1000:n - 1000], whole[1000:n - 1000], atol=2e-3)


@pytest.mark.parametrize("name", ["m.wav", "s.wav", "m.flac", "s.flac"])
def test_16_bit_pcm_reads_as_libsndfile_float_would(tmp_path, name):
    """16-bit files take the int16 read; the samples must be libsndfile's float32 ones, bit for bit."""
    channels = 2 if name.startswith("s") else 1
    pcm = np.random.default_rng(3).integers(-32768, 32768, (16000, channels)).astype(np.int16)
    pcm[:2] = [[-32768] * channels, [32767] * channels]
    soundfile.write(tmp_path / name, pcm, 16000, subtype="PCM_16")
    as_float = soundfile.read(tmp_path / name, dtype="float32", always_2d=True)[0].mean(axis=1, dtype=np.float32)
    np.testing.assert_array_equal(audio.load(tmp_path / name), as_float)
    np.testing.assert_array_equal(np.concatenate(list(audio.iter_blocks(tmp_path / name, 0.3))), as_float)


def _wav_with(path, x, rate, *, riff_size=None, data_size=None, odd_chunk=False, trailing_chunk=False):
    """A 16-bit WAV written by hand: sizes as given (AudioMoth leaves 0 until it closes a file), and
    optionally an odd-length chunk before ``data`` without its pad byte (as some writers do), and
    a chunk after the audio."""
    import struct
    pcm = (x * 32767).astype("<i2").tobytes()
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    extra = b"guan" + struct.pack("<I", 41) + b"GUANO|Version:1.0\nMake:Test\nModel:x\n".ljust(41, b" ")[:41] if odd_chunk else b""
    after = b"LIST" + struct.pack("<I", 12) + b"INFOICMT" + b"\xff\xff\xff\x7f" if trailing_chunk else b""
    body = b"WAVE" + fmt + extra + b"data" + struct.pack("<I", len(pcm) if data_size is None else data_size) + pcm + after
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body)
    return path


@pytest.mark.parametrize("riff_size", [0, None])
def test_a_header_never_finalised_is_read_to_the_end_of_the_file(tmp_path, riff_size):
    """Found by a hostile-input trial: a WAV whose data size was never written (the battery died)
    decoded as 0 s, and was stored as done with no detections."""
    x = sine(16000, 3.0)
    path = _wav_with(tmp_path / "cut.wav", x, 16000, riff_size=riff_size, data_size=0)
    assert abs(len(audio.load(path)) - len(x)) <= 1
    blocks = audio.iter_blocks(path, block_seconds=1.0)
    assert abs(sum(len(b) for b in blocks) - len(x)) <= 1
    assert blocks.note.startswith("data size 0 in the header")


def test_a_data_size_far_short_of_the_audio_after_it_is_read_to_the_end_of_the_file(tmp_path):
    """Found by a recorder-formats trial: a Frontier Labs BAR that lost power leaves the data size
    it writes first (44) in a file it pre-allocated (known problem FL003); its audio decoded as 22
    samples and was stored as done, with no detections and no note. A finished WAV followed by a
    chunk larger than its audio, or by a little slack, is read as its header says."""
    x = sine(16000, 3.0)
    path = _wav_with(tmp_path / "bar.wav", x, 16000, data_size=44)
    blocks = audio.iter_blocks(path, block_seconds=1.0)
    assert abs(sum(len(b) for b in blocks) - len(x)) <= 1
    assert blocks.note.startswith("data size 44 in the header")
    assert not wav_header_consistent(path)[0] and audio_duration_s(path) == pytest.approx(3.0)
    short = sine(16000, 0.1)
    for name, after in (("tagged.wav", b"JUNK" + struct.pack("<I", 20000) + bytes(20000)), ("slack.wav", bytes(1000))):
        finished = _wav_with(tmp_path / name, short, 16000)
        finished.write_bytes(finished.read_bytes() + after)
        blocks = audio.iter_blocks(finished, block_seconds=1.0)
        assert abs(sum(len(b) for b in blocks) - len(short)) <= 1 and blocks.note is None
        assert audio_duration_s(finished) == pytest.approx(0.1)


def test_a_wav_past_4_gib_with_all_ones_sizes_is_read_to_the_end_of_the_file(tmp_path):
    """Found by a large-recordings trial: libsndfile (soundfile's ``WAV``), sox and ffmpeg leave
    sizes 0xFFFFFFFF in a WAV that outgrew a RIFF, and libsndfile read only its first 4 GiB: of a
    1.6 h recording at 384 kHz the last 168 s, and the call in them, were never analysed, and its
    length was stored as 5592 s. (A sparse file: the 4 GiB of silence take no room.)"""
    rate, tail = 384000, sine(384000, 1.0)
    path = tmp_path / "long.WAV"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, 2 * rate, 2, 16)
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)
    silence = 2**32 // 2 * 2   # 4 GiB of 16-bit samples, then a second of tone
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + silence)
        f.seek(len(header) + silence)
        f.write((tail * 32767).astype("<i2").tobytes())
    frames = (silence + 2 * len(tail)) // 2
    with audio.open_decoder(path) as (f, note, _):
        assert f.frames == frames and note.startswith("sizes 0xFFFFFFFF in the header")
        f.seek(frames - len(tail))
        last = f.read(dtype="float32")
    assert len(last) == len(tail) and abs(dominant_hz(last, rate) - 1000) < 5
    assert audio_duration_s(path) == pytest.approx(frames / rate)


def test_an_rf64_still_being_written_waits_and_one_never_closed_is_read_to_the_end(tmp_path):
    """Found by a large-recordings trial: an RF64 (libsndfile's, as long recordings are written)
    says its sizes in a ``ds64`` chunk, 0 until it is closed, and edgemon read no size there: one
    still being written was taken as whole and analysed as 0 s at every pause of its writer, and
    one never closed (the power cut) was stored as done with 0 s of audio. A closed one is read as
    its header says."""
    x = sine(48000, 3.0)
    path = tmp_path / "long.WAV"
    with soundfile.SoundFile(path, "w", samplerate=48000, channels=1, subtype="PCM_16", format="RF64") as f:
        f.write(x)
        f.flush()
        open_bytes = path.read_bytes()     # what a reader sees before the writer closes it
    closed = path.read_bytes()
    assert wav_header_consistent(path) == (True, "header consistent") and audio_duration_s(path) == pytest.approx(3.0)
    blocks = audio.iter_blocks(path, block_seconds=1.0)
    assert abs(sum(len(b) for b in blocks) - len(x) / 3) <= 1 and blocks.note is None
    path.write_bytes(open_bytes)
    assert closed != open_bytes and wav_header_consistent(path) == (False, "data size 0: header not yet finalised")
    blocks = audio.iter_blocks(path, block_seconds=1.0)
    assert abs(sum(len(b) for b in blocks) - len(x) / 3) <= 1 and blocks.note.startswith("data size 0 in the header")
    assert audio_duration_s(path) == pytest.approx(3.0)


@pytest.mark.parametrize("claimed", [2**50, 2**63])
def test_an_rf64_whose_ds64_claims_more_than_a_file_can_hold_is_read_as_far_as_it_goes(tmp_path, claimed):
    """Found by a header fuzzer: a ds64 data size past 2**63 made the chunk walk seek where no
    offset reaches (a ValueError: a traceback in watch's log and in classify), one past 16 TiB
    failed the seek on ext4 ("Invalid argument", quarantined), though the audio before was whole."""
    path = tmp_path / "20240201_060000.WAV"
    soundfile.write(path, sine(16000, 3.0), 16000, subtype="PCM_16", format="RF64")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"ds64") + 8 + 8            # the ds64 body: RIFF size, then data size
    raw[at:at + 8] = struct.pack("<Q", claimed)
    path.write_bytes(bytes(raw))
    held = len(raw) - (raw.index(b"data") + 8)
    assert wav_header_consistent(path) == (False, f"data chunk declares {claimed} bytes but file holds {held}")
    assert audio_duration_s(path) == pytest.approx(3.0)
    assert recording_time(path).source == "filename"
    assert fingerprint(path) is not None
    assert abs(sum(len(b) for b in audio.iter_blocks(path, block_seconds=1.0)) - 48000) <= 1


@pytest.mark.parametrize("samples", [32000, 16033])   # 16033: a data size whose low byte is 'B'
def test_a_chunk_missing_its_pad_byte_before_the_audio_is_read(tmp_path, samples):
    """Found by a hostile-input trial: libsndfile found no data chunk after an odd-length GUANO
    chunk without its pad byte, and the recording was quarantined; a review then found the repair
    failing whenever the data size's low byte read as an id character."""
    x = sine(16000, samples / 16000)
    path = _wav_with(tmp_path / "guano.wav", x, 16000, odd_chunk=True, trailing_chunk=True)
    blocks = audio.iter_blocks(path, block_seconds=1.0)
    decoded = np.concatenate(list(blocks))
    # exactly its samples: the chunk after the audio is not read as audio (a review saw 7.2e28)
    assert len(decoded) == len(x) and np.abs(decoded).max() <= 1.0 and abs(dominant_hz(decoded) - 1000) < 5
    assert "libsndfile cannot read" in blocks.note and "data" in blocks.note
    clean = audio.iter_blocks(_wav_with(tmp_path / "clean.wav", x, 16000), block_seconds=1.0)
    assert abs(sum(len(b) for b in clean) - len(x)) <= 1 and clean.note is None


def test_a_padded_chunk_after_one_missing_its_pad_byte_is_walked_past(tmp_path):
    """Found by a header fuzzer: after a GUANO chunk without its pad byte every later chunk lies at
    an odd offset, and a LIST of odd size there, padded as RIFF says, was taken to end on its pad:
    the walk was lost before ``data``, and the whole recording quarantined as "no data chunk"."""
    x = (sine(16000, 3.0) * 32767).astype("<i2").tobytes()
    guano = b"GUANO|Version: 1.0\nTimestamp: 2024-02-01T06:00:00Z\nMake: AM"   # odd: 59 bytes
    info = b"INFO" + b"ICMT" + struct.pack("<I", 1) + b"x"                       # odd: 13 bytes
    body = (b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
            + b"guan" + struct.pack("<I", len(guano)) + guano                      # its pad byte left out
            + b"LIST" + struct.pack("<I", len(info)) + info + b"\0"                # its pad byte written
            + b"data" + struct.pack("<I", len(x)) + x)
    path = tmp_path / "mixed.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert wav_header_consistent(path) == (True, "header consistent")
    decoded = np.concatenate(list(audio.iter_blocks(path, block_seconds=1.0)))
    assert len(decoded) == 48000 and abs(dominant_hz(decoded) - 1000) < 5


def test_a_flac_cut_short_gives_the_audio_before_the_cut(tmp_path):
    """Found by a hostile-input trial: a FLAC whose last bytes never arrived failed with 'lost
    sync' on every attempt and was quarantined, with most of its audio intact."""
    x = np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32) * 0.1
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, x, 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    blocks = audio.iter_blocks(cut, block_seconds=5.0)
    decoded = np.concatenate(list(blocks))
    assert 8 * 16000 < len(decoded) < 11 * 16000, len(decoded)   # about half, not one block less
    np.testing.assert_allclose(decoded[:16000], x[:16000], atol=1e-4)
    assert blocks.note.startswith("decoding stopped at ") and "the rest is not analysed" in blocks.note
    # A review found a cut inside the first block still failed, and the handle that met the error
    # could not go back: the block it broke was lost (10.0 s of 14.8 s decodable).
    for seconds, block_s in ((30, 10.0), (6, 10.0)):
        long = tmp_path / f"long{seconds}.flac"
        soundfile.write(long, x[:16000 * seconds] if seconds <= 20 else np.tile(x, 2)[:16000 * seconds], 16000)
        cut_long = tmp_path / f"cut{seconds}.flac"
        cut_long.write_bytes(long.read_bytes()[:long.stat().st_size // 2])
        got = sum(len(b) for b in audio.iter_blocks(cut_long, block_seconds=block_s))
        assert (seconds / 2 - 1.1) * 16000 < got < 0.55 * seconds * 16000, (seconds, got / 16000)   # to the second
    empty = tmp_path / "head.flac"
    empty.write_bytes(whole.read_bytes()[:200])          # no audio at all: still an error
    with pytest.raises(AudioError, match="head.flac"):
        list(audio.iter_blocks(empty))


def test_a_read_error_under_a_rewritten_header_is_an_error_not_the_end_of_the_audio(tmp_path, monkeypatch):
    """Found by a review: libsndfile reads through a callback that swallows exceptions, so a card's
    read error looked like the end of the audio, and a file was stored as done with a sixth of it."""
    from edgemon.analysis import wav_repair
    path = _wav_with(tmp_path / "never_closed.wav", sine(16000, 60.0), 16000, data_size=0)
    real_open = open
    reads = {"n": 0}

    class Failing:
        def __init__(self, f):
            self.f = f

        def readinto(self, view):
            reads["n"] += 1
            if reads["n"] >= 4:
                raise OSError(5, "Input/output error")
            return self.f.readinto(view)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(wav_repair, "open", lambda *a, **k: Failing(real_open(*a, **k)), raising=False)
    with pytest.raises(AudioError, match="Input/output error"):
        list(audio.iter_blocks(path, block_seconds=1.0))


def test_a_recording_below_the_models_rate_says_so_once(tmp_path, caplog, monkeypatch):
    """A newcomer trial: an 8 kHz AudioMoth file gave other events than the same sound at 16 kHz,
    with nothing said. Its ledger note says why; the log says it once per rate, not per file."""
    monkeypatch.setattr(audio, "_SAID_NARROW", set())
    notes = {}
    for name, rate in (("a.wav", 8000), ("b.wav", 8000), ("c.wav", 16000), ("d.wav", 48000)):
        samples = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(rate * 2) / rate)
        soundfile.write(tmp_path / name, samples.astype(np.float32), rate)
        blocks = audio.Blocks(tmp_path / name, 1.0, 16000)
        assert sum(len(b) for b in blocks) == pytest.approx(32000, abs=16)
        notes[name] = blocks.note
    assert notes["a.wav"] == notes["b.wav"] and "recorded at 8000 Hz" in notes["a.wav"]
    assert "no sound above 4 kHz" in notes["a.wav"] and notes["c.wav"] is None and notes["d.wav"] is None
    assert caplog.text.count("recorded at 8000 Hz") == 1


def test_classify_says_the_low_rate_note_once_too(tmp_path):
    """A newcomer trial: `edgemon classify` said the 8 kHz note twice for the first such file (the
    once-per-rate warning, then again as the file's note), and once more for every later file."""
    import subprocess
    import sys

    for name in ("a.wav", "b.wav"):
        samples = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(8000 * 5) / 8000)
        soundfile.write(tmp_path / name, samples.astype(np.float32), 8000)
    done = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(tmp_path / "a.wav"), str(tmp_path / "b.wav")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("recorded at 8000 Hz") == 1, done.stderr
