"""Audio -> windows -> ensemble votes -> events: the one analysis path of ``watch``, ``classify``
and ``listen``.

Memory is bounded whatever the recording's length: samples arrive in blocks, the streaming
frontend keeps under one FFT of them, the window stream keeps one window of frames, and windows
go through the ensemble in batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgemon.analysis import audio, lead_in
from edgemon.analysis.lead_in import Lead
from edgemon.analysis.bundle import MANIFEST, Bundle, default_bundle_path, load_bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint, apply_thresholds, check_point
from edgemon.analysis.ensemble import Ensemble, majority_vote
from edgemon.analysis.frontend import StreamingFrontend
from edgemon.analysis.merging import BRIDGE, Event, EventMerger, WindowVote
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import BundleError
from edgemon.safetext import shown

log = logging.getLogger(__name__)

# Windows per ensemble run for recordings. int8 members quantise each batch with one scale, so a
# window's probabilities depend on the batch it runs in: training votes with this one too.
BATCH_SIZE = 8


@dataclasses.dataclass(frozen=True)
class Analysis:
    duration_s: float
    windows: list[WindowVote]   # every window's vote, when asked for (``keep_votes``); else empty
    events: list[Event]
    note: str | None = None   # what the decoder could not read as usual (a rewritten header, a cut FLAC)


class WindowStream:
    """Cuts a stream of frames into windows of ``spec.frames`` every ``spec.hop`` frames, plus an
    end-aligned last window so the tail is never skipped (as ``windows.window_starts``)."""

    def __init__(self, spec: WindowSpec):
        self.spec = spec
        self._frames = np.zeros((0, 0), np.float32)
        self._offset = 0          # stream index of self._frames[0]
        self._next_start = 0
        self._last_end = 0

    def push(self, frames: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        self._frames = frames if self._frames.size == 0 else np.concatenate([self._frames, frames])
        total = self._offset + len(self._frames)
        while self._next_start + self.spec.frames <= total:
            local = self._next_start - self._offset
            yield self._next_start, self._frames[local:local + self.spec.frames]
            self._last_end = self._next_start + self.spec.frames
            self._next_start += self.spec.hop
        keep_from = min(self._next_start, max(total - self.spec.frames, 0)) - self._offset
        if keep_from > 0:
            self._frames, self._offset = self._frames[keep_from:], self._offset + keep_from

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        total = self._offset + len(self._frames)
        if total == 0 or self._last_end >= total:
            return
        start = max(total - self.spec.frames, 0)
        yield start, self._frames[start - self._offset:]


class Analyzer:
    """A bundle's ensemble, frontend, windows, operating point and calibration, ready to analyse
    audio blocks. A bundle without an operating point uses its thresholds and stores single
    windows; one without calibration stores the raw vote score as confidence."""

    def __init__(self, bundle: Bundle, threads: int = 1, batch_size: int = BATCH_SIZE,
                 window_s: float | None = None, hop_s: float | None = None):
        self.bundle = bundle
        self.ensemble = Ensemble(bundle, threads=threads)
        self.spec = WindowSpec.from_seconds(window_s or bundle.window_s, hop_s or bundle.hop_s, bundle.frontend)
        self.batch_size = batch_size
        self.background = bundle.labels.index(bundle.background_label)
        self.frame_s = bundle.frontend.hop_length / bundle.frontend.sample_rate
        try:
            point = OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds)
            calibration = Calibration.from_manifest(bundle.manifest)
            check_point(point, calibration, bundle.labels)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{bundle.path / MANIFEST}: malformed operating point or calibration "
                              f"({type(exc).__name__}: {exc})") from exc
        self.merger = EventMerger(bundle.labels, self.background, self.frame_s, point, calibration,
                                  hop_frames=self.spec.hop, bridge=BRIDGE)

    def vote_windows(self, batch: list[tuple[int, np.ndarray]]) -> list[WindowVote]:
        """Votes on ``(start_frame, window)`` pairs, in start order; thresholds applied."""
        results = []
        # Windows of one length run as one batch; only a stream's last window may be shorter.
        for length in sorted({len(w) for _, w in batch}):
            group = [(s, w) for s, w in batch if len(w) == length]
            member_probs = self.ensemble.member_probs(np.stack([w for _, w in group]))   # [M, B, C]
            votes = majority_vote(member_probs)
            labels = apply_thresholds(votes.winner, votes.confidence, self.bundle.labels,
                                      self.merger.point.thresholds, self.background)
            results += [WindowVote(s, length, int(labels[i]), float(votes.confidence[i]),
                                   tuple(int(m) for m in votes.member_labels[:, i]),
                                   tuple(tuple(float(p) for p in m[i]) for m in member_probs))
                        for i, (s, _) in enumerate(group)]
        return sorted(results, key=lambda v: v.start_frame)

    def stream(self, eager: bool = False, keep_votes: bool = False, lead: Lead | None = None) -> "AnalysisStream":
        """An incremental analysis of one stretch of contiguous audio (see ``AnalysisStream``)."""
        return AnalysisStream(self, eager=eager, keep_votes=keep_votes, lead=lead)

    def analyse_blocks(self, blocks: Iterable[np.ndarray], keep_votes: bool = False,
                       lead: Lead | None = None) -> Analysis:
        """Mono float32 blocks at the bundle's sample rate -> merged events, and every window's vote
        when ``keep_votes``. The recorder keeps none: they cost about 600 bytes a window, so a
        24-hour recording held 30 MB of them (and an isolated child pickled them to its parent)
        that nothing on the recorder reads. ``lead``: the audio heard just before the blocks
        (``AnalysisStream``)."""
        stream = self.stream(keep_votes=keep_votes, lead=lead)
        events = stream.push(lead.samples) if lead is not None else []
        events += [e for block in blocks for e in stream.push(block)]
        events += stream.finish()
        # What the decoder could not read as usual (``audio.Blocks.note``), for the file's ledger row.
        return Analysis(stream.duration_s, stream.votes, events, getattr(blocks, "note", None))

    def analyse_file(self, path: str | Path, block_seconds: float = 10.0, keep_votes: bool = False,
                     lead: Lead | None = None) -> Analysis:
        return self.analyse_blocks(audio.iter_blocks(path, block_seconds, self.bundle.frontend.sample_rate),
                                   keep_votes=keep_votes, lead=lead)

    def merge(self, votes: list[WindowVote], duration_s: float) -> list[Event]:
        """Join consecutive windows of the same label into events (``EventMerger.merge``)."""
        return self.merger.merge(votes, duration_s)


class AnalysisStream:
    """One stretch of contiguous audio through an ``Analyzer``, incrementally.

    ``push`` returns the events that a window with another label has just ended; ``finish`` the
    rest. Event times are seconds from the first sample, and the windows and their runs are those
    of the whole audio at once. ``eager`` votes on every window as soon as it is complete (live
    audio: low latency); otherwise windows wait for a full batch (recordings: throughput). With
    int8 members a window's probabilities depend a little on the batch it runs in (onnxruntime
    quantises each batch's activations with one scale, found by a review: up to 0.0056 apart
    between batches of 1, 8 and 32 on 9.7 min of devel audio, with the same labels and events
    there), so an eager stream's confidences, and a decision at the edge of a threshold, may
    differ from a batched one's.

    ``lead``: the stream begins with audio heard just before the recording (``lead_in.Lead``,
    pushed first), so that a call the recording's start cuts is judged whole. Times, frames and
    ``duration_s`` are then the recording's own (lead windows start before frame 0), the lead's
    windows are voted in batches of their own (the recording's windows batch as without it), and
    events are those ``lead_in.recording_events`` keeps.
    """

    def __init__(self, analyzer: Analyzer, eager: bool = False, keep_votes: bool = False, lead: Lead | None = None):
        self.analyzer = analyzer
        self.frontend = StreamingFrontend(analyzer.bundle.frontend)
        self.windows = WindowStream(analyzer.spec)
        self.eager = eager
        self.lead = lead
        self.lead_frames = 0 if lead is None else lead.frames(analyzer.spec.hop, analyzer.bundle.frontend.hop_length)
        # the recording's own samples, once the lead is in
        self.samples = -self.lead_frames * analyzer.bundle.frontend.hop_length
        self.voted = 0
        self.votes: list[WindowVote] = []   # every vote, when ``keep_votes``
        self._keep = keep_votes
        self._pending: list[tuple[int, np.ndarray]] = []
        self._run: list[WindowVote] = []
        self._earlier: list[WindowVote] = []   # windows of the open run already stored in pieces
        # A kept event's windows, held until no run of its class can join it (``EventMerger.joins``):
        # its runs joined, and whether it was kept as a short whole recording.
        self._held: list[WindowVote] = []
        self._held_runs, self._held_whole = 0, False
        # The windows of the open or held event already stored in pieces (``cut``): a run that ends
        # after pieces of it were stored is held as the rest of its event, so a run a window later
        # goes on with that event, as ``EventMerger.merge`` joins them.
        self._pieced: list[WindowVote] = []

    @property
    def duration_s(self) -> float:
        return self.samples / self.analyzer.bundle.frontend.sample_rate

    @property
    def open_since_s(self) -> float | None:
        """Where the run of windows not yet ended begins (seconds, as its event's ``start_s`` will
        be); None when none is open. A live stream's clips hold its audio from then on. An event
        held for a run that may join it is open too: it begins there."""
        first = self._held or self._run
        return round(first[0].start_frame * self.analyzer.frame_s, 3) if first else None

    def push(self, samples: np.ndarray) -> list[Event]:
        """Mono float32 samples at the bundle's rate -> events completed by them."""
        self.samples += len(samples)
        events = self._add(self.windows.push(self.frontend.push(samples)))
        if self._pending and self._pending[0][0] < 0:   # the lead's windows, not all in yet
            return events
        size = 1 if self.eager else self.analyzer.batch_size
        ready = len(self._pending) - len(self._pending) % size
        taken, self._pending = self._pending[:ready], self._pending[ready:]
        return events + self._take(taken)

    def _add(self, windows: Iterable[tuple[int, np.ndarray]], last: bool = False) -> list[Event]:
        """Windows to vote on, their starts in the recording's frames; those of the lead are voted
        apart, in one batch once all are in (int8 members quantise a batch with one scale: mixed
        with the recording's windows they would move its votes)."""
        self._pending += [(s - self.lead_frames, w.copy()) for s, w in windows]
        lead = [p for p in self._pending if p[0] < 0]
        if not lead or (len(lead) < self.lead_frames // self.analyzer.spec.hop and not last):
            return []
        self._pending = [p for p in self._pending if p[0] >= 0]
        return self._take(lead)

    def finish(self) -> list[Event]:
        events = self._add(self.windows.push(self.frontend.finish()))
        events += self._add(self.windows.finish(), last=True)
        events += self._take(self._pending)
        self._pending = []
        events += self._end_run(self.duration_s)
        return events + self._release(self.duration_s)

    def cut(self) -> list[Event]:
        """Store the open run so far as a piece of its event (``EventMerger.piece``) when the
        operating point keeps the run as a whole so far, and carry on: the rest of the run
        continues that event. Its last window stays open, so the piece ends where that window
        begins and the run's true end is stored by the last piece. A run not kept yet (or, with
        an event gate, no longer) stays open. A live stream calls this for an event open too long,
        so a process killed mid-event loses only the piece still open."""
        merger = self.analyzer.merger
        if len(self._run) < 2 or not merger.kept(self._earlier + self._run):
            return []
        out, head = [], []
        if not self._earlier:   # the run's first piece: it goes on with the held event it joins
            if self._held and merger.joins(self._held, self._run):
                head, self._held = self._held, []     # the held event's windows begin this piece
            else:
                out = self._release(math.inf)
        whole = self._pieced + head + self._run          # the event so far, the window held open too
        stored, self._run = head + self._run[:-1], self._run[-1:]
        # It ends where the window held open begins, and so does the next piece.
        piece = merger.piece(stored, whole, math.inf, bool(self._pieced),
                             round(self._run[0].start_frame * self.analyzer.frame_s, 3))
        self._earlier += stored[len(head):]
        self._pieced += stored
        return out + [piece]

    def _end_run(self, duration_s: float) -> list[Event]:
        """The events of the run that has just ended. When pieces of it were stored, the rest is
        held as its event's last piece (if the whole run is still kept); else, when the merge rule
        keeps it, it joins the held event or is held itself (the event held before it, if any, is
        stored now)."""
        run, earlier = self._run, self._earlier
        self._run, self._earlier = [], []
        merger = self.analyzer.merger
        if earlier:
            if not merger.kept(earlier + run):
                self._pieced = []
                return []
            self._held, self._held_runs, self._held_whole = run, 1, False
            return []
        short = bool(run) and merger.short_whole(run, duration_s)
        if not run or not (short or merger.kept(run)):
            return []
        if self._held and merger.joins(self._held, run):
            self._held += run
            self._held_runs += 1
            return []
        events = self._release(duration_s)
        self._held, self._held_runs, self._held_whole = run, 1, short
        return events

    def _release(self, duration_s: float) -> list[Event]:
        """The held event, stored now (none: []); its last piece when pieces of it were stored."""
        if not self._held:
            return []
        merger = self.analyzer.merger
        events = ([merger.piece(self._held, self._pieced + self._held, duration_s, continues=True)] if self._pieced
                  else lead_in.recording_events(merger, self._held, duration_s, self._held_runs, self._held_whole,
                                                self.lead, self.lead_frames))
        self._held, self._held_runs, self._held_whole, self._pieced = [], 0, False, []
        return events

    def _past_joining(self, vote: WindowVote) -> bool:
        """Whether no run can join the held event any more: ``vote`` begins past its reach, and
        the run open now (if any) is not one of its class that began within it."""
        merger = self.analyzer.merger
        return (vote.start_frame > self._held[-1].start_frame + merger.reach
                and not (self._run and merger.joins(self._held, self._run)))

    def _take(self, windows: list[tuple[int, np.ndarray]]) -> list[Event]:
        events = []
        size = self.analyzer.batch_size
        for i in range(0, len(windows), size):
            for vote in self.analyzer.vote_windows(windows[i:i + size]):
                self.voted += 1
                if self._keep:
                    self.votes.append(vote)
                if self._run and vote.label != self._run[-1].label:
                    # The merge rule: a different label, background too, ends a run.
                    events += self._end_run(math.inf)
                if vote.label != self.analyzer.background:
                    self.analyzer.merger.grow(self._run, vote)
                if self._held and self._past_joining(vote):
                    events += self._release(math.inf)
        return events


def make_analyzer(models: Path | None, threads: int = 1) -> Analyzer:
    """The Analyzer of the bundle at ``models`` (None: the embedded one); logs what it loaded."""
    bundle = load_bundle(models or default_bundle_path())
    log.info("bundle %s: %d member(s), labels %s", shown(bundle.bundle_id), len(bundle.members),
             shown(", ".join(bundle.labels)))
    return Analyzer(bundle, threads=threads)
