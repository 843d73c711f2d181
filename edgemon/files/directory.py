"""A recorder's directory as the watcher sees it: which entries are recordings (audio files
outside hidden directories), their ledger names, their versions (size, mtime), and the check that
the directory can be watched at all."""

from __future__ import annotations

import dataclasses
import os
import time
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


@dataclasses.dataclass(frozen=True)
class Listing:
    """What one listing of a directory gave the walk, kept while the directory stays unchanged."""

    version: tuple[int, int, int, int]    # st_dev, st_ino, st_mtime_ns, st_ctime_ns, taken before it was listed
    subdirs: tuple[str, ...]              # the directories the walk enters from it, in order
    others: tuple[tuple[str, int], ...]   # its files in other audio formats, by suffix
    notes: tuple[tuple[str, str], ...]    # its links not followed, as ``unreadable`` entries


# A directory changed this long before a walk began is kept as listed: a change made after the
# listing moves its mtime on even where the file system keeps times coarsely (FAT: 2 s).
SETTLED_DIRECTORY_NS = 3_000_000_000


def iter_audio(root: Path, unreadable: dict[str, str] | None = None, others: dict[str, int] | None = None,
               listings: dict[str, Listing] | None = None, skipped: list[str] | None = None) -> Iterator[Path]:
    """Every audio file under ``root``, hidden directories skipped. Directories that cannot be
    listed are put in ``unreadable`` (path -> reason) when given, else skipped; files in other
    audio formats (``OTHER_AUDIO_SUFFIXES``) are counted by suffix in ``others`` when given.

    With ``listings`` (directory path -> ``Listing``, kept by the caller between walks) and
    ``skipped`` given, a directory whose device, inode, mtime and ctime are what its kept listing
    says is not listed again: its files are not yielded, its path goes into ``skipped``, and its
    subdirectories are walked as kept (a file added, removed or renamed changes its directory's
    mtime; a file changed in place does not). With ``listings`` alone every directory is listed
    and the listings are made anew. Either way ``listings`` ends up holding the directories walked."""

    def note(exc: OSError) -> None:
        if unreadable is not None:
            unreadable[os.fsdecode(exc.filename)] = exc.strerror or str(exc)

    # A directory linked in from elsewhere (a second card mounted outside) is followed, each real
    # directory once, so a loop cannot trap the scan. A link to a directory inside the root is
    # not: that directory is walked under its own name, the one file-system events give (a review
    # saw one recording analysed under both names). A link to the root or above it (up to "/")
    # would take in what was never meant to be watched: said, and not followed.
    real_root = os.path.realpath(root)
    settled_before = time.time_ns() - SETTLED_DIRECTORY_NS
    seen = set()
    walked: set[str] = set()
    stack = [os.fspath(root)]
    while stack:
        dirpath = stack.pop()
        try:
            st = os.stat(dirpath)   # before it is listed: a change during the listing shows next time
        except OSError as exc:
            note(exc)
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        walked.add(dirpath)
        version = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        kept = None if listings is None else listings.get(dirpath)
        if kept is not None and skipped is not None and kept.version == version:
            skipped.append(dirpath)
        else:
            try:
                kept, files = _list(dirpath, version, real_root, unreadable is not None)
            except OSError as exc:
                note(exc)
                if listings is not None:
                    listings.pop(dirpath, None)
                continue
            if listings is not None:
                if max(st.st_mtime_ns, st.st_ctime_ns) < settled_before:
                    listings[dirpath] = kept
                else:   # changed just now: maybe again within its time's resolution, unseen
                    listings.pop(dirpath, None)
            directory = Path(dirpath)
            for f in files:
                yield directory / f
        if others is not None:
            for suffix, n in kept.others:
                others[suffix] = others.get(suffix, 0) + n
        if unreadable is not None:
            unreadable.update(kept.notes)
        stack.extend(reversed(kept.subdirs))
    if listings is not None:
        for gone in listings.keys() - walked:
            del listings[gone]


def _list(dirpath: str, version: tuple[int, int, int, int], real_root: str,
          noting: bool) -> tuple[Listing, list[str]]:
    """List one directory as ``iter_audio`` walks it: its listing and its audio files' names.
    Raises OSError when it cannot be listed."""
    dirnames, files, others = [], [], {}
    with os.scandir(dirpath) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()   # of a link: of what it names (linked directories are followed)
            except OSError:
                is_dir = False
            if entry.name.startswith("."):
                continue
            if is_dir:
                dirnames.append(entry.name)
                continue
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix in AUDIO_SUFFIXES:
                files.append(entry.name)
            elif suffix in OTHER_AUDIO_SUFFIXES:
                others[suffix] = others.get(suffix, 0) + 1
    notes: dict[str, str] = {}
    subdirs = tuple(os.path.join(dirpath, d) for d in sorted(dirnames)
                    if _follow(Path(dirpath) / d, real_root, notes if noting else None))
    return Listing(version, subdirs, tuple(sorted(others.items())), tuple(notes.items())), files


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
    ``MemoryHigh`` is 384 MB (the weeks review). Grouped by directory, so that a rescan that does
    not list a directory again (``iter_audio``'s ``skipped``) can count what it holds. Paths go in
    and come out as ``Path``."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[str, tuple[int, int]]] = {}

    def get(self, path: Path) -> tuple[int, int] | None:
        directory, name = os.path.split(os.fspath(path))
        kept = self._versions.get(directory)
        return None if kept is None else kept.get(name)

    def __setitem__(self, path: Path, version: tuple[int, int]) -> None:
        directory, name = os.path.split(os.fspath(path))
        self._versions.setdefault(directory, {})[name] = version

    def pop(self, path: Path, default: tuple[int, int] | None = None) -> tuple[int, int] | None:
        directory, name = os.path.split(os.fspath(path))
        kept = self._versions.get(directory)
        if kept is None or name not in kept:
            return default
        version = kept.pop(name)
        if not kept:
            del self._versions[directory]
        return version

    def in_directory(self, directory: str) -> int:
        """How many of the files kept are in ``directory`` (not below it)."""
        return len(self._versions.get(directory, ()))

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._versions.values())

    def __iter__(self) -> Iterator[Path]:
        return (path for path, _ in self.items())

    def items(self) -> Iterator[tuple[Path, tuple[int, int]]]:
        return ((Path(directory, name), version) for directory, kept in self._versions.items()
                for name, version in kept.items())

    def clear(self) -> None:
        self._versions.clear()

    def keep_existing(self) -> None:
        """Forget the paths no longer there."""
        kept = {directory: {name: version for name, version in names.items()
                            if os.path.lexists(os.path.join(directory, name))}
                for directory, names in self._versions.items()}
        self._versions = {directory: names for directory, names in kept.items() if names}
