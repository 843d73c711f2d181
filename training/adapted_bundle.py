"""The bundle ``edgemon-train adapt`` writes: the parent's members, the candidate's operating point
and site corrections (which of the parent's head and veto it keeps: ``written_corrections``),
what the parent tells the recorder beyond them (species names, reference windows, calibration:
``CARRIED``; or a calibration fitted to the site), and the adaptation's provenance, assembled
beside the target and renamed into place."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from edgemon.analysis.bundle import MANIFEST, Bundle, load_bundle
from edgemon.analysis.bundle_identity import with_identity
from edgemon.analysis.bundle_write import (as_out_error, check_replaceable, staging_beside, swap_into_place,
                                           with_requirements, write_bundle)
from edgemon.analysis.decisions import OperatingPoint
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.site_head import SiteHead, load_site_head, write_site_head
from edgemon.analysis.site_veto import SiteVeto, load_site_veto, write_site_veto
from edgemon.errors import BundleError
from training.bundling import softmax_confidence_max, stored_confidence_max

Correction = SiteHead | SiteVeto | None   # what a candidate adds to its parent's members
# What the parent's manifest tells the recorder beyond members and decisions; the same members
# keep the same names, reference windows (checked on the raw members) and, unless the site's
# reviews refit it, calibration.
CALIBRATION_KEYS = ("calibration", "calibration_input", "calibration_fits")
CARRIED = ("label_names", *CALIBRATION_KEYS)


def parent_point(bundle: Bundle) -> OperatingPoint:
    """The parent's operating point: its manifest's, else its thresholds with single-window events."""
    return OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds)


def written_corrections(parent: Bundle, correction: Correction) -> tuple[SiteHead | None, SiteVeto | None]:
    """The site head and veto a candidate's bundle holds: a new head replaces the parent's head
    and veto (it is fitted on the raw members); a new veto replaces the parent's veto and keeps its
    head; thresholds alone keep both (they were fitted on what both make of the members)."""
    if isinstance(correction, SiteHead):
        return correction, None
    if isinstance(correction, SiteVeto):
        return load_site_head(parent), correction
    return load_site_head(parent), load_site_veto(parent)


def evidence_rules(point: OperatingPoint) -> dict:
    """The rules of ``point`` that hold some class, as the manifest's ``operating_point`` writes them
    (an event gate with its levels)."""
    rules = {"min_windows": {label: int(k) for label, k in point.min_windows.items() if int(k) > 1},
             "min_evidence": {label: float(e) for label, e in point.min_evidence.items() if e > 0},
             "open_threshold": {label: float(t) for label, t in point.open_threshold.items() if t > 0}}
    if point.gate is not None:
        rules.update(min_gate={label: float(v) for label, v in point.min_gate.items()},
                     event_gate=point.gate.to_manifest())
    return {key: values for key, values in rules.items() if values}


def point_manifest(point: OperatingPoint) -> dict | None:
    """The manifest's ``operating_point`` for ``point``: None when it holds no evidence rule (plain
    ``thresholds`` say all of it)."""
    rules = evidence_rules(point)
    return {"thresholds": dict(point.thresholds), **rules} if rules else None


def write_adapted(parent: Bundle, correction: Correction, out: Path, provenance: dict,
                   point: OperatingPoint | None = None, calibration: dict | None = None) -> Bundle:
    """Parent's members (+ the site head and veto ``written_corrections`` keeps) + a manifest
    naming them with the operating ``point`` (default: the parent's; written as ``operating_point``
    when it holds an evidence rule — more than one window, a summed confidence or an opening level
    for some class — else as plain ``thresholds``), the parent's ``CARRIED`` entries and reference
    windows, ``calibration`` (the manifest's three calibration entries) in place of the parent's
    when given, and ``confidence_max`` for what it now stores; assembled beside ``out`` and renamed
    into place, so a reader never sees a bundle without its head."""
    point = point or parent_point(parent)
    head, veto = written_corrections(parent, correction)
    out = out.resolve()
    check_replaceable(out, [parent.path, *parent.member_paths], adapted_ok=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_beside(out, "adapt.")
    except OSError as e:   # a read-only card, a file in the way: named as --out, not as the staging name
        raise BundleError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    try:
        inner = staging / "bundle"
        members = [dataclasses.asdict(m) for m in parent.members]
        write_bundle(inner, parent.member_paths, list(parent.labels), frontend=parent.frontend,
                     window_s=parent.window_s, hop_s=parent.hop_s,
                     devel_uars=[m["devel_uar"] for m in members], test_uars=[m["test_uar"] for m in members],
                     thresholds=point.thresholds, background_label=parent.background_label,
                     precision=members[0]["precision"], named_as=out)
        manifest = json.loads((inner / MANIFEST).read_text())
        rules = evidence_rules(point)
        if rules:
            manifest["operating_point"] = point_manifest(point)
        manifest.update(carried(parent, inner, calibration))
        # A site head reweighs the members' log-probabilities, so the softmax bound no longer holds.
        ceiling = stored_confidence_max(manifest, softmax_confidence_max(parent.member_paths) if head is None else 1.0,
                                        parent.labels)
        if ceiling is not None:
            manifest["confidence_max"] = round(ceiling, 6)
        if head is not None:
            manifest["site_head"] = write_site_head(head, inner)
        if veto is not None:
            manifest["site_veto"] = write_site_veto(veto, inner)
        manifest = {**with_identity(with_requirements(manifest), out.name), "adapted": provenance}
        for key in ("source_runs", "trained_on"):
            if key in parent.manifest:
                manifest[key] = parent.manifest[key]
        (inner / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        Ensemble(load_bundle(inner))   # the recorder can open it, head included
        swap_into_place(inner, out)
    except OSError as e:
        raise as_out_error(e, out, staging, out) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out)


def carried(parent: Bundle, inner: Path, calibration: dict | None) -> dict:
    """The manifest entries the adapted bundle keeps of its parent (``CARRIED``, ``calibration``'s
    in place of the parent's calibration when given) and the parent's self-check, its reference
    audio copied into ``inner``."""
    entries = {key: parent.manifest[key] for key in CARRIED if key in parent.manifest}
    if calibration is not None:
        entries = {k: v for k, v in entries.items() if k not in CALIBRATION_KEYS} | calibration
    spec = parent.manifest.get("self_check")
    if spec is not None:
        shutil.copy2(parent.path / spec["file"], inner / spec["file"])
        entries["self_check"] = spec
    return entries
