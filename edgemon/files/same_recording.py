"""A file that holds a recording already analysed: touched or copied again over itself, moved or
renamed inside the watched tree, or copied beside itself. Analysed again, it would store the
recording's detections a second time (under its new name, or at new times when it is timed by its
modification time), and its hours twice in the effort."""

from __future__ import annotations

import filecmp
from dataclasses import dataclass
from pathlib import Path

from edgemon.files.recordings import recording_time
from edgemon.safetext import name_from_stored, stored_name
from edgemon.storage.fingerprint import fingerprint
from edgemon.storage.store import Store
from edgemon.utc import parse_utc


@dataclass(frozen=True)
class SameRecording:
    kind: str      # 'touched' (its own name), 'moved' (its old path gone) or 'copy' (byte for byte)
    source: str    # the name its detections are stored under
    path: str      # where that recording was analysed (stored form)


def same_recording(store: Store, path: Path, source: str, size: int, entry: dict | None) -> SameRecording | None:
    """What the stable file ``path`` (named ``source``, ``size`` bytes, ledger row ``entry`` or
    None) is of an analysed recording, or None when it is to be analysed.

    Its own name: analysed already, and the same size and first audio (``storage.fingerprint``),
    so only its mtime changed. Another name: a recording analysed with the same size and audio
    digests whose old path is gone (a move), or whose file is still there with the same bytes (a
    copy), and that starts when this one does (a file renamed to another time, to mend a clock,
    is analysed at its new time). Two recordings that only begin alike (silence) are both analysed."""
    digest = fingerprint(path)
    if digest is None:
        return None
    if entry is not None:
        if entry["state"] == "done" and entry["size"] == size and entry.get("fingerprint") == digest:
            return SameRecording("touched", source, entry["path"])
        return None
    twin = store.analysed_under_another_name(source, size, digest)
    if twin is None or not _same_start(twin, path):
        return None
    analysed_at = Path(name_from_stored(twin["path"]))
    if twin["path"] == stored_name(path) or not analysed_at.exists():
        return SameRecording("moved", twin["source"], twin["path"])
    try:
        if filecmp.cmp(analysed_at, path, shallow=False):
            return SameRecording("copy", twin["source"], twin["path"])
    except OSError:   # either gone meanwhile: analysed, as any new file
        pass
    return None


def _same_start(twin: dict, path: Path) -> bool:
    """Whether ``path`` starts (by its name, header or mtime) when the analysed ``twin`` did."""
    try:
        start = recording_time(path).start_utc
    except OSError:
        return False
    return twin["start_utc"] is not None and start is not None and parse_utc(twin["start_utc"]) == start
