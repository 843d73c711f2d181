"""Decoding recordings into 16 kHz mono float32, whole or in bounded blocks; the mono mix and the
streaming resampler here are also what the live path (``edgemon.live.worker``) uses, so a file and
a microphone feeding the same samples give the analysis the same samples."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from edgemon.analysis import wav_repair
from edgemon.errors import AudioError
from edgemon.safetext import shown

log = logging.getLogger(__name__)

TARGET_RATE = 16000
# Sample rates a recording may declare. Outside them the header is wrong or hostile: a WAV that
# claims 1 Hz turns each second of data into hours of audio to resample (~890 MB for one file).
MIN_RATE, MAX_RATE = 1000, 768000
MAX_CHANNELS = 64   # microphone arrays write up to 64; more is a damaged header
# At most this many samples (all channels) are read at once, whatever the header claims of rate
# and channels: 2**21 float32 samples is 8 MB (a 10 s block of 96 kHz stereo).
MAX_BLOCK_SAMPLES = 2**21


# 16-bit PCM (AudioMoth's format) is read as int16 and scaled here: libsndfile's own conversion to
# float takes longer than decoding the file, and x / 32768 is the very value it returns.
_INT16_SCALE = np.float32(1 / 32768)


def _read_dtype(f: soundfile.SoundFile) -> str:
    return "int16" if f.subtype == "PCM_16" else "float32"


def mono(block: np.ndarray) -> np.ndarray:
    """``[n, channels]`` float32 in [-1, 1] (or int16 PCM) -> float32 ``[n]`` in [-1, 1] by
    averaging channels (recorders put the same scene on each)."""
    if block.shape[1] > 1:
        samples = block.mean(axis=1, dtype=np.float32)
    else:
        samples = block[:, 0].astype(np.float32, copy=block.dtype != np.float32)
    if block.dtype == np.int16:
        samples *= _INT16_SCALE  # a power of two: exact, so the mean commutes with it
    return samples


class Resampler:
    """Streaming resampling (soxr HQ) of mono float32 from ``rate`` Hz to ``target`` Hz, chunk by
    chunk; a pass-through when the rates are equal. ``push(samples, last=True)`` flushes the
    filter's delay line: the stream is then over."""

    def __init__(self, rate: float, target: float):
        self._soxr = None if rate == target else soxr.ResampleStream(rate, target, 1, dtype="float32",
                                                                        quality="HQ")

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """float32 ``[n]`` at ``rate`` -> float32 ``[m]`` at ``target`` (m ~ n * target / rate,
        less the filter's delay until ``last``)."""
        return samples if self._soxr is None else self._soxr.resample_chunk(samples, last=last)


def _check_rate(f: soundfile.SoundFile, path: Path) -> None:
    """Refuse a header no recorder writes: its audio would be read as something else (a mono
    recording under a header claiming 1000 channels averages 1000 successive samples into one)."""
    if not MIN_RATE <= f.samplerate <= MAX_RATE:
        raise AudioError(f"{path}: sample rate {f.samplerate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz "
                         "(a broken or hostile header)")
    if f.channels > MAX_CHANNELS:
        raise AudioError(f"{path}: the header claims {f.channels} channels, more than the {MAX_CHANNELS} a "
                         "recorder or array writes (a broken or hostile header)")


# A float recording's full scale is 1. Beyond this, a sample is a corrupt word read as a float
# (a quarter of random 32-bit words are above 2^63): its power overflowed the spectrum, NaN then
# spread through PCEN's running state, and one such sample spoiled the rest of the file, with no
# note, and made a false call at 0.96 (a review).
ABSURD_SAMPLE = 1e6


def _corrupt(samples: np.ndarray) -> np.ndarray:
    """Where a float recording's samples are NaN, infinite or absurdly large."""
    return ~np.isfinite(samples) | (np.abs(samples) > ABSURD_SAMPLE)


def _check_finite(samples: np.ndarray, raw: np.ndarray, path: Path) -> None:
    if raw.dtype.kind == "f" and _corrupt(samples).any():  # integer PCM is always finite and in range
        raise AudioError(f"{path}: audio holds NaN, infinite or impossibly large (beyond ±{ABSURD_SAMPLE:g}) "
                         f"samples")


