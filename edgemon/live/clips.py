"""Saving detections' audio: a ring of recent samples and FLAC clips within a size budget and
above a free-space watermark."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile

from edgemon.durable import fsync_dir
from edgemon.errors import EdgemonError
from edgemon.storage.disk_budget import MB, DiskBudget, DiskGuard, free_bytes
from edgemon.storage.export_files import sweep_dead_temps
from edgemon.storage.rows import Detection

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Save each detection's audio (16 kHz FLAC) with pre- and post-roll, within a size budget."""

    directory: Path
    pre_s: float = 2.0
    post_s: float = 2.0
    max_mb: float = 500.0        # once the directory's .flac files hold this much, clips are skipped
    max_clip_s: float = 60.0     # a longer event keeps its first max_clip_s (plus pre-roll)
    min_free_mb: float = 1000.0  # below this much free space on the clips' disk, clips are skipped


@dataclasses.dataclass(frozen=True)
class Clip:
    """A saved clip, and where in it its detection begins and ends (seconds; a long event ends
    where the clip does)."""

    path: Path
    offset_s: float
    end_s: float


def _pcm(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


class _Ring:
    """The last ``capacity`` samples of a stream (int16), addressed by stream sample index."""

    def __init__(self, capacity: int):
        self.data = np.zeros(capacity, np.int16)
        self.total = 0

    def push(self, pcm: np.ndarray) -> None:
        x = pcm[-len(self.data):]
        at = (self.total + len(pcm) - len(x)) % len(self.data)
        first = min(len(x), len(self.data) - at)
        self.data[at:at + first] = x[:first]
        self.data[:len(x) - first] = x[first:]
        self.total += len(pcm)

    def read(self, start: int, end: int) -> np.ndarray:
        start, end = max(start, self.total - len(self.data), 0), min(end, self.total)
        if end <= start:
            return np.zeros(0, np.int16)
        idx = np.arange(start, end) % len(self.data)
        return self.data[idx]


@dataclasses.dataclass
class _Take:
    """The audio of one clip, gathered from stream sample ``first`` up to ``last`` (exclusive);
    ``event`` is the sample where its detection starts."""

    event: int
    first: int
    last: int
    chunks: list[np.ndarray]
    held: int = 0
    duration_s: float = 0.0   # the detection's own length, once requested

    def add(self, samples: np.ndarray, at: int) -> None:
        """Keep what the clip still needs of int16 ``samples`` (stream samples ``at``...)."""
        lo, hi = max(at, self.first + self.held), min(at + len(samples), self.last)
        if hi > lo:
            self.chunks.append(samples[lo - at:hi - at])
            self.held += hi - lo

    def audio(self) -> np.ndarray:
        return np.concatenate(self.chunks)[:self.last - self.first] if self.chunks else np.zeros(0, np.int16)


class ClipSaver:
    """Writes each detection's audio with pre/post-roll as FLAC, within a directory size budget.

    Works on one segment (contiguous audio) at a time; a clip waits until its post-roll has
    arrived, or the segment ends. An event is known only when it ends, and a gibbon duet lasts
    minutes, longer than the ring of recent audio; so the worker says where the open event began
    (``follow``) and its first ``max_clip_s`` are held from then on. Each written clip says where
    in it the detection begins (``Clip.offset_s``: the pre-roll, or less when the segment began
    later). Clips are never deleted by edgemon: once the budget is full, new clips are skipped and
    counted (the budget is re-measured every few minutes, so clips synced away free room).
    """

    RESCAN_S = 300.0

    def __init__(self, config: ClipConfig, rate: int, guard: DiskGuard | None = None):
        # Each detection's clip_path is stored absolute: `--clips clips` stored "clips/…", which
        # review found only when started in the directory listen had been started in (a live trial).
        config = dataclasses.replace(config, directory=config.directory.absolute())
        self.config = config
        self.rate = rate
        # The disk watermark: clips stop before the card fills; the database is never at risk.
        self.guard = guard or DiskGuard([config.directory],
                                        DiskBudget(min_free_mb=0.0, clips_min_free_mb=config.min_free_mb))
        if not config.directory.parent.is_dir():
            # Made with its parents, it went onto the SD card under a USB stick's mount point not yet
            # mounted, hidden once the stick came, the budget measured on the wrong disk (a review).
            raise EdgemonError(f"--clips {config.directory}: {config.directory.parent} is not a directory "
                               f"(a card or stick not mounted yet?); create it first")
        try:
            config.directory.mkdir(exist_ok=True)
        except OSError as e:  # a file where the directory should be, no permission, a read-only card
            raise EdgemonError(f"--clips {config.directory}: cannot create the clips directory "
                               f"({e.strerror or e})") from None
        self.ring = _Ring(int((config.pre_s + config.max_clip_s + config.post_s + 5.0) * rate))
        self.pending: list[tuple[Detection, _Take]] = []
        self.open: _Take | None = None      # the audio of the event still open, from its pre-roll
        self.saved = 0
        self.skipped = 0
        self._used = self._measure()
        self._measured_at = time.monotonic()

    def _measure(self) -> int:
        """The bytes the directory's clips hold, once the temps of writers killed outright (``kill -9``,
        a power cut) are removed (``sweep_dead_temps``): outside the budget, nothing removed them (a review)."""
        sweep_dead_temps(self.config.directory)
        used = 0
        for p in self.config.directory.glob("*.flac"):
            try:
                used += p.stat().st_size if p.is_file() else 0
            except OSError:   # synced away between the listing and the look: it takes no room
                pass
        return used

    def _take(self, event: int, last: int) -> _Take:
        """A clip of the event starting at sample ``event``, its pre-roll from what the ring holds."""
        first = max(event - int(self.config.pre_s * self.rate), self.ring.total - len(self.ring.data), 0)
        take = _Take(event, first, last, [])
        take.add(self.ring.read(first, self.ring.total), first)
        return take

    def _longest(self, event: int) -> int:
        return event + int((self.config.max_clip_s + self.config.post_s) * self.rate)

    def follow(self, open_since_s: float | None) -> None:
        """The segment's event still open began at ``open_since_s`` (None: no event is open):
        hold its audio from its pre-roll on, up to the longest clip."""
        if open_since_s is None:
            self.open = None
            return
        event = int(open_since_s * self.rate)
        if self.open is None or self.open.event != event:
            self.open = self._take(event, self._longest(event))

    def write_waiting(self) -> list[tuple[Detection, Clip | None]]:
        """Write the clips still waiting for their post-roll, as they are; the open event's audio
        and the ring are kept (the segment may still end with an event stored)."""
        done, self.pending = self._write(self.pending), []
        return done

    def new_segment(self) -> list[tuple[Detection, Clip | None]]:
        done = self.write_waiting()
        self.open = None
        self.ring = _Ring(len(self.ring.data))
        return done

    def request(self, detection: Detection, start_s: float, end_s: float) -> None:
        """Save ``detection``'s audio: segment seconds ``start_s``..``end_s`` plus the rolls."""
        event = int(start_s * self.rate)
        end_s = min(end_s, start_s + self.config.max_clip_s)
        last = min(int((end_s + self.config.post_s) * self.rate), self._longest(event))
        if self.open is not None and self.open.event == event:
            take, self.open = self.open, None
            take.last = last
        else:   # an event never followed (a caller that does not say): what the ring still holds
            take = self._take(event, last)
        take.duration_s = end_s - start_s
        self.pending.append((detection, take))

    def push(self, samples: np.ndarray) -> list[tuple[Detection, Clip | None]]:
        """Add segment audio; returns each (detection, its clip or None) decided now."""
        at, pcm = self.ring.total, _pcm(samples)
        self.ring.push(pcm)
        for take in [self.open] + [t for _, t in self.pending]:
            if take is not None:
                take.add(pcm, at)
        ready = [p for p in self.pending if p[1].last <= self.ring.total]
        self.pending = [p for p in self.pending if p[1].last > self.ring.total]
        return self._write(ready)

    def _write(self, clips: list[tuple[Detection, _Take]]) -> list[tuple[Detection, Clip | None]]:
        done = []
        for detection, take in clips:
            try:
                clip = self._write_one(detection, take)
            except Exception:   # one clip's failure costs that clip, never a detection
                log.exception("clips: cannot save the clip of %s at %s", detection.label, detection.start_utc)
                clip = None
            done.append((detection, clip))
        return done

    def _skip(self, why: str) -> None:
        self.skipped += 1
        if self.skipped == 1 or self.skipped % 100 == 0:
            log.warning("clips: %s; %d clip(s) skipped so far", why, self.skipped)
        return None

    def _write_one(self, detection: Detection, take: _Take) -> Clip | None:
        if time.monotonic() - self._measured_at > self.RESCAN_S:
            self._used, self._measured_at = self._measure(), time.monotonic()
        audio = take.audio()
        if not len(audio):
            return self._skip("no audio left for a clip")
        if self._used + 2 * len(audio) > self.config.max_mb * 1e6:   # 16-bit PCM: FLAC is smaller
            return self._skip(f"{self.config.directory} holds {self._used / 1e6:.1f} MB of its "
                              f"{self.config.max_mb:g} MB budget (clips_max_mb)")
        if not self.guard.may_save_clips():
            return self._skip(f"{self.guard.free_mb:.0f} MB free, below {self.config.min_free_mb:g} MB")
        when = detection.start_utc
        stamp = when.strftime("%Y%m%dT%H%M%S") + f"{when.microsecond // 1000:03d}Z"
        stem = f"{stamp}_{_in_a_name(detection.label)}"
        path = self.config.directory / f"{stem}.flac"
        # One per writer, its pid in the name: that of a writer killed outright is swept (``_measure``).
        tmp = self.config.directory / f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            soundfile.write(tmp, audio, self.rate, format="FLAC", subtype="PCM_16")
            size = tmp.stat().st_size   # before it is in view: a sync tool may move it at once
            path = _place(tmp, self.config.directory, stem)
            # Its name on the disk before the row naming it is stored (``_clips_done``): else a power
            # cut could leave a row naming a clip that is not there (a review; FAT moves it into place).
            fsync_dir(self.config.directory)
        except (OSError, soundfile.LibsndfileError, RuntimeError) as exc:
            with contextlib.suppress(OSError):   # a card remounted read-only refuses even this (EROFS)
                tmp.unlink(missing_ok=True)
            self.skipped += 1
            log.warning("clips: cannot write %s: %s%s; %d clip(s) skipped so far", path, exc,
                        _full_disk(self.config.directory, audio.nbytes), self.skipped)
            return None
        self._used += size
        self.saved += 1
        offset = (take.event - take.first) / self.rate
        end = min(offset + take.duration_s, len(audio) / self.rate)
        return Clip(path, round(offset, 3), round(end, 3))


# A user's own label may hold what a file name cannot: a slash made the clip's name a path into
# a folder that is not there, and FAT or exFAT (a USB stick) refuses the others; every clip of
# that class was skipped (a trial with its own species). The row keeps the label as it is.
_NOT_IN_A_NAME = str.maketrans({c: "_" for c in '/\\:*?"<>|'})


def _in_a_name(label: str) -> str:
    """``label`` as part of a clip's file name on any file system a clip directory may be on."""
    return label.translate(_NOT_IN_A_NAME)


def _place(tmp: Path, directory: Path, stem: str) -> Path:
    """Move the written clip ``tmp`` to ``stem``.flac in ``directory``, or to ``stem``-N.flac when
    that is taken, never over another clip: two detections of one label starting in the same
    millisecond (a clock stepped back, two listeners sharing the directory) overwrote the first
    one's clip, and both rows named the second's audio. A hard link claims a name atomically; a
    file system without them (FAT, exFAT) is checked first, then moved onto."""
    for n in range(10_000):
        path = directory / (f"{stem}.flac" if n == 0 else f"{stem}-{n}.flac")
        try:
            os.link(tmp, path)
        except FileExistsError:
            continue
        except OSError:   # no hard links here
            if path.exists():
                continue
            os.replace(tmp, path)
            return path
        tmp.unlink()
        return path
    raise OSError(f"{directory}: 10,000 clips named {stem}-N.flac already")


def _full_disk(directory: Path, needed: int) -> str:
    """' (the disk is full: …)' when the clip's directory lacks room for it, ' (… read-only …)'
    when it cannot be written at all: libsndfile says only "System error." of either."""
    if not os.access(directory, os.W_OK):
        return " (the clips directory is read-only: a card remounted after an error?)"
    free = free_bytes(directory)
    return f" (the disk is full: {free / MB:.1f} MB free)" if free < needed else ""
