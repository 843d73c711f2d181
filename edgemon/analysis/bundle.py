"""Model bundles: a directory with ``manifest.json``, the member ``.onnx`` files and, optionally,
reference windows for a self-check.

Training writes bundles with ``edgemon.analysis.bundle_write.write_bundle``; the recorder opens
them with ``load_bundle``, which checks the whole manifest (shape and types of every field it
reads, labels, thresholds, names, windows), confines every file it names to the bundle directory
(no ``..``, no absolute path, no symlink leading out) and verifies each file's sha256 before any
model is run.
``edgemon.analysis.ensemble.Ensemble`` then checks what only onnxruntime can see (input and output names,
input width, class count, one probe run) and runs the reference windows (``edgemon.analysis.selfcheck``).
Every refusal is a ``BundleError`` in one line naming the file.

Version policy of the manifest
------------------------------
``format`` is ``"edgemon-bundle"`` and ``format_version`` an integer, the *major* version.

- Fields this version does not know are accepted and ignored, at the top level and inside a
  member. Adding an optional field (names, ``confidence_max``, ``self_check``; later calibration,
  operating point, provenance) therefore never changes the version: an older recorder runs the
  bundle as it did before and a newer one uses the field.
- A change an older reader would misread (a field whose meaning changes, a field that must not be
  ignored) bumps ``format_version``; a manifest whose major version is newer than
  ``FORMAT_VERSION`` is refused in one line ("upgrade edgemon").
- A bundle may instead list the features it cannot be run without in ``requires``; a reader
  refuses one naming a feature outside ``KNOWN_REQUIREMENTS``. This lets one optional field become
  mandatory for one bundle without a new major version for all. Bundles with an event gate list
  ``event_gate`` (``bundle_write.with_requirements``): a reader that ignored the gate would store a flood.
- Bundles written before a field existed still load: each optional field has a default
  (``label_names`` empty, ``confidence_max`` 1.0, no self-check).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

from edgemon.analysis.bundle_identity import identity_mismatch
from edgemon.analysis.decisions import Calibration, OperatingPoint, check_point
from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import BundleError

FORMAT = "edgemon-bundle"
FORMAT_VERSION = 1            # the major version this edgemon reads (see the module docstring)
KNOWN_REQUIREMENTS: frozenset[str] = frozenset({"event_gate"})
MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = 4 << 20  # a real one is a few kB; nothing the recorder reads is that large
VOTING_RULES = ("majority",)
# Max |probability difference| allowed between this CPU and the bundle's expected member
# probabilities on its reference windows: above the int8 batch jitter seen across CPUs (~0.03),
# well below the breakage seen on a misbehaving int8 kernel (0.43).
SELF_CHECK_TOLERANCE = 0.1
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_bundle_path() -> Path:
    """The bundle shipped inside the package, so the daemon works offline out of the box."""
    return Path(__file__).parent.parent / "models" / "default"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_part(bundle: Bundle, key: str, what: str) -> Path | None:
    """The file that the manifest's ``key`` entry names (a site head, a site veto), checked
    against the entry's sha256; None when the manifest has no such entry. BundleError names the
    file when it is missing or altered."""
    entry = bundle.manifest.get(key)
    if entry is None:
        return None
    path = bundle.path / str(entry.get("file", ""))
    if not path.is_file():
        raise BundleError(f"{path}: {what} file is missing")
    if sha256_of(path) != entry.get("sha256"):
        raise BundleError(f"{path}: {what} file does not match its sha256 in the manifest")
    return path


@dataclasses.dataclass(frozen=True)
class Member:
    file: str
    sha256: str
    devel_uar: float | None = None
    test_uar: float | None = None
    precision: str = "fp32"


@dataclasses.dataclass(frozen=True)
class ReferenceWindow:
    """One reference window: ``samples`` of 16-bit audio in the reference file, cut from
    ``source`` at ``start_s``, whose true class is ``label``."""

    label: str
    source: str
    start_s: float
    samples: int


@dataclasses.dataclass(frozen=True)
class SelfCheckSpec:
    """The manifest's ``self_check``: reference audio (mono FLAC at the frontend's rate, the
    windows end to end) and each member's expected probabilities ``expected[m][w][c]`` on the
    windows run as one batch."""

    file: Path
    windows: tuple[ReferenceWindow, ...]
    expected: tuple[tuple[tuple[float, ...], ...], ...]
    tolerance: float = SELF_CHECK_TOLERANCE


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A verified bundle. ``member_paths`` are absolute; ``thresholds`` map label -> min confidence;
    ``label_names`` map a label to ``{"scientific": ..., "common": ...}`` (background has none);
    ``confidence_max`` is the highest confidence the ensemble can emit (1.0 when undeclared)."""

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
    format_version: int = FORMAT_VERSION
    label_names: dict = dataclasses.field(default_factory=dict)
    confidence_max: float = 1.0
    self_check: SelfCheckSpec | None = None

    @property
    def member_paths(self) -> list[Path]:
        return [self.path / m.file for m in self.members]

    def names_of(self, label: str) -> tuple[str, str]:
        """(scientific, common) name of ``label``; empty strings when the bundle has none."""
        names = self.label_names.get(label, {})
        return names.get("scientific", ""), names.get("common", "")


