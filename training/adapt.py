"""``edgemon-train adapt``: a bundle adapted to one site from that site's reviewed detections.

A bundle holds int8 ONNX members, not checkpoints, so adaptation works through what they expose:
each member's ``probs`` and ``embedding`` on every window of each reviewed recording, cut and
batched as the recorder does. Verdicts become targets: 'wrong' -> this site's background,
'correct' -> the detected label, 'relabel' -> the reviewer's label; 'unsure' is left out. Windows
beside a wrong detection, and windows the members confidently call background, are taken as
background too (never one inside a stored detection).

Candidates (``CANDIDATES``, fitted in ``training.adapt_fit``): the parent's per-class thresholds re-fitted (the fair baseline);
thresholds and the fewest windows an event needs re-fitted together (the operating point's
evidence rule); a site head (``edgemon.analysis.site_head``: a penalised correction of each member's
log-probabilities from its embedding); a site head with thresholds re-fitted on its output; a site
veto (``edgemon.analysis.site_veto``: windows that sound like this site's reviewed false alarms
more than like its confirmed calls go back to background) with thresholds and evidence re-fitted.
Evaluation holds out whole recordings (grouped folds): the parent and each candidate, fitted
without them, decide each held-out detection as the recorder would (member vote, thresholds,
evidence rule, most-voted call over the event's windows); events a candidate stores on the held-out
recordings that overlap no detection the parent stored and none reviewed count as false alarms (no
review speaks for them). The best candidate by held-out F1, among the baseline and those that
beat it by more than chance (a sign test on the held-out detections where the two differ), is
refitted on all reviews and written beside copies of the parent's members, with its provenance in
the manifest; if it is worse than the parent there, nothing is written. The stored confidence is
the parent's calibration, or that map shifted to the site's reviewed detections
(``training.site_calibration``) when the shift scores better on the held-out recordings; when no
candidate beats the parent but that shift of the parent's own detections does, the parent's
decisions are written with it (``CALIBRATION_ONLY``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgemon.analysis.bundle import Bundle, load_bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import AudioError
from edgemon.storage.readonly import (database_uuid, recording_path, review_spans, reviewed, same_sound,
                                      sources_analysed_by, stored_bundles)
from training.adapt_decisions import decide_scored, event_scores, grouped_folds, new_event_runs, unmatched
from training.adapt_fit import CANDIDATES, candidate_probs, fit_candidate, fit_head
from training.adapt_windows import (ReviewedWindows, background_windows, detection_spans, event_windows, nearest_windows,
                                    recording_windows, review_targets, WholeRecordings, whole_recording)
from training.adapted_bundle import Correction, parent_point, write_adapted
from training.site_calibration import Scored, confidences, quality, site_calibration
from training.errors import DataError

log = logging.getLogger(__name__)


class AdaptError(DataError):
    """A bundle cannot be adapted from these reviews, or the adapted one is worse than its parent."""


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """The head's fit and its held-out evaluation."""

    folds: int = 4               # held-out folds, grouped by recording (fewer if fewer recordings)
    l2: float = 1.0              # penalty on the head's weights per reviewed detection; large keeps it near the parent
    steps: int = 300             # full-batch Adam steps
    learning_rate: float = 0.05
    min_reviews: int = 10        # judged detections (not 'unsure') needed at all
    neighbours: int = 2          # hops either side of a wrong detection taken as background
    evidence: tuple[int, ...] = (1, 2, 3, 4)   # fewest windows per event the operating point may ask
    veto_k: int = 5              # the site veto's neighbours (``site_veto.SiteVeto``)
    veto_min_similarity: float = 0.5
    veto_unconfirmed_similarity: float = 0.8
    veto_max_windows: int = 4096  # background windows the veto keeps (evenly spaced beyond that)
    seed: int = 0


