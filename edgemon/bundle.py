"""Model bundles: a directory with ``manifest.json`` and the member ``.onnx`` files.

Training writes bundles with ``write_bundle``; the recorder opens them with ``load_bundle``, which
verifies every member's sha256 and the declared frontend before any model is run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgemon.errors import BundleError
from edgemon.frontend import FrontendConfig

FORMAT = "edgemon-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VOTING_RULES = ("majority",)


def default_bundle_path() -> Path:
    """The bundle shipped inside the package, so the daemon works offline out of the box."""
    return Path(__file__).parent / "models" / "default"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Member:
    file: str
    sha256: str
    devel_uar: float | None = None
    test_uar: float | None = None
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle. ``member_paths`` are absolute; ``thresholds`` map label -> min confidence."""

    path: Path
    bundle_id: str
    labels: tuple[str, ...]
    background_label: str
    frontend: FrontendConfig
    members: tuple[Member, ...]
    voting: str
    window_s: float
    hop_s: float
    thresholds: dict
    manifest: dict

    @property
    def member_paths(self) -> list[Path]:
        return [self.path / m.file for m in self.members]


def _fail(path: Path, why: str) -> BundleError:
    return BundleError(f"{path}: {why}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle directory; raise ``BundleError`` naming the broken file."""
    path = Path(path).resolve()
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise _fail(manifest_path, "no bundle manifest here")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(manifest_path, f"unreadable manifest: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise _fail(manifest_path, f"not an {FORMAT} v{FORMAT_VERSION} manifest")
    try:
        labels = tuple(manifest["labels"])
        frontend = FrontendConfig.from_dict(manifest["frontend"])
        members = tuple(Member(**m) for m in manifest["members"])
        voting = manifest.get("voting", "majority")
        bundle = Bundle(path=path, bundle_id=str(manifest["bundle_id"]), labels=labels,
                        background_label=manifest.get("background_label", "background"),
                        frontend=frontend, members=members, voting=voting,
                        window_s=float(manifest["window_s"]), hop_s=float(manifest["hop_s"]),
                        thresholds={k: float(v) for k, v in manifest.get("thresholds", {}).items()},
                        manifest=manifest)
    except BundleError as exc:
        raise _fail(manifest_path, str(exc)) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(manifest_path, f"malformed manifest ({type(exc).__name__}: {exc})") from exc
    if not labels or not members:
        raise _fail(manifest_path, "manifest lists no labels or no members")
    if voting not in VOTING_RULES:
        raise _fail(manifest_path, f"unknown voting rule {voting!r}")
    if not 0 < bundle.hop_s <= bundle.window_s:
        raise _fail(manifest_path, f"need 0 < hop_s <= window_s, got {bundle.hop_s}, {bundle.window_s}")
    unknown = set(bundle.thresholds) - set(labels)
    if unknown:
        raise _fail(manifest_path, f"thresholds for unknown labels {sorted(unknown)}")
    for member, member_path in zip(members, bundle.member_paths):
        if not member_path.is_file():
            raise _fail(member_path, "member model file is missing")
        if sha256_of(member_path) != member.sha256:
            raise _fail(member_path, "member model file does not match its sha256 in the manifest")
    return bundle


def write_bundle(out_dir: str | Path, member_files: list[Path], labels: list[str], *,
                 frontend: FrontendConfig, window_s: float, hop_s: float,
                 devel_uars: list[float | None] | None = None,
                 test_uars: list[float | None] | None = None,
                 thresholds: dict | None = None, background_label: str = "background",
                 precision: str = "fp32", extra: dict | None = None) -> Bundle:
    """Copy ``member_files`` into ``out_dir`` as member00.onnx… and write the manifest.

    The directory is assembled beside the target and renamed into place, so a reader never sees
    half a bundle. Returns the verified bundle.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    n = len(member_files)
    devel_uars = devel_uars or [None] * n
    test_uars = test_uars or [None] * n
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        members = []
        for i, src in enumerate(member_files):
            name = f"member{i:02d}.onnx"
            shutil.copyfile(src, staging / name)
            members.append(dataclasses.asdict(Member(
                file=name, sha256=sha256_of(staging / name), devel_uar=devel_uars[i],
                test_uar=test_uars[i], precision=precision)))
        digest = hashlib.sha256("".join(m["sha256"] for m in members).encode()).hexdigest()[:12]
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "bundle_id": f"{out_dir.name}-{digest}",
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "labels": list(labels), "background_label": background_label,
            "frontend": frontend.to_dict(), "members": members, "voting": "majority",
            "window_s": window_s, "hop_s": hop_s,
            "thresholds": thresholds or {label: 0.0 for label in labels},
            **(extra or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out_dir)
