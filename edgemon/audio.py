"""Decoding recordings into 16 kHz mono float32, whole or in bounded blocks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from edgemon.errors import AudioError

TARGET_RATE = 16000


# 16-bit PCM (AudioMoth's format) is read as int16 and scaled here: libsndfile's own conversion to
# float takes longer than decoding the file, and x / 32768 is the very value it returns.
_INT16_SCALE = np.float32(1 / 32768)


def _read_dtype(f: soundfile.SoundFile) -> str:
    return "int16" if f.subtype == "PCM_16" else "float32"


def _mono(block: np.ndarray) -> np.ndarray:
    """``[n, channels]`` -> float32 ``[n]`` in [-1, 1] by averaging channels (recorders put the
    same scene on each)."""
    if block.shape[1] > 1:
        samples = block.mean(axis=1, dtype=np.float32)
    else:
        samples = block[:, 0].astype(np.float32, copy=block.dtype != np.float32)
    if block.dtype == np.int16:
        samples *= _INT16_SCALE  # a power of two: exact, so the mean commutes with it
    return samples


def _check_finite(samples: np.ndarray, raw: np.ndarray, path: Path) -> None:
    if raw.dtype.kind == "f" and not np.isfinite(samples).all():  # integer PCM is always finite
        raise AudioError(f"{path}: audio holds NaN or infinite samples")


def load(path: str | Path, sample_rate: int = TARGET_RATE) -> np.ndarray:
    """Whole file -> mono float32 in [-1, 1] at ``sample_rate`` Hz (soxr HQ resampling).

    Raises ``AudioError`` naming the file when it is missing, unreadable, not audio, empty,
    or holds non-finite samples.
    """
    path = Path(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, data = f.samplerate, f.read(dtype=_read_dtype(f), always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file holds no audio samples")
    samples = _mono(data)
    _check_finite(samples, data, path)
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(samples)


def iter_blocks(path: str | Path, block_seconds: float = 60.0,
                sample_rate: int = TARGET_RATE) -> Iterator[np.ndarray]:
    """Yield consecutive mono float32 blocks at ``sample_rate`` without holding the whole file.

    Memory stays bounded by ``block_seconds`` at the file's own rate, whatever its length.
    """
    path = Path(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            resampler = None if f.samplerate == sample_rate else soxr.ResampleStream(
                f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
            frames = max(1, int(block_seconds * f.samplerate))
            for block in f.blocks(blocksize=frames, dtype=_read_dtype(f), always_2d=True):
                samples = _mono(block)
                _check_finite(samples, block, path)
                if resampler is not None:
                    samples = resampler.resample_chunk(samples, last=False)
                if len(samples):
                    yield np.ascontiguousarray(samples)
            if resampler is not None:
                tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                if len(tail):
                    yield tail
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
