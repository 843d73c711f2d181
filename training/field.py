"""The field measure: what a bundle would store on audio it never heard, run as the recorder runs it.
The votes it reads are made and saved by ``training.field_votes``.

Audio goes through the bundle's ``Analyzer`` (streaming frontend, recorder windows, the
``Ensemble``'s vote) with no thresholds, and the raw window votes are kept; any operating point is
then applied by the recorder's own ``apply_thresholds`` and ``EventMerger.merge``. Per fold, three
kinds of held-out audio:

- **background**: the fold's background clips laid end to end. Every event there is false; counted
  per class against the hours of audio, with an exact Poisson 95 % interval (held-out background is
  short: a rate of 5 per hour may be 8 events).
- **assembled**: the fold's calls in a shuffled order, each followed by background clips (in turn,
  again from the start when used up) until calls fill ``prevalence`` of the time, as on a recorder.
  An event is right when it overlaps a call of its label; each call is matched once, the
  highest-scoring event first, so a second event on one call counts as false.
- **clips**: each clip alone, one label per clip (the UAR of earlier reports, beside the rest).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from scipy.stats import chi2

from edgemon.analysis.bundle import Bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint
from edgemon.analysis.event_gate import FEATURES, run_features
from edgemon.analysis.merging import Event, EventMerger, WindowVote
from training.evaluate import confusion, per_class_recall, uar
from training.field_votes import FieldVotes

NOTHING = 1.0                   # a threshold no vote reaches (a mean of softmax outputs stays under 1)


def poisson_interval(count: int, hours: float) -> tuple[float, float]:
    """Exact (Garwood) 95 % interval of a rate per hour from ``count`` events in ``hours``."""
    low = chi2.ppf(0.025, 2 * count) / 2 if count else 0.0
    return float(low / hours), float(chi2.ppf(0.975, 2 * count + 2) / 2 / hours)


def match(events: list[Event], calls: np.ndarray, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Which events are right (overlap an unmatched call of their label; highest score first,
    largest overlap), and which calls were found. ``calls`` rows: (start_s, end_s, label index)."""
    right = np.zeros(len(events), bool)
    found = np.zeros(len(calls), bool)
    for e in sorted(range(len(events)), key=lambda i: -events[i].score):
        event = events[e]
        label = labels.index(event.label)
        overlap = np.minimum(calls[:, 1], event.end_s) - np.maximum(calls[:, 0], event.start_s) if len(calls) else []
        candidates = [c for c in range(len(calls)) if not found[c] and calls[c, 2] == label and overlap[c] > 0]
        if candidates:
            best = max(candidates, key=lambda c: overlap[c])
            found[best], right[e] = True, True
    return right, found


def _clip_label(events: list[Event], labels: tuple[str, ...], background: int) -> int:
    """``edgemon.analysis.decisions.clip_label`` over the windows of the stored events: the class with most
    windows in events (ties: highest summed window confidence), else background."""
    if not events:
        return background
    tally: dict[str, tuple[int, float]] = {}
    for e in events:
        votes = json.loads(e.votes)
        n, w = tally.get(e.label, (0, 0.0))
        tally[e.label] = (n + votes["windows"], w + sum(votes["window_confidence"]))
    return labels.index(max(tally, key=lambda label: tally[label]))


@dataclasses.dataclass
class ScoredEvents:
    """The events of the assembled streams at one operating point: per event its class index,
    raw score, calibrated confidence, fold and whether it is right."""

    label: np.ndarray
    score: np.ndarray
    confidence: np.ndarray
    fold: np.ndarray
    right: np.ndarray
    on_a_call: np.ndarray | None = None   # overlaps a call of its label (a false one: a second event on it)
    evidence: np.ndarray | None = None    # the sum of its window confidences
    gate: np.ndarray | None = None        # its event gate probability (NaN: not gated)
    overlaps: np.ndarray | None = None    # the label of the call it overlaps most (-1: none, background)
    features: np.ndarray | None = None    # its run's event-gate features [N, F] (None: votes without member probabilities)

    def subset(self, keep: np.ndarray) -> "ScoredEvents":
        return ScoredEvents(*(None if getattr(self, f.name) is None else getattr(self, f.name)[keep]
                              for f in dataclasses.fields(self)))

    @classmethod
    def concat(cls, parts: list["ScoredEvents"]) -> "ScoredEvents":
        return cls(*(None if any(getattr(p, f.name) is None for p in parts)
                     else np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))

    def reads(self, source: str) -> np.ndarray:
        """What a calibration with ``input`` ``source`` reads: the score, the evidence or the gate."""
        return {"score": self.score, "evidence": self.evidence, "gate": self.gate}[source]

    @property
    def gated(self) -> bool:
        """Whether every event has an event gate probability (a calibration may read it)."""
        return self.gate is not None and len(self.gate) > 0 and not np.isnan(self.gate).any()


