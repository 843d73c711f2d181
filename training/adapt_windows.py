"""The windows of reviewed recordings, as the recorder cuts and batches them: each member's
probabilities and embedding for every window of a reviewed detection, and the windows taken as
this site's background beside them (``edgemon-train adapt``'s labelled set)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgemon.analysis import audio
from edgemon.analysis.analyzer import BATCH_SIZE, WindowStream
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import StreamingFrontend
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import AudioError
from edgemon.storage.readonly import connect_read_only, same_sound

if TYPE_CHECKING:   # for annotations only: adapt imports this module
    from training.adapt import AdaptConfig

RECORDER_BLOCK_S = 10.0   # what watch and Analyzer.analyse_file decode at a time


@dataclasses.dataclass(frozen=True)
class ReviewedWindows:
    """Every window of ``D`` reviewed detections (``N`` windows in all) through ``M`` members, and
    every window of their recordings.

    ``probs [M, N, C]`` and ``embeddings [M, N, d]`` are the raw members' outputs; ``detection
    [N]`` the window's detection index; ``targets [D]`` the class each detection truly is;
    ``groups [D]`` its recording; ``review_ids [D]`` the review rows used. ``whole``: every window
    of these recordings, to count a candidate's new events where the parent stored nothing, among
    them those taken as this site's background without a review (``extra_probs``; see
    ``background_windows``), held once for both."""

    probs: np.ndarray
    embeddings: np.ndarray
    detection: np.ndarray
    targets: np.ndarray
    groups: list[str]
    review_ids: list[int]
    whole: WholeRecordings | None = None

    @property
    def extra_probs(self) -> np.ndarray | None:
        """``[M, X, C]``: the windows taken as this site's background without a review."""
        return None if self.whole is None else self.whole.site_background(self.whole.probs)

    @property
    def extra_embeddings(self) -> np.ndarray | None:
        """``[M, X, d]``: as ``extra_probs``."""
        return None if self.whole is None else self.whole.site_background(self.whole.embeddings)

    @property
    def background_count(self) -> int:
        return 0 if self.whole is None else int(self.whole.background.sum())

    def subset(self, keep: np.ndarray, whole: bool = True) -> "ReviewedWindows":
        """The detections where ``keep [D]`` is true, renumbered, with the windows of their
        recordings only; with ``whole`` false, only those taken as the site's background (all a
        training side needs: no new event is counted on it)."""
        new_index = np.cumsum(keep) - 1
        windows = keep[self.detection]
        kept_groups = {g for g, k in zip(self.groups, keep) if k}
        return ReviewedWindows(self.probs[:, windows], self.embeddings[:, windows],
                               new_index[self.detection[windows]], self.targets[keep],
                               [g for g, k in zip(self.groups, keep) if k],
                               [r for r, k in zip(self.review_ids, keep) if k],
                               None if self.whole is None else self.whole.of(kept_groups, only_background=not whole))


@dataclasses.dataclass(frozen=True)
class WholeRecordings:
    """Every window of the reviewed recordings (``U`` in all): ``probs [M, U, C]``, ``embeddings
    [M, U, d]``; ``recording [U]`` the window's recording, an index into ``names`` (each one's
    windows in time order); ``stored [U]`` marks the windows inside a detection the parent stored
    or one that was reviewed (``adapt_decisions.new_event_runs``); ``background [U]`` those taken
    as this site's background without a review (``background_windows``). ``only_background``:
    every other window was left out, so no new event can be counted here."""

    probs: np.ndarray
    embeddings: np.ndarray
    names: tuple[str, ...]
    recording: np.ndarray
    stored: np.ndarray
    background: np.ndarray
    only_background: bool = False

    def of(self, groups: set[str], only_background: bool = False) -> "WholeRecordings":
        """The windows of the recordings named in ``groups`` (with ``only_background``, of those
        just the site's background); recordings keep their numbers."""
        keep = np.isin(self.recording, [i for i, name in enumerate(self.names) if name in groups])
        if only_background:
            keep &= self.background
        return WholeRecordings(self.probs[:, keep], self.embeddings[:, keep], self.names, self.recording[keep],
                               self.stored[keep], self.background[keep], only_background or self.only_background)

    def site_background(self, outputs: np.ndarray) -> np.ndarray:
        """``outputs [M, U, ...]`` at the site's background windows (no copy when that is all)."""
        return outputs if self.only_background else outputs[:, self.background]

    @staticmethod
    def join(parts: list["WholeRecordings"]) -> "WholeRecordings":
        """One recording's after another (one at least), numbered apart."""
        offsets = np.cumsum([0] + [len(p.names) for p in parts])
        return WholeRecordings(np.concatenate([p.probs for p in parts], axis=1),
                               np.concatenate([p.embeddings for p in parts], axis=1),
                               tuple(name for p in parts for name in p.names),
                               np.concatenate([p.recording + offset for p, offset in zip(parts, offsets)]),
                               np.concatenate([p.stored for p in parts]),
                               np.concatenate([p.background for p in parts]),
                               any(p.only_background for p in parts))


