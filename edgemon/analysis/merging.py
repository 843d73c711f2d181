"""Window votes -> events: the merge rule shared by the recorder (``analyzer.AnalysisStream``) and
the training-side field measure (``training.field``). Consecutive windows of one label form a run;
the operating point keeps or drops each run on its own; kept runs of one class a window apart are
one event; a run over every window of a recording too short for its class stands for the rest.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator

import numpy as np

from edgemon.analysis.decisions import Calibration, OperatingPoint

BRIDGE = 1   # the windows of another vote a call may hold and stay one event (``EventMerger``)


@dataclasses.dataclass(frozen=True)
class WindowVote:
    """The vote on one window; ``label`` is after the bundle's per-class thresholds."""

    start_frame: int
    frames: int
    label: int
    confidence: float          # mean member probability of the voted class
    member_labels: tuple[int, ...]
    # [members][classes]: every member's probabilities, so the field measure's stored votes can
    # try rules on them without running the models again (empty where not kept)
    member_probs: tuple[tuple[float, ...], ...] = ()


@dataclasses.dataclass(frozen=True)
class Event:
    """Consecutive windows with the same non-background label; times in seconds from the start."""

    label: str
    start_s: float
    end_s: float
    confidence: float          # the calibrated probability that the event is right (the score if uncalibrated)
    votes: str                 # JSON: windows, per-member vote counts, window confidences
    score: float = 0.0         # the raw vote score: the highest window confidence in the event


