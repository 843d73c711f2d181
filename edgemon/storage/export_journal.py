"""A cursor export's list of the files it still has to move into place, kept beside the database
from just before its cursor commits until every file is renamed.

Why: an export writes each file complete as a temp file, then renames them into place, and its
cursor moves with them. Renaming several files is not one atomic step, so a kill or power cut
between two renames left some tables extended and the cursor where it was; the next export then
appended the same rows to those tables again. Now the cursor commits first, with this journal
already on disk, and the renames follow. The next cursor export of the database finishes what the
journal lists (the cursor had moved: the temp files are renamed) or drops it (the cursor had not:
the temp files are removed), before it reads its own cursor. Each row then reaches its file once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def journal_path(db_path: Path) -> Path:
    return Path(f"{db_path}.export-journal")


@dataclass(frozen=True)
class Move:
    """A complete temp file ``tmp`` (``size`` bytes) that is to become ``path``."""

    tmp: Path
    path: Path
    size: int


def write_journal(db_path: Path, cursor: str, last_id: int, moves: list[Move]) -> Path:
    """Put the journal on disk (fsynced, with its directory) before the cursor commits."""
    path = journal_path(db_path)
    text = json.dumps({"cursor": cursor, "last_id": last_id,
                       "moves": [{"tmp": str(m.tmp), "path": str(m.path), "size": m.size} for m in moves]})
    tmp = Path(f"{path}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def rename_all(moves: list[Move]) -> None:
    """Rename each temp file into place; one already renamed (its temp gone) is skipped."""
    for move in moves:
        try:
            os.replace(move.tmp, move.path)
        except FileNotFoundError:
            if not _arrived(move):
                raise
    for directory in {m.path.parent for m in moves}:
        fsync_dir(directory)


def _arrived(move: Move) -> bool:
    try:
        return move.path.stat().st_size == move.size
    except OSError:
        return False


def finish_pending(db_path: Path, conn: sqlite3.Connection) -> None:
    """Finish or drop what a cursor export killed after writing its journal left undone (run under
    the export lock, so no other export is between its journal and its renames). ``conn`` reads
    the cursor's committed position. Raises OSError when a file cannot be moved into place."""
    path = journal_path(db_path)
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
        moves = [Move(Path(m["tmp"]), Path(m["path"]), int(m["size"])) for m in journal["moves"]]
        cursor, last_id = str(journal["cursor"]), int(journal["last_id"])
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Written whole and fsynced before the cursor commits: an unreadable one never got that far.
        log.warning("export journal %s is unreadable (%s): removed; the export it belonged to had not "
                    "moved its cursor", path, e)
        path.unlink(missing_ok=True)
        return
    row = conn.execute("SELECT last_id FROM export_cursors WHERE name = ?", [cursor]).fetchone()
    if row is not None and row[0] >= last_id:
        missing = [m.path for m in moves if not m.tmp.exists() and not _arrived(m)]
        if missing:
            log.warning("export cursor %r moved past id %d, but its files %s were neither renamed into "
                        "place nor left to rename (removed by hand?): those rows are missing there; a "
                        "new --cursor NAME delivers everything again", cursor, last_id,
                        ", ".join(map(str, missing)))
        rename_all([m for m in moves if m.path not in missing])
        log.info("finished moving the files of an interrupted export on cursor %r", cursor)
    else:
        for move in moves:
            with contextlib.suppress(OSError):
                os.unlink(move.tmp)
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Some file systems refuse fsync on a directory; the file is then
    still complete, only the rename might not survive a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