def evidence_and_gate(event: Event) -> tuple[float, float]:
    """The sum of an event's window confidences and its gate probability (NaN when its class is
    not gated), from its votes JSON read once."""
    votes = json.loads(event.votes)
    return float(sum(votes["window_confidence"])), float(votes.get("gate", np.nan))


def _on_a_call(event: Event, calls: np.ndarray, labels: tuple[str, ...]) -> bool:
    if not len(calls):
        return False
    mine = calls[calls[:, 2] == labels.index(event.label)]
    return bool(((mine[:, 0] < event.end_s) & (mine[:, 1] > event.start_s)).any())


def _overlapped_label(event: Event, calls: np.ndarray) -> int:
    """The label index of the call ``event`` overlaps most; -1 when it lies on background alone."""
    if not len(calls):
        return -1
    overlap = np.minimum(calls[:, 1], event.end_s) - np.maximum(calls[:, 0], event.start_s)
    return int(calls[overlap.argmax(), 2]) if overlap.max() > 0 else -1


class FeatureTap(EventMerger):
    """The recorder's merger, keeping also the run features (``FEATURES``) of each event it
    stores, in order: what a run-feature calibration (``training.run_calibration``) is fitted on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "features", [])   # the merger is frozen; this list only grows

    def event(self, windows: list[WindowVote], duration_s: float, runs: int = 1, whole: bool = False) -> Event:
        self.features.append(run_features(windows, self.background))
        return super().event(windows, duration_s, runs, whole)


def assembled_events(votes: FieldVotes, merger: EventMerger) -> tuple[ScoredEvents, np.ndarray, np.ndarray]:
    """Events on every assembled stream, judged, with their run features when the votes hold the
    members' probabilities; and the calls (label index) with whether found."""
    rows, call_labels, found_all = [], [], []
    tap = None
    if all(s.probs is not None or not len(s.winner) for s in votes.assembled):
        tap = FeatureTap(merger.labels, merger.background, merger.frame_s, merger.point, merger.calibration,
                         merger.hop_frames, merger.bridge)
        merger = tap
    for stream in votes.assembled:
        events = stream.events(merger)
        right, found = match(events, stream.calls, votes.labels)
        rows += [(votes.labels.index(e.label), e.score, e.confidence, stream.fold, r,
                  _on_a_call(e, stream.calls, votes.labels), *evidence_and_gate(e), _overlapped_label(e, stream.calls))
                 for e, r in zip(events, right)]
        call_labels.append(stream.calls[:, 2].astype(int))
        found_all.append(found)
    cols = list(zip(*rows)) if rows else [[]] * 9
    features = np.array(tap.features, float).reshape(-1, len(FEATURES)) if tap is not None else None
    scored = ScoredEvents(np.array(cols[0], int), np.array(cols[1], float), np.array(cols[2], float),
                          np.array(cols[3], int), np.array(cols[4], bool), np.array(cols[5], bool),
                          np.array(cols[6], float), np.array(cols[7], float), np.array(cols[8], int), features)
    return scored, np.concatenate(call_labels) if call_labels else np.zeros(0, int), \
        np.concatenate(found_all) if found_all else np.zeros(0, bool)


