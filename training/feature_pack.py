"""Splits' log-mel features packed into one small file, for a machine the audio cannot reach.

A GPU machine lent for a search may take only tens of MiB; the Borneo audio is over 200 MiB of
FLAC, its float32 log-mel more. A pack keeps each clip's log-mel quantised to 8 bits (a uniform
step over the pack's range, 0.082 natural-log units (0.36 dB) on the Borneo set: far below the noise the
augmentations add), with the clips' names, labels and recorders, so that ``Split``s come back
without reading audio. Only log-mel frontends: what PCEN needs is the mel power itself.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import EdgemonError
from training.data import Clip, Split
from training.errors import DataError

LEVELS = 255


def pack(splits: dict[str, Split], path: Path, pool_left_out: bool = False) -> Path:
    """Write ``splits`` (name -> Split, all log-mel with one frontend and one label order) to ``path``.
    ``pool_left_out``: the data set has a pool that was not packed (a search from the pack must then
    say it goes without)."""
    _check_out(path)
    first = next(iter(splits.values()))
    for name, split in splits.items():
        if split.mel is not None or split.frontend != first.frontend or split.labels != first.labels:
            raise DataError(f"split {name!r}: a pack holds log-mel splits of one frontend and label order")
    joined = {name: np.concatenate(split.features) for name, split in splits.items()}
    low = min(float(j.min()) for j in joined.values())
    high = max(float(j.max()) for j in joined.values())
    step = max(high - low, 1e-6) / LEVELS
    arrays = {"labels": np.array(first.labels), "frontend": np.array(json.dumps(first.frontend.to_dict())),
              "range": np.array([low, step]), "splits": np.array(list(splits)),
              "pool_left_out": np.array(pool_left_out)}
    for name, split in splits.items():
        arrays[f"{name}/lengths"] = np.array([len(f) for f in split.features])
        arrays[f"{name}/codes"] = np.round((joined[name] - low) / step).astype(np.uint8)
        arrays[f"{name}/names"] = np.array([c.path.name for c in split.clips])
        arrays[f"{name}/recorders"] = np.array([c.recorder for c in split.clips])
        arrays[f"{name}/targets"] = split.targets
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:  # whole or not at all: an earlier pack stays until this one is written
        np.savez_compressed(f, **arrays)
    partial.replace(path)
    return path


def pool_left_out(path: Path) -> bool:
    """Whether the pack was made without its data set's pool (``pack-features --no-pool``)."""
    with np.load(path, allow_pickle=False) as data:
        return bool(data["pool_left_out"]) if "pool_left_out" in data.files else False


def _check_out(path: Path) -> None:
    """``path`` may be new or an earlier pack; never a directory or another file (a study, say)."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory; name the pack file to write")
    if path.exists() and not _is_pack(path):
        raise DataError(f"--out {path} exists and is not a feature pack; writing there would destroy it")


def _is_pack(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return "splits.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def unpack(path: Path) -> dict[str, Split]:
    """The splits of a pack, their features back as float32 log-mel."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a feature pack (not an .npz archive; `edgemon-train pack-features` makes one)")
    try:
        with np.load(path, allow_pickle=False) as data:
            labels = tuple(str(l) for l in data["labels"])
            frontend = FrontendConfig.from_dict(json.loads(str(data["frontend"])))
            low, step = (float(v) for v in data["range"])
            splits = {}
            for name in (str(n) for n in data["splits"]):
                lengths = data[f"{name}/lengths"]
                values = (data[f"{name}/codes"].astype(np.float32) * np.float32(step) + np.float32(low))
                features = np.split(values, np.cumsum(lengths)[:-1])
                clips = [Clip(Path(str(n)), labels[t], str(r))
                         for n, t, r in zip(data[f"{name}/names"], data[f"{name}/targets"], data[f"{name}/recorders"])]
                splits[name] = Split(name, clips, features, data[f"{name}/targets"].astype(np.int64), labels,
                                     None, frontend)
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error, EdgemonError) as exc:
        # A pack half-copied to another machine is the likely case: a truncated zip.
        raise DataError(f"{path}: not a readable feature pack ({type(exc).__name__}: {exc})") from exc
    return splits
