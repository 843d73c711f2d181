"""A file that holds a recording already analysed: touched or copied again over itself, moved or
renamed inside the watched tree, or copied beside itself. Analysed again, it would store the
recording's detections a second time (under its new name, or at new times when it is timed by its
modification time), and its hours twice in the effort."""

from __future__ import annotations

import datetime as dt
import filecmp
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgemon.files.recordings import recording_time
from edgemon.files.directory import SettledVersions, file_version, mtime_ns
from edgemon.safetext import name_from_stored, stored_name
from edgemon.storage.fingerprint import another_recording, digests, samples_digest
from edgemon.storage.store import Store
from edgemon.utc import parse_utc


@dataclass(frozen=True)
class SameRecording:
    kind: str      # 'touched' (its own name), 'moved' (its old path no longer holds it) or 'copy' (byte for byte)
    source: str    # the name its detections are stored under
    path: str      # where that recording was analysed (stored form)
    converted: tuple[str, str] | None = None   # in another format: the file's (fingerprint, tail digest)


def same_recording(store: Store, path: Path, source: str, st: os.stat_result,
                   entry: dict | None, clock: dt.tzinfo | None = None) -> SameRecording | None:
    """What the stable file ``path`` (named ``source``, stat ``st``, ledger row ``entry`` or None)
    is of an analysed recording, or None when it is to be analysed (its start timed as watch
    times it, in the recorders' ``clock`` zone).

    Its own name: analysed already, with the same size, first audio, header and last bytes
    (``storage.fingerprint``), so only its mtime changed. Another name: a recording analysed with
    the same size, digests and start time, whose old path no longer holds it and whose mtime it
    kept (a rename or ``mv``), or whose file is still there with the same bytes (a copy; taken as
    moved once that original is gone). Anything less is analysed: two recordings that only begin
    and end alike, a file written again at its size, a recording renamed to another time (a clock
    mended by hand). A file of another name stem-for-stem (``x.flac`` for ``x.WAV``) that starts
    when an analysed recording did and decodes to the same audio (``storage.fingerprint.samples_digest``)
    is that recording converted to another format: a copy while the original holds it, else moved."""
    digest, tail = digests(path)
    if digest is None or tail is None:
        return None
    if entry is not None:
        if _matches(entry, st.st_size, digest, tail) and entry["state"] == "done":
            return SameRecording("touched", source, entry["path"])
        return None
    noted = store.noted_same_recording(path)   # found to be a copy before: its original may be gone now
    if noted is not None and (twin := store.file_entry(noted)) is not None and _matches(twin, st.st_size, digest, tail):
        return SameRecording("copy" if _holds(twin) else "moved", twin["source"], twin["path"])
    # Only twins of its start are asked for: a card of identical recordings (a dead microphone's
    # silence on a fixed schedule) made each file read the start of every earlier one, its time
    # growing with the card (0.01 s to 1.6 s a file over 2 000 files, a newcomer trial).
    # With a clock zone, also where a watch without it stored the recording (its name read as
    # UTC): the setting mended after a first watch, a recording moved since was analysed again
    # beside its old rows, its calls and hours counted twice (a Borneo trial; the watch's start
    # says how to time the old ones anew).
    try:
        start = recording_time(path, clock=clock).start_utc
        starts = [start] + ([] if clock is None else [recording_time(path).start_utc])
        for at in dict.fromkeys(starts):
            if (twin := _twin_at(store, path, source, st, digest, tail, at)) is not None:
                return twin
    except (OSError, OverflowError, ValueError):   # unreadable; a name of year 1 (no millisecond before it)
        return None
    return _converted_from(store, path, source, start, (digest, tail))


def _twin_at(store: Store, path: Path, source: str, st: os.stat_result, digest: str, tail: str,
             start: dt.datetime) -> SameRecording | None:
    """The recording analysed under another name, starting at ``start`` with the same size and
    digests, that ``path`` was moved from or is a copy of; None when there is none."""
    for twin in store.analysed_under_another_name(source, st.st_size, digest, tail, starting=start):
        if not _same_start(twin, start):
            continue
        try:
            if twin["path"] == stored_name(path) or (twin["mtime_ns"] == mtime_ns(st) and not _holds(twin)):
                return SameRecording("moved", twin["source"], twin["path"])
            if filecmp.cmp(name_from_stored(twin["path"]), path, shallow=False):
                return SameRecording("copy", twin["source"], twin["path"])
        except OSError:   # the other path cannot be looked at (gone, a directory shut, a failing card)
            continue
    return None


