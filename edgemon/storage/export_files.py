"""The files an export writes: each appears only complete (a temp file beside its target, fsync,
rename), all of one export together, and together with its cursor's move (``CursorMove``, through
``export_journal``). A cursor export appends to what it finds: csv, birdnet and jsonl under their
one header, Raven tables numbered on; a file of another format is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edgemon.durable import fsync_dir
from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.signals import process_alive
from edgemon.storage import tables
from edgemon.storage.export_held import Held, held_keys, held_selections, is_held, key_of, selection_key
from edgemon.storage.export_journal import (JournalError, Move, finish_pending, journal_path,
                                            rename_all, stage)
from edgemon.storage.output_target import open_in_place, through_links, written_in_place

RAVEN_COLUMNS = tables.RAVEN_COLUMNS
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CursorMove:
    """What moves with an export's files: cursor ``name`` of ``db_path`` to ``last_id``, in the
    write transaction ``advancing(rows delivered)`` opens (``cursors.advancing``)."""

    db_path: Path
    name: str
    last_id: int
    advancing: Callable[[int], contextlib.AbstractContextManager]

    def __call__(self, delivered: int) -> contextlib.AbstractContextManager:
        return self.advancing(delivered)


class ExportError(EdgemonError):
    """Detections cannot be exported: the database is unreadable or the output unwritable."""


class OutputClosed(ExportError):
    """The reader of standard output went away (``| head``): not an error to report, but the
    export did not finish, so no cursor moves."""


def refuse_the_database(output: Path | None, db: Path, option: str) -> None:
    """An output that is the detections database (or its journal) would be overwritten by the
    export's text: refuse it before anything is written ('-', stdout, and None pass)."""
    if output is None or str(output) == "-":
        return
    real = Path(db).resolve()   # SQLite keeps its journal beside the real file, not beside a link to it
    for stored in (Path(db), *(Path(f"{where}{suffix}") for where in {Path(db), real}
                               for suffix in ("-wal", "-shm", "-journal"))):
        try:
            same = os.path.samefile(output, stored)
        except OSError:   # either is not there: compare where they would be
            same = Path(output).resolve() == stored.resolve()
        if same:
            raise ExportError(f"{option} {output} is the detections database {db}: choose another file "
                              f"(nothing was written)")


def write_raven(rows: Iterable[dict], out_dir: Path, names: dict[str, str], append: bool,
                moving: CursorMove | None = None, alone: Callable[[dict], bool] | None = None,
                owner_note: tuple[Path, str] | None = None) -> int:
    """One tab-separated Raven selection table per source (a live detection's saved clip is a
    source of its own: the ``raven_table`` each row carries); times in seconds from its start.
    ``append`` (cursor exports) keeps an existing table's selections and numbers on after them,
    and appends none it holds already (``export_held``; ``alone``: see ``write_file``); without it,
    a table of ``names`` already in ``out_dir`` that no row goes to is rewritten as its header alone;
    ``moving``: see ``atomic_texts``. ``owner_note`` (path, text: ``raven_owner``) is written with the tables
    when any row is, one of them: a power cut after the cursor's commit left tables the note did
    not claim, and a plain export then replaced rows the cursor had delivered (a review)."""
    left_out = [0]
    written: set[str] = set()
    with atomic_texts(moving) as outputs:   # all tables or none: see atomic_texts
        for source, group in itertools.groupby(rows, key=lambda row: row["raven_table"]):
            path = out_dir / names[source]
            written.add(names[source])
            earlier, number = _earlier_selections(path) if append else ("", 0)
            if earlier:   # after a restore or a rebuild: what the table holds is not appended again
                group = _not_held(selection_key, group, held_selections(earlier), left_out, alone)
                first = next(group, None)
                if first is None:
                    continue
                group = itertools.chain([first], group)
            with outputs.open(path) as f:
                f.write(earlier)
                writer = tables.raven_writer(f)
                if not earlier:
                    writer.writerow(RAVEN_COLUMNS)
                for number, row in enumerate(group, start=number + 1):
                    writer.writerow(tables.raven_row(number, row))
                    outputs.delivered += 1
        if not append:
            # A plain export rewrites every table whole: a table of this database's recordings that
            # an earlier export wrote here and that this one's filter leaves without rows keeps only
            # its header. Left alone, it kept the earlier export's rows (a --min-confidence 0.95
            # export left a directory of tables holding rows at 0.06 beside the one it wrote).
            here = {e.name for e in os.scandir(out_dir) if e.is_file()}   # one listing, not a stat per recording
            emptied = sorted((set(names.values()) - written) & here)
            for name in emptied:
                with outputs.open(out_dir / name) as f:
                    tables.raven_writer(f).writerow(RAVEN_COLUMNS)
            if emptied:   # files the user did not name one by one: said
                log.warning("%d table(s) an earlier export left in %s have no row this export's filters pass: "
                            "rewritten with their header alone (e.g. %s)", len(emptied), shown(str(out_dir)),
                            shown(emptied[0]))
        if owner_note is not None and outputs.delivered:
            with outputs.open(owner_note[0]) as f:
                f.write(owner_note[1])
    if not outputs.delivered:   # no table opened: the temps of killed exports are swept all the same
        sweep_dead_temps(out_dir)
    _say_left_out(out_dir, left_out[0])
    return outputs.delivered


