"""How the recorder would decide reviewed detections from window outputs, in numpy: the member
vote, the operating point (thresholds, evidence rules and event gate), one label per detection; scores
against the reviews, and folds grouped by recording."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edgemon.analysis.merging import EventMerger, WindowVote
from edgemon.analysis.decisions import OperatingPoint, apply_thresholds
from edgemon.analysis.ensemble import majority_vote

def decide(member_probs: np.ndarray, detection: np.ndarray, n_detections: int, labels: tuple[str, ...],
           point: OperatingPoint, background: int) -> np.ndarray:
    """Each detection's label as the recorder would give it: members' majority vote per window, the
    point's per-class thresholds, runs of a class that the point does not keep (too few windows,
    too little summed confidence, no window at the opening level) dropped as ``EventMerger`` drops
    them, then the most-voted call over the event's windows (background: dropped).
    ``detection [N]`` numbers each window's detection; a detection's windows are in time order."""
    return _decided(member_probs, detection, n_detections, labels, point, background, with_gates=False)[0]


def decide_scored(member_probs: np.ndarray, detection: np.ndarray, n_detections: int, labels: tuple[str, ...],
                  point: OperatingPoint, background: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``decide``, and what a calibration reads of each detection so decided: its score (the highest
    confidence of its windows of that label), evidence (their sum) and, for a point with an event
    gate, its gate probability: that of its kept windows of that label joined, as the recorder
    joins kept runs of one class a window apart into one event (``EventMerger.joins``) and stores
    the joined windows' gate, not the highest of the runs' own (NaN without a gate; 0 for a class
    the gate does not model). 0 for a dropped one. ``[D]`` each."""
    decided, window_labels, confidence, _ = _decided(member_probs, detection, n_detections, labels, point,
                                                     background, with_gates=False)
    counted = (window_labels == decided[detection]) & (window_labels != background)
    score, evidence = np.zeros(n_detections), np.zeros(n_detections)
    np.maximum.at(score, detection[counted], confidence[counted])
    np.add.at(evidence, detection[counted], confidence[counted])
    gate = np.full(n_detections, np.nan)
    if point.gate is not None:
        gate[:] = 0.0
        merger = EventMerger(labels, background, 0.0, point)
        windows = np.flatnonzero(counted)
        windows = windows[np.argsort(detection[windows], kind="stable")]   # each detection's, in time order
        for mine in np.split(windows, np.flatnonzero(np.diff(detection[windows])) + 1):
            if len(mine):
                d = int(detection[mine[0]])
                p = _gate(merger, decided[d], mine, confidence, member_probs)
                gate[d] = 0.0 if p is None else p
    return decided, score, evidence, gate


def _decided(member_probs: np.ndarray, detection: np.ndarray, n_detections: int, labels: tuple[str, ...],
             point: OperatingPoint, background: int,
             with_gates: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each detection's label ``[D]``, each window's label after the point ``[N]``, the vote's
    confidence ``[N]`` and the event gate probability of each window's run ``[N]`` (NaN: none;
    all NaN without ``with_gates``, unless the gate decides)."""
    votes = majority_vote(member_probs)
    window_labels = apply_thresholds(votes.winner, votes.confidence, labels, point.thresholds, background)
    window_gate = np.full(len(window_labels), np.nan)
    if point.min_windows or point.min_evidence or point.open_threshold or point.gate is not None:
        window_labels, window_gate = kept_runs(window_labels, votes.confidence, detection, labels, point, background,
                                               member_probs, with_gates)
    decided = detection_labels(window_labels, votes.confidence, detection, n_detections, len(labels), background)
    return decided, window_labels, votes.confidence, window_gate


def detection_labels(window_labels: np.ndarray, confidence: np.ndarray, detection: np.ndarray, n_detections: int,
                     n_classes: int, background: int) -> np.ndarray:
    """``decisions.clip_label`` of every detection at once (the threshold searches call it thousands
    of times): the call class in most of its windows, ties to the highest summed confidence, then
    to the lowest class; background when no window holds a call. Inputs ``[N]``, output ``[D]``."""
    counts = np.zeros((n_detections, n_classes))
    weight = np.zeros((n_detections, n_classes))
    np.add.at(counts, (detection, window_labels), 1)
    np.add.at(weight, (detection, window_labels), confidence)
    counts[:, background] = 0
    top = counts.max(axis=1, keepdims=True)
    best = np.where((counts == top) & (top > 0), weight, -np.inf).argmax(axis=1)
    return np.where(top[:, 0] > 0, best, background)


def kept_runs(window_labels: np.ndarray, confidence: np.ndarray, detection: np.ndarray, labels: tuple[str, ...],
              point: OperatingPoint, background: int,
              member_probs: np.ndarray | None = None, with_gates: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``window_labels [N]`` with every run of one class (within one detection) that ``point``
    does not keep (``OperatingPoint.keeps`` on its window confidences and, for a gated point, the
    event gate's probability from ``member_probs [M, N, C]``) set to ``background``; and each
    window's run's gate probability ``[N]`` (NaN: no gate, or dropped; a gate at level 0, which
    only scores, is read for kept runs and only ``with_gates``: the threshold searches decide
    thousands of times and read labels alone, and it made adapt ten times slower)."""
    out, gates = window_labels.copy(), np.full(len(window_labels), np.nan)
    merger = EventMerger(labels, background, 0.0, point)   # its gate, as the recorder reads it
    start = 0
    for i in range(1, len(out) + 1):
        if i == len(out) or window_labels[i] != window_labels[start] or detection[i] != detection[start]:
            c = window_labels[start]
            gate = _gate(merger, c, np.arange(start, i), confidence, member_probs) \
                if c != background and point.decides_by_gate else None
            if c != background and not point.keeps(labels[c], confidence[start:i].tolist(), gate):
                out[start:i] = background
            elif c != background and point.gate is not None and (gate is not None or with_gates):
                gates[start:i] = gate if gate is not None else _gate(merger, c, np.arange(start, i), confidence,
                                                                     member_probs)
            start = i
    return out, gates


