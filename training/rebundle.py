"""``edgemon-train rebundle``: a bundle's members with another operating point and calibration.

A bundle holds int8 members, not the runs they came from; a point and calibration measured again
(``cv-ensemble --at-point BUNDLE`` on a wider measure, or a point chosen for another target) can
still be given to the same members. The new bundle keeps the parent's members, names, training
provenance and reference windows; its operating point, calibration and what grouped CV expects
come from the cv-ensemble result; its id differs from the parent's, since what it stores does.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

from edgemon.analysis.bundle import Bundle, load_bundle
from edgemon.analysis.bundle_write import replace_manifest, write_bundle
from edgemon.analysis.decisions import OperatingPoint
from edgemon.errors import BundleError
from training.bundling import complete_bundle, read_thresholds_file
from training.errors import DataError

log = logging.getLogger(__name__)

KEPT = ("source_runs", "trained_on", "label_names")   # what the members are, not how they decide


def _member_kinds(parent: Bundle, result: dict, path: Path) -> list[str]:
    """The cv-ensemble's member frontends, when the parent's stream can feed them."""
    kinds = result.get("frontend_kinds") or []
    if len(kinds) != len(parent.members):
        raise DataError(f"{path}: measured {len(kinds)} member(s), the bundle has {len(parent.members)}")
    expected = {"logmel", "pcen"} if parent.frontend.kind == "logmel_pcen" else {parent.frontend.kind}
    if set(kinds) != expected:
        raise DataError(f"{path}: measured members on {kinds}; the bundle streams {parent.frontend.kind}")
    return kinds


def rebundle(parent_dir: Path, thresholds_from: Path, out: Path) -> dict:
    """Write ``out``: ``parent_dir``'s members with the operating point and calibration of the
    cv-ensemble result ``thresholds_from``."""
    try:
        parent = load_bundle(parent_dir)
    except BundleError as exc:
        raise DataError(str(exc)) from exc
    corrections = [key for key in ("site_head", "site_veto") if parent.manifest.get(key)]
    if corrections:   # fitted on what the parent's point made of a site's reviews; not carried here
        raise DataError(f"{parent_dir}: has site corrections ({', '.join(corrections)}): rebundle the bundle it "
                        f"was adapted from ({(parent.manifest.get('adapted') or {}).get('parent_bundle', 'its parent')})")
    try:
        result = json.loads(Path(thresholds_from).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{thresholds_from}: not a readable cv-ensemble result ({type(exc).__name__}: {exc})") from exc
    if not isinstance(result, dict) or not result.get("frontend_kinds") or not result.get("members"):
        raise DataError(f"{thresholds_from}: not a cv-ensemble result (no members measured)")
    if not result.get("field"):
        raise DataError(f"{thresholds_from}: a cv-ensemble result with no field operating point")
    # The recipes measured must be those the members were chosen with (a newcomer gave the default
    # the point of an h = 192 search trial); a bundle that records none cannot be checked.
    chosen_with = [Path(m).name for m in ((parent.manifest.get("thresholds_from") or {}).get("members") or [])]
    measured = [Path(m).name for m in result["members"]]
    if chosen_with and sorted(chosen_with) != sorted(measured):
        raise DataError(f"{thresholds_from}: measured recipes {', '.join(measured)}; the bundle's members were "
                        f"chosen with {', '.join(chosen_with)}")
    measured_at = result["field"].get("operating_point", {}).get("from_bundle")
    if measured_at and measured_at != parent.bundle_id:
        raise DataError(f"{thresholds_from}: measured at the point of bundle {measured_at}, not of {parent.bundle_id}")
    kinds = _member_kinds(parent, result, thresholds_from)
    thresholds, provenance = read_thresholds_file(thresholds_from, list(parent.labels), (parent.window_s, parent.hop_s), kinds)
    bundle = write_bundle(
        out, parent.member_paths, list(parent.labels), frontend=parent.frontend, window_s=parent.window_s,
        hop_s=parent.hop_s, devel_uars=[m.devel_uar for m in parent.members],
        test_uars=[m.test_uar for m in parent.members], thresholds=thresholds,
        background_label=parent.background_label, precision=parent.members[0].precision,
        extra={**{k: parent.manifest[k] for k in KEPT if k in parent.manifest}, **provenance,
               "rebundled_from": parent.bundle_id}, finish=functools.partial(_complete, parent))
    off = OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds).never_stored(
        [label for label in bundle.labels if label != bundle.background_label])
    if off:
        log.warning("%s never stores %s: its point sets a level no vote or gate probability reaches",
                    bundle.bundle_id, ", ".join(off))
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "parent": parent.bundle_id,
            "members": len(bundle.members), "calibration_input": bundle.manifest.get("calibration_input"),
            "confidence_max": bundle.manifest.get("confidence_max"), "never_stored": off}


def _complete(parent: Bundle, staged: Path) -> None:
    """The assembled bundle, before it replaces anything: the parent's reference windows and
    expectations (the same members: they hold), then names and the confidence ceiling."""
    spec = parent.manifest.get("self_check")
    if spec is not None:
        shutil.copy2(parent.path / spec["file"], staged / spec["file"])
        replace_manifest(staged, {"self_check": spec})
    complete_bundle(staged)