def write_file(write: Callable[[TextIO, Iterable[dict]], int], rows: Iterable[dict], path: Path,
               append: bool, moving: CursorMove | None = None, alone: Callable[[dict], bool] | None = None) -> int:
    """One csv, birdnet or jsonl file. ``append`` (cursor exports): rows an earlier export wrote
    there stay, byte for byte, and the new ones follow them, the header once; with nothing new the
    file is left as it was. Replacing it would lose rows the cursor has already moved past. The
    earlier file is streamed into the new one, not read into memory (a season's file on a Pi); it is
    read through once before, for the rows it holds already (``export_held``): none is appended again.
    ``alone`` (for formats that carry no bundle): whether no other detection of the database could
    have written a row alike; a held row is left out only then. ``moving``: see ``atomic_texts``."""
    header = _header(write)
    newline = _earlier_file(path, header) if append else None
    rows, left_out = iter(rows), [0]
    if newline is not None:
        first = next(rows, None)
        held = None if first is None else held_keys(write, path)
        if held:   # after a restore or a rebuild: what the file holds is not appended again
            rows = _not_held(functools.partial(key_of, write), itertools.chain([first], rows), held, left_out,
                             alone)
            first = next(rows, None)
        if first is None:
            if moving:
                with moving(0):   # nothing new: the cursor notes the export, the file stays
                    pass
            sweep_dead_temps(through_links(path).parent)   # and the temps of killed exports go
            _say_left_out(path, left_out[0])
            return 0
        rows = itertools.chain([first], rows)
    with atomic_texts(moving) as outputs, outputs.open(path) as f:
        if newline is None:
            outputs.delivered = write(f, rows)
        else:
            with open(path, encoding="utf-8", newline="") as earlier:
                shutil.copyfileobj(earlier, f)
            f.write(newline)
            outputs.delivered = write(_AfterHeader(f, len(header)), rows)
    _say_left_out(path, left_out[0])
    return outputs.delivered


def _not_held(key: Callable[[dict], tuple], rows: Iterable[dict], held: Held, left_out: list[int],
              alone: Callable[[dict], bool] | None) -> Iterator[dict]:
    for row in rows:
        if is_held(held, *key(row)) and (alone is None or alone(row)):
            left_out[0] += 1
        else:
            yield row


def _say_left_out(path: Path, count: int) -> None:
    if count:
        log.warning("%s already holds %d of the rows this export found new: left out, not appended again "
                    "(another cursor or export wrote them here, or the database is behind this file: restored "
                    "from a copy, or rebuilt?)", shown(path), count)


class _AfterHeader:
    """A text sink that drops the first ``skip`` characters written to it (the header a writer
    always begins with), then passes everything on to ``out``."""

    def __init__(self, out: TextIO, skip: int):
        self.out, self.skip = out, skip

    def write(self, text: str) -> int:
        dropped = min(self.skip, len(text))
        self.skip -= dropped
        return self.out.write(text[dropped:]) + dropped


def _header(write: Callable[[TextIO, Iterable[dict]], int]) -> str:
    header = io.StringIO()
    write(header, [])
    return header.getvalue()


