"""Whether a recording is complete: its header against the bytes on disk, and its size and mtime
unchanged for a while (``StabilityTracker``).

AudioMoth-style recorders write the WAV header last, at close, and most FLAC encoders write the
total sample count at close: a file whose header does not yet describe it is still being written,
and the daemon leaves it alone (headers read through ``edgemon.files.headers``: a bounded number of
bytes, no audio decoding).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import soundfile

from edgemon.analysis import wav_repair
from edgemon.files.headers import read_wav_metadata


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
    if wav_repair.declared_short(declared, held, "chunk_after_data" in meta):
        return False, f"data chunk declares {declared} bytes but {held} follow it, and no chunk: not yet finalised"
    if riff not in (size - 8, size - 9):  # size - 9: a trailing pad byte left out of the count
        return False, f"RIFF size {riff} but file holds {size - 8} bytes after the RIFF header"
    return True, "header consistent"


def flac_header_consistent(path: str | Path) -> tuple[bool, str]:
    """(False, why) for a FLAC whose STREAMINFO does not yet give its length: libsndfile and
    most encoders write the total sample count at close, so a file still being written says 0
    (it was analysed again at every pause of its writer, a newcomer trial). Anything that is not
    a plain FLAC header is (True, ...): the decoder says what it is."""
    try:
        with open(path, "rb") as f:
            head = f.read(42)   # "fLaC", a block header, STREAMINFO's 34 bytes
    except OSError as exc:
        return False, f"cannot read: {exc}"
    if not head:
        return False, "empty file (0 bytes)"
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return True, "not a plain FLAC header"
    total = ((head[21] & 0x0F) << 32) | int.from_bytes(head[22:26], "big")   # STREAMINFO bits 108-143
    if total == 0:
        return False, "FLAC total samples 0: header not yet finalised"
    if not decodes_to_its_end(path, total):
        # A copy that stalled (a card reader, a slow share): its STREAMINFO came first and is whole.
        # Analysed now, then again once it grew, it gave a cursor a cut call, then the whole one (a
        # newcomer trial); waited for like a WAV declaring more data than it holds.
        return False, f"FLAC header declares {total} samples, the file ends before them"
    return True, "header consistent"


def decodes_to_its_end(path: str | Path, total: int) -> bool:
    """Whether the FLAC's last sample can be reached (libFLAC seeks to it: a few frames read)."""
    try:
        with soundfile.SoundFile(os.fsencode(path)) as f:
            f.seek(total - 1)
            return len(f.read(1)) == 1
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError):
        return False


def header_consistent(path: str | Path) -> tuple[bool, str]:
    """A WAV's or FLAC's header against the file (``wav_header_consistent``,
    ``flac_header_consistent``); (True, ...) for other files."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flac":
        return flac_header_consistent(path)
    return wav_header_consistent(path) if suffix == ".wav" else (True, "not a WAV or FLAC")


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

    def __contains__(self, path: str | Path) -> bool:
        """Whether ``path`` is being watched for stability."""
        return os.fspath(path) in self._seen
