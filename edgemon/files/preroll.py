"""The end of the recording just before as a pre-roll, so that a call a file boundary cuts is judged whole.

Recorders in continuous mode (AudioMoth, Song Meter) write one recording after another, each
starting where the last ended. Analysed alone, each judged its own part of a call across the
boundary, and a call cut near its middle was stored from neither (Borneo test calls cut into
60 s recordings: 107 of 1680 at 20 phases, ``bench/cut_calls.py``). A recording whose
predecessor in its directory ends where it starts (``CONTIGUOUS_S``) is analysed after that
recording's last audio, a whole number of window hops, so the recording's own windows are those
it has alone; ``analysis.lead_in`` says which events it then stores. Only the predecessor's tail
is read, and only once the predecessor itself was analysed. Anything wrong with the predecessor
(not analysed yet, failed or quarantined, not contiguous, triggered, unreadable, another rate or
channel count) leaves the recording analysed alone, said at debug level.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import logging
import os
import posixpath
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile
import soxr

from edgemon.analysis import audio, wav_repair
from edgemon.analysis.lead_in import Lead
from edgemon.files.directory import is_audio
from edgemon.files.recordings import recording_time, triggered_name
from edgemon.safetext import shown, stored_name
from edgemon.storage.store import Store
from edgemon.utc import parse_utc

if TYPE_CHECKING:   # the review page reads ``recording_before`` and loads no model runtime
    from edgemon.analysis.analyzer import Analysis, Analyzer

log = logging.getLogger(__name__)

CONTIGUOUS_S = 0.5   # the predecessor's end and the recording's start this close: one stream of audio


@dataclasses.dataclass(frozen=True)
class PreRoll:
    """The last ``frames`` frontend frames (whole window hops) of ``path``, the recording before,
    and the labels it stored up to its end (``lead_in.Lead.stored``; None: not known)."""

    path: Path
    frames: int
    stored: tuple[str, ...] | None = None


def preroll_frames(analyzer: Analyzer) -> int:
    """Frames of pre-roll for ``analyzer``: whole window hops holding one window fewer than the
    most any class needs, wholly before the recording (within half a hop), so a call's part there
    and one window of it after are enough; 0 when every class takes a single window."""
    spec, most = analyzer.spec, _most_windows(analyzer)
    if most < 2:
        return 0
    frames = (most - 2) * spec.hop + spec.frames - spec.hop // 2
    return -(-frames // spec.hop) * spec.hop


def _most_windows(analyzer: Analyzer) -> int:
    point = analyzer.merger.point
    return max(point.windows_needed(label) for label in analyzer.bundle.labels)


def find_preroll(path: Path, source: str, analyzer: Analyzer, store: Store, *, clock: dt.tzinfo | None = None,
                 started: tuple[dt.datetime | None, str] | None = None,
                 listings: Listings | None = None) -> PreRoll | None:
    """The pre-roll for the recording at ``path`` (``source`` in ``store``'s ledger): the audio
    file named just before it in its directory, when that one ends where the recording starts.
    The recording's start and its time source are ``started`` (the ledger's, to reanalyse), else
    its name's or header's (in ``clock``, as ``recordings.recording_time`` reads them); the one
    before's are its ledger row's: only a recording analysed is a pre-roll. None, said at debug, whenever it
    cannot be used: the recording is then analysed alone, and any error is its own analysis's to say.
    ``listings``: the directory listings of the recordings before (``Listings``; None: listed anew)."""
    try:
        if started is None:
            timed = recording_time(path, clock=clock)
            started = timed.start_utc, timed.source
        found, why = _preroll(path, source, *started, analyzer, store, listings or Listings())
    except Exception as exc:   # the recording before never fails this one
        found, why = None, f"{type(exc).__name__}: {exc}"
    if found is None:
        log.debug("%s: analysed alone (%s)", shown(str(path)), why)
    return found


def _preroll(path: Path, source: str, start_utc: dt.datetime | None, time_source: str, analyzer: Analyzer,
             store: Store, listings: Listings) -> tuple[PreRoll | None, str]:
    frames = preroll_frames(analyzer)
    if not frames:
        return None, "the bundle needs no more than one window of any class"
    found, why = recording_before(path, source, start_utc, time_source, store.file_entry, listings)
    if found is None:
        return None, why
    before, their_name, row = found
    rate = analyzer.bundle.frontend.sample_rate
    # The recording must hold every window any class needs: a shorter one is kept whole alone
    # (``EventMerger.short_whole``), which a pre-roll would end.
    spec = analyzer.spec
    most_s = (spec.frames + (_most_windows(analyzer) - 1) * spec.hop) * analyzer.frame_s
    if soundfile.info(os.fsencode(path)).duration < most_s:
        return None, f"shorter than {most_s:.1f} s"
    if row["duration_s"] * rate < frames * analyzer.bundle.frontend.hop_length:
        return None, f"{shown(before.name)} is shorter than the pre-roll"
    stored = store.labels_at_end(their_name, analyzer.bundle.bundle_id, within_s=spec.frames * analyzer.frame_s)
    return PreRoll(before, frames, None if stored is None else tuple(sorted(stored))), ""


def recording_before(path: Path, source: str, start_utc: dt.datetime | None, time_source: str,
                     file_entry: Callable[[str], dict | None],
                     listings: Listings | None = None) -> tuple[tuple[Path, str, dict] | None, str]:
    """The recording that the one at ``path`` (``source`` in the ledger, starting at ``start_utc``
    by ``time_source``) continues: the audio file named just before it in its directory, with
    its source name and ledger row (``file_entry``: a source's row, or None), when that one was
    analysed as it is now, is not triggered, has the same rate and channel count and ends where
    the recording starts (``CONTIGUOUS_S``); else None and why. The pre-roll's, and the review
    page's, which plays a call stored with a lead from its start in that recording."""
    if start_utc is None or time_source == "mtime" or triggered_name(path.name):
        return None, "no recorder's start time, or a triggered recording"
    before = (listings or Listings()).named_before(path)
    if before is None or triggered_name(before.name):
        return None, "no recording before it in its directory, or a triggered one"
    their_name = posixpath.join(posixpath.dirname(source), stored_name(before.name))
    row = file_entry(their_name)
    # Only a recording analysed, as it is now (its size: a copy for reanalyse has another mtime).
    # One not analysed yet may still be copied (a preallocated copy reads as silence), or fail,
    # or kill the analysis that reads it (``files.isolate``): read here, it killed the daemon and
    # then the recording's own child, and the recording was quarantined for it (a review).
    if not (row and row.get("state") == "done" and row.get("size") == os.stat(before).st_size
            and row.get("start_utc") and row.get("duration_s")):
        return None, f"{shown(before.name)} is not analysed (yet), failed, or changed since"
    mine, theirs = soundfile.info(os.fsencode(path)), soundfile.info(os.fsencode(before))
    if (mine.samplerate, mine.channels) != (theirs.samplerate, theirs.channels):
        return None, f"{shown(before.name)} has another sample rate or channel count"
    if row["time_source"] == "mtime":
        return None, f"{shown(before.name)} has no recorder's start time"
    gap = (start_utc - parse_utc(row["start_utc"])).total_seconds() - row["duration_s"]
    if abs(gap) > CONTIGUOUS_S:
        return None, f"{shown(before.name)} ends {gap:+.1f} s from its start"
    return (before, their_name, row), ""


class Listings:
    """The audio names of a directory, sorted, for ``find_preroll``: listed again only when the
    directory changed (its mtime) or the listing lacks the recording asked about. Listed for
    each recording, a backlog of n files read n² entries: 17 ms a file among 8 760 (a year of
    hourly recordings) on the development machine, and watch on 4 000 short files took 74 s
    where it took 36 s before the pre-roll (a review). One directory is kept: a backlog is
    taken in name order."""

    def __init__(self) -> None:
        self._directory: Path | None = None
        self._version = 0
        self._names: list[str] = []

    def named_before(self, path: Path) -> Path | None:
        """The audio file of ``path``'s directory whose name sorts last before its name
        (recorders' names sort by their start time). A file added since the listing without
        changing the directory's mtime (FAT keeps it to 2 s) is missed: the recording is then
        analysed alone, as when the one before is not there."""
        directory, name = path.parent, path.name
        version = os.stat(directory).st_mtime_ns
        at = bisect.bisect_left(self._names, name)
        if (directory, version) != (self._directory, self._version) or self._names[at:at + 1] != [name]:
            with os.scandir(directory) as entries:
                self._names = sorted(e.name for e in entries if is_audio(Path(e.name)) and e.is_file())
            self._directory, self._version = directory, version
            at = bisect.bisect_left(self._names, name)
        return directory / self._names[at - 1] if at > 0 else None


def read_lead(preroll: PreRoll, analyzer: Analyzer) -> Lead | None:
    """The pre-roll's audio: the last ``frames * hop_length`` samples of its recording, mono
    float32 at the bundle's rate, read from its tail alone; None (said at debug) when it cannot
    be read."""
    rate, n = analyzer.bundle.frontend.sample_rate, preroll.frames * analyzer.bundle.frontend.hop_length
    try:
        with audio.open_decoder(preroll.path) as (f, _, stream):
            # a tenth of a second more than needed: the resampler's filter settles on it
            native = -(-n * f.samplerate // rate) + (f.samplerate // 10 if f.samplerate != rate else 0)
            if f.frames < native:
                raise ValueError(f"{f.frames} frames, fewer than the {native} needed")
            f.seek(f.frames - native)
            block = f.read(native, dtype="float32", always_2d=True)
            wav_repair.check(stream)
        samples = audio.mono(block)
        # a corrupt float sample is silence, as the analysis reads it (``audio.Blocks``)
        samples = np.where(np.abs(samples) <= audio.ABSURD_SAMPLE, samples, np.float32(0))
        if f.samplerate != rate:
            samples = soxr.resample(samples, f.samplerate, rate, quality="HQ").astype(np.float32)
        if len(samples) < n:
            raise ValueError(f"{len(samples)} samples read, {n} needed")
        lead = Lead(np.ascontiguousarray(samples[-n:]), None if preroll.stored is None else frozenset(preroll.stored))
    except Exception as exc:   # the recording before never fails this one
        log.debug("%s: not read as a pre-roll (%s: %s)", shown(str(preroll.path)), type(exc).__name__, exc)
        return None
    log.debug("analysed after the last %.1f s of %s", n / rate, shown(str(preroll.path)))
    return lead


def analyse_after(analyzer: Analyzer, blocks: Iterable[np.ndarray], preroll: PreRoll | None) -> Analysis:
    """``analyzer.analyse_blocks(blocks)``, after the pre-roll's audio when there is one that can
    be read (``analysis.lead_in``: events stay the recording's own, in its own time)."""
    return analyzer.analyse_blocks(blocks, lead=None if preroll is None else read_lead(preroll, analyzer))
