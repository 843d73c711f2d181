"""Where a training command may write: never over another command's work (light: no torch, so
the command line can check ``--out`` before it loads anything)."""

from __future__ import annotations

from pathlib import Path

from training.errors import DataError

# What a directory holds when another command's work is in it.
WORK = {"metrics.json": "a trained run", "checkpoint.pt": "a trained run", "model.onnx": "a trained run",
        "baseline.pkl": "a trained run", "summary.json": "a trained run", "manifest.json": "a bundle",
        "cv.json": "a cv run", "study.db": "a search"}


def check_out_dir(out: Path, own: tuple[str, ...] = ()) -> None:
    """Refuse a ``--out`` that is a file, a data directory, or holds another command's work (any
    of ``WORK`` but the files ``own`` to this command, which it adds to or resumes): writing there
    would overwrite it, and a later ``bundle`` into a bundle holding a cv run deleted the run
    (a newcomer's ``baseline --out`` over a fit run gave the network's bundle the SVM's scores)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file, not a run directory: choose another --out")
    if (out / "lab").is_dir() or (out / "audio").is_dir():
        raise DataError(f"{out}: is a data directory (audio/, lab/): choose another --out")
    found = [name for name in WORK if name not in own and (out / name).exists()]
    if found:
        what = sorted({WORK[name] for name in found})
        raise DataError(f"{out}: holds {' and '.join(what)} already ({', '.join(found)}); writing there would "
                        f"overwrite it: choose another --out or move it aside")