def whole_recording(windows: RecordingWindows, stored: list[tuple[float, float]], frame_s: float,
                    group: str, background: np.ndarray | None = None) -> WholeRecordings:
    """One recording's windows, those overlapping a span of ``stored`` (seconds) marked, and those
    at the indices ``background`` as the site's background."""
    site = np.zeros(len(windows.starts), bool)
    if background is not None:
        site[background] = True
    return WholeRecordings(windows.probs, windows.embeddings, (group,), np.zeros(len(windows.starts), int),
                           inside_detections(windows, stored, frame_s), site)


def review_targets(rows: list[dict], labels: tuple[str, ...], background: str) -> list[tuple[dict, int]]:
    """(review row, target class index) for every judged review whose label the bundle knows, in
    the order given (oldest first). One sound reviewed as detections of two bundles (before and
    after ``reanalyse``: overlapping, whatever each called it) counts once, by its latest verdict:
    twice, it would weigh double, and its windows could be taught as two classes at once. One
    sound: sharing a quarter of the shorter span (``same_sound``), not neighbours whose edges touch."""
    # Kept spans by recording: compared with every kept span, a year of a busy site's 20,000
    # reviews took 290 million comparisons (16 s here) before anything was read (a scale trial).
    out, kept = [], defaultdict(list)
    for row in reversed(rows):
        if row.get("end_s") is None:
            continue
        source, bundle_id, start_s, end_s = row.get("source"), row.get("bundle_id"), row.get("start_s"), row["end_s"]
        if source is not None and any(bundle != bundle_id and same_sound(start, end, start_s, end_s)
                                      for bundle, start, end in kept[source]):
            continue   # an older verdict on a sound judged since as another bundle's detection
        # Kept before its target is asked: a latest verdict adapt cannot use (unsure, a species the
        # bundle does not know) still outweighs an older one on the sound (a review: taught it anyway).
        kept[source].append((bundle_id, start_s, end_s))
        target = {"wrong": background, "correct": row["label"], "relabel": row["new_label"]}.get(row["verdict"])
        if target in labels:
            out.append((row, labels.index(target)))
    return out[::-1]


def event_windows(start_s: float, end_s: float, spec: WindowSpec, frame_s: float) -> list[int]:
    """First frames of the windows that made up an event (as ``analyzer.Analyzer.merge`` joined
    them): every ``hop`` from the event's first window until its end."""
    first, last_end = int(round(start_s / frame_s)), int(round(end_s / frame_s))
    starts = list(range(first, max(first, last_end - spec.frames) + 1, spec.hop))
    if starts[-1] + spec.frames < last_end:
        starts.append(last_end - spec.frames)
    return starts


@dataclasses.dataclass(frozen=True)
class RecordingWindows:
    """Every window of one recording as the recorder cuts it, through ``M`` members: ``starts
    [W]`` and ``lengths [W]`` in frames, ``probs [M, W, C]``, ``embeddings [M, W, d]``."""

    starts: np.ndarray
    lengths: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray
    duration_s: float


def recording_windows(ensemble: Ensemble, path: Path, batch_size: int = BATCH_SIZE) -> RecordingWindows:
    """The raw members' outputs on every window of the recording at ``path``, cut exactly as
    ``analyzer.AnalysisStream`` cuts and batches them (streaming frontend, window stream,
    end-aligned tail, ``batch_size`` as ``Analyzer``'s). Memory holds one batch of windows, not
    the recording's (an hour of 256-wide frames in windows would be ~230 MB)."""
    bundle = ensemble.bundle
    stream, cutter = StreamingFrontend(bundle.frontend), WindowStream(WindowSpec.from_seconds(
        bundle.window_s, bundle.hop_s, bundle.frontend))
    starts, lengths, parts, pending, samples = [], [], [], [], 0

    def run(windows: list[tuple[int, np.ndarray]]) -> None:
        # Dynamic int8 members quantise each batch's activations with one range, so outputs
        # depend a little on the batch: feed consecutive batches as the recorder does.
        for i in range(0, len(windows), batch_size):
            batch = windows[i:i + batch_size]
            parts.append(_member_outputs(ensemble, [w for _, w in batch]))
            starts.extend(s for s, _ in batch)
            lengths.extend(len(w) for _, w in batch)

    # The recorder's 10 s decode blocks: the streaming frontend's frames differ in the last float
    # bit with the block size, and int8 members can turn that into 1e-4 in a probability.
    for block in audio.iter_blocks(path, RECORDER_BLOCK_S, bundle.frontend.sample_rate):
        samples += len(block)
        pending += [(s, w.copy()) for s, w in cutter.push(stream.push(block))]
        ready = len(pending) - len(pending) % batch_size
        run(pending[:ready])
        pending = pending[ready:]
    pending += [(s, w.copy()) for s, w in cutter.push(stream.finish())]
    run(pending + list(cutter.finish()))
    if not parts:
        raise AudioError(f"{path}: too short for one window")
    probs, embeddings = (np.concatenate([p[k] for p in parts], axis=1) for k in (0, 1))
    return RecordingWindows(np.array(starts), np.array(lengths), probs, embeddings,
                            samples / bundle.frontend.sample_rate)


