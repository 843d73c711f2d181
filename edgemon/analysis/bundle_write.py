"""Writing model bundles (training's side; the recorder only reads them, ``edgemon.analysis.bundle``):
a new bundle assembled beside its directory and renamed into place, a manifest changed in place,
the bundle id from its members and from everything that decides what a recorder stores."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import errno
import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgemon.analysis.bundle import (FORMAT, FORMAT_VERSION, MANIFEST, Bundle, Member, load_bundle, read_manifest,
                                     sha256_of)
from edgemon.analysis.bundle_identity import with_identity
from edgemon.analysis.ensemble import open_members
from edgemon.analysis.frontend import FrontendConfig
from edgemon.durable import fsync_dir
from edgemon.errors import BundleError
from edgemon.signals import process_alive

log = logging.getLogger(__name__)


def _refuse(path: Path, why: str) -> BundleError:
    return BundleError(f"{path}: {why}")


def _check_staged(staging: Path, member_files: list[Path]) -> None:
    """Every staged member loads and declares what the manifest does, before the swap: a member
    cut short, or of other labels (a fold model of another cv run), replaced a good bundle with
    one the recorder refuses (a newcomer trial, then a review). The error names the source file."""
    try:
        open_members(load_bundle(staging))
    except BundleError as exc:
        message = str(exc)
        for i, src in enumerate(member_files):
            message = message.replace(str(staging / f"member{i:02d}.onnx"), str(src))
        raise BundleError(message) from None


def replace_manifest(bundle_dir: str | Path, changes: dict) -> Bundle:
    """Merge ``changes`` into a bundle's manifest (atomically: a temp file renamed over it) and
    return the bundle verified again. Member files are never touched, so the bundle id stays."""
    bundle_dir = Path(bundle_dir).resolve()
    manifest = with_requirements({**read_manifest(bundle_dir / MANIFEST), **changes})
    tmp = bundle_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, bundle_dir / MANIFEST)
    return load_bundle(bundle_dir)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(out_dir: str | Path, inputs=(), adapted_ok: bool = False) -> None:
    """A bundle is written at ``out_dir`` only where there is nothing (or an empty directory), or
    an edgemon bundle that none of ``inputs`` (the files it is made from) lies in: a bundle
    replaces its directory whole, and replacing anything else (a training run, a file, the
    working directory, the parent bundle) would delete it. A bundle adapted to a site is replaced
    only by another adaptation (``adapted_ok``): a typo in a ``bundle --out`` replaced a site's
    adapted bundle with a toy, without a word (a newcomer trial). BundleError naming it otherwise."""
    out_dir = Path(out_dir).resolve()
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise _refuse(out_dir, "exists and is not a directory; a bundle would replace it: choose another --out")
    if not any(out_dir.iterdir()):
        return
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        is_bundle = manifest.get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        manifest, is_bundle = {}, False
    if is_bundle and manifest.get("adapted") and not adapted_ok:
        raise _refuse(out_dir, "holds a bundle adapted to a site (edgemon-train adapt); this bundle would replace "
                             "it: choose another --out, or move it aside first")
    if not is_bundle:
        raise _refuse(out_dir, "exists and is not an edgemon bundle; a bundle replaces its directory whole, "
                             "so this would delete what is there: choose another --out or move it aside")
    if any(Path(p).resolve().is_relative_to(out_dir) for p in inputs):
        raise _refuse(out_dir, "holds the files this bundle is made from: choose another --out")




def with_requirements(manifest: dict) -> dict:
    """``manifest`` with ``requires`` naming what it cannot be run without: an operating point with
    an event gate (an edgemon that ignored the gate would store every run over its low base
    threshold, a flood of false events, so an older one must refuse the bundle instead)."""
    needed = set(manifest.get("requires") or [])
    if isinstance(manifest.get("operating_point"), dict) and manifest["operating_point"].get("event_gate"):
        needed.add("event_gate")
    return {**manifest, "requires": sorted(needed)} if needed else manifest




def write_bundle(out_dir: str | Path, member_files: list[Path], labels: list[str], *,
                 frontend: FrontendConfig, window_s: float, hop_s: float,
                 devel_uars: list[float | None] | None = None,
                 test_uars: list[float | None] | None = None,
                 thresholds: dict | None = None, background_label: str = "background",
                 precision: str = "fp32", label_names: dict | None = None,
                 confidence_max: float | None = None, extra: dict | None = None,
                 finish: Callable[[Path], object] | None = None, named_as: Path | None = None) -> Bundle:
    """Copy ``member_files`` into ``out_dir`` as member00.onnx… and write the manifest; an earlier
    bundle there is replaced, anything else refused (``check_replaceable``).

    The directory is assembled beside the target and renamed into place, so a reader never sees
    half a bundle. Returns the verified bundle. ``finish`` completes the assembled directory before
    it replaces anything (``training.bundling.complete_bundle``: reference windows for the self-check,
    which need the members run, names, the confidence ceiling): done after the swap, a Ctrl-C or a
    failure there left a bundle with no self-check where a whole one had been (a review). The id is
    the directory's name and a digest of the members and of everything that decides what the
    recorder stores with them (``decision_identity``). ``named_as``: the ``--out`` its errors name
    (``write_adapted``'s, which assembles this bundle inside its own staging directory).
    """
    out_dir = Path(out_dir).resolve()
    check_replaceable(out_dir, member_files)
    never = sorted(label for label, value in (thresholds or {}).items()
                   if label != background_label and isinstance(value, (int, float)) and value >= 1.0)
    if never:   # a class grouped CV could not hold to its budget: printed as 1.0, and watch said nothing (a trial)
        log.warning("%s: %s will never be detected (threshold 1.0, above any confidence the members give: no "
                    "threshold held its false alarms within the budget on the held-out audio); more training clips "
                    "of it, or a looser budget, may help", out_dir, ", ".join(never))
    n = len(member_files)
    devel_uars = devel_uars or [None] * n
    test_uars = test_uars or [None] * n
    shown = named_as or out_dir
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_beside(out_dir)
        os.chmod(staging, 0o777 & ~_umask())   # mkdtemp's 0700 would hide the bundle from the service's user
    except OSError as e:   # a read-only card, a file in the way: named as --out, not as the staging name
        raise BundleError(f"--out {shown}: cannot write there ({e.strerror or e})") from None
    try:
        members = []
        for i, src in enumerate(member_files):
            name = f"member{i:02d}.onnx"
            shutil.copyfile(src, staging / name)
            members.append(dataclasses.asdict(Member(
                file=name, sha256=sha256_of(staging / name), devel_uar=devel_uars[i],
                test_uar=test_uars[i], precision=precision)))
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "bundle_id": None,   # below, from what the manifest decides
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "labels": list(labels), "background_label": background_label,
            "frontend": frontend.to_dict(), "members": members, "voting": "majority",
            "window_s": window_s, "hop_s": hop_s,
            "thresholds": thresholds or {label: 0.0 for label in labels},
            **({"label_names": label_names} if label_names else {}),
            **({"confidence_max": confidence_max} if confidence_max is not None else {}),
            **(extra or {}),
        }
        manifest = with_identity(with_requirements(manifest), out_dir.name)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _check_staged(staging, member_files)
        if finish is not None:
            finish(staging)
        swap_into_place(staging, out_dir)
    except OSError as e:
        raise as_out_error(e, shown, staging, out_dir) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out_dir)


def as_out_error(e: OSError, out: Path, staging: Path, target: Path) -> Exception:
    """What to raise for ``e``, met while a bundle was assembled in ``staging`` and swapped into
    ``target``: one line naming ``out`` (its ``--out``), as for a staging directory that cannot be
    made; a full disk while the members were copied gave a raw errno naming the hidden staging path
    (a review). An error that names another file (a member to copy that is not there) stays."""
    named = e.filename2 if e.filename2 is not None else e.filename
    if isinstance(named, (str, bytes)):
        where = Path(os.fsdecode(named))
        if not any(where.is_relative_to(p) for p in (staging, target, target.with_name(f".{target.name}.old"))):
            return e
    return BundleError(f"--out {out}: cannot write there ({e.strerror or e})")


def staging_beside(out: Path, kind: str = "") -> Path:
    """A new directory beside ``out`` to assemble a bundle in (``.NAME.[KIND.]PID.XXXXXXXX``), after
    those of writers to ``out`` that are gone are removed (``sweep_dead_staging``)."""
    sweep_dead_staging(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}{os.getpid()}.", dir=out.parent))


def sweep_dead_staging(out: Path) -> None:
    """Remove the staging directories of writes to ``out`` that were killed before they could
    (``kill -9``, a power cut): those whose writer's process (the pid in the name) is gone. Cleaned
    only in ``finally:``, a killed ``adapt`` left its 4-5 MB beside ``--out`` for good (a review).
    A staging directory of no pid (an older edgemon's) is left: nothing says its writer is gone."""
    named = re.compile(rf"\.{re.escape(out.name)}\.(?:adapt\.)?(\d+)\.[a-z0-9_]{{8}}")   # as staging_beside names
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            found = named.fullmatch(entry.name)
            with contextlib.suppress(OSError):
                if (found is not None and entry.is_dir(follow_symlinks=False)
                        and not process_alive(int(found[1]))):
                    shutil.rmtree(entry.path, ignore_errors=True)


def swap_into_place(new: Path, out: Path) -> None:
    """Put the assembled directory ``new`` at ``out``, its files on the disk first (fsync), so that
    whenever the process dies (a kill, a power cut) ``out`` holds the whole old bundle or the whole
    new one. An earlier ``out`` is exchanged with ``new`` in one step where the kernel can
    (``renameat2`` RENAME_EXCHANGE; ``new`` then holds the old bundle, and is removed);
    elsewhere it is moved aside (``.NAME.old``, beside it) and put back if the rename fails, and a
    write cut short between the two renames is mended by the next write (a review: a kill there
    left no bundle at ``out``, the old one hidden)."""
    _sync_tree(new)
    old = out.with_name(f".{out.name}.old")
    if not out.exists() and old.is_dir():     # a write cut short between the renames below
        os.replace(old, out)
    if not out.exists():
        os.replace(new, out)
    elif _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)     # the old bundle now
    else:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux ``renameat2`` with RENAME_EXCHANGE); False
    where the C library or the file system cannot (then nothing was changed)."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    at_cwd, exchange = -100, 2          # AT_FDCWD, RENAME_EXCHANGE
    if rename(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):   # an old kernel; FAT and others
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _sync_tree(directory: Path) -> None:
    """fsync every file under ``directory`` and the directories themselves: renamed into place
    before its data reached the card, a bundle could hold empty members after a power cut."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))
