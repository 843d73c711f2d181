"""What tells one recording from another under the same name: a digest of its first audio bytes.

AudioMoth names its files by the minute they began, so two recorders on one schedule write the
same names, and often the same sizes. A card read into a database that already holds another
card's recordings must not replace their detections, and a review or adaptation must not read
another recorder's file for a detection. The digest skips the first 4 KiB (headers, whose sizes a
recorder rewrites when it closes a file) and reads the next 64 KiB: a copy, a grown file or a file
merely touched keeps it; another recording does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

SKIP_BYTES = 4096
SPAN_BYTES = 65536


def fingerprint(path: str | Path) -> str | None:
    """The digest of ``path``'s bytes after its header, or None when the file is too short to
    tell (under 68 KiB: a few seconds of audio) or cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(SKIP_BYTES)
            data = f.read(SPAN_BYTES)
    except OSError:
        return None
    return hashlib.sha1(data).hexdigest() if len(data) == SPAN_BYTES else None


def another_recording(stored: str | None, path: str | Path) -> bool:
    """Whether ``path`` is not the recording whose digest was ``stored`` (False when either is
    unknown: a ledger row from before digests were kept, or a file too short to tell)."""
    if stored is None:
        return False
    found = fingerprint(path)
    return found is not None and found != stored


def not_analysed_as(entry: Mapping, path: Path) -> str | None:
    """Why the file at ``path`` is not the recording the ledger ``entry`` (``size`` and, when
    kept, ``fingerprint``) describes, or None when it is."""
    size = path.stat().st_size
    if entry.get("size") is not None and size != entry["size"]:
        return f"{size} bytes at {path}, {entry['size']} when analysed"
    if another_recording(entry.get("fingerprint"), path):
        return f"{path} holds other audio than the recording analysed under this name"
    return None
