"""Windows, votes and events: the analysis path shared by watch, classify and listen."""

import dataclasses
import json

import numpy as np
import pytest

from edgemon.analysis.analyzer import BRIDGE, EventMerger, WindowStream, WindowVote
from edgemon.analysis.decisions import Calibration, OperatingPoint, apply_thresholds, clip_label
from edgemon.analysis.windows import WindowSpec, cut_windows, window_starts
from tests.watch_helpers import analyzer


@pytest.mark.parametrize("frames", [1, 5, 124, 125, 126, 187, 188, 1234])
@pytest.mark.parametrize("block", [1, 62, 5000])
def test_window_stream_equals_cutting_the_whole(frames, block):
    spec = WindowSpec(frames=125, hop=62)
    x = np.random.default_rng(frames).standard_normal((frames, 3)).astype(np.float32)
    stream, got = WindowStream(spec), []
    for i in range(0, frames, block):
        got += [(s, w.copy()) for s, w in stream.push(x[i:i + block])]
    got += list(stream.finish())
    windows, starts = cut_windows(x, spec)
    assert [s for s, _ in got] == starts.tolist() == window_starts(frames, spec).tolist()
    for (_, w), ref in zip(got, windows):
        np.testing.assert_array_equal(w, ref)
    assert starts[-1] + min(frames, 125) == frames  # the tail is always covered


def test_events_merge_consecutive_windows_and_background_splits_them():
    a = analyzer()
    labels = a.bundle.labels
    duet, argus = labels.index("gibbon_duet"), labels.index("great_argus")
    votes = [WindowVote(s * 62, 125, lab, 0.5 + 0.01 * s, (lab,)) for s, lab in
             enumerate([duet, duet, 0, duet, argus, argus])]
    # The merge rule itself: the shipped bundle's operating point would drop these short runs,
    # and its calibration would map their scores. (A copy: the session's shared analyzer is left
    # as it is, or every later test would run without the operating point.)
    merger = dataclasses.replace(a.merger, point=OperatingPoint({}), calibration=Calibration(), bridge=0)
    events = merger.merge(votes, duration_s=30.0)
    assert [(e.label, e.start_s) for e in events] == [("gibbon_duet", 0.0), ("gibbon_duet", round(3 * 62 * 0.032, 3)),
                                                      ("great_argus", round(4 * 62 * 0.032, 3))]
    assert events[0].end_s == pytest.approx((62 + 125) * 0.032)
    assert events[2].end_s == pytest.approx((5 * 62 + 125) * 0.032)
    # as the recorder merges: the two duet runs, a window apart, are one event
    joined = dataclasses.replace(merger, bridge=a.merger.bridge).merge(votes, duration_s=30.0)
    assert [(e.label, e.start_s, json.loads(e.votes).get("joined")) for e in joined] == \
        [("gibbon_duet", 0.0, 2), ("great_argus", round(4 * 62 * 0.032, 3), None)]
    assert events[2].confidence == pytest.approx(0.55)
    assert json.loads(events[0].votes) == {"windows": 2, "member_votes": [2], "window_confidence": [0.5, 0.51]}


def test_thresholds_turn_weak_windows_into_background_and_clip_label():
    winner, confidence = np.array([1, 2, 2, 0]), np.array([0.9, 0.3, 0.35, 0.8])
    labels = ("background", "a", "b")
    out = apply_thresholds(winner, confidence, labels, {"b": 0.4}, background=0)
    assert out.tolist() == [1, 0, 0, 0]
    assert clip_label(out, confidence, 0) == 1
    assert clip_label(np.array([0, 0]), np.array([0.9, 0.9]), 0) == 0
    assert clip_label(np.array([2, 1, 2]), np.array([0.4, 0.9, 0.4]), 0) == 2  # most windows wins


def test_blocks_of_any_size_give_the_same_analysis(borneo_dir):
    import soundfile

    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[2]
    x = soundfile.read(clip, dtype="float32")[0]
    a = analyzer()
    whole = a.analyse_blocks([x], keep_votes=True)
    for block in (1000, 16000, 70001):
        parts = a.analyse_blocks((x[i:i + block] for i in range(0, len(x), block)), keep_votes=True)
        assert [(v.start_frame, v.label) for v in parts.windows] == [(v.start_frame, v.label) for v in whole.windows]
        assert [(e.label, e.start_s, e.end_s) for e in parts.events] == [(e.label, e.start_s, e.end_s) for e in whole.events]
    assert whole.duration_s == pytest.approx(len(x) / 16000)


