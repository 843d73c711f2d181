"""One daemon per detections database: an exclusive lock held for the daemon's whole life.

Two daemons on one database analyse the same files twice and deliver duplicate rows downstream.
The lock is ``flock`` on a file beside the database (``<db>.lock``), not on the database itself:
``edgemon.storage.recovery`` may move a corrupt database aside, and SQLite's own locks are for
transactions.
Readers (export, status) never take it. The kernel drops the lock when the process dies, however
it dies, so a killed daemon never leaves a stale lock; the file itself stays (removing it would
let a third process lock a new file while a second still holds the old one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown


class DatabaseInUseError(EdgemonError):
    """Another edgemon daemon holds the database's lock."""


def lock_path(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".lock")


@contextmanager
def hold_database(db_path: str | Path) -> Iterator[Path]:
    """Hold the lock of the database at ``db_path`` for the block; the lock file holds our pid.
    Raises ``DatabaseInUseError`` at once, naming the other daemon's pid, when it is held."""
    path = lock_path(db_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DatabaseInUseError(f"cannot create the lock file {shown(path)}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise DatabaseInUseError(f"cannot lock {shown(path)}: {exc.strerror}") from None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise DatabaseInUseError(f"another edgemon (pid {shown(holder)}) is using this database "
                                     f"{shown(Path(db_path).resolve())}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)   # releases the lock