@dataclasses.dataclass(frozen=True)
class EventMerger:
    """The merge rule, shared by the recorder and the training-side field measure: consecutive
    windows with the same non-background label form a run; a run with less evidence than the
    operating point asks of its class (``OperatingPoint.keeps``: windows, summed confidence, one
    confident window) is dropped; the rest become events, their confidence calibrated. Two kept
    runs of one class with at most ``bridge`` windows of another vote between them are one event
    (a window of a duet's pause voted background): 15 of 74 duets of a field trial were stored in
    two or three pieces, each counted as a call. Each run is kept or dropped on its own first, so
    joining never stores what the rules drop.
    ``frame_s`` is the frontend's hop in seconds (window starts are in frames)."""

    labels: tuple[str, ...]
    background: int
    frame_s: float
    point: OperatingPoint
    calibration: Calibration = Calibration()
    hop_frames: int = 0       # the windows' hop; 0: every window counts (``grow``)
    bridge: int = 0           # kept runs of one class at most this many windows apart are one event

    def runs(self, votes: list[WindowVote]) -> Iterator[list[WindowVote]]:
        """Consecutive windows of the same label; background ends a run."""
        run: list[WindowVote] = []
        for vote in votes + [None]:
            if run and (vote is None or vote.label != run[-1].label):
                yield run
                run = []
            if vote is not None and vote.label != self.background:
                self.grow(run, vote)

    def grow(self, run: list[WindowVote], vote: WindowVote) -> None:
        """Add ``vote`` to ``run`` (of its label). The window a file or segment ends on starts as
        little as one frame after the last of the regular ones: the same audio, it is one window
        with it, the more confident of the two, not more evidence. Counted twice, it let a weak run
        at the end of every file pass the windows rule and raised its confidence (a review: a call
        dropped mid-file was stored, at 0.68, when the file ended 40 ms later)."""
        last = run[-1] if run else None
        if last is not None and self.hop_frames and vote.start_frame - last.start_frame < (self.hop_frames + 1) // 2:
            # One window spanning both (the event keeps its start and reaches the end), voting
            # as the more confident of the two.
            chosen = vote if vote.confidence > last.confidence else last
            run[-1] = dataclasses.replace(chosen, start_frame=last.start_frame,
                                          frames=max(last.start_frame + last.frames, vote.start_frame + vote.frames)
                                          - last.start_frame)
            return
        run.append(vote)

    def gate(self, run: list[WindowVote]) -> float | None:
        """The event gate's probability that ``run`` is a call, as stored (4 decimals); None when
        the point has no gate for its class."""
        if self.point.gate is None:
            return None
        p = self.point.gate.probability(self.labels[run[0].label], run, self.background)
        return None if p is None else round(p, 4)

    def merge(self, votes: list[WindowVote], duration_s: float) -> list[Event]:
        """Join consecutive windows of the same label into runs, keep the runs the operating point
        stores, and join kept runs of one class close together (``joins``) into events.
        ``duration_s``: the audio's length (``math.inf`` while it goes on)."""
        return self.merge_runs(self.runs(votes), duration_s)

    def merge_runs(self, runs: Iterable[list[WindowVote]], duration_s: float) -> list[Event]:
        """``merge`` of runs already cut (each consecutive windows of one label, in order)."""
        stored: list[tuple[list[WindowVote], int, bool]] = []   # windows, runs joined, whole recording
        for run in runs:
            short = self.short_whole(run, duration_s)
            if not (short or self.kept(run)):
                continue
            if stored and self.joins(stored[-1][0], run):
                windows, runs, whole = stored[-1]
                stored[-1] = (windows + run, runs + 1, whole)
            else:
                stored.append((run, 1, short))
        return [self.event(windows, duration_s, runs, whole) for windows, runs, whole in stored]

    def joins(self, before: list[WindowVote], run: list[WindowVote]) -> bool:
        """Whether the kept ``run`` goes on with the stored windows ``before``: the same class,
        with at most ``bridge`` windows between them."""
        return (self.bridge > 0 and run[0].label == before[-1].label
                and run[0].start_frame - before[-1].start_frame <= self.reach)

    @property
    def reach(self) -> int:
        """How many frames after a kept run's last window start a run may start and join it: the
        bridged windows' hops and its own. A run's last window starts on the hop (an end-aligned
        one folded into it keeps its start, ``grow``), and a run starting up to a hop later on an
        end-aligned window has the regular windows of that hop between, no more: half a hop more
        let a file's last window join across two windows of another vote."""
        return (self.bridge + 1) * self.hop_frames

    def event(self, windows: list[WindowVote], duration_s: float, runs: int = 1, whole: bool = False) -> Event:
        """The event of kept ``windows`` (``runs`` runs joined; ``whole``: kept as a short whole
        recording); its votes JSON says ``"joined": runs`` and ``"whole": true`` when so."""
        flags = {**({"whole": True} if whole else {}), **({"joined": runs} if runs > 1 else {})}
        return self._event(windows, duration_s, self.gate(windows), flags or None)

    def kept(self, run: list[WindowVote], whole: bool = False) -> bool:
        """Whether the operating point stores this run (one label) as an event; ``whole``: the
        run is all of its recording's windows (``OperatingPoint.keeps``)."""
        # Decided on the confidences as stored (4 decimals), which the chooser of the point reads
        # back from events: a run at 0.51998 meets an opening level of 0.52 in both. A gate that
        # decides nothing (level 0: it only scores) is not computed here: the event computes it.
        gate = self.gate(run) if self.point.decides_by_gate else None
        return self.point.keeps(self.labels[run[0].label], [round(v.confidence, 4) for v in run], gate, whole)

    def short_whole(self, run: list[WindowVote], duration_s: float) -> bool:
        """Whether ``run`` is kept only because it covers its whole recording, too short for the
        windows its class needs (a recording of 6-8 s holds two or three windows, so a rhinoceros
        hornbill, four windows, could never be stored from it). The event's votes say ``"whole"``.
        A long recording is never whole: the rules hold there as chosen."""
        end = (run[-1].start_frame + run[-1].frames) * self.frame_s
        whole = run[0].start_frame == 0 and end >= duration_s - self.frame_s   # its last window ends a frame past
        return whole and not self.kept(run) and self.kept(run, whole=True)

    def piece(self, run: list[WindowVote], whole: list[WindowVote], duration_s: float, continues: bool,
              end_s: float | None = None) -> Event:
        """A piece of an event stored before its run has ended (a live stream stores a long event
        in pieces, so a process killed mid-event loses only the piece still open): the windows
        ``run`` of the run ``whole`` so far. Its confidence, score and gate are the whole run's so
        far, as the event's would be; it ends at ``end_s`` (where the next piece begins; None: its
        last window's end). Its votes say ``"cut"`` when its run goes on, ``"continues"`` when a
        piece came before."""
        gate = self.gate(whole)
        flags = {**({"continues": True} if continues else {}), **({"cut": True} if end_s is not None else {})}
        event = self._event(run, duration_s, gate, flags)
        label = self.labels[run[0].label]
        score = max(v.confidence for v in whole)
        return dataclasses.replace(
            event, score=score, confidence=self.calibration(label, score, sum(v.confidence for v in whole), gate),
            end_s=event.end_s if end_s is None else end_s)

    def _event(self, run: list[WindowVote], duration_s: float, gate: float | None = None,
               extra: dict | None = None) -> Event:
        label = run[0].label
        member_votes = np.array([v.member_labels for v in run])  # [windows, members]
        votes = {"windows": len(run), "member_votes": (member_votes == label).sum(axis=0).tolist(),
                 "window_confidence": [round(v.confidence, 4) for v in run],
                 **({"gate": gate} if gate is not None else {}), **(extra or {})}
        end = (run[-1].start_frame + run[-1].frames) * self.frame_s
        score = max(v.confidence for v in run)
        confidence = self.calibration(self.labels[label], score, sum(v.confidence for v in run), gate)
        return Event(label=self.labels[label], start_s=round(run[0].start_frame * self.frame_s, 3),
                     end_s=round(min(end, duration_s), 3), confidence=confidence, votes=json.dumps(votes),
                     score=score)
