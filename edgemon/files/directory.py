"""A recorder's directory as the watcher sees it: which entries are recordings (audio files
outside hidden directories), their ledger names, their versions (size, mtime), and the check that
the directory can be watched at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown, stored_name

AUDIO_SUFFIXES = (".wav", ".flac")
# Audio that ``classify`` reads but ``watch`` does not take (it waits for a WAV's or FLAC's header
# to be complete before it reads one): counted by the scan so that watch can say why they wait.
OTHER_AUDIO_SUFFIXES = (".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".m4a", ".aac", ".wma", ".w64", ".caf")


class WatchRootError(EdgemonError):
    """The directory to watch is missing, not a directory, or cannot be read."""


def check_root(root: Path) -> Path:
    """``root`` resolved, once it is known to be a directory edgemon can list; else
    ``WatchRootError`` (before anything, a database included, is created)."""
    root = Path(root)
    if not root.is_dir():
        raise WatchRootError(f"{shown(root)}: " + ("not a directory" if root.exists() else "no such directory"))
    try:
        with os.scandir(root):
            pass
    except OSError as exc:
        raise WatchRootError(f"{shown(root)}: cannot read the directory: {exc.strerror}") from None
    return root.resolve()


def is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def watched(root: Path, path: Path) -> bool:
    """Whether ``path`` is a recording the watcher takes: an audio file under ``root`` outside
    hidden directories. The scan (``iter_audio``) and the event hints both ask this."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    return is_audio(path) and not any(p.startswith(".") for p in parts[:-1])


def iter_audio(root: Path, unreadable: dict[str, str] | None = None,
               others: dict[str, int] | None = None) -> Iterator[Path]:
    """Every audio file under ``root``, hidden directories skipped. Directories that cannot be
    listed are put in ``unreadable`` (path -> reason) when given, else skipped; files in other
    audio formats (``OTHER_AUDIO_SUFFIXES``) are counted by suffix in ``others`` when given."""

    def note(exc: OSError) -> None:
        if unreadable is not None:
            unreadable[os.fsdecode(exc.filename)] = exc.strerror or str(exc)

    # A directory linked in from elsewhere (a second card mounted outside) is followed, each real
    # directory once, so a loop cannot trap the scan. A link to a directory inside the root is
    # not: that directory is walked under its own name, the one file-system events give (a review
    # saw one recording analysed under both names). A link to the root or above it (up to "/")
    # would take in what was never meant to be watched: said, and not followed.
    real_root = os.path.realpath(root)
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=note, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            note(exc)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _follow(Path(dirpath) / d, real_root, unreadable))
        # ``watched`` by name alone: hidden directories are already left out of the walk (a Path
        # and relative_to for every file made a rescan of 100 000 recordings take 7 s, a review).
        directory = Path(dirpath)
        for f in filenames:
            if f.startswith("."):
                continue
            suffix = os.path.splitext(f)[1].lower()
            if suffix in AUDIO_SUFFIXES:
                yield directory / f
            elif others is not None and suffix in OTHER_AUDIO_SUFFIXES:
                others[suffix] = others.get(suffix, 0) + 1


def _follow(path: Path, real_root: str, unreadable: dict[str, str] | None) -> bool:
    """Whether the walk enters the directory ``path`` (see ``iter_audio``)."""
    if not os.path.islink(path):
        return True
    target = os.path.realpath(path)
    if os.path.commonpath([target, real_root]) == target:   # the root itself, or a directory above it
        if unreadable is not None:
            unreadable[os.fsdecode(path)] = f"{LINK_NOT_FOLLOWED}{target}, which holds the watched directory"
        return False
    return os.path.commonpath([target, real_root]) != real_root   # inside: walked under its own name


LINK_NOT_FOLLOWED = "not followed: a link to "   # an ``unreadable`` reason that is not a read error


def skipped_because(path: str, reason: str) -> str:
    """How the log and ``edgemon status`` say why a directory's recordings are skipped."""
    if reason.startswith(LINK_NOT_FOLLOWED):
        return f"directory link {path} {reason} (link the card's own directory instead)"
    return f"cannot read directory {path} ({reason}): its recordings are skipped"


# SQLite's INTEGER: a file touched past 2262-04-11 (ext4 holds such times; inode damage, a stray
# `touch`) overflowed it and put the daemon in a crash loop (a review).
INT64 = (-2 ** 63, 2 ** 63 - 1)


def mtime_ns(st: os.stat_result) -> int:
    """A file's modification time in ns as the ledger stores it: within SQLite's INTEGER."""
    return min(max(st.st_mtime_ns, INT64[0]), INT64[1])


def file_version(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of what ``path`` names; of the link itself when its target cannot be
    reached (a loop, a dangling link); (0, 0) when not even that can be read; None when gone."""
    for look in (os.stat, os.lstat):
        try:
            st = look(path)
            return st.st_size, mtime_ns(st)
        except FileNotFoundError:
            continue
        except OSError:
            if look is os.lstat:
                return 0, 0
    return None


def source_of(root: Path, path: Path) -> str:
    """The ledger's name of ``path`` under ``root``: relative, '/'-separated, valid UTF-8 text
    (``safetext.stored_name``: a name that is not UTF-8 is stored escaped, reversibly)."""
    return stored_name(path.relative_to(root).as_posix())


class SettledVersions:
    """Path -> (size, mtime_ns) of the files that need no more work, as the watcher keeps them
    between scans. Kept by the path's text, not by the ``Path``: a card never emptied holds every
    recording of the season, and a ``Path`` key cost about 525 bytes a file against 180 for its
    text (tracemalloc): 52 MB against 18 MB for 100 000 recordings, under a unit whose
    ``MemoryHigh`` is 384 MB (the weeks review). Paths go in and come out as ``Path``."""

    def __init__(self) -> None:
        self._versions: dict[str, tuple[int, int]] = {}

    def get(self, path: Path) -> tuple[int, int] | None:
        return self._versions.get(os.fspath(path))

    def __setitem__(self, path: Path, version: tuple[int, int]) -> None:
        self._versions[os.fspath(path)] = version

    def pop(self, path: Path, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        return self._versions.pop(os.fspath(path), default)

    def __len__(self) -> int:
        return len(self._versions)

    def __iter__(self) -> Iterator[Path]:
        return (Path(p) for p in self._versions)

    def items(self) -> Iterator[tuple[Path, tuple[int, int]]]:
        return ((Path(p), version) for p, version in self._versions.items())

    def clear(self) -> None:
        self._versions.clear()

    def keep_existing(self) -> None:
        """Forget the paths no longer there."""
        self._versions = {p: v for p, v in self._versions.items() if os.path.lexists(p)}
