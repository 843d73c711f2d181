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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.signals import process_alive


class DatabaseInUseError(EdgemonError):
    """Another edgemon daemon holds the database's lock."""


def lock_path(db_path: str | Path) -> Path:
    return _beside(db_path, ".lock")


@contextmanager
def hold_database(db_path: str | Path) -> Iterator[Path]:
    """Hold the lock of the database at ``db_path`` for the block; the lock file holds our pid.
    Raises ``DatabaseInUseError`` at once, naming the other daemon's pid, when it is held."""
    path = lock_path(db_path)
    created = not os.path.lexists(path)
    fd = _open_lock(path, db_path)
    try:
        if not _try_lock(fd, path):
            raise DatabaseInUseError(f"another edgemon (pid {_holder(fd)}) is using this database "
                                     f"{shown(Path(db_path).resolve())}")
        _write_pid(fd)
        _refuse_other_names(db_path)
        try:
            yield path
        except BaseException:
            # Stopped before a database was made (a bundle refused): no lock file left beside
            # nothing (a newcomer trial found `--models nosuch` left one).
            if created and not os.path.lexists(db_path):
                path.unlink(missing_ok=True)
            raise
    finally:
        os.close(fd)   # releases the lock


def daemon_gone(db_path: str | Path) -> int | None:
    """The pid of the daemon that last held the lock of the database at ``db_path`` when nothing
    holds it now and that process no longer exists (killed, crashed); else None (running, stopped
    cleanly or never started, or no way to tell). Takes no lock: a shared lock tried here would,
    for a moment, refuse a daemon starting."""
    try:
        text = lock_path(db_path).read_text(encoding="ascii").strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    return None if process_alive(pid) else pid


def daemon_started(db_path: str | Path) -> tuple[int, float] | None:
    """(pid, time.time() when it took the lock) of the daemon that last took the lock of the
    database at ``db_path``, while that process exists and the lock is held (where Linux's
    /proc/locks tells); else None. The lock file is written at
    every start, so its modification time is the start of that daemon. Takes no lock, as
    ``daemon_gone``."""
    path = lock_path(db_path)
    try:
        pid = int(path.read_text(encoding="ascii").strip())
        st = path.stat()
    except (OSError, ValueError):
        return None
    # Held, not only named: a lock file newer than the last run, naming a pid another process has
    # (the data copied to a laptop, a start that failed and its pid reused) was 'starting' for good.
    if not process_alive(pid) or _flocked(st.st_ino) is False:
        return None
    return pid, st.st_mtime


def _flocked(inode: int) -> bool | None:
    """Whether any process holds a ``flock`` on the file of ``inode``, as Linux's /proc/locks
    lists them (read without taking a lock); None where that list cannot be read. By inode alone:
    the device a lock is listed under is not always the one stat gives (a btrfs subvolume)."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            listed = f.read().splitlines()
    except OSError:
        return None
    return any("FLOCK" in fields and any(field.endswith(f":{inode}") for field in fields)
               for fields in map(str.split, listed))


def export_lock_path(db_path: str | Path) -> Path:
    return _beside(db_path, ".export.lock")


@contextmanager
def hold_exports(db_path: str | Path, wait_s: float = 60.0, poll_s: float = 0.05) -> Iterator[Path]:
    """Hold the export lock of the database at ``db_path`` (``<db>.export.lock``, not the
    daemon's) for the block: one export that moves a cursor at a time, so two never read the
    same cursor position and deliver the same rows twice. Waits up to ``wait_s`` seconds for
    another export to finish, then raises ``DatabaseInUseError`` naming its pid."""
    path = export_lock_path(db_path)
    fd = _open_lock(path, db_path)
    try:
        deadline = time.monotonic() + wait_s
        while not _try_lock(fd, path):
            if time.monotonic() >= deadline:
                raise DatabaseInUseError(f"another export (pid {_holder(fd)}) has been moving a cursor of "
                                         f"{shown(Path(db_path).resolve())} for over {wait_s:g} s: "
                                         f"try again when it has finished")
            time.sleep(poll_s)
        _write_pid(fd)
        yield path
    finally:
        os.close(fd)   # releases the lock


def _refuse_other_names(db_path: str | Path) -> None:
    """A database with a hard link has a name the lock file (named by path) cannot see: a second
    daemon through it took its own lock, and the two left the file corrupt (a review)."""
    try:
        names = os.stat(db_path).st_nlink
    except OSError:
        return   # not made yet
    if names > 1:
        raise DatabaseInUseError(f"detections database {shown(Path(db_path).resolve())} has {names} names (hard "
                                 f"links): a daemon through another name would not meet this one's lock; keep "
                                 f"one name (a copy for a backup: sqlite3 DB '.backup copy.db')")


def _beside(db_path: str | Path, suffix: str) -> Path:
    # Beside the database itself, links resolved: two daemons reaching one database through a
    # symlink (or a linked directory) must meet at one lock file, not each hold their own.
    db_path = Path(os.path.realpath(db_path))
    return db_path.with_name(db_path.name + suffix)


def _write_pid(fd: int) -> None:
    """Our pid into the lock we now hold, for the one-line error another process gives. On a full
    disk it is left out: the run then says the disk is full at its first real write (this was a
    traceback, a review)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


def _open_lock(path: Path, db_path: str | Path) -> int:
    # Never through a link: whoever may write beside the database could point the lock at any file.
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return os.open(path, flags)
    except OSError as exc:
        if not Path(db_path).parent.is_dir():   # the user's mistake, in the user's words
            raise DatabaseInUseError(f"{shown(db_path)}: its directory {shown(Path(db_path).parent)} does not exist; "
                                     f"create it first, or give --db another path") from None
        raise DatabaseInUseError(f"cannot create the lock file {shown(path)}: {exc.strerror}") from None
    _owned_like_the_database(fd, Path(db_path))
    return fd


def _owned_like_the_database(fd: int, db_path: Path) -> None:
    """Root (an admin's one-off export, say) hands a lock file it has just created to the
    database's owner, as SQLite does with its -wal and -shm files: else the service's own user can
    no longer open it. Only a file this call created, so no existing file ever changes hands."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.stat(db_path if db_path.exists() else db_path.parent)
        if os.fstat(fd).st_uid != owner.st_uid:
            os.fchown(fd, owner.st_uid, owner.st_gid)
    except OSError:
        pass  # a file system without owners: nothing to hand over


def _try_lock(fd: int, path: Path) -> bool:
    """Take the exclusive lock of ``fd`` without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise DatabaseInUseError(f"cannot lock {shown(path)}: {exc.strerror}") from None
        return False


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote into it, fit for one line."""
    return shown(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?")
