"""A detection's audio with pre- and post-roll, from its saved clip or its source recording."""

from __future__ import annotations

import dataclasses
import io
import json
import datetime as dt
import logging
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis import audio, wav_repair
from edgemon.analysis.bundle import MANIFEST, default_bundle_path
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import AudioError
from edgemon.review.reviews import lead_windows
from edgemon.safetext import shown
from edgemon.storage.readonly import open_read_only, recording_path
from edgemon.utc import parse_utc

log = logging.getLogger(__name__)

# Which recording the one at a path continues (``files.preroll.recording_before``: path, source,
# start, time source, a source's ledger row -> (path, source, row) or None, and why). The page's
# caller gives it: review and files are siblings, and the rule is the watcher's.
RecordingBefore = Callable[[Path, str, "dt.datetime | None", "str | None", Callable[[str], "dict | None"]],
                           "tuple[tuple[Path, str, dict] | None, str]"]

MAX_EXCERPT_S = 60.0   # a long event is cut: the page is for hearing a call, not a recording
# The longest clip ``listen`` saves: max_clip_s (60) and up to a minute of each roll (clip_pre_s,
# clip_post_s). A longer file under a clip's name is read no further (it was read whole: an hour's
# file, 230 MB of float32 at 16 kHz per request, on a Pi).
MAX_CLIP_S = 180.0


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """Mono float32 ``samples`` at ``rate`` Hz; the detection spans ``[mark_start_s, mark_end_s)``
    seconds from the excerpt's start. ``before``: the recording its first ``before_s`` seconds
    are the end of (a call stored with a lead, ``analysis.lead_in``); None: all from ``path``."""

    samples: np.ndarray
    rate: int
    mark_start_s: float
    mark_end_s: float
    path: Path
    before: Path | None = None
    before_s: float = 0.0

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
                 pre_s: float = 2.0, post_s: float = 2.0, db: Path | None = None,
                 recording_before: RecordingBefore | None = None) -> Excerpt:
    """The audio of the detection ``row`` (from ``reviews.detection``) with ``pre_s``/``post_s``
    seconds around it, at the file's own rate. A saved clip already holds its rolls and is used
    whole; otherwise the span is read from the recording, after the end of the recording before
    it when the call began there (its votes' ``"lead"``; found by ``recording_before`` through
    ``db``'s ledger, else not played). Raises AudioError naming what is missing or unreadable."""
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
    mark = row["start_s"] - start_s, min(row["end_s"] - start_s, len(samples) / rate)
    # Stored from its recording's start, the call began in the recording before (a review heard
    # 3.5 s of a 6.75 s hornbill call): its end is played first, the lead's windows and the pre-roll.
    before = _lead_in(row, path, db, pre_s, recording_before)
    if before is not None:
        try:
            head, their_rate = _read(before[0], 0.0, 0.0, last_s=before[1])
        except AudioError as exc:
            log.debug("%s: its start is played alone (%s)", shown(str(path)), exc)
        else:
            if their_rate == rate:
                at = len(head) / rate
                return Excerpt(np.concatenate([head, samples]), rate, max(0.0, at + mark[0] - before[2]),
                               at + mark[1], path, before[0], at)
    return Excerpt(samples, rate, *mark, path)


def _lead_in(row: dict, path: Path, db: Path | None, pre_s: float,
             recording_before: RecordingBefore | None) -> tuple[Path, float, float] | None:
    """For a detection stored with a lead, the recording before ``path`` (``files.preroll``
    decides it, from ``db``'s ledger), the seconds of its end to play (the lead and ``pre_s``)
    and the lead's; None (said at debug) when there is none to play: the detection's own
    recording is then played alone, as any other's."""
    try:
        windows = lead_windows(row.get("votes"))
        if not windows or db is None or recording_before is None:
            return None
        with closing(open_read_only(db)) as conn:
            def file_entry(source: str) -> dict | None:
                found = conn.execute("SELECT * FROM files WHERE source = ?", [source]).fetchone()
                return None if found is None else dict(found)

            own = file_entry(row["source"]) or {}
            start = parse_utc(own["start_utc"]) if own.get("start_utc") else None
            found, why = recording_before(path, row["source"], start, own.get("time_source"), file_entry)
            manifest = conn.execute("SELECT manifest FROM bundles WHERE bundle_id = ?", [row["bundle_id"]]).fetchone()
        if found is None:
            log.debug("%s: its start is played alone (%s)", shown(str(path)), why)
            return None
        lead_s = windows * _hop_s(json.loads(manifest[0]) if manifest else None)
        return found[0], min(lead_s + pre_s, found[2]["duration_s"]), lead_s
    except Exception as exc:   # the recording before never fails this one's excerpt
        log.debug("%s: its start is played alone (%s: %s)", shown(str(path)), type(exc).__name__, exc)
        return None


def _hop_s(manifest: dict | None) -> float:
    """Seconds between a bundle's windows, whole frames as the analysis cuts them (``WindowSpec``);
    the embedded bundle's when the database holds no manifest of the one that stored it."""
    if manifest is None:
        manifest = json.loads((default_bundle_path() / MANIFEST).read_text())
    frontend = FrontendConfig.from_dict(manifest["frontend"])
    spec = WindowSpec.from_seconds(manifest["window_s"], manifest["hop_s"], frontend)
    return spec.hop * frontend.hop_length / frontend.sample_rate


def _read(path: Path, start_s: float, end_s: float, *, last_s: float | None = None) -> tuple[np.ndarray, int]:
    """Seconds ``start_s`` to ``end_s`` of ``path`` (fewer at its end), or its last ``last_s``
    seconds, read as the analysis read it (``audio.open_decoder``): a WAV whose header was never
    finalised has detections, and plain libsndfile found no audio in it (a review: a 404)."""
    try:
        with audio.open_decoder(path) as (f, _, stream):
            rate = f.samplerate
            if last_s is None:
                f.seek(min(int(start_s * rate), f.frames))
                frames = max(0, int((end_s - start_s) * rate))
            else:
                frames = min(f.frames, round(last_s * rate))
                f.seek(f.frames - frames)
            data = f.read(frames, dtype="float32")
            wav_repair.check(stream)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"{path}: cannot decode audio: {exc}") from exc
    if len(data) == 0:
        raise AudioError(f"{path}: no audio at {start_s:.1f} s")
    return _mono(data), rate