def _converted_from(store: Store, path: Path, source: str, start: dt.datetime,
                    held: tuple[str, str]) -> SameRecording | None:
    """The analysed recording that ``path`` holds in another format (its name's stem, its start
    and its decoded audio; ``held``: the file's own digests), or None. A recording analysed before
    decoded audio was digested is read from its file while that still holds it."""
    # Of another format only: two recorders' cards in one database share names and starts, and a
    # dead microphone's silence decodes alike on both; neither is the other's conversion.
    stem, form = _stem(source), _form(source)
    candidates = [row for row in store.analysed_starting(source, start)
                  if _stem(row["source"]) == stem and _form(row["source"]) != form and _same_start(row, start)]
    if not candidates or (mine := samples_digest(path)) is None:
        return None
    for twin in candidates:
        holds = _holds(twin)
        theirs = twin.get("samples_digest")
        if theirs is None and holds:
            theirs = samples_digest(name_from_stored(twin["path"]))
            if theirs is not None:
                store.keep_samples_digest(twin["source"], (twin["size"], twin["mtime_ns"]), theirs)
        if theirs == mine:
            return SameRecording("copy" if holds else "moved", twin["source"], twin["path"], converted=held)
    return None


def _stem(source: str) -> str:
    """A recording's name without its folder and format (``day1/X.WAV`` -> ``x``)."""
    return PurePosixPath(source).stem.casefold()


def _form(source: str) -> str:
    """A recording's format by its name (``day1/X.WAV`` -> ``.wav``)."""
    return PurePosixPath(source).suffix.casefold()


def undigested_files(store: Store, settled: SettledVersions,
                     source_of: Callable[[Path], str]) -> list[tuple[Path, str, tuple[int, int], str | None]]:
    """The recordings an edgemon older than ``schema.m013_same_recordings`` analysed that are
    still in place, unchanged (``settled``: path -> the version the ledger holds as finished):
    (path, source, version, fingerprint as kept). They have no tail digest, so one moved or copied
    later would not be recognised (``complete_digests``)."""
    undigested = store.undigested()
    work = []
    for path, version in settled.items():
        source = source_of(path)
        if source in undigested and undigested[source][:2] == version:
            work.append((path, source, version, undigested[source][2]))
    return work


def complete_digests(store: Store, work: list[tuple[Path, str, tuple[int, int], str | None]],
                     tick: Callable[[], object]) -> int:
    """Give ``work`` (``undigested_files``) today's digests, read from the files, where each still
    holds the audio analysed (its fingerprint in any earlier form: ``another_recording``);
    ``tick`` after each file. One transaction; returns how many rows were completed."""
    found = []
    for path, source, version, kept in work:
        # Listed at the first scan, read maybe an hour later: a file written since (another
        # card's recording of the name) must not lend its digests to the row of the one analysed.
        if file_version(path) == version and not another_recording(kept, path):
            digest, tail = digests(path)
            if digest is not None and tail is not None and file_version(path) == version:
                found.append((source, version, kept, digest, tail))
        tick()
    return store.keep_digests(found) if found else 0


def _matches(row: dict, size: int, digest: str, tail: str) -> bool:
    return row["size"] == size and row.get("fingerprint") == digest and row.get("tail_digest") == tail


def _holds(twin: dict) -> bool:
    """Whether the analysed recording is still at its ledger path (a file there, gone or another
    recording put in its place - the next card's of the same name - does not count)."""
    analysed_at = Path(name_from_stored(twin["path"]))
    try:
        return analysed_at.is_file() and _matches(twin, analysed_at.stat().st_size, *digests(analysed_at))
    except OSError:
        return False


def _same_start(twin: dict, start: dt.datetime) -> bool:
    """Whether a file starting at ``start`` (by its name, header or mtime) starts when the analysed
    ``twin`` did, to the millisecond the ledger keeps (an mtime minus a duration has microseconds)."""
    return twin["start_utc"] is not None and abs((parse_utc(twin["start_utc"]) - start).total_seconds()) < 0.001