class LeftOut:
    """Recordings whose reviews are left out for one reason, said in a few lines: a line each, a
    scale trial found 7 210 of them ("recording not found") for a season's reviews of a card long
    since cleared."""

    NAMED = 5   # recordings named one by one; the rest counted

    def __init__(self, why: str):
        self.why, self.sources, self.reviews = why, [], 0

    def add(self, source: str, reviews: int) -> None:
        self.sources.append(source)
        self.reviews += reviews

    def say(self) -> None:
        if not self.sources:
            return
        named = ", ".join(self.sources[:self.NAMED]) + (f" and {len(self.sources) - self.NAMED} more"
                                                         if len(self.sources) > self.NAMED else "")
        log.warning("%d recording(s) %s, their %d review(s) left out: %s", len(self.sources), self.why,
                    self.reviews, named)


def reviewed_windows(bundle: Bundle, ensemble: Ensemble, reviews_db: Path, recordings: Path | None,
                     config: AdaptConfig | None = None) -> ReviewedWindows:
    """Run the bundle's members over every recording with a usable reviewed detection, as the
    recorder does (``recording_windows``); keep each detection's windows, and the recording's
    background windows (``background_windows``)."""
    config = config or AdaptConfig()
    rows = reviewed(reviews_db)
    gone = sum(1 for r in rows if r["verdict"] != "unsure" and r.get("end_s") is None)
    if gone:   # their detections were removed since (reanalyse no longer found them)
        log.warning("%s: %d review(s) of detections no longer stored left out", reviews_db, gone)
    targets = review_targets(rows, bundle.labels, bundle.background_label)
    spec = WindowSpec.from_seconds(bundle.window_s, bundle.hop_s, bundle.frontend)
    frame_s = bundle.frontend.hop_length / bundle.frontend.sample_rate
    background = bundle.labels.index(bundle.background_label)
    point = parent_point(bundle)
    thresholds = np.array([point.thresholds.get(label, 0.0) for label in bundle.labels])
    by_recording: dict[str, list[tuple[dict, int]]] = defaultdict(list)
    for row, target in targets:
        by_recording[row["source"]].append((row, target))
    # The parent is scored by what it stored on each recording: on one it never analysed (a partial
    # reanalyse) every event it would store counted as new (a review: its F1 0.615 for 0.750).
    analysed = sources_analysed_by(reviews_db, bundle.bundle_id)
    never = LeftOut(f"never analysed by {bundle.bundle_id} (run `edgemon reanalyse --models {bundle.path}` over "
                    f"them first)")
    for source in sorted(set(by_recording) - (set(by_recording) if analysed is None else analysed)):
        never.add(source, len(by_recording.pop(source)))
    never.say()
    not_found = LeftOut("not found")
    probs, embeddings, detection, target_list, groups, review_ids = [], [], [], [], [], []
    whole = []
    for source, items in sorted(by_recording.items()):
        try:
            path = recording_path(items[0][0], recordings)
            if path is None:
                not_found.add(source, len(items))
                continue
            windows = recording_windows(ensemble, path)
        except AudioError as exc:
            log.warning("%s; its %d review(s) left out", exc, len(items))   # the error names the file
            continue
        for row, target in items:
            picked = nearest_windows(windows.starts, event_windows(row["start_s"], row["end_s"], spec, frame_s),
                                     spec.frames)
            if not picked:
                continue
            probs.append(windows.probs[:, picked])
            embeddings.append(windows.embeddings[:, picked])
            detection += [len(target_list)] * len(picked)
            target_list.append(target)
            groups.append(source)
            review_ids.append(row["id"])
        wrong = [(r["start_s"], r["end_s"]) for r, t in items if t == background]
        # the parent's thresholds were fitted on what its own site head and veto output, if any;
        # the head a candidate fits still learns from the raw members (extra_probs)
        site = background_windows(windows, detection_spans(reviews_db, source), wrong, spec, frame_s, background,
                                  config, thresholds, ensemble.site_corrected(windows.probs, windows.embeddings))
        # where the parent stored nothing: outside its own detections and the reviewed ones
        stored = detection_spans(reviews_db, source, bundle.bundle_id) + [(r["start_s"], r["end_s"]) for r, _ in items]
        whole.append(whole_recording(windows, stored, frame_s, source, site))
    not_found.say()
    if not targets:
        raise AdaptError(f"{reviews_db}: no judged review of a detection of this bundle's labels yet "
                         f"('unsure' is left out): review some with `edgemon review` first")
    if not target_list:
        raise AdaptError(f"{reviews_db}: no reviewed detection of this bundle's labels with its recording "
                         f"found" + ("" if recordings else " (give --recordings DIR)"))
    return ReviewedWindows(np.concatenate(probs, axis=1), np.concatenate(embeddings, axis=1),
                           np.asarray(detection), np.asarray(target_list), groups, review_ids,
                           WholeRecordings.join(whole))


