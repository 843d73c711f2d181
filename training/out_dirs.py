"""Where a training command may write: never over another command's work (light: no torch, so
the command line can check ``--out`` before it loads anything)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from training.errors import DataError

LOCK = ".edgemon-train.lock"

# What a directory holds when another command's work is in it.
WORK = {"metrics.json": "a trained run", "checkpoint.pt": "a trained run", "model.onnx": "a trained run",
        "baseline.pkl": "a trained run", "summary.json": "a trained run", "manifest.json": "a bundle",
        "cv.json": "a cv run", "study.db": "a search"}


def check_out_dir(out: Path, own: tuple[str, ...] = ()) -> None:
    """Refuse a ``--out`` that is a file, a data directory, or holds another command's work (any
    of ``WORK`` but the files ``own`` to this command, which it adds to or resumes): writing there
    would overwrite it, and a later ``bundle`` into a bundle holding a cv run deleted the run
    (a newcomer's ``baseline --out`` over a fit run gave the network's bundle the SVM's scores)."""
    _refuse_what_is_no_run_directory(out)
    found = [name for name in WORK if name not in own and (out / name).exists()]
    if found:
        what = sorted({WORK[name] for name in found})
        raise DataError(f"{out}: holds {' and '.join(what)} already ({', '.join(found)}); writing there would "
                        f"overwrite it: choose another --out or move it aside")


def _refuse_what_is_no_run_directory(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file, not a run directory: choose another --out")
    if (out / "lab").is_dir() or (out / "audio").is_dir():
        raise DataError(f"{out}: is a data directory (audio/, lab/): choose another --out")


@contextlib.contextmanager
def holding_out_dir(out: Path) -> Iterator[None]:
    """Hold ``out`` for one command: a second command writing there at the same time is refused
    in one line (two ``fit`` runs into one --out both ended 0, one model silently lost; two ``cv``
    runs kept one's recipes, a review). The lock file goes at the end; a command that locked it as
    it went is refused like one that found it held. A directory this made and nothing was written
    into goes too: a wrong --data leaves nothing."""
    _refuse_what_is_no_run_directory(out)   # before anything is written there
    made = not out.exists()
    lock = out / LOCK
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # The lock of a command that just ended and removed its file: not the one to hold.
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise DataError(f"{out}: another edgemon-train command is writing there now: wait for it to end, "
                            f"or choose another --out") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
                if made and not any(out.iterdir()):
                    out.rmdir()
    finally:
        os.close(fd)


def write_whole(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, whole or not at all: written beside it and renamed over it. A full disk
    left a checkpoint or an ONNX file cut short where a whole one had been, and said only "[Errno 28]
    No space left on device" (torch: a traceback); now the file is named and nothing is cut short."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DataError(f"{path}: cannot write it ({e.strerror or e})") from None
    except BaseException:   # a second Ctrl-C (``runs._signals_held``) left the part written beside it
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


# What a full or read-only disk says while a command writes its --out.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def as_out_error(e: OSError, out: Path) -> Exception:
    """What to raise for ``e``, met while a command wrote ``out``: one line naming ``--out`` when the
    disk is full or read-only or the file was one of ``out``'s (matplotlib and json writes name no
    file); any other error as it is."""
    named = e.filename if isinstance(e.filename, (str, bytes)) else None
    inside = named is not None and Path(os.fsdecode(named)).resolve().is_relative_to(Path(out).resolve())
    if e.errno in NO_ROOM or inside:
        return DataError(f"--out {out}: cannot write there ({e.strerror or e})")
    return e