def test_the_window_a_file_ends_on_is_no_more_evidence_than_the_one_it_repeats(borneo_dir):
    """A review: the end-aligned last window can start one frame after the last regular one; it
    counted as a second window, so a weak run at the end of every file passed the windows rule and
    its confidence rose (a gibbon clip cut to 64 000 samples: 0.56; to 63 999, one window: 0.19).
    It is one window with the one it repeats, spanning both; a window half a hop on still counts."""
    import soundfile

    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[0]
    x = soundfile.read(clip, dtype="float32")[0]
    a = analyzer()
    (one,), (two,) = (a.analyse_blocks([x[:n]]).events for n in (63999, 64000))
    assert len(a.analyse_blocks([x[:64000]], keep_votes=True).windows) == 2                 # both windows voted
    assert json.loads(two.votes)["windows"] == json.loads(one.votes)["windows"] == 1
    assert (two.start_s, two.end_s) == (one.start_s, one.end_s)
    # its evidence is one window's, not two (the calibrated confidence reads the whole run's features,
    # which the end-aligned window, the more confident of the two, moves more than this)
    assert sum(json.loads(two.votes)["window_confidence"]) == pytest.approx(two.score, abs=1e-4)
    assert two.score == pytest.approx(one.score, abs=0.02)
    labels = a.bundle.labels
    duet = labels.index("gibbon_duet")
    merger = dataclasses.replace(a.merger, point=OperatingPoint({}), calibration=Calibration())
    for tail, windows in ((63, 2), (62 + 31, 3)):      # one frame on: one window; half a hop on: two
        votes = [WindowVote(0, 125, duet, 0.5, (duet,)), WindowVote(62, 125, duet, 0.6, (duet,)),
                 WindowVote(tail, 125, duet, 0.7, (duet,))]
        (event,) = merger.merge(votes, duration_s=30.0)
        assert json.loads(event.votes)["windows"] == windows, tail
        assert event.end_s == pytest.approx((tail + 125) * 0.032)


def _scripted(script: list[int], point: OperatingPoint):
    """The embedded bundle's analyzer voting ``script[i]`` (a label index) on window i, at 0.6."""
    from edgemon.analysis.analyzer import Analyzer
    from edgemon.analysis.bundle import default_bundle_path, load_bundle

    a = Analyzer(load_bundle(default_bundle_path()))
    a.merger = dataclasses.replace(a.merger, point=point, calibration=Calibration())
    hop = a.spec.hop

    def vote_windows(batch):
        return [WindowVote(s, len(w), script[min(round(s / hop), len(script) - 1)], 0.6, (0,)) for s, w in batch]

    a.vote_windows = vote_windows
    samples = np.zeros(((len(script) - 1) * hop + a.spec.frames - 1) * 512, np.float32)
    return a, samples


def test_a_stream_stores_what_the_merge_rule_stores_holding_an_event_a_run_may_join():
    """The recorder analyses in blocks and stores an event when its run ends; a kept event now waits
    until no run of its class can join it. Live (one window at a time) and batched, the stream
    stores the events ``EventMerger.merge`` makes of all the votes at once."""
    duet, argus = 1, 2
    script = [duet, duet, 0, duet, duet, 0, 0, 0, 0, 0, argus, 0, duet, 0, duet, duet] + [0] * 6 + [duet, duet]
    a, samples = _scripted(script, OperatingPoint({}, {"gibbon_duet": 2}))
    for eager, block in ((True, 1600), (False, 16000)):
        stream = a.stream(eager=eager, keep_votes=True)
        events = [e for i in range(0, len(samples), block) for e in stream.push(samples[i:i + block])] + stream.finish()
        assert events == a.merger.merge(stream.votes, stream.duration_s)
        assert [(e.label, json.loads(e.votes).get("joined")) for e in events] == \
            [("gibbon_duet", 2), ("great_argus", None), ("gibbon_duet", None), ("gibbon_duet", None)]   # the lone duet window: too short