CALIBRATION_ONLY = "calibration"   # written when no candidate beats the parent but the site's calibration does
BASELINE = "thresholds"            # the simplest candidate; any other must clearly beat it
CLEARLY_BETTER_P = 0.05            # one-sided sign test on held-out detections where the two differ


def held_out_comparison(bundle: Bundle, ensemble: Ensemble, data: ReviewedWindows, config: AdaptConfig) -> dict:
    """The parent and every candidate, each fitted without the held-out recordings (and their
    background windows) and scored on them (``event_scores``, with ``new_events`` on their windows
    where the parent stored nothing), pooled over the grouped folds; each candidate's
    ``versus_baseline``: its wins and losses against the baseline for ``clearly_better``. The
    parent's and each candidate's ``calibration``: the stored confidence of its held-out
    detections under the parent's calibration and under the site's (``site_calibration``, fitted
    on the other folds' detections as that candidate decides them), scored against the reviews
    (``quality``)."""
    labels, background = bundle.labels, bundle.labels.index(bundle.background_label)
    parent, parent_map = parent_point(bundle), Calibration.from_manifest(bundle.manifest)
    predicted = {name: np.full(len(data.targets), background) for name in ("parent", *CANDIDATES)}
    new = dict.fromkeys(("parent", *CANDIDATES), 0)
    new_wins, new_losses = dict.fromkeys(CANDIDATES, 0), dict.fromkeys(CANDIDATES, 0)
    stored = {name: {"parent": [], "site": [], "right": []} for name in ("parent", *CANDIDATES)}
    for held_out in grouped_folds(data.groups, config.folds):
        train, test = data.subset(~held_out, whole=False), data.subset(held_out)
        if len(train.targets) == 0:
            continue
        head = fit_head(train, len(labels), config, background)   # fitted once, shared by both head candidates
        runs = {}
        for name in ("parent", *CANDIDATES):
            h, point = (None, parent) if name == "parent" else fit_candidate(name, bundle, ensemble, train, config, head)
            held = scored(ensemble, bundle, h, point, test)
            predicted[name][held_out] = held.label
            runs[name] = new_events(ensemble, bundle, h, point, test)
            new[name] += len(runs[name])
            site_map = site_calibration(parent_map, labels, background, scored(ensemble, bundle, h, point, train))[0]
            keep = held.kept(background)
            for key, calibration in (("parent", parent_map), ("site", site_map)):
                stored[name][key].append(confidences(calibration, labels, held, keep))
            stored[name]["right"].append(held.right()[keep])
        for name in CANDIDATES:   # an event both store (same recording and class, overlapping) is a tie
            new_losses[name] += unmatched(runs[name], runs[BASELINE])
            new_wins[name] += unmatched(runs[BASELINE], runs[name])
    scores = {name: event_scores(p, data.targets, background, new[name]) for name, p in predicted.items()}
    correct = {name: p == data.targets for name, p in predicted.items()}
    for name in CANDIDATES:   # paired against the baseline, for the sign test of ``choose_candidate``
        scores[name]["versus_baseline"] = {"wins": int((correct[name] & ~correct[BASELINE]).sum()) + new_wins[name],
                                           "losses": int((~correct[name] & correct[BASELINE]).sum()) + new_losses[name]}
    for name in ("parent", *CANDIDATES):
        right = np.concatenate(stored[name]["right"]) if stored[name]["right"] else np.zeros(0)
        scores[name]["calibration"] = {key: quality(np.concatenate(stored[name][key]) if right.size else right, right)
                                       for key in ("parent", "site")}
    return scores


