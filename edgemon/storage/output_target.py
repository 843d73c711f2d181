"""Whether a file an export or a listing was told to write may be written, and how.

A plain export replaces its ``--output`` as ``>`` would, through a temp file renamed over it. Some
targets must not be treated so (a newcomer trial and a review):

- a database, its write-ahead log or journal, or a recording given by mistake: replaced by CSV
  text, gone for good. Refused before anything is written, by what the file holds, whatever its
  name (``check_output``);
- a pipe, a device or a terminal (``/dev/null``, ``>(gzip > x.gz)``), and a descriptor the
  process already holds (``/dev/stdout``, ``/dev/fd/3``): a rename replaced the node itself
  (``/dev/null`` made a regular file, as root), left a reader waiting for ever, or replaced the
  file the shell had redirected stdout to. Written in place, through the descriptor where there
  is one (``open_in_place``);
- a symbolic link: the rename replaced the link and left the file it names untouched. The file
  it names is written instead (``through_links``).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import soundfile

from edgemon.safetext import shown

SQLITE_MAGICS = ((b"SQLite format 3\x00", "a SQLite database"),
                 (b"\x37\x7f\x06\x82", "a SQLite write-ahead log"), (b"\x37\x7f\x06\x83", "a SQLite write-ahead log"),
                 (b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7", "a SQLite journal"))
AUDIO_MAGICS = (b"RIFF", b"RF64", b"BW64", b"riff", b"fLaC", b"OggS", b"FORM", b"ID3", b"caff", b".snd", b"NIST_1A")
# A descriptor this process holds, by the names Linux gives it.
_DESCRIPTOR = re.compile(r"/(?:dev/fd|proc/self/fd|proc/\d+/fd)/(\d+)")
_STANDARD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def check_output(output: Path | None, option: str, error: type[Exception], *, appending: bool = False) -> None:
    """Refuse, before anything is written, an ``output`` (given as ``option``) that is empty, a
    directory, a SQLite file or a recording; and, for an export ``appending`` to what is there
    (a cursor's), anything but a regular file. None and '-' (standard output) pass."""
    if output is None or str(output) == "-":
        return
    if str(output) == "":
        raise error(f"{option} is empty: give a file name, or '-' for standard output")
    try:
        mode = os.stat(output).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise error(f"{option} {shown(output)}: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{option} {shown(output)} is a directory: give a file name (nothing was written)")
    stream = not stat.S_ISREG(mode) or descriptor_of(Path(output)) is not None
    if stream and appending:
        raise error(f"{option} {shown(output)} is not a regular file: a cursor export appends to the file "
                    f"it wrote before; give a file (nothing was written)")
    if stream:
        return   # what it leads to is not read, only written
    held = what_it_holds(Path(output))
    if held:
        raise error(f"{option} {shown(output)} is {held}, not an export: choose another file (nothing was written)")


def descriptor_of(path: Path) -> int | None:
    """The descriptor ``path`` names (``/dev/stdout`` 1, ``/dev/fd/3`` 3), or None."""
    text = os.path.abspath(path)
    if text in _STANDARD:
        return _STANDARD[text]
    found = _DESCRIPTOR.fullmatch(text)
    if found and (text.startswith(("/dev/fd/", "/proc/self/")) or int(text.split("/")[2]) == os.getpid()):
        return int(found[1])
    return None


def written_in_place(path: Path) -> bool:
    """Whether ``path`` is written as it is, not replaced: a descriptor (``descriptor_of``), or
    there and not a regular file (its links followed): a pipe, a device or a terminal."""
    if descriptor_of(path) is not None:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def open_in_place(path: Path) -> TextIO:
    """``path`` opened for text as it is: a descriptor through a copy of it, written from where it
    stands (``>>`` stays an append, and what the shell writes after follows), else opened by name."""
    descriptor = descriptor_of(path)
    if descriptor is not None:
        return os.fdopen(os.dup(descriptor), "w", encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


@contextlib.contextmanager
def utf8_stdout() -> Iterator[TextIO]:
    """Standard output for a table, as UTF-8 like every file an export writes, whatever the
    locale's encoding: under a Latin-1 or ASCII one (``LANG=en_US.ISO-8859-1``,
    ``PYTHONIOENCODING=ascii``) an export piped on stopped with a traceback at the first device
    id or name it could not encode. Written through a copy of descriptor 1 (``open_in_place``)."""
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # a stream in memory (a test's runner): no locale in it
        descriptor = None
    if encoding == "utf8" or descriptor is None:
        yield sys.stdout
        return
    sys.stdout.flush()
    with os.fdopen(os.dup(descriptor), "w", encoding="utf-8", newline="") as out:
        yield out


def through_links(path: Path) -> Path:
    """The file a symbolic link ``path`` names (links followed, to where it would be made if it is
    not there yet); ``path`` itself when it is no link."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def what_it_holds(path: Path) -> str | None:
    """'a SQLite database' (log, journal), 'a recording (FORMAT)', or None for anything else,
    from the file's first bytes: whatever libsndfile reads is a recording."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None   # unreadable here: writing it will say what is wrong
    sqlite = next((what for magic, what in SQLITE_MAGICS if head.startswith(magic)), None)
    if sqlite or not head:
        return sqlite
    try:
        return f"a recording ({soundfile.info(str(path)).format})"
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError):   # one cut short still is
        return "a recording" if head.startswith(AUDIO_MAGICS) else None
