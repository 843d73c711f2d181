"""Whether a recording's card can be read at all just now: a card pulled from its reader (the file
system still mounted over it) or a reader failing gives the system's I/O error for every read,
while names and sizes still come from the kernel's cache. libsndfile then says "System error."
of a WAV and "Format not recognised." of a FLAC, as if the file were damaged; it is not, and it
must not be quarantined for it (``watcher.Watcher.process``). One recording's own bad sector gives
the same error, but only for that file: other recordings beside it still read."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from edgemon.errors import EdgemonError

# The card's own errors, not the file's: EACCES (a file edgemon may not read) is the file's.
CARD_ERRNOS = frozenset(e for e in (errno.EIO, errno.ENXIO, errno.ENODEV, getattr(errno, "ENOMEDIUM", None),
                                    errno.ESTALE) if e is not None)
PROBE_BYTES = 4096
OTHERS_PROBED = 3   # recordings beside a failing one read to tell a card gone from one bad file


class CardUnreadableError(EdgemonError):
    """``watch --until-idle`` met a card that cannot be read: it ends, in one line, rather than
    quarantine its recordings or wait for ever."""


def card_error(path: str | Path) -> OSError | None:
    """The I/O error reading ``path``'s first bytes *from its medium* gives now, or None when they
    read, or fail for a reason of the file's own: another error, or a card whose other recordings
    still read (a bad sector in this one was retried for ever, never counted nor quarantined)."""
    exc = _read_error(path)
    if exc is None or _another_reads(Path(os.fsdecode(path))):
        return None
    return exc


def _another_reads(path: Path) -> bool:
    """Whether one of a few other non-empty files in ``path``'s directory reads from the medium
    (the first few listed: a card's directory may hold tens of thousands)."""
    others = []
    try:
        with os.scandir(path.parent) as entries:
            for entry in entries:
                if (entry.name != path.name and entry.is_file(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_size > 0):
                    others.append(entry.path)
                    if len(others) == OTHERS_PROBED:
                        break
    except OSError:
        return False
    # Only a read that gave bytes says the card is there: one refused for a reason of its own
    # (EACCES, gone meanwhile) says nothing of it, and taken for "reads" it quarantined a pulled
    # card's recording as a bad sector (a review).
    return any(_probe(other) is None for other in others)


def _read_error(path: str | Path) -> OSError | None:
    """The card's error reading ``path``'s first bytes from its medium, or None (they read, or
    fail for a reason of the file's own)."""
    exc = _probe(path)
    return exc if exc is not None and exc.errno in CARD_ERRNOS else None


def _probe(path: str | Path) -> OSError | None:
    """The error reading ``path``'s first bytes from its medium, or None when they read. The file's
    cached pages are dropped first: the header was read from the cache a moment before the card went."""
    try:
        fd = os.open(os.fsencode(path), os.O_RDONLY)
        try:
            with contextlib.suppress(OSError, AttributeError):   # not Linux: read what the cache gives
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.pread(fd, PROBE_BYTES, 0)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    return None
