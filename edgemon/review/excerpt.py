"""A detection's audio with pre- and post-roll, from its saved clip or its source recording."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis import audio, wav_repair
from edgemon.errors import AudioError
from edgemon.storage.readonly import recording_path

MAX_EXCERPT_S = 60.0   # a long event is cut: the page is for hearing a call, not a recording
# The longest clip ``listen`` saves: max_clip_s (60) and up to a minute of each roll (clip_pre_s,
# clip_post_s). A longer file under a clip's name is read no further (it was read whole: an hour's
# file, 230 MB of float32 at 16 kHz per request, on a Pi).
MAX_CLIP_S = 180.0


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """Mono float32 ``samples`` at ``rate`` Hz; the detection spans ``[mark_start_s, mark_end_s)``
    seconds from the excerpt's start."""

    samples: np.ndarray
    rate: int
    mark_start_s: float
    mark_end_s: float
    path: Path

    def wav_bytes(self) -> bytes:
        """16-bit PCM WAV: every browser plays it without a decoder library."""
        buffer = io.BytesIO()
        soundfile.write(buffer, self.samples, self.rate, format="WAV", subtype="PCM_16")
        return buffer.getvalue()


def clip_path(row: dict, clips: Path | None) -> Path | None:
    """The detection's saved clip (live streams): under ``clips`` by file name, else as stored."""
    if not row.get("clip_path"):
        return None
    stored = Path(row["clip_path"])
    candidates = ([Path(clips) / stored.name] if clips is not None else []) + [stored]
    return next((p for p in candidates if p.is_file()), None)


def _mono(data: np.ndarray) -> np.ndarray:
    return data.mean(axis=1).astype(np.float32) if data.ndim == 2 else data.astype(np.float32)


def read_excerpt(row: dict, *, recordings: Path | None = None, clips: Path | None = None,
                 pre_s: float = 2.0, post_s: float = 2.0) -> Excerpt:
    """The audio of the detection ``row`` (from ``reviews.detection``) with ``pre_s``/``post_s``
    seconds around it, at the file's own rate. A saved clip already holds its rolls and is used
    whole; otherwise the span is read from the recording. Raises AudioError naming what is
    missing or unreadable."""
    duration = row["end_s"] - row["start_s"]
    clip = clip_path(row, clips)
    if clip is not None:
        samples, rate = _read(clip, 0, MAX_CLIP_S)
        # Where the detection begins in its clip (``clips.ClipSaver``): stored since the tenth
        # session; a clip saved before began the default pre-roll before it, unless its stream had
        # just begun.
        at = row.get("clip_offset_s")
        at = pre_s if at is None else at
        return Excerpt(samples, rate, min(at, len(samples) / rate), min(at + duration, len(samples) / rate), clip)
    path = recording_path(row, recordings)
    if path is None and row.get("clip_path"):   # a live stream's: its clip is the only audio there is
        raise AudioError(f"audio of detection {row['id']} not found: its clip {row['clip_path']} is not there"
                         + (f" nor in {clips}" if clips is not None else "")
                         + " (give --clips DIR, the directory listen saved its clips to)")
    if path is None:
        raise AudioError(f"audio of detection {row['id']} not found: {row['source']} "
                         + (f"is not in {recordings} (moved or deleted?)" if recordings is not None else
                            "(give --recordings DIR, the directory the recorder wrote)"))
    start_s = max(0.0, row["start_s"] - pre_s)
    end_s = min(row["end_s"], row["start_s"] + MAX_EXCERPT_S) + post_s
    samples, rate = _read(path, start_s, end_s)
    return Excerpt(samples, rate, row["start_s"] - start_s, min(row["end_s"] - start_s, len(samples) / rate), path)


def _read(path: Path, start_s: float, end_s: float) -> tuple[np.ndarray, int]:
    """Seconds ``start_s`` to ``end_s`` of ``path`` (fewer at its end), read as the analysis read
    it (``audio.open_decoder``): a WAV whose header was never finalised has detections, and plain
    libsndfile found no audio in it (a review: a 404)."""
    try:
        with audio.open_decoder(path) as (f, _, stream):
            rate = f.samplerate
            f.seek(min(int(start_s * rate), f.frames))
            frames = max(0, int((end_s - start_s) * rate))
            data = f.read(frames, dtype="float32")
            wav_repair.check(stream)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
    if len(data) == 0:
        raise AudioError(f"{path}: no audio at {start_s:.1f} s")
    return _mono(data), rate