def measure(votes: FieldVotes, point: OperatingPoint, calibration: Calibration = Calibration()) -> dict:
    """The field measure at ``point``, pooled over folds: false events per hour of background
    (total and per class, counts, hours, Poisson 95 % interval), event precision and recall on the
    assembled recordings (total and per class), and clip UAR."""
    merger = votes.merger(point, calibration)
    labels, background = votes.labels, votes.background
    hours = sum(s.duration_s for s in votes.background_streams) / 3600
    false = {label: 0 for i, label in enumerate(labels) if i != background}
    for stream in votes.background_streams:
        for e in stream.events(merger):
            false[e.label] += 1
    total = sum(false.values())
    scored, call_labels, found = assembled_events(votes, merger)
    per_class = {}
    for c, label in enumerate(labels):
        if c == background:
            continue
        mine = scored.label == c
        per_class[label] = {
            "false_events": false[label], "false_per_hour": false[label] / hours,
            "false_per_hour_95": list(poisson_interval(false[label], hours)),
            "events": int(mine.sum()), "right": int(scored.right[mine].sum()),
            "precision": float(scored.right[mine].mean()) if mine.any() else None,
            "calls": int((call_labels == c).sum()), "found": int(found[call_labels == c].sum()),
            "recall": float(found[call_labels == c].mean()) if (call_labels == c).any() else None,
            # where its events that are not right lie: on background, on a call of its own label
            # (a second event), or on another class's call (the classes confused)
            "wrong_on": _wrong_on(scored.overlaps[mine & ~scored.right], labels)}
    clip_events = [s.events(merger) for s in votes.clips]   # read twice: labels, and background clips alone
    predicted = clip_predictions(votes, merger, clip_events)
    return {
        "background_hours": hours, "false_events": total, "false_per_hour": total / hours,
        "false_per_hour_95": list(poisson_interval(total, hours)),
        "assembled_hours": sum(s.duration_s for s in votes.assembled) / 3600,
        "events": int(len(scored.right)), "right": int(scored.right.sum()),
        "second_events_on_a_call": int((scored.on_a_call & ~scored.right).sum()),
        "precision": float(scored.right.mean()) if len(scored.right) else None,
        "calls": int(len(found)), "found": int(found.sum()), "recall": float(found.mean()) if len(found) else None,
        "clip_uar": uar(votes.clip_targets, np.array(predicted), len(labels)),
        "clip_recall": dict(zip(labels, map(float, per_class_recall(
            confusion(votes.clip_targets, np.array(predicted), len(labels)))))),
        "per_class": per_class,
        "background_clips_alone": _clips_alone(votes, clip_events)}


def _wrong_on(overlaps: np.ndarray, labels: tuple[str, ...]) -> dict:
    names = ["background" if k < 0 else labels[k] for k in overlaps]
    return {name: names.count(name) for name in sorted(set(names))}


def _clips_alone(votes: FieldVotes, clip_events: list[list[Event]]) -> dict:
    """False events on the background clips each analysed alone: no event runs across a join of two
    unrelated clips, as on the end-to-end stream, but none can be longer than its clip either (the
    clips are 6-20 s). The two figures bracket what the joins do to the stream's."""
    mine = [(events, s.duration_s) for events, s, target in zip(clip_events, votes.clips, votes.clip_targets)
            if target == votes.background]
    count, hours = sum(len(events) for events, _ in mine), sum(d for _, d in mine) / 3600
    return {"false_events": count, "hours": hours, "false_per_hour": count / hours if hours else None,
            "false_per_hour_95": list(poisson_interval(count, hours)) if hours else None}


def clip_predictions(votes: FieldVotes, merger: EventMerger, clip_events: list[list[Event]] | None = None) -> np.ndarray:
    """One label per clip from the events ``merger`` stores on it (``_clip_label``); ``clip_events``
    when the caller has them already."""
    if clip_events is None:
        clip_events = [s.events(merger) for s in votes.clips]
    return np.array([_clip_label(events, votes.labels, votes.background) for events in clip_events], int)


def windows_of(votes: FieldVotes) -> dict[str, np.ndarray]:
    """The clips' raw window votes in the layout of ``training.thresholds`` (clip, winner, confidence)."""
    return {"clip": np.concatenate([np.full(len(s.winner), i) for i, s in enumerate(votes.clips)]),
            "winner": np.concatenate([s.winner for s in votes.clips]),
            "confidence": np.concatenate([s.confidence for s in votes.clips]).astype(np.float32)}


def score_field(bundle: Bundle, votes: FieldVotes) -> dict:
    """The field measure of ``bundle``'s raw ``votes`` (``field_votes``), at the bundle's own
    operating point and calibration, and untuned; with the calibration's quality there."""
    from training.calibration import at_levels, reliability

    point = OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds)
    calibration = Calibration.from_manifest(bundle.manifest)
    events, _, _ = assembled_events(votes, votes.merger(point, calibration))
    return {"operating_point": dataclasses.asdict(point),
            "calibrated": bool(calibration.curves),
            "at_point": measure(votes, point, calibration), "untuned": measure(votes, OperatingPoint({})),
            "confidence": {**reliability(events.confidence, events.right), "levels": at_levels(events.confidence, events.right)}}