def load(path: str | Path, sample_rate: int = TARGET_RATE) -> np.ndarray:
    """Whole file -> mono float32 in [-1, 1] at ``sample_rate`` Hz (soxr HQ resampling).

    Raises ``AudioError`` naming the file when it is missing, unreadable, not audio, empty,
    or holds non-finite samples, or declares a sample rate outside ``MIN_RATE``-``MAX_RATE``.
    """
    path = Path(path)
    try:
        with _opened(path) as (f, _, stream):
            _check_rate(f, path)
            rate, data = f.samplerate, f.read(dtype=_read_dtype(f), always_2d=True)
            wav_repair.check(stream)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: {_cannot(exc, path)}") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: file holds no audio samples")
    samples = mono(data)
    _check_finite(samples, data, path)
    if rate != sample_rate:
        samples = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    return np.ascontiguousarray(samples)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[tuple[soundfile.SoundFile, str | None, object]]:
    """The file's decoder, a note when it reads through a rewritten WAV header (``wav_repair``:
    a header never finalised, or one libsndfile cannot parse), and that header's stream (None
    for an ordinary file): pass it to ``wav_repair.check`` after each read."""
    with contextlib.ExitStack() as stack:
        yield _open_into(stack, path)


open_decoder = _opened   # for readers of the raw samples (``files.triggered``): opened as analysis opens it


def _open_into(stack: contextlib.ExitStack, path: Path) -> tuple[soundfile.SoundFile, str | None, object]:
    stream, note = wav_repair.repaired(path)
    if stream is None:
        try:
            return stack.enter_context(soundfile.SoundFile(os.fsencode(path))), None, None   # bytes: any name
        except soundfile.LibsndfileError as refused:
            stream, note = wav_repair.repaired(path, always=True)
            if stream is None:
                raise
            note = f"{note} (libsndfile said: {_cannot(refused, path)})"
    stack.enter_context(stream)
    return stack.enter_context(soundfile.SoundFile(stream)), note, stream


_SAID_NARROW: set[int] = set()   # rates already warned of in this process: once, not per file


def _narrow_band(path: Path, rate: int, target: int) -> str:
    """The note of a recording made at a lower rate than the model's: upsampling adds no sound
    above rate / 2, where the model's bands were trained to hear some (a newcomer trial saw an
    8 kHz AudioMoth file give other events than the same sound at 16 kHz, with nothing said)."""
    note = (f"recorded at {rate} Hz, below the model's {target} Hz: no sound above {rate / 2000:g} kHz, "
            f"so detections may differ from a recording at {target} Hz or more")
    if rate not in _SAID_NARROW:
        _SAID_NARROW.add(rate)
        log.warning("%s: %s (said once for every file at %d Hz)", shown(path), note, rate)
    return note


def not_said_yet(note: str | None) -> str | None:
    """``note`` without the low-rate note, which ``_narrow_band`` says once for every file at that
    rate (``classify`` said it a second time for the first such file); None when nothing is left."""
    if not note:
        return None
    kept = [part for part in note.split("; ") if not (part.startswith("recorded at ") and "below the model's" in part)]
    return "; ".join(kept) or None


