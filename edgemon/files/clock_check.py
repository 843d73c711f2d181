"""Whether recordings ``watch`` analysed already would start at another time under the
``clock_timezone`` now in force: a Song Meter's local-time names first read as UTC, the setting
added after the first watch. They keep their stored times, and nothing else said so (a Borneo
trial's duets stayed 8 h off, the charts at 21 h, after the setting was mended)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from edgemon.files.recordings import recording_time
from edgemon.safetext import shown
from edgemon.storage.store import Store
from edgemon.utc import parse_utc, utc_iso

log = logging.getLogger(__name__)

CLOCK_CHECKS = 5   # settled recordings read again at a start, to see that clock_timezone still times them
LOOKUPS = 10 * CLOCK_CHECKS   # ledger rows looked up at most: a card timed by mtimes is not read whole


def say_if_clock_moved(store: Store, settled: Iterable[tuple[Path, tuple[int, int]]], source_of: Callable[[Path], str],
                       clock: dt.tzinfo | None) -> int:
    """Read a few settled recordings timed by their names or headers again (names and headers
    only: one clock's change moves all of a recorder's files alike, an offset-less GUANO time
    with its name) and warn, once, when ``clock`` would start them elsewhere than stored. ``settled``: (path, (size, mtime_ns)) of finished
    recordings. Returns how many were found moved."""
    checked, moved = 0, []
    for looked, (path, version) in enumerate(settled):
        if checked >= CLOCK_CHECKS or looked >= LOOKUPS:
            break
        entry = store.file_entry(source_of(path))
        if (entry is None or entry["state"] != "done" or entry["time_source"] not in ("filename", "metadata")
                or entry["clock_suspect"] or not entry["start_utc"] or (entry["size"], entry["mtime_ns"]) != version):
            continue
        try:
            now = recording_time(path, clock=clock)
            stored = parse_utc(entry["start_utc"])
        except (OSError, OverflowError, ValueError):
            continue
        checked += 1
        if now.source == entry["time_source"] and abs((now.start_utc - stored).total_seconds()) >= 1:
            moved.append((entry["source"], stored, now.start_utc))
    if moved:
        source, stored, now = moved[0]
        log.warning("%d of %d recording(s) checked were timed under another clock_timezone than the one now "
                    "in force (%s): %s is stored at %s, now read as %s. Recordings analysed already keep "
                    "their stored times: to time them anew, watch into a new database (--db)",
                    len(moved), checked, "unset: UTC" if clock is None else clock, shown(source),
                    utc_iso(stored), utc_iso(now))
    return len(moved)