def scored(ensemble: Ensemble, bundle: Bundle, correction: Correction, point: OperatingPoint,
           data: ReviewedWindows) -> Scored:
    """``data``'s detections as the bundle a candidate writes decides them, with their scores."""
    label, score, evidence, gate = decide_scored(candidate_probs(ensemble, correction, data), data.detection,
                                                 len(data.targets), bundle.labels, point,
                                                 bundle.labels.index(bundle.background_label))
    return Scored(label, score, evidence, data.targets, gate)


def new_events(ensemble: Ensemble, bundle: Bundle, correction: Correction, point: OperatingPoint,
               data: ReviewedWindows) -> list[tuple[int, int, int, int]]:
    """The events the bundle a candidate writes would store on ``data``'s recordings that overlap
    no detection the parent stored and none reviewed (``new_event_runs``). No review speaks for
    them, and on held-out recorders most such new events were false (docs/results.md), so the
    comparison counts them as false alarms; a candidate that finds calls the parent missed pays
    for them too."""
    whole = data.whole
    if whole is not None and whole.only_background:
        raise ValueError("new events are counted on whole recordings, not on their background windows alone")
    if whole is None or not whole.probs.shape[1]:
        return []
    windows = dataclasses.replace(data, probs=whole.probs, embeddings=whole.embeddings)
    return new_event_runs(candidate_probs(ensemble, correction, windows), whole.recording, whole.stored,
                          bundle.labels, point, bundle.labels.index(bundle.background_label))


def site_calibration_wins(held_out: dict) -> bool:
    """The site's calibration replaces the parent's when its held-out Brier score is lower."""
    site, parent = held_out["site"], held_out["parent"]
    return bool(site["detections"]) and site["brier"] < parent["brier"]


def clearly_better(wins: int, losses: int) -> bool:
    """A one-sided exact sign test: ``wins`` against ``losses`` (held-out detections one candidate
    decides right and the other wrong, and each one's new events that the other does not store
    as the other's wins) is unlikely under a coin flip (p < ``CLEARLY_BETTER_P``)."""
    n = wins + losses
    return n > 0 and sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n < CLEARLY_BETTER_P


def choose_candidate(scores: dict) -> str:
    """The candidate with the best held-out F1 (ties: fewer errors, then the simpler, earlier in ``CANDIDATES``) among
    the baseline and those that clearly beat it (``clearly_better`` on ``versus_baseline``): on a
    few reviews a richer candidate wins by chance (a site head chosen for three held-out false
    alarms it dropped stored three new ones on the recorder's other audio, against the baseline's
    one). When even it is worse than the parent: ``CALIBRATION_ONLY`` (the parent's decisions, its
    confidence fitted to the site) if the site's calibration of the parent's detections scores
    better on held-out recordings, else AdaptError."""
    eligible = [name for name in CANDIDATES
                if name == BASELINE or clearly_better(**scores[name]["versus_baseline"])]
    chosen = max(eligible, key=lambda name: (*_merit(scores[name]), -CANDIDATES.index(name)))
    if _merit(scores[chosen]) >= _merit(scores["parent"]):
        return chosen
    if site_calibration_wins(scores["parent"]["calibration"]):
        return CALIBRATION_ONLY
    raise AdaptError(f"every adaptation is worse than its parent on held-out recordings (best F1 "
                     f"{scores[chosen]['f1']:.3f} < {scores['parent']['f1']:.3f}) and the site's calibration is no "
                     f"better than the parent's; no bundle written")


def _merit(score: dict) -> tuple[float, int]:
    """Held-out F1, then the fewer errors stored (false alarms and new events): where no reviewed
    detection is a call every F1 is 0, and a candidate that dropped all 31 false alarms tied with
    the parent that kept them (a review: the parent was written again under a new name)."""
    return score["f1"], -(score.get("false_alarms", 0) + score.get("new_events", 0))


