"""``edgemon info --format text``: a bundle's description (``ensemble.describe_bundle``) as the
few lines a person reads first; ``--format json`` keeps everything."""

from __future__ import annotations

from edgemon.analysis.decisions import OperatingPoint


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _level(value: float) -> str:
    """An event gate level: above 1 no probability reaches it (the class is never stored)."""
    return "never" if value > 1.0 else f"{value:.4f}"


def format_description(d: dict) -> str:
    names = d.get("label_names") or {}
    calls = [label for label in d["labels"] if label != d["background_label"]]
    lines = [f"bundle {d['bundle_id']} at {d['path']}",
             f"  {len(d['members'])} member(s); windows of {d['window_s']:g} s every {d['hop_s']:g} s; "
             f"frontend {d['frontend'].get('kind', 'logmel')}",
             f"  self-check on this CPU: {d['self_check']['summary']}",
             f"  confidence: {d['confidence']}"]
    point = (d.get("provenance") or {}).get("operating_point") or {}
    # As the recorder reads it (numbers as numbers; the bundle was checked when it was read).
    decides = OperatingPoint.from_manifest({"operating_point": point} if point else {}, d.get("thresholds") or {})
    min_windows, thresholds = decides.min_windows, decides.thresholds
    gate = decides.min_gate if decides.decides_by_gate else None
    lines.append("  species (threshold, fewest windows per event"
                 + (", the event gate's probability an event needs):" if gate else "):"))
    for label in calls:
        common = (names.get(label) or {}).get("common") if isinstance(names.get(label), dict) else names.get(label)
        shown = f"{label} ({common})" if common else label
        # the rules beyond those two, where set: the text showed "3 windows" where the recorder
        # also needs one window at 0.48 (a newcomer trial)
        rules = ([f"one window at {decides.open_threshold[label]:.2f} or more"]
                 if decides.open_threshold.get(label, 0.0) > 0 else []) + \
                ([f"summed confidence {decides.min_evidence[label]:.2f} or more"]
                 if decides.min_evidence.get(label, 0.0) > 0 else [])
        lines.append(f"    {shown}: {thresholds.get(label, 0.0):.2f}, {min_windows.get(label, 1)}"
                     + (f", {_level(gate[label])}" if gate and label in gate else "")
                     + (f" (and {' and '.join(rules)})" if rules else ""))
    never = decides.never_stored(calls)
    if never:
        lines.append(f"  never stored at this point: {', '.join(never)} "
                     + ("(a level no vote or gate probability reaches)" if gate else "(a threshold no vote reaches)"))
    expected = point.get("expected")
    if expected:
        target = point.get("target_false_per_hour", "?")
        other = expected.get("chosen_on_other_folds")
        at_this = (f"{expected['false_per_hour']:.1f} / h ({expected['false_events']} in "
                   f"{expected['background_hours']:.2f} h), event recall {_pct(expected.get('recall'))}, "
                   f"precision {_pct(expected.get('precision'))}")
        chosen_elsewhere = None if not other else (
            f"{other['false_per_hour']:.1f} / h, event recall {_pct(other.get('recall'))}, "
            f"precision {_pct(other.get('precision'))}")
        if point.get("from_bundle"):
            # A point kept from a bundle, measured again: its own figures first; what choosing anew
            # for the target gives on unseen recorders is about the procedure, not this point.
            # what "/ h" counts is said: a reader took 13.6 / h for all wrong detections (precision
            # 0.37 beside it says most wrong ones fall on calls' audio), a BirdNET user's trial
            lines.append(f"  at this point, measured again on every grouped-CV fold (false events per hour of "
                         f"background audio): {at_this}")
            if chosen_elsewhere:
                lines.append(f"  (a point chosen anew for {target} / h on the other folds' recorders gives, on "
                             f"each fold's own: {chosen_elsewhere})")
        elif chosen_elsewhere:
            # The honest figure first: chosen on the other folds' recorders, measured on each fold's.
            lines.append(f"  expected on recorders it never heard (grouped CV, the point chosen on the other folds, "
                         f"target {target} false events per background hour): {chosen_elsewhere}")
            lines.append(f"  on the folds that chose it: {at_this}")
        else:
            lines.append(f"  expected from grouped CV at the target of {target} false events per background hour: {at_this}")
        top = expected.get("at_min_confidence_0.9") or {}
        if top.get("events") is not None and expected.get("calibration_ece") is not None:
            # the figure a user filtering by confidence needs, and how far to trust the number
            lines.append(f"  --min-confidence 0.9 in grouped CV: {top['events']} events at precision "
                         f"{_pct(top.get('precision'))}, keeping {_pct(top.get('right_kept'))} of the right ones; "
                         f"calibration error {expected['calibration_ece']:.3f} there, larger on recorders it never heard")
    adapted = (d.get("provenance") or {}).get("adapted")
    if isinstance(adapted, dict):
        reviews = adapted.get("reviews") or {}
        written = (adapted.get("calibration") or {}).get("written")
        unchanged = " (the parent's point, refitted unchanged)" if adapted.get("point_changed") is False else ""
        lines.append(f"  adapted to a site from bundle {adapted.get('parent_bundle', '?')}: method "
                     f"{adapted.get('method', '?')}{unchanged}, {reviews.get('used', '?')} review(s) from "
                     f"{reviews.get('recordings', '?')} recording(s)"
                     + (f"; stored confidence: {'the site calibration' if written == 'site' else 'the parent' + chr(39) + 's'}"
                        if written else ""))
    if d.get("site_corrections"):
        lines.append(f"  site corrections: {', '.join(d['site_corrections'])}")
    rebundled = (d.get("provenance") or {}).get("rebundled_from")
    if rebundled:
        source = ((d.get("provenance") or {}).get("thresholds_from") or {}).get("file", "a cv-ensemble result")
        lines.append(f"  the members of bundle {rebundled}; operating point and calibration from {source}")
    if d.get("confidence_max") is not None:
        lines.append(f"  highest confidence it can store: {d['confidence_max']:g}")
    lines.append("  (everything: edgemon info --format json)")
    return "\n".join(lines)