def test_a_live_piece_of_a_long_event_begins_with_the_event_held_before_it():
    """A live stream stores an event open too long in pieces (``cut``); a kept event held a
    window's time before it is its beginning, not an event of its own."""
    duet = 1
    a, samples = _scripted([duet, duet, 0] + [duet] * 12, OperatingPoint({}, {"gibbon_duet": 2}))
    stream = a.stream(eager=True)
    cut_at = len(samples) * 3 // 4
    events = stream.push(samples[:cut_at])
    assert events == [] and stream.open_since_s == 0.0   # the first event waits, its clip from its start
    pieces = stream.cut() + stream.push(samples[cut_at:]) + stream.finish()
    assert [p.start_s for p in pieces][0] == 0.0 and len(pieces) == 2
    assert json.loads(pieces[0].votes)["cut"] and json.loads(pieces[1].votes)["continues"]


def test_a_run_a_window_after_a_live_event_stored_in_pieces_goes_on_with_that_event():
    """A live stream stores an event open too long in pieces (``cut``); a kept run a window after
    the event's last run joins it, as ``EventMerger.merge`` joins them: its last piece, not a
    second event on the call (the run after a cut event was an event of its own)."""
    duet = 1
    a, samples = _scripted([duet] * 8 + [0] + [duet] * 3, OperatingPoint({}, {"gibbon_duet": 2}))
    stream = a.stream(eager=True, keep_votes=True)
    cut_at = len(samples) // 2
    pieces = stream.push(samples[:cut_at]) + stream.cut() + stream.push(samples[cut_at:]) + stream.finish()
    [event] = a.merger.merge(stream.votes, stream.duration_s)
    assert [json.loads(p.votes).get("continues", False) for p in pieces] == [False, True]
    assert (pieces[0].start_s, pieces[-1].end_s) == (event.start_s, event.end_s)
    assert [c for p in pieces for c in json.loads(p.votes)["window_confidence"]] == \
        json.loads(event.votes)["window_confidence"]
    assert pieces[-1].confidence == event.confidence


def test_a_files_last_window_joins_a_kept_run_across_one_window_of_another_vote_not_two():
    """``BRIDGE`` is one window: a file's end-aligned last window starting a little after the
    second of two background windows is a run of its own (half a hop of slack in the reach let it
    join across both)."""
    hop, a = 62, 1
    merger = EventMerger(("background", "a"), 0, 0.032, OperatingPoint({}), hop_frames=hop, bridge=BRIDGE)

    def vote(start, label):
        return WindowVote(start, 125, label, 0.6, (label,))

    two_between = [vote(0, a), vote(hop, a), vote(2 * hop, 0), vote(3 * hop, 0), vote(3 * hop + hop // 2, a)]
    assert len(merger.merge(two_between, (3 * hop + hop // 2 + 125) * 0.032)) == 2
    one_between = [vote(0, a), vote(hop, a), vote(2 * hop, 0), vote(2 * hop + hop - 1, a)]
    assert [json.loads(e.votes).get("joined") for e in merger.merge(one_between, (3 * hop - 1 + 125) * 0.032)] == [2]


def test_the_recorders_analysis_does_not_grow_with_the_recordings_length():
    """Found by a large-recordings trial: every window's vote was kept for the whole recording
    (about 600 bytes a window), so watch and classify grew by 30 MB over a 24-hour file, and an
    isolated child pickled them all to its parent; nothing on the recorder reads them."""
    import tracemalloc

    a = analyzer()

    def peak_bytes(minutes):
        rng = np.random.default_rng(0)
        blocks = ((rng.standard_normal(160000) * 0.01).astype(np.float32) for _ in range(minutes * 6))
        tracemalloc.start()
        try:
            a.analyse_blocks(blocks)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_bytes(1)   # first use: onnxruntime's and numpy's one-off allocations
    # 1200 more windows: about 800 kB more when their votes were kept; the same peak now, give or take
    assert peak_bytes(50) - peak_bytes(10) < 300_000
