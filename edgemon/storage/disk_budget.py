"""A disk budget: below a free-space watermark edgemon stops saving clips, and below a lower one
it starts no new work (back-pressure) until space comes back, rather than failing half-way.

Nothing here deletes anything: not the database, not a recording, not a clip. Free space is
measured with ``statvfs`` at most every ``check_s`` seconds (monotonic clock), on every file
system that holds one of the watched paths; the lowest counts. A state entered below a watermark
is left only once free space is ``resume_margin_mb`` above it, so that free space that jitters
about a watermark does not switch the state at every check.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown

log = logging.getLogger(__name__)
MB = 1024 * 1024

OK, NO_CLIPS, HOLD = "ok", "no_clips", "hold"
# Free space above a watermark before the state it set is left: 5 % of it, at least 16 MB. A unit
# held at its watermark for weeks (nobody visits) sees free space move by a few MB as journald
# grows its files (8 MiB at a time) and vacuums them; without a margin each check switched the
# state, and each switch wrote a log line and a heartbeat row: 8,640 of each a day at +-1 MB
# (a review), on the disk that was already full.
RESUME_MARGIN_SHARE = 0.05
RESUME_MARGIN_MIN_MB = 16.0


def resume_margin_mb(watermark_mb: float) -> float:
    """How far above ``watermark_mb`` free space must be to leave the state it set (MB)."""
    return max(RESUME_MARGIN_MIN_MB, RESUME_MARGIN_SHARE * watermark_mb)


@dataclasses.dataclass(frozen=True)
class DiskBudget:
    """Watermarks in MB of free space. ``min_free_mb``: below it no new work starts (back-pressure);
    ``clips_min_free_mb``: below it no clip is saved. ``check_s``: seconds between measurements."""

    min_free_mb: float = 200.0
    clips_min_free_mb: float = 1000.0
    check_s: float = 10.0


class DiskHoldError(EdgemonError):
    """A run that must end once its backlog is done (``watch --until-idle``) cannot start its work:
    free space is below ``min_free_mb``. Waiting, as the service does, would never end."""


class DiskGuard:
    """Says whether there is room to work and to save clips; logs each change of state once.

    ``paths``: files or directories whose file systems are watched (a path that does not exist
    yet is measured at its nearest existing parent). Not thread-safe: one thread asks.
    """

    def __init__(self, paths: Iterable[str | Path], budget: DiskBudget = DiskBudget(),
                 clock: Callable[[], float] = time.monotonic,
                 usage: Callable[[str], tuple] = shutil.disk_usage):
        self.paths = [Path(p) for p in paths]
        self.budget = budget
        self._clock = clock
        self._usage = usage
        self._checked_at: float | None = None
        self.free_mb: float | None = None
        self.state = OK

    def check(self, force: bool = False) -> str:
        """The current state, 'ok', 'no_clips' or 'hold', re-measured when ``check_s`` has passed."""
        now = self._clock()
        if not force and self._checked_at is not None and now - self._checked_at < self.budget.check_s:
            return self.state
        self._checked_at = now
        free = []
        for path in self.paths:
            try:
                free.append(self._usage(str(_existing(path))).free / MB)
            except OSError as exc:  # a vanished mount: say so, judge by the others
                log.warning("disk: cannot measure free space at %s: %s", shown(path), shown(exc))
        if not free:
            return self.state
        self.free_mb = min(free)
        state = self._judged(self.free_mb)
        if state != self.state:
            worse = _RANK[state] > _RANK[self.state]
            (log.warning if worse else log.info)(
                "disk: %.0f MB free: %s", self.free_mb,
                {HOLD: f"below min_free_mb ({self.budget.min_free_mb:g} MB), holding new work until space is freed",
                 NO_CLIPS: f"below {self.budget.clips_min_free_mb:g} MB, not saving clips",
                 OK: "enough again, working normally"}[state])
            self.state = state
        return state

    def _judged(self, free_mb: float) -> str:
        """The state at ``free_mb``: below a watermark, and, where the state now is below it,
        until free space is ``resume_margin_mb`` above it."""
        rank = _RANK[self.state]

        def below(watermark_mb: float, state: str) -> bool:
            return free_mb < watermark_mb + (resume_margin_mb(watermark_mb) if rank >= _RANK[state] else 0.0)

        if below(self.budget.min_free_mb, HOLD):
            return HOLD
        return NO_CLIPS if below(self.budget.clips_min_free_mb, NO_CLIPS) else OK

    def may_work(self) -> bool:
        return self.check() != HOLD

    def may_save_clips(self) -> bool:
        return self.check() == OK


_RANK = {OK: 0, NO_CLIPS: 1, HOLD: 2}


# Below this SQLite cannot even check a database (its -shm): the service waits for room rather
# than start, and the command line says the disk is full.
MIN_ROOM_BYTES = 1 << 20


def full_disk_note(path: str | Path) -> str:
    """'; the disk holding it is full: free some space' when it is, for an error about the file
    at ``path`` (SQLite says only "disk I/O error" when it cannot write a reader's -shm); else ''."""
    return "; the disk holding it is full: free some space" if free_bytes(path) < MIN_ROOM_BYTES else ""


def free_bytes(path: str | Path) -> int:
    """Bytes this user may still write on the disk holding ``path`` (or its nearest existing
    parent); a very large number when it cannot be measured (nothing to wait for then)."""
    try:
        return shutil.disk_usage(str(_existing(Path(path)))).free
    except OSError:
        return 1 << 62


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path