def _fail(path: Path, why: str) -> BundleError:
    return BundleError(f"{path}: {why}")


class _Reader:
    """Typed access to manifest fields; every failure names the manifest and the field."""

    def __init__(self, manifest_path: Path):
        self.path = manifest_path

    def fail(self, why: str) -> BundleError:
        return _fail(self.path, why)

    def string(self, value, what: str) -> str:
        if not isinstance(value, str) or not value or not value.isprintable():
            raise self.fail(f"{what} must be a non-empty printable string, not {value!r:.60}")
        return value

    def number(self, value, what: str, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(f"{what} must be a finite number, not {value!r:.60}")
        if value < low or value > high or (low_open and value == low):
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise self.fail(f"{what} = {value!r} is outside {bounds}")
        return float(value)

    def optional_number(self, value, what: str) -> float | None:
        return None if value is None else self.number(value, what)

    def mapping(self, value, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a JSON object, not {type(value).__name__}")
        return value

    def sequence(self, value, what: str) -> list:
        if not isinstance(value, list) or not value:
            raise self.fail(f"{what} must be a non-empty JSON list, not {value!r:.60}")
        return value

    def inside(self, bundle_dir: Path, name, what: str) -> Path:
        """``name`` as a regular file inside ``bundle_dir``: relative, no ``..``, and still inside
        once symlinks are followed, so a manifest cannot make the recorder read other files."""
        name = self.string(name, what)
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or "\\" in name:
            raise self.fail(f"{what} {name!r} is not a path inside the bundle directory")
        path = bundle_dir / relative
        if not path.resolve().is_relative_to(bundle_dir):
            raise _fail(path, f"{what} leads out of the bundle directory (symlink)")
        if not path.is_file():
            raise _fail(path, f"{what} is missing (or not a regular file)")
        return path


def read_manifest(manifest_path: Path) -> dict:
    if not manifest_path.parent.is_dir():
        directory = manifest_path.parent
        aside = directory.with_name(f".{directory.name}.old")
        raise _fail(directory, "a file, not a bundle directory" if directory.exists() else
                    f"no such bundle directory (a bundle write cut short left the previous one at {aside}: "
                    f"rename it back)" if aside.is_dir() else "no such bundle directory")
    if not manifest_path.is_file():
        raise _fail(manifest_path, "no bundle manifest here")
    if manifest_path.stat().st_size > MANIFEST_MAX_BYTES:
        raise _fail(manifest_path, f"manifest is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(manifest_path, f"unreadable manifest: {str(exc).splitlines()[0]}") from exc
    if not isinstance(manifest, dict):
        raise _fail(manifest_path, f"manifest must be a JSON object, not {type(manifest).__name__}")
    return manifest


def _check_version(r: _Reader, manifest: dict) -> int:
    version = manifest.get("format_version")
    if manifest.get("format") != FORMAT or isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise r.fail(f"not an {FORMAT} manifest (format {manifest.get('format')!r:.40}, "
                     f"format_version {version!r:.20})")
    if version > FORMAT_VERSION:
        raise r.fail(f"bundle format {version} is newer than this edgemon reads ({FORMAT_VERSION}); upgrade edgemon")
    requires = manifest.get("requires", [])
    if not isinstance(requires, list) or not all(isinstance(x, str) for x in requires):
        raise r.fail("requires must be a list of feature names")
    unknown = sorted(set(requires) - KNOWN_REQUIREMENTS)
    if unknown:
        raise r.fail(f"bundle requires {unknown}, which this edgemon does not implement; upgrade edgemon")
    return version


def _labels(r: _Reader, manifest: dict) -> tuple[tuple[str, ...], str]:
    labels = tuple(r.string(x, "each label") for x in r.sequence(manifest.get("labels"), "labels"))
    if len(set(labels)) != len(labels):
        raise r.fail(f"labels repeat: {list(labels)}")
    background = r.string(manifest.get("background_label", "background"), "background_label")
    if background not in labels:
        raise r.fail(f"background_label {background!r} is not one of the labels {list(labels)}")
    return labels, background


def _frontend(r: _Reader, manifest: dict) -> FrontendConfig:
    try:
        frontend = FrontendConfig.from_dict(r.mapping(manifest.get("frontend"), "frontend"))
    except BundleError as exc:
        raise r.fail(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise r.fail(f"malformed frontend ({type(exc).__name__}: {exc})") from exc
    # Each parameter has its default's type; sizes and rates are positive.
    for field in dataclasses.fields(frontend):
        value, default = getattr(frontend, field.name), getattr(FrontendConfig, field.name)
        what = f"frontend.{field.name}"
        if isinstance(default, str):
            r.string(value, what)
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise r.fail(f"{what} must be a positive integer, not {value!r:.40}")
        elif isinstance(default, float):
            r.number(value, what)
    return frontend


def _members(r: _Reader, bundle_dir: Path, manifest: dict) -> tuple[Member, ...]:
    members = []
    for i, entry in enumerate(r.sequence(manifest.get("members"), "members")):
        what = f"members[{i}]"
        entry = r.mapping(entry, what)
        path = r.inside(bundle_dir, entry.get("file"), f"{what}.file")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise r.fail(f"{what}.sha256 must be 64 lower-case hex digits")
        # Unknown member fields are ignored by design (version policy); known ones are typed.
        members.append(Member(file=entry["file"], sha256=sha,
                              devel_uar=r.optional_number(entry.get("devel_uar"), f"{what}.devel_uar"),
                              test_uar=r.optional_number(entry.get("test_uar"), f"{what}.test_uar"),
                              precision=r.string(entry.get("precision", "fp32"), f"{what}.precision")))
        if sha256_of(path) != sha:
            raise _fail(path, "member model file does not match its sha256 in the manifest")
    return tuple(members)


def _label_names(r: _Reader, manifest: dict, labels: tuple[str, ...]) -> dict:
    names = r.mapping(manifest.get("label_names", {}), "label_names")
    for label, entry in names.items():
        if label not in labels:
            raise r.fail(f"label_names has {label!r:.60}, which is not one of the labels")
        entry = r.mapping(entry, f"label_names[{label!r}]")
        for key in ("scientific", "common"):
            r.string(entry.get(key), f"label_names[{label!r}].{key}")
        for key, value in entry.items():
            r.string(value, f"label_names[{label!r}].{key}")
    return {label: dict(entry) for label, entry in names.items()}


def _thresholds(r: _Reader, manifest: dict, labels: tuple[str, ...], confidence_max: float) -> dict:
    thresholds = r.mapping(manifest.get("thresholds", {}), "thresholds")
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise r.fail(f"thresholds for unknown labels {unknown}")
    # Thresholds apply to the raw vote confidence, before any calibration, so [0, 1]: a threshold
    # above what a class can reach is a class switched off, not a malformed bundle.
    thresholds = {k: r.number(v, f"thresholds[{k!r}]", 0.0, 1.0) for k, v in thresholds.items()}
    # A point's own thresholds are the ones the recorder applies; training writes both alike, so
    # two that differ are a hand edit of the one that does nothing (a newcomer trial).
    point = manifest.get("operating_point")
    in_force = point.get("thresholds") if isinstance(point, dict) else None
    for label, value in (in_force.items() if isinstance(in_force, dict) else ()):
        if label in thresholds and isinstance(value, (int, float)) and value != thresholds[label]:
            raise r.fail(f"thresholds[{label!r}] is {thresholds[label]:g} but operating_point.thresholds[{label!r}], "
                         f"which the recorder applies, is {value:g}: edit operating_point.thresholds (and keep the "
                         f"two alike)")
    return thresholds


def _self_check(r: _Reader, bundle_dir: Path, manifest: dict, labels: tuple[str, ...],
                n_members: int) -> SelfCheckSpec | None:
    spec = manifest.get("self_check")
    if spec is None:
        return None
    spec = r.mapping(spec, "self_check")
    path = r.inside(bundle_dir, spec.get("file"), "self_check.file")
    sha = spec.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha) or sha256_of(path) != sha:
        raise _fail(path, "reference windows do not match their sha256 in the manifest")
    windows = []
    for i, w in enumerate(r.sequence(spec.get("windows"), "self_check.windows")):
        w = r.mapping(w, f"self_check.windows[{i}]")
        label = r.string(w.get("label"), f"self_check.windows[{i}].label")
        if label not in labels:
            raise r.fail(f"self_check.windows[{i}].label {label!r} is not one of the labels")
        samples = w.get("samples")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise r.fail(f"self_check.windows[{i}].samples must be a positive integer")
        windows.append(ReferenceWindow(label, str(w.get("source", "")),
                                       r.number(w.get("start_s", 0.0), f"self_check.windows[{i}].start_s"), samples))
    if len({w.samples for w in windows}) != 1:
        raise r.fail("self_check.windows must all have the same length (they run as one batch)")
    expected = r.sequence(spec.get("expected"), "self_check.expected")
    shape_ok = (len(expected) == n_members
                and all(isinstance(m, list) and len(m) == len(windows) for m in expected)
                and all(isinstance(row, list) and len(row) == len(labels) for m in expected for row in m))
    if not shape_ok:
        raise r.fail(f"self_check.expected must be [members={n_members}][windows={len(windows)}]"
                     f"[labels={len(labels)}] probabilities")
    expected = tuple(tuple(tuple(r.number(p, "self_check.expected", 0.0, 1.0) for p in row) for row in m)
                     for m in expected)
    tolerance = r.number(spec.get("tolerance", SELF_CHECK_TOLERANCE), "self_check.tolerance", 0.0, 1.0, low_open=True)
    return SelfCheckSpec(path, tuple(windows), expected, tolerance)


def _check_adapted(r: _Reader, manifest: dict) -> None:
    """``adapted`` (where an adapted bundle came from) is not in the bundle id, so an edit loads:
    ``info`` and ``adapt`` read its parts as objects (a review: a hand-written note there was a
    40-line traceback in both)."""
    if manifest.get("adapted") is None:
        return
    adapted = r.mapping(manifest["adapted"], "adapted")
    for part in ("reviews", "calibration"):
        if adapted.get(part) is not None:
            r.mapping(adapted[part], f"adapted.{part}")


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle directory; raise ``BundleError`` naming the broken file."""
    path = Path(path).resolve()
    manifest_path = path / MANIFEST
    manifest = read_manifest(manifest_path)
    r = _Reader(manifest_path)
    version = _check_version(r, manifest)
    labels, background = _labels(r, manifest)
    frontend = _frontend(r, manifest)
    voting = manifest.get("voting", "majority")
    if voting not in VOTING_RULES:
        raise r.fail(f"unknown voting rule {voting!r:.40}")
    window_s = r.number(manifest.get("window_s"), "window_s", 0.0, 3600.0, low_open=True)
    hop_s = r.number(manifest.get("hop_s"), "hop_s", 0.0, window_s, low_open=True)
    confidence_max = r.number(manifest.get("confidence_max", 1.0), "confidence_max", 0.0, 1.0, low_open=True)
    members = _members(r, path, manifest)
    thresholds = _thresholds(r, manifest, labels, confidence_max)
    try:   # what the recorder decides with, checked here too, so `edgemon info` refuses what `watch` would
        check_point(OperatingPoint.from_manifest(manifest, thresholds), Calibration.from_manifest(manifest), labels)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise r.fail(f"malformed operating point or calibration ({type(exc).__name__}: {exc})") from None
    bundle_id = r.string(manifest.get("bundle_id"), "bundle_id")
    _check_adapted(r, manifest)
    if (edited := identity_mismatch(manifest)) is not None:
        raise r.fail(edited)
    return Bundle(path=path, bundle_id=bundle_id, labels=labels,
                  background_label=background, frontend=frontend, members=members, voting=voting,
                  window_s=window_s, hop_s=hop_s,
                  thresholds=thresholds, manifest=manifest,
                  format_version=version, label_names=_label_names(r, manifest, labels),
                  confidence_max=confidence_max,
                  self_check=_self_check(r, path, manifest, labels, len(members)))
