"""The live stream's time base without audio: blocks are (frames, callback time) pairs on a
made-up capture clock, and each rule of ``edgemon.live.timebase`` is checked in numbers."""

from __future__ import annotations

import math

import pytest

from edgemon.live.timebase import Correction, TimeBase, TimeBaseConfig

RATE = 1000.0          # frames per second: positions read as milliseconds
BLOCK = 100            # frames per callback (0.1 s)
LATENCY = 0.15         # PortAudio's input latency: a callback runs this long after its first frame


def opened(t0: float = 100.0, config: TimeBaseConfig = TimeBaseConfig()) -> TimeBase:
    """A stream whose first frame was heard at capture time ``t0``."""
    return TimeBase(RATE, t0 + LATENCY, LATENCY, BLOCK, config=config)


def feed(base: TimeBase, heard_at: float, seconds: float, skew: float = 0.0, late: float = 0.0) -> list[Correction]:
    """Blocks whose audio was truly heard from capture time ``heard_at`` on, for ``seconds``, each
    checked and advanced as the worker does; a callback runs ``LATENCY`` (plus ``late``) after its
    first frame, plus ``skew`` seconds per second (negative: a device clock that runs fast).
    Returns the corrections the time base made."""
    corrections = []
    for i in range(int(round(seconds * RATE / BLOCK))):
        start = heard_at + i * BLOCK / RATE
        received = start + LATENCY + late + skew * (start - heard_at)
        corrections += [c for c in [base.check(received, BLOCK)] if c is not None]
        base.advance(BLOCK)
    return corrections


def test_the_anchor_is_the_first_callback_less_latency_and_dropped_frames():
    base = TimeBase(RATE, 10.0, 0.25, BLOCK, dropped_frames=300)
    assert base.at(0) == pytest.approx(10.0 - 0.25 - 0.3)
    assert base.at(1500) == pytest.approx(base.at(0) + 1.5)
    for unbelievable in (math.nan, -0.1, 6.0):             # then the block's own length stands in
        assert TimeBase(RATE, 10.0, unbelievable, BLOCK).at(0) == pytest.approx(9.9)


def test_steady_jitter_changes_nothing():
    base = opened()
    assert feed(base, 100.0, 30.0) == []
    assert base.position == 30_000 and base.at() == pytest.approx(130.0)


def test_a_short_excursion_is_jitter_not_a_loss():
    """The callback is 1.5 s late for 1 s of blocks (under confirm_s), then on time again."""
    base = opened()
    feed(base, 100.0, 10.0)
    assert feed(base, 110.0, 1.0, late=1.5) == []
    assert feed(base, 111.0, 10.0) == [] and base.at() == pytest.approx(121.0)


def test_audio_that_never_arrived_is_skipped_and_returned_as_lost():
    """2 s of audio are lost between two blocks: after confirm_s of late callbacks the position
    jumps by 2 s, the lost stretch is returned, and later frames get their true times."""
    base = opened()
    feed(base, 100.0, 10.0)
    [loss] = feed(base, 112.0, 5.0)                 # the stream resumes with what was heard at 112 s
    assert loss.cause == "device" and loss.excess_s == pytest.approx(2.0, abs=1e-6)
    assert loss.lost_to_s - loss.lost_from_s == pytest.approx(2.0, abs=1e-3)
    assert base.at() == pytest.approx(117.0, abs=1e-3)
    assert feed(base, 117.0, 5.0) == []


def test_a_loss_soon_after_an_overflow_is_blamed_on_the_overflow():
    base = opened()
    feed(base, 100.0, 10.0)
    base.overflowed(110.0)
    [loss] = feed(base, 112.0, 5.0)
    assert loss.cause == "overflow"
    later = opened()
    feed(later, 100.0, 10.0)
    later.overflowed(100.5)                         # long before the loss: not its cause
    assert [c.cause for c in feed(later, 112.0, 5.0)] == ["device"]


def test_a_stream_running_ahead_moves_the_anchor_back():
    """A device clock 10 % fast: frames pile up faster than time passes; once the lead passes
    resync_s for confirm_s, the anchor moves back by it and no frames are skipped."""
    base = opened()
    feed(base, 100.0, 6.0)
    anchor, position = base.anchor, base.position
    corrections = feed(base, 106.0, 18.0, skew=-0.1)
    assert [c.cause for c in corrections] == ["ahead"]
    [ahead] = corrections
    assert ahead.excess_s < -1.0 and ahead.lost_from_s == ahead.lost_to_s
    assert base.anchor == pytest.approx(anchor + ahead.excess_s)
    assert base.position == position + 18_000


def test_lag_is_learnt_over_settle_s_so_a_late_start_is_not_a_loss():
    """The first second's callbacks are 3 s late (a device warming up), then steady: the smallest
    lag seen while settling is the stream's own, and nothing is counted lost."""
    base = opened(config=TimeBaseConfig(settle_s=5.0))
    assert feed(base, 100.0, 1.0, late=3.0) == []
    assert feed(base, 101.0, 20.0) == [] and base.at() == pytest.approx(121.0)


def test_a_correction_inside_a_segment_remaps_only_the_audio_after_it():
    base = opened()
    base.start_segment()
    feed(base, 100.0, 10.0)
    [loss] = feed(base, 112.0, 5.0)
    # The run of late blocks began with the block heard from 112 s: 10 s into the segment's audio.
    assert base.segment_time(4.0) == pytest.approx(104.0)
    assert base.segment_time(10.0) == pytest.approx(112.0, abs=1e-3)
    assert base.segment_time(12.5) == pytest.approx(114.5, abs=1e-3)
    base.end_segment()
    base.start_segment()                            # a new segment starts where the stream is now
    assert base.segment_time(0.0) == pytest.approx(117.0, abs=1e-3)


def test_a_run_that_crosses_segments_starts_over():
    """The late blocks begin in one segment and go on in the next (a drop ended the first): the
    run is not confirmed across the cut, so the loss is confirmed confirm_s into the new one."""
    base = opened()
    base.start_segment()
    feed(base, 100.0, 10.0)
    assert feed(base, 112.0, 1.5) == []
    base.end_segment()
    base.start_segment()
    assert feed(base, 113.5, 1.5) == []             # would have been confirmed here without the cut
    [loss] = feed(base, 115.0, 1.0)
    assert loss.excess_s == pytest.approx(2.0, abs=1e-6)
    # The new run began with the segment's first frame: all of the segment's audio is remapped.
    assert base.segment_time(0.0) == pytest.approx(113.5, abs=1e-3)
    assert base.segment_time(1.5) == pytest.approx(115.0, abs=1e-3)


def test_skipped_frames_move_time_on():
    base = opened()
    feed(base, 100.0, 1.0)
    assert base.skip(500) == pytest.approx((101.0, 101.5))
    assert feed(base, 101.5, 10.0) == []