def _check_one_embedding_width(bundle: Bundle, ensemble: Ensemble) -> None:
    """A site head and veto read every member's embedding as one array: members of other widths
    (an ensemble of searched settings) cannot be adapted yet; the recorder runs them all the same."""
    widths = [next((o.shape[-1] for o in s.get_outputs() if o.name == "embedding"), None) for s in ensemble.sessions]
    if len(set(widths)) > 1:
        raise AdaptError(f"{bundle.path}: its members' embeddings differ in width ({', '.join(map(str, widths))}); "
                         f"adapt needs members of one width")


def _check_not_fitted_on(bundle: Bundle, reviews_db: Path, review_ids: list[int]) -> None:
    """An adapted bundle's corrections were fitted on its reviews: scored on them again, they would
    look better than they are, and the choice would favour keeping them."""
    earlier = (bundle.manifest.get("adapted") or {}).get("reviews") or {}
    here = database_uuid(reviews_db)
    # The database's own id, so a copy is known and another site's file at the same path is not;
    # its path for bundles adapted before the id was recorded.
    same = (earlier["database_uuid"] == here) if earlier.get("database_uuid") and here else \
        earlier.get("database") == str(reviews_db.resolve())
    if not same:
        return
    fitted_ids = set(earlier.get("review_ids") or ())
    again = fitted_ids & set(review_ids)
    # A sound it was fitted on, judged again as a detection of another bundle (this one's, after
    # reanalyse), is a new review of the same sound: the check by ids alone let the bundle be
    # scored on what it was fitted on.
    spans = review_spans(reviews_db, fitted_ids | set(review_ids))
    fitted = defaultdict(list)
    for i in fitted_ids:
        source, start, end = spans.get(i, (None, None, None))
        if end is not None:
            fitted[source].append((start, end))
    for i in set(review_ids) - again:
        source, start, end = spans.get(i, (None, None, None))
        if end is not None and any(same_sound(start, end, a, b) for a, b in fitted[source]):
            again.add(i)
    if again:
        parent = bundle.manifest["adapted"].get("parent_bundle", "its parent")
        raise AdaptError(f"{bundle.path} is already adapted to this site: {len(again)} of these "
                         f"{len(set(review_ids))} reviews made it (or judge again a sound it was fitted on), and "
                         f"cannot judge it again. Adapt its parent ({parent}) with all the reviews instead")


def _check_parent_made_them(bundle: Bundle, reviews_db: Path) -> None:
    """AdaptError unless the database holds detections of the parent: what it stores on the
    reviewed recordings is what the candidates are scored against, and with none every event a
    candidate stores there counted as a false alarm (a newcomer trial: an edited copy of the
    default, adapted from the default's reviews, chose its candidate on that)."""
    made = stored_bundles(reviews_db)
    if bundle.bundle_id not in made:
        raise AdaptError(f"{reviews_db} holds no detection of {bundle.bundle_id}, only of {', '.join(made) or 'none'}: "
                         f"adapt the bundle that made them, or first run `edgemon reanalyse --db {reviews_db} "
                         f"--models {bundle.path}` and review its detections")


def _check_reviews_before_audio(bundle: Bundle, reviews_db: Path, config: AdaptConfig) -> None:
    """The refusals that need only the database, before the members run over a season's audio (a
    review: minutes of work, then a one-line refusal). The same checks follow on the reviews whose
    recordings were found, which may be fewer."""
    targets = review_targets(reviewed(reviews_db), bundle.labels, bundle.background_label)
    if not targets:
        return   # reviewed_windows says why, as before
    _check_not_fitted_on(bundle, reviews_db, [row["id"] for row, _ in targets])
    _check_enough(reviews_db, len(targets), len({row["source"] for row, _ in targets}), config)
    _check_parent_made_them(bundle, reviews_db)


