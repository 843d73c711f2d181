"""Whether a file an export or a listing was told to write may be written, and how.

A plain export replaces its ``--output`` as ``>`` would, through a temp file renamed over it. Three
kinds of target must not be treated so (a newcomer trial):

- a database or a recording given by mistake: replaced by CSV text, gone for good. Refused before
  anything is written, by what the file holds, whatever its name;
- a pipe, a device or a terminal (``/dev/null``, ``>(gzip > x.gz)``): a rename replaced the node
  itself (``/dev/null`` made a regular file, as root) or left a reader waiting for ever. Written
  in place instead (``written_in_place``);
- a symbolic link: the rename replaced the link and left the file it names untouched. The file
  it names is written instead (``through_links``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgemon.safetext import shown

SQLITE_MAGIC = b"SQLite format 3\x00"
# Leading bytes of the recordings a recorder or a user keeps beside an export.
AUDIO_MAGICS = ((b"RIFF", "a WAV recording"), (b"RF64", "a WAV recording"), (b"BW64", "a WAV recording"),
                (b"fLaC", "a FLAC recording"), (b"OggS", "an Ogg recording"), (b"FORM", "an AIFF recording"),
                (b"ID3", "an MP3 recording"))


def check_output(output: Path | None, option: str, error: type[Exception], *, appending: bool = False) -> None:
    """Refuse, before anything is written, an ``output`` (given as ``option``) that is empty, a
    directory, a SQLite database or a recording; and, for an export that ``appending`` to what is
    there (a cursor's), anything but a regular file. None and '-' (standard output) pass."""
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
    if not stat.S_ISREG(mode):
        if appending:
            raise error(f"{option} {shown(output)} is not a regular file: a cursor export appends to the file "
                        f"it wrote before; give a file (nothing was written)")
        return
    held = _what_it_holds(Path(output))
    if held:
        raise error(f"{option} {shown(output)} is {held}, not an export: choose another file (nothing was written)")


def written_in_place(path: Path) -> bool:
    """Whether ``path`` (its links followed) is there and not a regular file: a pipe, a device or
    a terminal, which is opened and written as it is."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def through_links(path: Path) -> Path:
    """The file a symbolic link ``path`` names (links followed, to where it would be made if it is
    not there yet); ``path`` itself when it is no link."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _what_it_holds(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None   # unreadable here: writing it will say what is wrong
    if head.startswith(SQLITE_MAGIC):
        return "a SQLite database"
    return next((what for magic, what in AUDIO_MAGICS if head.startswith(magic)), None)
