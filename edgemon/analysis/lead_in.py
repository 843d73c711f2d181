"""The events of a recording analysed after the end of the one before it (a lead, ``files.preroll``).

Each recording alone judges a call its start cuts by the part it holds, and the recording before by
its own part: a call cut near its middle was stored from neither. With the lead, the recording's
windows keep their frames (the lead's start before frame 0) and its events are these:

* an event of the lead's windows alone is the recording before's: dropped;
* an event with a window in the recording is stored in it, from its start (``start_s`` 0), judged
  on all its windows; its votes say how many window hops before its start the first began (``"lead"``);
* unless the recording before stored its part itself (``Lead.stored``: a detection of the label
  ending in its last window): then only what the recording alone keeps of its own part is stored,
  as without the lead, so a call is not stored a second time. When what the recording before
  stored is not known (not analysed yet), it is taken to have stored its part when the event's
  windows lying within the lead hold a run the operating point keeps, or the event begins at the
  lead's first window (the call goes on before it: its part there is longer than the lead shows).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from edgemon.analysis.merging import Event, EventMerger, WindowVote


@dataclasses.dataclass(frozen=True)
class Lead:
    """Audio heard just before a recording: the end of the recording before it."""

    samples: np.ndarray              # mono float32 at the bundle's rate, a whole number of window hops
    stored: frozenset[str] | None = None   # labels the recording before stored up to its end; None: not known

    def frames(self, hop: int, hop_length: int) -> int:
        """Its length in frontend frames; ``ValueError`` unless a whole number of window hops
        (``hop`` frames of ``hop_length`` samples): the recording's windows then keep their frames."""
        if len(self.samples) % (hop * hop_length):
            raise ValueError(f"a lead of {len(self.samples)} samples is not a whole number of window hops "
                             f"({hop * hop_length} samples)")
        return len(self.samples) // hop_length


def recording_events(merger: EventMerger, windows: list[WindowVote], duration_s: float, runs: int,
                     whole: bool, lead: Lead | None, lead_frames: int) -> list[Event]:
    """The events stored for a held event's ``windows`` (``runs`` runs joined; ``whole``: kept as
    a short whole recording), their start frames the recording's, after ``lead_frames`` frames
    of ``lead`` (None: none)."""
    if lead is None or not windows or windows[0].start_frame >= 0:
        return [merger.event(windows, duration_s, runs, whole)]
    own = [w for w in windows if w.start_frame >= 0]
    if not own:
        return []
    label = merger.labels[windows[0].label]
    stored_before = _judged_before(merger, windows, lead_frames) if lead.stored is None else label in lead.stored
    if stored_before:
        return merger.merge_runs(_runs(own, merger.hop_frames), duration_s)
    event = merger.event(windows, duration_s, runs, whole)
    # Hops from its first window to the recording's start, not its windows there: runs joined
    # across a window of another vote (``EventMerger.joins``) have fewer, and the review page,
    # which plays this many hops of the recording before, began a hop after the call.
    votes = {**json.loads(event.votes), "lead": -windows[0].start_frame // merger.hop_frames}
    return [dataclasses.replace(event, start_s=0.0, votes=json.dumps(votes))]


def _judged_before(merger: EventMerger, windows: list[WindowVote], lead: int) -> bool:
    """Whether the recording before, not known to have stored the event's part in it, is taken to
    have: the part goes on before the ``lead`` frames, or its windows within them (ending by the
    recording's start, within half a hop: frames round a 2 s hop to 62 and a 4 s window to 125)
    hold a run the point keeps."""
    if windows[0].start_frame <= -lead:
        return True
    within = [w for w in windows if w.start_frame + w.frames <= merger.hop_frames // 2]
    return any(merger.kept(run) for run in _runs(within, merger.hop_frames))


def _runs(windows: list[WindowVote], hop: int) -> list[list[WindowVote]]:
    """An event's windows cut back into its runs: a run's windows are one hop apart (a last
    end-aligned one keeps its run's start, ``EventMerger.grow``); joined runs lie further."""
    runs: list[list[WindowVote]] = []
    for w in windows:
        if runs and w.start_frame - runs[-1][-1].start_frame <= hop:
            runs[-1].append(w)
        else:
            runs.append([w])
    return runs