def nearest_windows(starts: np.ndarray, wanted: list[int], within: int) -> list[int]:
    """Indices of the recording's windows (``starts [W]`` in frames, increasing) nearest each
    wanted start, if within ``within`` frames: exact for the recorder's own windows, close for a
    detection made with another window or hop. Each window once, in time order."""
    picked = set()
    for s in wanted:
        i = int(np.clip(np.searchsorted(starts, s), 1, len(starts) - 1)) if len(starts) > 1 else 0
        i = min((j for j in (i - 1, i) if 0 <= j < len(starts)), key=lambda j: abs(int(starts[j]) - s))
        if abs(int(starts[i]) - s) <= within:
            picked.add(i)
    return sorted(picked)


def background_windows(windows: RecordingWindows, detections: list[tuple[float, float]],
                       wrong: list[tuple[float, float]], spec: WindowSpec, frame_s: float, background: int,
                       config: AdaptConfig, thresholds: np.ndarray,
                       parent_probs: np.ndarray | None = None) -> np.ndarray:
    """Indices of a reviewed recording's windows taken as this site's background without a review:
    those within ``config.neighbours`` hops of a detection reviewed wrong (the same noise, a
    moment earlier or later) and those the parent plainly calls background: the members' mean
    ranks background first and gives no call class its threshold (``thresholds``, per label
    index, the parent's point, read on ``parent_probs``: what the parent's site head and veto make
    of the members, when it has them; else the members' own); never a window that overlaps any
    stored detection (``detections``, seconds), reviewed or not. (Until 2026-12-06 "plainly" was a
    background probability of 0.9, which a normalised softmax with the shipped temperatures never
    reaches: no such window was ever taken, and a site head learnt the site's background from a
    handful of windows.)"""
    inside = inside_detections(windows, detections, frame_s)
    near = _overlapping(windows, wrong, frame_s, config.neighbours * spec.hop)
    mean = (windows.probs if parent_probs is None else parent_probs).mean(axis=0)
    calls = np.delete(np.arange(mean.shape[1]), background)
    confident = (mean.argmax(axis=1) == background) & (mean[:, calls] < thresholds[calls]).all(axis=1)
    return np.flatnonzero((near | confident) & ~inside)


def inside_detections(windows: RecordingWindows, detections: list[tuple[float, float]], frame_s: float) -> np.ndarray:
    """``[W]``: the windows that overlap a stored detection (seconds); one sharing under a frame
    with it does not (rounding of times)."""
    return _overlapping(windows, detections, frame_s, -1)


def _overlapping(windows: RecordingWindows, spans: list[tuple[float, float]], frame_s: float,
                 margin: float) -> np.ndarray:
    ends = windows.starts + windows.lengths
    hit = np.zeros(len(windows.starts), bool)
    for start_s, end_s in spans:
        hit |= (ends > start_s / frame_s - margin) & (windows.starts < end_s / frame_s + margin)
    return hit


def detection_spans(db: Path, source: str, bundle_id: str | None = None) -> list[tuple[float, float]]:
    """(start_s, end_s) of every stored detection of ``source``, reviewed or not: of any bundle, or
    of ``bundle_id`` only."""
    query, args = "SELECT start_s, end_s FROM detections WHERE source = ?", [source]
    if bundle_id is not None:
        query, args = query + " AND bundle_id = ?", args + [bundle_id]
    with closing(connect_read_only(db)) as conn:
        return [(a, b) for a, b in conn.execute(query, args)]


def _member_outputs(ensemble: Ensemble, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw members' ``probs [M, W, C]`` and ``embedding [M, W, d]`` of windows (grouped by length)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    probs, embeddings = [None] * len(windows), [None] * len(windows)
    for length in sorted({len(w) for w in windows}):
        idx = [i for i in order if len(windows[i]) == length]
        feed = {"logmel": np.stack([windows[i] for i in idx]).astype(np.float32)}
        outputs = [s.run(["probs", "embedding"], feed) for s in ensemble.sessions]
        for j, i in enumerate(idx):
            probs[i] = np.stack([o[0][j] for o in outputs])
            embeddings[i] = np.stack([o[1][j] for o in outputs])
    return np.stack(probs, axis=1), np.stack(embeddings, axis=1)
