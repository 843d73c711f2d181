"""A bundle's id, and what it is a digest of: its members and everything that decides the rows a
recorder stores with them. Detections are keyed by bundle id (``reanalyse`` replaces a bundle's
own detections by id), so two bundles that decide differently must never share one: a copy of a
bundle with its thresholds edited by hand kept the id, and ``reanalyse`` with it deleted reviewed
detections of the original (a newcomer trial). A bundle whose manifest says its id is such a
digest (``ID_FROM``) is checked against it when it is read."""

from __future__ import annotations

import hashlib
import json

# What decides the rows a recorder stores with a bundle's members, beyond the members themselves.
DECISION_KEYS = ("labels", "background_label", "frontend", "window_s", "hop_s", "voting", "thresholds",
                 "operating_point", "calibration", "calibration_input", "site_head", "site_veto")
POINT_PROVENANCE = ("expected", "target_false_per_hour", "rules", "from_bundle")   # said of a point, not part of it
ID_FROM = "members+decisions"   # the manifest's ``id_from``: its id is ``identity_digest``'s


def decision_identity(manifest: dict) -> str:
    """Canonical text of what decides a bundle's detections (``DECISION_KEYS``), for its id: two
    bundles of the same members with other windows, thresholds, point or calibration store other
    rows, and detections are keyed by bundle id, so they must never share one (a review found a
    rewindowed bundle keeping its parent's id)."""
    decided = {key: manifest[key] for key in DECISION_KEYS if manifest.get(key) is not None}
    if isinstance(decided.get("operating_point"), dict):
        decided["operating_point"] = {k: v for k, v in decided["operating_point"].items() if k not in POINT_PROVENANCE}
    return json.dumps(decided, sort_keys=True)


def identity_digest(manifest: dict) -> str:
    """The 12 hex digits a bundle's id ends with: its members' digests and its decisions."""
    members = "".join(str(m.get("sha256")) for m in manifest.get("members") or [] if isinstance(m, dict))
    return hashlib.sha256((members + decision_identity(manifest)).encode()).hexdigest()[:12]


def with_identity(manifest: dict, name: str) -> dict:
    """``manifest`` with its id made from ``name`` (the bundle directory's) and its digest."""
    return {**manifest, "bundle_id": f"{name}-{identity_digest(manifest)}", "id_from": ID_FROM}


def identity_mismatch(manifest: dict) -> str | None:
    """Why a bundle's id does not name what it decides (its manifest edited since it was made),
    in a line that says how to use it as a bundle of its own; None when it does, or when its id
    is not such a digest (a bundle made before ids were checked)."""
    bundle_id = manifest.get("bundle_id")
    if manifest.get("id_from") != ID_FROM or not isinstance(bundle_id, str):
        return None
    digest = identity_digest(manifest)
    if bundle_id.endswith("-" + digest):
        return None
    name, _, suffix = bundle_id.rpartition("-")
    if not (name and len(suffix) == 12 and all(c in "0123456789abcdef" for c in suffix)):
        name, why = bundle_id, f"bundle_id {bundle_id!r} does not end in the digest of what it decides"
    else:
        why = (f"its decisions (thresholds, operating point, calibration, windows...) differ from those bundle_id "
               f"{bundle_id!r} was made with: it was edited since")
    return (f"{why}. Detections are stored under the bundle id, so an edited bundle needs its own: set "
            f"\"bundle_id\" to \"{name.removesuffix('-edited')}-edited-{digest}\" (or make it with "
            f"`edgemon-train rebundle`)")
