"""A cursor export's list of the files it still has to move into place, kept beside the database
from just before its cursor commits until every file is renamed.

Why: an export writes each file complete as a temp file, then renames them into place, and its
cursor moves with them. Renaming several files is not one atomic step, so a kill or power cut
between two renames left some tables extended and the cursor where it was; the next export then
appended the same rows to those tables again. Now each complete temp file is first renamed to a
*staged* name (``.<name>.<pid>-<hex>.staged``, which no sweep of dead temp files removes), the
journal goes on disk, the output directories and the journal are fsynced, the cursor commits, and
the staged files are renamed into place. The next cursor export of the database finishes what the
journal lists (the cursor had moved: the staged files are renamed) or drops it (the cursor had
not: they are removed), before it reads its own cursor. Each row then reaches its file once.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edgemon.durable import fsync_dir
from edgemon.errors import EdgemonError

log = logging.getLogger(__name__)
STAGED_SUFFIX = ".staged"
JOURNAL_INFIX = ".export-journal."


class JournalError(EdgemonError):
    """The files of an interrupted cursor export cannot be moved into place now."""


def journal_path(db_path: Path, cursor: str) -> Path:
    """Beside the database itself, links resolved (as its locks are): an export through a link
    and one through the real path must find one journal. One per cursor: a journal that cannot be
    finished yet (its output not mounted) must not stop another cursor's exports."""
    real = Path(os.path.realpath(db_path))
    digest = hashlib.sha1(cursor.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return real.with_name(f"{real.name}{JOURNAL_INFIX}{digest}")


def staged_name(tmp: Path) -> Path:
    return tmp.with_name(tmp.name.removesuffix(".tmp") + STAGED_SUFFIX)


@dataclass(frozen=True)
class Move:
    """A complete staged file ``staged`` (``size`` bytes) that is to become ``path``; both absolute.
    ``before``: the size of ``path`` when it was staged (-1: not there; None: not recorded)."""

    staged: Path
    path: Path
    size: int
    before: int | None = None


def stage(written: list[tuple[Path, Path]], db_path: Path, cursor: str, last_id: int) -> list[Move]:
    """Before the cursor commits: each complete temp file (``(tmp, target)``) renamed to its staged
    name, the journal written, and all of it fsynced, output directories included (so a power cut
    after the commit cannot take a staged file back). Absolute paths: the export that finishes
    this one may run from another directory."""
    moves = [Move(staged_name(Path(os.path.abspath(tmp))), Path(os.path.abspath(target)), os.stat(tmp).st_size,
                  _size(Path(target))) for tmp, target in written]
    path = journal_path(db_path, cursor)
    text = json.dumps({"cursor": cursor, "last_id": last_id,
                       "moves": [{"staged": str(m.staged), "path": str(m.path), "size": m.size, "before": m.before}
                                 for m in moves]})
    part = Path(f"{path}.part")
    with open(part, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)   # listed before any staged file exists: a kill in between leaves none unlisted
    for (tmp, _), move in zip(written, moves):
        os.replace(tmp, move.staged)
    for directory in {m.staged.parent for m in moves} | {path.parent}:
        fsync_dir(directory)
    return moves


def rename_all(moves: list[Move]) -> None:
    """Rename each staged file into place; one renamed already (staged gone, target of its size) is
    skipped. Raises JournalError naming the target that cannot be written."""
    for move in moves:
        try:
            os.replace(move.staged, move.path)
        except FileNotFoundError:
            if not _arrived(move):
                why = "its directory is not there" if not move.path.parent.is_dir() else "it is gone"
                raise JournalError(f"cannot move {move.staged} into place as {move.path}: {why}") from None
        except OSError as e:
            raise JournalError(f"cannot write {move.path}: {e.strerror or e}") from e
    for directory in {m.path.parent for m in moves}:
        fsync_dir(directory)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _arrived(move: Move) -> bool:
    try:
        return move.path.stat().st_size == move.size
    except OSError:
        return False


def finish_pending(db_path: Path, conn: sqlite3.Connection | None = None, cursor: str | None = None) -> None:
    """Finish or drop what interrupted cursor exports left undone (run under the export lock, or by
    that export itself, so no other export is between its journal and its renames). ``conn`` (else
    a read-only connection of its own) reads each cursor's committed position. A journal that
    cannot be finished now (a staged file not there: its stick not mounted; no permission; an I/O
    error) is kept, never guessed away: for ``cursor`` (the export about to run; None: every
    cursor) that raises JournalError, as its rows are in the staged files and the cursor is past
    them; for other cursors a warning says so, and they go on."""
    for path in _journals(db_path, parts=True):
        try:
            if path.name.endswith(".part"):   # killed while written: no file was staged yet
                path.unlink(missing_ok=True)
                continue
            _finish(path, db_path, conn)
        except (JournalError, OSError) as e:
            problem = e if isinstance(e, JournalError) else JournalError(f"{path}: {e.strerror or e}")
            if cursor is None or path == journal_path(db_path, cursor):
                raise problem from e
            log.warning("%s (another export cursor's files; it finishes them once that is fixed)", problem)


def pending(db_path: Path, conn: sqlite3.Connection | None = None) -> list[tuple[str, str]]:
    """(journal, cursor name) of every interrupted cursor export whose cursor moved but whose files
    are not all in place yet (``edgemon status`` lists them: the cron job that would finish one may
    be failing). One whose cursor never moved (stopped before its commit; or one running now) is
    not: its next export only removes its files."""
    out = []
    for path in _journals(db_path):
        try:
            cursor, last_id, _ = _parse(path.read_text(encoding="utf-8"))
            if not _moved(db_path, conn, cursor, last_id):
                continue
        except (OSError, ValueError, KeyError, TypeError, sqlite3.Error):
            cursor = "?"
        out.append((str(path), cursor))
    return out


def _journals(db_path: Path, parts: bool = False) -> list[Path]:
    """The journals beside the database (with ``parts``, also those killed while written)."""
    real = Path(os.path.realpath(db_path))
    return [p for p in sorted(real.parent.glob(f"{glob.escape(real.name)}{JOURNAL_INFIX}*"))
            if parts or not p.name.endswith(".part")]


def _parse(text: str) -> tuple[str, int, list[Move]]:
    """A journal's cursor, the position it moves to, and its moves; raises ValueError, KeyError
    or TypeError for text that is not one."""
    journal = json.loads(text)
    moves = [Move(Path(m["staged"]), Path(m["path"]), int(m["size"]), m.get("before")) for m in journal["moves"]]
    return str(journal["cursor"]), int(journal["last_id"]), moves


def _finish(path: Path, db_path: Path, conn: sqlite3.Connection | None) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except OSError as e:
        raise JournalError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        cursor, last_id, moves = _parse(text)
    except (ValueError, KeyError, TypeError) as e:
        raise JournalError(f"{path} is not an export journal ({e}): move it aside") from e
    give_up = f"remove {path} and the staged files it lists to give those rows up"
    if _moved(db_path, conn, cursor, last_id):
        missing = [m for m in moves if not m.staged.exists() and not _arrived(m)]
        if missing:
            # Not mounted, or removed by hand: indistinguishable here, so never taken as gone.
            raise JournalError(f"export cursor {cursor!r} is past rows that its staged file "
                               f"{missing[0].staged} holds, and it is not there (output not mounted?): "
                               f"mount it and export again, or {give_up}")
        changed = [m for m in moves if m.before is not None and m.staged.exists() and _size(m.path) != m.before]
        if changed:
            # Moved away by a sync job, or edited: the staged file is the file as the export read it
            # plus the new rows, so putting it in place would deliver its earlier rows again.
            m = changed[0]
            raise JournalError(f"{m.path} changed since the interrupted export of cursor {cursor!r} read it "
                               f"({'moved away' if not m.path.exists() else 'edited'}?): its staged file "
                               f"{m.staged} holds that file as it was plus the new rows; move it into place "
                               f"yourself to deliver it so, or {give_up}")
        try:
            rename_all(moves)
        except JournalError as e:
            raise JournalError(f"export cursor {cursor!r} is past rows its files do not hold yet: {e}; fix "
                               f"that and export again, or {give_up}") from e
        log.info("finished moving the files of an interrupted export on cursor %r", cursor)
    else:
        for move in moves:
            try:
                os.unlink(move.staged)
            except FileNotFoundError:
                continue   # removed already, or never staged (killed while staging)
            except OSError as e:   # kept with its journal, to be removed next time, not left for good
                raise JournalError(f"cannot remove {move.staged}, a file of an export that did not "
                                   f"finish: {e.strerror or e}") from e
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _moved(db_path: Path, conn: sqlite3.Connection | None, cursor: str, last_id: int) -> bool:
    own = conn is None
    if own:
        conn = sqlite3.connect(Path(os.path.realpath(db_path)).as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT last_id FROM export_cursors WHERE name = ?", [cursor]).fetchone()
    finally:
        if own:
            conn.close()
    return row is not None and row[0] >= last_id