class Blocks:
    """The blocks of ``iter_blocks``; after they are consumed, ``note`` says what was not read as
    usual (a rewritten header, decoding stopped early), or None."""

    def __init__(self, path: Path, block_seconds: float, sample_rate: int, on_block=None):
        self.path, self.block_seconds, self.sample_rate, self.on_block = path, block_seconds, sample_rate, on_block
        self.note: str | None = None
        self._stopped: Exception | None = None   # the decode error that ended the audio early, if one did
        self._silenced = 0                 # non-finite samples read as silence
        self._stream = None                # a rewritten header's stream (wav_repair), if any

    def __iter__(self) -> Iterator[np.ndarray]:
        path, sample_rate = self.path, self.sample_rate
        longest = max(1, int(self.block_seconds * sample_rate))
        try:
            with _opened(path) as (f, self.note, self._stream):
                _check_rate(f, path)
                resampler = Resampler(f.samplerate, sample_rate)
                frames = max(1, min(int(self.block_seconds * f.samplerate), MAX_BLOCK_SAMPLES // f.channels))
                for block in self._read(f, frames):
                    samples = self._finite(mono(block), block)
                    samples = resampler.push(samples)
                    for at in range(0, len(samples), longest):
                        if self.on_block is not None:
                            self.on_block()
                        yield np.ascontiguousarray(samples[at:at + longest])
                tail = resampler.push(np.zeros(0, np.float32), last=True)
                for at in range(0, len(tail), longest):
                    yield tail[at:at + longest]
                if self._silenced:
                    silenced = f"{self._silenced} NaN, infinite or impossibly large sample(s) read as silence"
                    self.note = f"{self.note}; {silenced}" if self.note else silenced
                if f.samplerate < sample_rate:
                    narrow = _narrow_band(path, f.samplerate, sample_rate)
                    self.note = f"{self.note}; {narrow}" if self.note else narrow
        except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
            raise AudioError(f"{path}: {_cannot(exc, path)}") from exc

    def _finite(self, samples: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """A recorder's glitch (one NaN in a float WAV) costs its samples, not the recording:
        non-finite samples become silence and are counted for the note. (``load``, for training
        clips, refuses them: a corrupt clip should not teach.)"""
        if raw.dtype.kind == "f":
            bad = _corrupt(samples)
            if bad.any():
                self._silenced += int(bad.sum())
                samples = np.where(bad, np.float32(0), samples)
        return samples

    def _read(self, f: soundfile.SoundFile, frames: int) -> Iterator[np.ndarray]:
        """``f``'s blocks; a decode error (a FLAC cut short: its last bytes never copied, the card
        pulled) ends the audio where decoding stops, with a note, so the audio before it is
        analysed. libsndfile cannot go on with a handle that met a decode error, so a fresh one
        reads on to the break (``_pieces``)."""
        done, dtype = 0, _read_dtype(f)
        while len(block := self._block(f, frames, dtype)):
            done += len(block)
            yield block
        if self._stopped is None:
            return
        if self._stream is None:
            # A read that meets the error gives nothing, so the last good stretch is read in
            # seconds, then the second that broke in small pieces (a review saw up to 1 s lost).
            for step in (f.samplerate, 1024):
                for block in self._pieces(done, dtype, step):
                    done += len(block)
                    yield block
        if done == 0:
            raise self._stopped   # no audio at all: not a recording cut short, a failed attempt
        why = getattr(self._stopped, "error_string", None) or str(self._stopped)
        stopped = f"decoding stopped at {done / f.samplerate:.1f} s ({why}): the rest is not analysed"
        self.note = f"{self.note}; {stopped}" if self.note else stopped

    def _block(self, f: soundfile.SoundFile, frames: int, dtype: str) -> np.ndarray:
        try:
            block = f.read(frames, dtype=dtype, always_2d=True)
            wav_repair.check(self._stream)   # a card's read error, not the end of the audio
            return block
        except soundfile.LibsndfileError as exc:
            if (getattr(exc, "error_string", None) or str(exc)).strip() == "System error.":
                raise   # the card failing: a failed attempt, tried again later
            self._stopped = exc
            return np.zeros((0, f.channels), dtype)

    def _pieces(self, skip: int, dtype: str, step: int) -> Iterator[np.ndarray]:
        """The frames after the first ``skip`` up to the decode error, ``step`` at a time, from a
        fresh handle (its ``seek`` is not trusted on a cut file: the frames before are read and
        dropped)."""
        try:
            with soundfile.SoundFile(os.fsencode(self.path)) as g:
                while len(block := g.read(max(1, step), dtype=dtype, always_2d=True)):
                    if skip >= len(block):
                        skip -= len(block)
                        continue
                    yield block[skip:]
                    skip = 0
        except (soundfile.LibsndfileError, RuntimeError):
            return


def iter_blocks(path: str | Path, block_seconds: float = 60.0, sample_rate: int = TARGET_RATE,
                on_block=None) -> Blocks:
    """Consecutive mono float32 blocks at ``sample_rate`` without holding the whole file (an
    iterable ``Blocks``: its ``note`` says afterwards what was not read as usual).

    Memory stays bounded whatever the file's length and whatever its header claims: each read
    holds at most ``block_seconds`` at the file's own rate and at most ``MAX_BLOCK_SAMPLES``
    samples, and no yielded block is longer than ``block_seconds`` at ``sample_rate`` (plus the
    resampler's short delay line). A rate outside ``MIN_RATE``-``MAX_RATE`` raises ``AudioError``.
    ``on_block`` is called before each block is yielded (a watchdog's progress).
    """
    return Blocks(Path(path), block_seconds, sample_rate, on_block)


def _cannot(exc: Exception, path: Path) -> str:
    """What went wrong, without the path soundfile puts in its message as Python bytes (``b'...'``).
    libsndfile says only 'System error.' when the file cannot be opened; the system's own reason
    ('cannot read: Permission denied') is what a person can act on."""
    why = getattr(exc, "error_string", None) or str(exc)
    if why.strip() == "System error.":
        try:
            with open(os.fsencode(path), "rb"):
                pass
        except OSError as opened:
            return f"cannot read: {opened.strerror or opened}"
    try:
        if os.stat(os.fsencode(path)).st_size == 0:
            return "empty file (0 bytes): no audio"   # libsndfile's "Format not recognised." misleads
    except OSError:
        pass
    if "No 'data' chunk" in why:   # a header its writer never followed with samples (the battery went)
        return "a WAV header and no audio after it (no data chunk): nothing to analyse"
    return f"cannot decode audio: {why}"