def _earlier_file(path: Path, header: str) -> str | None:
    """For a file an earlier export left at ``path``: the newline to add before new rows ('' when
    it ends in one); None when there is no such file, or it is empty. A file of another format
    (not this ``header``; for jsonl, which has none, a first line that is not one of its records)
    is refused rather than mixed."""
    _refuse_a_stream(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return None
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
        first_line = first.decode("utf-8").rstrip("\r\n")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:   # a binary file: the codec's words said nothing of what was wrong
        raise ExportError(f"cannot append to {path}: not a file of this export format (not text); move it "
                          f"aside or name another --output") from None
    except OSError as e:
        raise ExportError(f"cannot append to {path}: {e.strerror or e}") from e
    if header:
        ours = first_line == header.rstrip("\r\n")
    else:
        try:
            ours = isinstance(record := json.loads(first_line), dict) and "id" in record
        except ValueError:
            ours = False
    if not ours:
        raise ExportError(f"cannot append to {path}: not a file of this export format (another header); "
                          f"move it aside or name another --output")
    return "" if last == b"\n" else "\n"


def _earlier_selections(path: Path) -> tuple[str, int]:
    """The text of a Raven table written before (header included) and its last selection number;
    ('', 0) when there is none. A table with other columns is refused rather than mixed."""
    _refuse_a_stream(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", 0
    except UnicodeDecodeError:
        raise ExportError(f"cannot append to {path}: not a selection table of this export (not text); "
                          f"move it aside") from None
    except OSError as e:
        raise ExportError(f"cannot append to {path}: {e.strerror or e}") from e
    lines = text.splitlines()
    if not lines or lines[0] != "\t".join(RAVEN_COLUMNS):
        raise ExportError(f"cannot append to {path}: not a selection table of this export "
                          f"(other columns); move it aside")
    try:
        last = int(lines[-1].split("\t", 1)[0]) if len(lines) > 1 else 0
    except ValueError:
        raise ExportError(f"cannot append to {path}: its last line is not a numbered selection") from None
    return text if text.endswith("\n") else text + "\n", last


def _refuse_a_stream(path: Path) -> None:
    """What a cursor export appends to is read first: a pipe there waited for a writer for ever."""
    if written_in_place(path):
        raise ExportError(f"cannot append to {path}: not a regular file (a pipe, a device or a descriptor); "
                          f"a cursor export appends to the file it wrote before")


@contextlib.contextmanager
def atomic_text(path: Path) -> Iterator[TextIO]:
    """A UTF-8 text file that appears at ``path`` only when complete (see ``atomic_texts``)."""
    with atomic_texts() as outputs, outputs.open(path) as f:
        yield f


class _Outputs:
    """What ``atomic_texts`` yields: ``open(path)`` a file that appears at ``path`` with the
    others, and ``delivered``, the rows written, which the block sets for ``moving``."""

    def __init__(self, open_text: Callable[[Path], contextlib.AbstractContextManager[TextIO]]):
        self.open, self.delivered = open_text, 0


@contextlib.contextmanager
def atomic_texts(moving: CursorMove | None = None) -> Iterator[_Outputs]:
    """Files that appear together, only when every one is complete: ``outputs.open(path)`` writes
    a temp file beside ``path``; when the block ends without error all are renamed into place. With
    ``moving`` (a cursor export) the cursor commits first, with the list of renames already in the
    export journal beside the database, and the renames follow: a kill between two renames is
    finished by the next cursor export (``export_journal.finish_pending``). A failure on one table,
    or of the cursor, before the commit leaves every table as it was, so a cursor export repeated
    after it appends nothing twice.

    Each temp file sits in its target's directory so the rename stays on one file system
    (atomic), is created with mode 0666 less the umask (as ``open`` would; ``mkstemp`` forces
    0600), and has a short name whatever the length of the target's. fsync before the rename, so
    a power cut cannot leave a renamed but empty file behind.
    """
    written: list[tuple[Path, Path]] = []
    pending: list[Path] = []
    staged = False

    swept: set[Path] = set()

    @contextlib.contextmanager
    def open_text(path: Path) -> Iterator[TextIO]:
        if written_in_place(path):   # a stream: a rename would replace the node, or stdout's file
            with _in_place(path) as f:
                yield f
            return
        path = through_links(path)   # a link stays, and the file it names is replaced
        if path.parent not in swept:
            swept.add(path.parent)
            sweep_dead_temps(path.parent)
        try:
            tmp, fd = _temp_beside(path)
        except ExportError:
            if moving is not None or not _writable_file(path):
                raise
            tmp = None
        if tmp is None:
            # A directory this user may not write, a file it may (a review): written in place,
            # as ``open(path, "w")`` did before; not whole if cut short, but not refused.
            with _in_place(path) as f:
                yield f
            return
        _keep_mode(path, fd)
        pending.append(tmp)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror or e}") from e
        written.append((tmp, path))

    try:
        outputs = _Outputs(open_text)
        yield outputs
        if moving is None:
            for tmp, path in written:
                try:
                    os.replace(tmp, path)
                except OSError as e:
                    raise ExportError(f"cannot write {path}: {e.strerror or e}") from e
                pending.remove(tmp)
            for directory in {path.parent for _, path in written}:
                fsync_dir(directory)
            return
        moves = _stage(written, moving) if written else []
        staged = True   # from here the journal decides what becomes of the files (``export_journal``)
        try:
            with moving(outputs.delivered):
                pass
        except BaseException:
            # Not committed, or (a Ctrl-C after its COMMIT) committed: the cursor's position says.
            with contextlib.suppress(Exception):
                finish_pending(moving.db_path, cursor=moving.name)
            raise
        try:
            rename_all(moves)
        except JournalError as e:
            journal = journal_path(moving.db_path, moving.name)
            raise ExportError(f"{e}; cursor {moving.name!r} has moved past these rows, and the next export on "
                              f"it moves them into place (listed in {journal})") from e
        if moves:
            journal_path(moving.db_path, moving.name).unlink(missing_ok=True)
    except BaseException:
        if not staged:
            for tmp in pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        raise


def _stage(written: list[tuple[Path, Path]], moving: CursorMove) -> list[Move]:
    try:
        return stage(written, moving.db_path, moving.name, moving.last_id)
    except BaseException as e:   # an OSError, or Ctrl-C / SIGTERM while staging
        with contextlib.suppress(Exception):
            # Not committed: removes what was staged, and the journal.
            finish_pending(moving.db_path, cursor=moving.name)
        if not isinstance(e, OSError):
            raise
        journal = journal_path(moving.db_path, moving.name)
        raise ExportError(f"cannot stage the export's files beside their targets or write {journal}: "
                          f"{e.strerror or e} (nothing was delivered; the cursor stays)") from e


STALE_TEMP_S = 600.0   # a writer on another machine sharing the directory touches its file far oftener
_TEMP = re.compile(r"\..*\.(\d+)-[0-9a-f]{8}\.tmp")   # what _temp_beside names: the writer's pid in it


@contextlib.contextmanager
def _in_place(path: Path) -> Iterator[TextIO]:
    try:
        with open_in_place(path) as f:
            yield f
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from e


def _writable_file(path: Path) -> bool:
    return os.path.isfile(path) and os.access(path, os.W_OK)


def _keep_mode(path: Path, fd: int) -> None:
    """A file replaced keeps its permissions (a 0600 heartbeat listing stayed 0600 when it was
    written in place; a new one gets the umask's)."""
    with contextlib.suppress(OSError):
        os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))


def _temp_beside(path: Path) -> tuple[Path, int]:
    for _ in range(100):
        tmp = path.parent / f".{path.name[:40]}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror or e}") from e
    raise ExportError(f"cannot write {path}: no free temporary name beside it")


def sweep_dead_temps(directory: Path) -> None:
    """Remove the temp files of exports killed before they could (``kill -9``, a power cut): those
    whose writer's process is gone and that nothing wrote for ``STALE_TEMP_S`` (a pid says nothing
    of an export on another machine sharing the directory). A killed Raven export left one per
    table, for good. Swept when an export opens a file in ``directory``, or writes nothing there: a
    cursor export with nothing new left 3875 of 22 killed ones (a review). ``ClipSaver`` names its
    temps alike, and sweeps them here too."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            found = _TEMP.fullmatch(entry.name)
            with contextlib.suppress(OSError):
                if (found is not None and entry.is_file(follow_symlinks=False)
                        and now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
                        and not process_alive(int(found[1]))):
                    os.unlink(entry.path)
