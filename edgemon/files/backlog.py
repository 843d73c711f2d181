"""Backlog progress of ``edgemon watch``: files done of the total, hours of audio, and an ETA,
as a log line: every few seconds on a terminal, every minute under systemd (plain lines, so the
journal keeps them). Hours come from each waiting file's header (read once per file version)."""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Collection
from pathlib import Path

from edgemon.amounts import audio_amount, audio_amounts
from edgemon.files.directory import mtime_ns
from edgemon.files.recordings import audio_duration_s

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    if seconds < 59.5:
        return f"{max(round(seconds), 1)} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


class BacklogProgress:
    """Says how far the backlog has come, at most once every ``every_s`` seconds (monotonic
    ``clock``), and once when it is done. Call ``update`` from the watch loop's thread."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self._clock = clock
        self._next = clock() + every_s
        self._durations: dict[Path, tuple[tuple[int, int] | None, float | None]] = {}  # path -> (version, s)
        self._busy = False          # a backlog was reported and is not done yet
        self._since: float | None = None   # when files first waited: the backlog's own wall time
        self._before = (0, 0.0, 0.0)       # done, audio_s, busy_s then: a second backlog counts its own

    def _waiting_audio_s(self, waiting: Collection[Path]) -> tuple[float, int]:
        """(seconds of audio in the waiting files whose header says, files whose header does not)."""
        for gone in self._durations.keys() - waiting:   # done since: the cache never outgrows the backlog
            del self._durations[gone]
        total, unknown = 0.0, 0
        for path in waiting:
            try:
                st = os.stat(path)
                version = (st.st_size, mtime_ns(st))
            except OSError:
                st, version = None, None
            cached = self._durations.get(path)
            if cached is None or cached[0] != version:
                # Only regular files are opened: opening a FIFO named *.wav would block forever.
                regular = st is not None and stat.S_ISREG(st.st_mode)
                cached = self._durations[path] = (version, audio_duration_s(path) if regular else None)
            if cached[1] is None:
                unknown += 1
            else:
                total += cached[1]
        return total, unknown

    def update(self, *, done: int, waiting: Collection[Path], audio_s: float, busy_s: float,
               held: int = 0, held_s: float = 0.0) -> str | None:
        """``done``: files finished this run; ``waiting``: the files still to do;
        ``audio_s``/``busy_s``: seconds of audio stored this run and seconds spent on it;
        ``held``: how many of the waiting wait for their writer to finish a header, up to
        ``held_s`` seconds from their last change (the ETA counts only the analysis: a newcomer
        trial read "ETA 1 s" for two minutes as a hang). Returns the line logged, if one was due."""
        now = self._clock()
        if waiting and self._since is None:
            self._since, self._before = now, (done, audio_s, busy_s)
        done, audio_s, busy_s = done - self._before[0], audio_s - self._before[1], busy_s - self._before[2]
        if not waiting:
            # analysis time and wall time apart: retries and files still being written wait between
            line = (f"backlog done: {done} file(s), {audio_amount(audio_s)} of audio in {_duration(busy_s)} of "
                    f"analysis, {_duration(now - self._since)} in all" if self._busy else None)
            self._busy, self._since, self._before = False, None, (0, 0.0, 0.0)
            self._durations.clear()
        elif now < self._next:
            return None
        else:
            self._busy = True
            left_s, unknown = self._waiting_audio_s(waiting)
            total = done + len(waiting)
            eta = (f", ETA {_duration(left_s * busy_s / audio_s)}" if audio_s > 0 and busy_s > 0 and left_s
                   else "")
            guess = f" (+{unknown} file(s) of unknown length)" if unknown else ""
            writing = (f"; {held} file(s) wait for their writer to finish the header (up to {_duration(held_s)} "
                       f"from their last change)" if held else "")
            line = (f"backlog: {done}/{total} file(s) done, {audio_amounts(audio_s, audio_s + left_s)} of "
                    f"audio{guess}{eta}{writing}")
        self._next = now + self.every_s
        if line:
            log.info("%s", line)
        return line