def _check_enough(reviews_db: Path, reviews: int, recordings: int, config: AdaptConfig) -> None:
    if reviews < config.min_reviews:
        raise AdaptError(f"{reviews_db}: {reviews} usable review(s), need at least {config.min_reviews}")
    if recordings < 2:
        raise AdaptError(f"{reviews_db}: reviews come from one recording; held-out evaluation needs two or more")


def adapt_bundle(bundle_path: Path, reviews_db: Path, recordings: Path | None, out: Path,
                 config: AdaptConfig = AdaptConfig()) -> dict:
    """Adapt the bundle at ``bundle_path`` to the site of ``reviews_db`` and write it to ``out``.

    Every candidate (``CANDIDATES``) is scored on held-out recordings; the best one, refitted on
    all reviews, is written, unless it is worse than the parent there. Returns a summary: reviews
    used, held-out scores, the candidate chosen and the new bundle's id. Raises AdaptError (and
    writes nothing) when the reviews are too few, come from one recording, or nothing beats the
    parent."""
    started = time.monotonic()
    bundle = load_bundle(bundle_path)
    ensemble = Ensemble(bundle)
    _check_one_embedding_width(bundle, ensemble)
    _check_reviews_before_audio(bundle, Path(reviews_db), config)
    data = reviewed_windows(bundle, ensemble, Path(reviews_db), recordings, config)
    _check_not_fitted_on(bundle, Path(reviews_db), data.review_ids)
    _check_enough(Path(reviews_db), len(data.targets), len(set(data.groups)), config)
    _check_parent_made_them(bundle, Path(reviews_db))
    scores = held_out_comparison(bundle, ensemble, data, config)
    chosen = choose_candidate(scores)
    if chosen == CALIBRATION_ONLY:
        correction, point, held = None, parent_point(bundle), scores["parent"]["calibration"]
    else:
        (correction, point), held = fit_candidate(chosen, bundle, ensemble, data, config), scores[chosen]["calibration"]
    calibration, calibration_note = None, {"written": "parent's", "held_out": held}
    if site_calibration_wins(held):
        labels, background = bundle.labels, bundle.labels.index(bundle.background_label)
        site_map, shift = site_calibration(Calibration.from_manifest(bundle.manifest), labels, background,
                                           scored(ensemble, bundle, correction, point, data))
        calibration = {"calibration": {label: {"x": list(x), "y": list(y)} for label, (x, y) in site_map.curves.items()},
                       "calibration_input": site_map.input,
                       "calibration_fits": {label: f"site shift of the parent's map on {shift.detections} reviewed "
                                                   f"detections (a {shift.a:.3f}, b {shift.b:.3f})"
                                            for label in site_map.curves}}
        calibration_note.update(written="site", a=round(shift.a, 4), b=round(shift.b, 4), detections=shift.detections)
    # A method may refit the parent's own point (the reviews moved no threshold): say so, so that
    # "thresholds" is not read as new thresholds (a newcomer did).
    point_changed = correction is not None or point != parent_point(bundle)
    provenance = {
        "parent_bundle": bundle.bundle_id, "method": chosen, "point_changed": point_changed,
        "adapted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "background_windows": data.background_count,
        "reviews": {"database": str(Path(reviews_db).resolve()), "database_uuid": database_uuid(Path(reviews_db)),
                    "used": len(data.review_ids),
                    "review_ids": data.review_ids, "recordings": len(set(data.groups)),
                    "targets": {bundle.labels[c]: int((data.targets == c).sum()) for c in range(len(bundle.labels))}},
        "held_out": scores, "calibration": calibration_note, "config": dataclasses.asdict(config),
    }
    new = write_adapted(bundle, correction, Path(out), provenance, point, calibration)
    return {"bundle_id": new.bundle_id, "path": str(new.path), "parent_bundle": bundle.bundle_id,
            "method": chosen, "point_changed": point_changed, "reviews_used": len(data.review_ids),
            "recordings": len(set(data.groups)),
            "held_out": scores, "calibration": calibration_note, "wall_s": round(time.monotonic() - started, 1)}
