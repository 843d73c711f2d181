"""Decoding: any WAV/FLAC soundfile reads -> 16 kHz mono float32, or a clear error naming the file."""

import numpy as np
import pytest
import soundfile

from edgemon.analysis import audio
from edgemon.errors import AudioError


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


def test_nan_samples_are_refused(tmp_path):
    x = sine(16000, 0.1)
    x[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        audio.load(tmp_path / "nan.wav")


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