def _gate(merger: EventMerger, c: int, windows: np.ndarray, confidence: np.ndarray,
          member_probs: np.ndarray | None) -> float | None:
    """``EventMerger.gate`` of the ``windows`` (indices, in time order) of class ``c``, rebuilt from
    the members' outputs."""
    if merger.point.gate is None:
        return None
    if member_probs is None:
        raise ValueError("a gated operating point needs the members' probabilities")
    return merger.gate([WindowVote(0, 0, int(c), float(confidence[w]),
                                   tuple(int(m) for m in member_probs[:, w].argmax(axis=1)),
                                   tuple(tuple(map(float, m)) for m in member_probs[:, w])) for w in windows])


def event_scores(predicted: np.ndarray, truth: np.ndarray, background: int, new_events: int = 0) -> dict:
    """F1 of kept detections: a kept detection of its true class is a hit, any other kept one a false
    alarm, a call not kept with its class a miss; ``new_events`` (events stored where nothing was
    reviewed, ``new_event_runs``) count as false alarms too. Also the share of true false alarms still
    kept."""
    kept = predicted != background
    hits = int((kept & (predicted == truth)).sum())
    false_alarms = int((kept & (predicted != truth)).sum())
    misses = int(((truth != background) & (predicted != truth)).sum())
    background_total = int((truth == background).sum())
    return {"f1": 2 * hits / max(1, 2 * hits + false_alarms + new_events + misses), "hits": hits,
            "false_alarms": false_alarms, "new_events": new_events, "misses": misses,
            "recall": hits / max(1, hits + misses),
            "background_kept": int((kept & (truth == background)).sum()) / max(1, background_total)}


def new_event_runs(member_probs: np.ndarray, recording: np.ndarray, stored: np.ndarray, labels: tuple[str, ...],
                   point: OperatingPoint, background: int) -> list[tuple[int, int, int, int]]:
    """The events the recorder would store on these windows (``member_probs [M, N, C]``;
    ``recording [N]`` numbers the recordings, each one's windows in time order) that overlap no
    window of ``stored [N]`` (inside a stored or reviewed detection: decided there, and scored
    against its review): (recording, first window, last window, class) of each run of one call
    class that ``point`` keeps."""
    n = len(recording)
    if not n:
        return []
    index = np.unique(recording, return_inverse=True)[1].ravel()
    window_labels = _decided(member_probs, index, int(index.max()) + 1, labels, point, background, with_gates=False)[1]
    change = np.ones(n, bool)
    change[1:] = (window_labels[1:] != window_labels[:-1]) | (index[1:] != index[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n) - 1
    new = (window_labels[starts] != background) & (np.add.reduceat(stored.astype(int), starts) == 0)
    return list(zip(recording[starts[new]].tolist(), starts[new].tolist(), ends[new].tolist(),
                    window_labels[starts[new]].tolist()))


def unmatched(runs: list[tuple[int, int, int, int]], others: list[tuple[int, int, int, int]]) -> int:
    """How many of ``runs`` (``new_event_runs``) overlap no run of ``others`` of the same class in
    the same recording."""
    return sum(not any(r == o_r and c == o_c and first <= o_last and o_first <= last
                       for o_r, o_first, o_last, o_c in others) for r, first, last, c in runs)


def grouped_folds(groups: list[str], k: int) -> list[np.ndarray]:
    """Boolean held-out masks over detections: whole recordings per fold, balanced by count."""
    counts = defaultdict(int)
    for g in groups:
        counts[g] += 1
    k = min(k, len(counts))
    fold_of, sizes = {}, [0] * k
    for g in sorted(counts, key=lambda g: (-counts[g], g)):
        fold_of[g] = int(np.argmin(sizes))
        sizes[fold_of[g]] += counts[g]
    return [np.array([fold_of[g] == f for g in groups]) for f in range(k)]
