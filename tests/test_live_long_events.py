"""A live event longer than a minute is stored in pieces, so a process killed mid-duet loses only the
piece still open (tests/test_live_clock.py kills one). The pieces must store what one whole event
would: a review found that judging each piece by the operating point alone dropped minutes of a
duet whose later windows sit between the class threshold and its opening level (hysteresis)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edgemon.analysis.analyzer import WindowVote
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.decisions import OperatingPoint
from edgemon.live.capture import BlockQueue, CaptureConfig
from edgemon.live.store_writer import StoreWriter
from edgemon.live.worker import ListenConfig, Listener
from tests.test_listen import feed
from tests.watch_helpers import analyzer, query

SECONDS = 220


def _hysteresis_class() -> tuple[str, float, float]:
    """A class the shipped point extends from its threshold but opens only at a higher level."""
    bundle = load_bundle(default_bundle_path())
    point = OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds)
    found = next(((label, point.thresholds[label], opening) for label, opening in sorted(point.open_threshold.items())
                  if opening > point.thresholds[label]), None)
    if found is None:
        raise RuntimeError(f"{bundle.path}: no class of its operating point opens above its threshold; "
                           "these tests need one (hysteresis)")
    return found


LABEL, THRESHOLD, OPENING = _hysteresis_class()
LOW, HIGH = (THRESHOLD + OPENING) / 2, (OPENING + 1.0) / 2   # extends a run, but cannot open one; opens one


def scripted(an, level):
    """The ensemble's vote replaced by a script: LABEL at confidence ``level(t)`` for a window
    starting at t seconds, background where it gives None. Everything after the vote is the recorder's."""
    call = an.bundle.labels.index(LABEL)

    def vote_windows(batch):
        votes = []
        for start, window in batch:
            c = level(start * an.frame_s)
            label = an.background if c is None else call
            confidence = 0.9 if c is None else c
            # each member's probabilities too: the shipped point's event gate reads them
            probs = [1.0 - confidence if k == an.background else 0.0 for k in range(len(an.bundle.labels))]
            probs[label] = confidence
            votes.append(WindowVote(start, len(window), label, confidence, (label,) * 2, (tuple(probs),) * 2))
        return votes
    return vote_windows


def listen(tmp_path, level, max_event_s: float) -> list[tuple]:
    an = analyzer()
    an.vote_windows = scripted(an, level)
    now = [time.monotonic()]
    blocks = BlockQueue(maxsize=1_000_000, clock=lambda: now[0])
    db = tmp_path / f"cut{max_event_s:g}.db"
    writer = StoreWriter(db)
    listener = Listener(ListenConfig(capture=CaptureConfig(poll_s=0.02), max_event_s=max_event_s), an, blocks,
                        writer, "live:test", clock_synced=lambda: None)
    now[0] = feed(blocks, 1, np.zeros((16000 * SECONDS, 1), np.float32), 16000, now[0])
    drain = threading.Event()
    drain.set()
    listener.run(drain)
    writer.run(drain)
    return query(db, "SELECT label, start_s, end_s, votes, confidence FROM detections ORDER BY start_s")


def span(rows) -> tuple[float, float]:
    return rows[0][1], rows[-1][2]


FADING = (lambda t: None if t < 10 or t >= 200 else (HIGH if t < 60 else LOW))      # confident first
QUIET_START = (lambda t: None if t < 10 or t >= 200 else (LOW if t < 150 else HIGH))  # confident last
STEADY = (lambda t: None if t < 10 or t >= 200 else HIGH)


@pytest.mark.parametrize("level", [FADING, QUIET_START, STEADY], ids=["fading", "quiet-start", "steady"])
def test_a_long_event_stored_in_pieces_covers_what_the_whole_event_would(tmp_path, level):
    [whole] = listen(tmp_path, level, 1e9)
    pieces = listen(tmp_path, level, 60.0)
    first, last = span(pieces)                  # the two runs' clocks differ: compare lengths
    assert last - first == pytest.approx(whole[2] - whole[1], abs=0.002)
    assert all(a[2] == b[1] for a, b in zip(pieces, pieces[1:]))         # no gap, no overlap
    # A piece is stored once the run is kept: a run that opens late has a long first piece.
    assert all(p[2] - p[1] <= 62 for p in pieces[1:]) and len(pieces) >= 2
    # Each piece's confidence is the event's so far (a second review: calibrated on its own
    # windows, the fading duet's later pieces were stored at 0.04 against the event's 0.83); the
    # last piece's is the whole event's (``test_a_piece_is_calibrated_as_its_whole_run_so_far``).
    assert pieces[-1][4] == pytest.approx(whole[4], abs=1e-4)
    flags = [json.loads(p[3]) for p in pieces]
    assert [f.get("cut", False) for f in flags] == [True] * (len(pieces) - 1) + [False]
    assert [f.get("continues", False) for f in flags] == [False] + [True] * (len(pieces) - 1)


def test_a_run_the_point_does_not_keep_yet_stays_open_and_is_judged_whole(tmp_path):
    """Never confident enough to open: no piece is stored early, and the whole run is dropped as
    it would be without pieces."""
    level = (lambda t: None if t < 10 or t >= 200 else LOW)
    assert listen(tmp_path, level, 1e9) == []
    assert listen(tmp_path, level, 60.0) == []


def test_a_piece_is_calibrated_as_its_whole_run_so_far():
    """``EventMerger.piece`` stores the confidence, score and gate of the whole run so far, which the
    shipped calibration reads (its run's features), not those of the piece's own windows."""
    an = analyzer()
    call = an.bundle.labels.index(LABEL)
    levels = [HIGH] * 20 + [LOW] * 20
    n = len(an.bundle.labels)

    def vote(i, c):
        probs = tuple(c if k == call else (1.0 - c if k == an.background else 0.0) for k in range(n))
        return WindowVote(i * 62, 125, call, c, (call,) * 2, (probs,) * 2)
    run = [vote(i, c) for i, c in enumerate(levels)]
    merger = an.merger
    piece = merger.piece(run[30:], run, 100.0, continues=True)
    whole = merger.event(run, 100.0)
    own = merger.event(run[30:], 100.0)
    assert (piece.confidence, piece.score) == (whole.confidence, whole.score)
    assert json.loads(piece.votes)["gate"] == json.loads(whole.votes)["gate"] != json.loads(own.votes)["gate"]
    assert piece.confidence != pytest.approx(own.confidence, abs=1e-3)
