"""The event gate: fitted on grouped-CV held-out runs, carried in the bundle's operating point, and
applied by the recorder's own merger."""

import json

import numpy as np
import pytest

from edgemon.analysis.analyzer import Analyzer, EventMerger, WindowVote
from edgemon.analysis.decisions import Calibration, OperatingPoint
from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate, run_features
from edgemon.errors import BundleError
from tests.conftest import hoots
from tests.test_field import FRAME_S, HOP, LABELS, _bundle_copy, _votes
from training.errors import DataError
from training.event_gate import GateChooser, candidates, fit_gate, probabilities
from training.field import measure
from training.field_votes import FieldVotes, StreamVotes
from training.operating import RULES, choose_point, class_tables, crossfit, field_report


def _window(i, label, mine, theirs, rng):
    """A window of ``label`` at about ``mine`` for the first member and ``theirs`` for the second
    (the rest of each member's probability on background); its confidence the members' mean."""
    def member(p):
        probs = [1.0 - p, 0.0, 0.0]
        probs[label] = p
        return tuple(probs)
    mine, theirs = mine + rng.uniform(-0.02, 0.02), theirs + rng.uniform(-0.02, 0.02)
    probs = (member(mine), member(theirs))
    labels = tuple(int(np.argmax(p)) for p in probs)
    return label, (mine + theirs) / 2, labels, probs


def _stream(windows, fold, calls=()):
    votes = [WindowVote(i * HOP, 125, lab, conf, labels, probs) for i, (lab, conf, labels, probs) in enumerate(windows)]
    return StreamVotes.from_votes(fold, (len(votes) * HOP + 63) * FRAME_S, votes, list(calls))


def _gate_field(folds=3, seed=0):
    """False runs of class a (one member sure, the other not: 0.9 and 0.3) and its calls (both
    members at 0.6) have the same confidence and length, so no threshold or evidence rule tells
    them apart, and the members' agreement does. Class b has three calls a fold, too few runs
    for a gate of its own."""
    rng = np.random.default_rng(seed)
    quiet = [(0, 0.9, (0, 0), ((0.9, 0.05, 0.05),) * 2)] * 6
    false = lambda: [_window(0, 1, 0.9, 0.3, rng) for _ in range(2)]            # noqa: E731
    streams, assembled = [], []
    for fold in range(folds):
        windows = []
        for _ in range(20):
            windows += quiet + false()
        streams.append(_stream(windows + quiet, fold))
        windows, calls = [], []
        for j in range(24):
            windows += quiet
            start = len(windows) * HOP * FRAME_S
            label = 2 if j % 8 == 0 else 1
            windows += [_window(0, label, 0.6, 0.6, rng) for _ in range(2)]
            calls.append((start, start + 2 * HOP * FRAME_S, label))
            windows += quiet + (false() if j % 3 == 0 else [])
        assembled.append(_stream(windows + quiet, fold, calls))
    clips = [_stream([_window(0, 1, 0.6, 0.6, rng)] * 2, f, [(0, 4, 1)]) for f in range(folds)]
    return FieldVotes(LABELS, FRAME_S, streams, assembled, clips, np.ones(folds, int))


def test_the_gate_keeps_every_call_and_drops_the_runs_no_rule_on_confidence_could():
    votes = _gate_field()
    hours = sum(s.duration_s for s in votes.background_streams) / 3600
    assert measure(votes, OperatingPoint({}))["false_events"] == 60
    hysteresis = measure(votes, choose_point(votes, 0.5 / hours, class_tables(votes, RULES["hysteresis"])))
    assert hysteresis["false_events"] == 0 and hysteresis["per_class"]["a"]["recall"] < 0.1   # the noise lets one through
    point = GateChooser(votes, RULES["gate"]).point(0.5 / hours)
    gated = measure(votes, point)
    assert gated["false_events"] == 0 and gated["recall"] == 1.0 and gated["precision"] == 1.0
    # chosen on two folds, it holds on the third
    held_out = crossfit(votes, [0.5 / hours], RULES["gate"])[0.5 / hours]
    assert held_out["false_events"] == 0 and held_out["recall"] == 1.0


def test_the_chooser_reads_the_gate_probabilities_the_recorder_computes():
    votes = _gate_field()
    cands = candidates(votes, RULES["gate"])
    everything = np.ones(len(cands.label), bool)
    gate, how = fit_gate(cands, everything, votes.labels, votes.background, RULES["gate"])
    assert how["a"].startswith("own fit") and how["b"].startswith("pooled fit")   # the stated fallback
    merger = EventMerger(votes.labels, votes.background, votes.frame_s, OperatingPoint({"a": 0.3, "b": 0.3}, gate=gate))
    recorder = [merger.gate(run) for s in votes.background_streams + votes.assembled
                for run in merger.runs(s.window_votes(merger))]
    assert recorder == probabilities(gate, cands, everything, votes.labels).tolist()


def test_a_gated_point_travels_in_the_field_report_and_the_event_says_its_gate():
    votes = _gate_field()
    report = field_report(votes, 1.0, grid=RULES["gate"])
    point = report["operating_point"]
    assert point["rules"]["kind"] == "gate" and set(point["min_gate"]) == {"a", "b"}
    loaded = OperatingPoint.from_manifest({"operating_point": point}, {})
    assert loaded.gate is not None and loaded.min_gate == point["min_gate"]
    events = votes.assembled[0].events(EventMerger(LABELS, 0, FRAME_S, loaded))
    assert events and all(json.loads(e.votes)["gate"] >= loaded.min_gate[e.label] for e in events)
    calibration = Calibration({"a": ((0.0, 1.0), (0.0, 0.5))}, "gate")
    gate = json.loads(events[0].votes)["gate"]
    assert calibration("a", 0.6, 1.2, gate) == pytest.approx(gate / 2)


def test_field_votes_without_member_probabilities_are_refused_in_one_line():
    votes = _gate_field()
    for s in votes.background_streams:
        s.probs = None
    with pytest.raises(DataError, match="no member probabilities"):
        candidates(votes, RULES["gate"])


def test_run_features_read_length_confidence_and_agreement():
    rng = np.random.default_rng(0)
    run = [WindowVote(i * HOP, 125, *_window(0, 1, 0.8, 0.8, rng)) for i in range(2)]
    f = dict(zip(FEATURES, run_features(run, 0)))
    assert f["log_windows"] == pytest.approx(np.log(2)) and f["all_members_agree"] == 1.0
    assert f["max_confidence"] == pytest.approx(max(v.confidence for v in run))
    assert f["background_probability"] == pytest.approx(1 - np.mean([v.confidence for v in run]))
    with pytest.raises(ValueError, match="member probabilities"):
        run_features([WindowVote(0, 125, 1, 0.5, (1,))], 0)


def _gate_manifest(**changes):
    gate = ClassGate((0.0,) * len(FEATURES), (1.0,) * len(FEATURES), (0.0,) * len(FEATURES), -50.0)
    entry = EventGate({"hornbill_helmeted": gate}).to_manifest()
    entry.update(changes)
    return {"thresholds": {}, "event_gate": entry, "min_gate": {"hornbill_helmeted": 0.5}}


def test_a_bundle_with_a_gate_stores_only_what_it_lets_through(tmp_path):
    samples = hoots(40.0)   # the embedded bundle calls these helmeted hornbills
    plain = Analyzer(_bundle_copy(tmp_path, "plain")).analyse_blocks([samples]).events
    assert plain
    shut = _bundle_copy(tmp_path, "shut", operating_point=_gate_manifest())     # the gate says 0 to every run
    assert Analyzer(shut).analyse_blocks([samples]).events == []
    opened = _gate_manifest()
    opened["event_gate"]["classes"]["hornbill_helmeted"]["intercept"] = 50.0
    events = Analyzer(_bundle_copy(tmp_path, "open", operating_point=opened)).analyse_blocks([samples]).events
    assert [(e.start_s, e.end_s) for e in events] == [(e.start_s, e.end_s) for e in plain]
    assert all(json.loads(e.votes)["gate"] == 1.0 for e in events)


def test_a_malformed_gate_is_refused_naming_the_manifest(tmp_path):
    with pytest.raises(BundleError, match="manifest.json: malformed operating point.*features"):
        _bundle_copy(tmp_path, "features", operating_point=_gate_manifest(features=["log_windows"]))
    bad = _gate_manifest()
    bad["event_gate"]["classes"]["hornbill_helmeted"]["scale"][0] = 0.0
    with pytest.raises(BundleError, match="manifest.json: malformed operating point.*positive scales"):
        _bundle_copy(tmp_path, "scale", operating_point=bad)


def test_gate_levels_and_a_calibration_on_the_gate_must_match_the_gate(tmp_path):
    """Refused when read, each in one line naming the manifest: levels without a gate, a gate
    class without a level, a level that is not a number, curves on the gate for a class it lacks."""
    no_gate = {"thresholds": {}, "min_gate": {"hornbill_helmeted": 0.5}}
    missing = {**_gate_manifest(), "min_gate": {}}
    nan = {**_gate_manifest(), "min_gate": {"hornbill_helmeted": float("nan")}}
    for name, point, match in (("none", no_gate, "without an event_gate"), ("missing", missing, "a level for each"),
                               ("nan", nan, "finite")):
        with pytest.raises(BundleError, match=f"manifest.json: malformed operating point.*{match}"):
            _bundle_copy(tmp_path, name, operating_point=point)
    curve = {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    with pytest.raises(BundleError, match="manifest.json: malformed .*no model for \\['great_argus'\\]"):
        _bundle_copy(tmp_path, "calibrated", operating_point=_gate_manifest(), calibration_input="gate",
                     calibration={"great_argus": curve, "hornbill_helmeted": curve})
    fine = _bundle_copy(tmp_path, "fine", operating_point=_gate_manifest(), calibration_input="gate",
                        calibration={"hornbill_helmeted": curve})
    assert Analyzer(fine).merger.calibration.input == "gate"


def test_a_given_gated_point_is_measured_with_the_gates_rules_and_calibrated_on_unseen_events():
    votes = _gate_field()
    point = GateChooser(votes, RULES["gate"]).point(1.0)
    with pytest.raises(DataError, match="--rules gate"):
        field_report(votes, 1.0, grid=RULES["hysteresis"], point=point)
    report = field_report(votes, 1.0, grid=RULES["gate"], point=point)
    assert report["calibration_report"]["calibrated_on"].startswith("held-out folds' events")
    assert report["operating_point"]["min_gate"] == point.min_gate


def test_info_shows_each_class_its_gate_level(tmp_path):
    from typer.testing import CliRunner

    from edgemon.cli import app

    point = _gate_manifest()
    point["min_gate"]["hornbill_helmeted"] = 1.01      # no probability reaches it
    bundle = _bundle_copy(tmp_path, "gated", operating_point=point)
    result = CliRunner().invoke(app, ["info", "--models", str(bundle.path), "--format", "text"])
    assert result.exit_code == 0, result.output
    assert "the event gate's probability an event needs" in result.output
    assert any(line.startswith("    hornbill_helmeted (") and line.endswith(", never") for line in result.output.splitlines())
    assert "  never stored at this point: hornbill_helmeted (a level no vote or gate probability reaches)" \
        in result.output.splitlines()


def test_malformed_gate_entries_name_the_field_and_class(tmp_path):
    cases = []
    word = _gate_manifest()
    word["min_gate"]["hornbill_helmeted"] = "abc"
    cases.append(("word", word, "min_gate of 'hornbill_helmeted': could not convert"))
    no_intercept = _gate_manifest()
    del no_intercept["event_gate"]["classes"]["hornbill_helmeted"]["intercept"]
    cases.append(("intercept", no_intercept, "event_gate of 'hornbill_helmeted' lacks 'intercept'"))
    stranger = _gate_manifest()
    stranger["event_gate"]["classes"]["tapir"] = stranger["event_gate"]["classes"]["hornbill_helmeted"]
    stranger["min_gate"]["tapir"] = 0.5
    cases.append(("tapir", stranger, "classes the bundle lacks: \\['tapir'\\]"))
    for name, point, match in cases:
        with pytest.raises(BundleError, match=f"manifest.json: malformed operating point.*{match}"):
            _bundle_copy(tmp_path, name, operating_point=point)


def test_a_point_that_stores_a_class_never_says_so():
    votes = _gate_field()
    point = OperatingPoint({"a": 0.3, "b": 1.0}, min_gate={"a": 1.01, "b": 0.2}, gate=GateChooser(votes).gate)
    assert point.never_stored(["a", "b"]) == ["a", "b"]
    assert OperatingPoint({"a": 0.99}, min_gate={"b": 1.0}).never_stored(["a", "b"]) == []
    report = field_report(votes, 1.0, grid=RULES["gate"])
    assert report["never_stored"] == [] and max(report["operating_point"]["min_gate"].values()) < 1.0


def test_a_point_that_never_stores_a_class_is_reported_and_warned_of(caplog):
    votes = _gate_field()
    with caplog.at_level("WARNING"):
        report = field_report(votes, 1.0, grid=RULES["hysteresis"], point=OperatingPoint({"a": 0.3, "b": 1.0}))
    assert report["never_stored"] == ["b"] and "b is never stored" in caplog.text


def test_a_point_without_a_gate_is_not_measured_with_the_gates_rules():
    votes = _gate_field()
    with pytest.raises(DataError, match="no event gate"):
        field_report(votes, 1.0, grid=RULES["gate"], point=OperatingPoint({"a": 0.5, "b": 0.5}))


def test_every_class_the_budget_can_afford_keeps_some_of_its_calls():
    """With one false event to spend, giving it to class a finds two more of a's calls, and
    switches b off; the chooser keeps b (one of its calls) instead."""
    from training.event_gate import NEVER, Candidates, choose_levels

    #            a: 3 right at 0.9, 1 false at 0.8, 2 right at 0.7 | b: 1 false at 0.95, 1 right at 0.6
    scores = np.array([0.9, 0.9, 0.9, 0.8, 0.7, 0.7, 0.95, 0.6])
    cands = Candidates(fold=np.zeros(8, int), label=np.array([1] * 6 + [2] * 2),
                       on_background=np.array([False] * 3 + [True] + [False] * 2 + [True, False]),
                       call=np.array([0, 1, 2, -1, 3, 4, -1, 5]), features=np.zeros((8, len(FEATURES))),
                       call_fold=np.zeros(6, int), call_label=np.array([1] * 5 + [2]), hours={0: 1.0})
    assert choose_levels(cands, scores, [0], LABELS, 0, 1.0) == {"a": 0.9, "b": 0.6}
    assert choose_levels(cands, scores, [0], LABELS, 0, 0.5) == {"a": 0.9, "b": NEVER}   # no budget for b


def test_the_search_keeps_as_many_classes_as_the_budget_affords():
    """Three classes, each needing one false event to find its calls, and two to spend. Spending
    both on a finds the most calls (five); keeping a and b finds four, and two classes (a review
    found a search that, unable to keep all three, kept only one)."""
    from training.event_gate import NEVER, Candidates, choose_levels

    labels = ("background", "a", "b", "c")
    # a: false at 0.8, three calls at 0.7, false at 0.65, two calls at 0.6; b, c: false at 0.8, a call at 0.7
    scores = np.array([0.8, 0.7, 0.7, 0.7, 0.65, 0.6, 0.6, 0.8, 0.7, 0.8, 0.7])
    label = np.array([1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3])
    call = np.array([-1, 0, 1, 2, -1, 3, 4, -1, 5, -1, 6])
    cands = Candidates(fold=np.zeros(11, int), label=label, on_background=call < 0, call=call,
                       features=np.zeros((11, len(FEATURES))), call_fold=np.zeros(7, int),
                       call_label=np.array([1, 1, 1, 1, 1, 2, 3]), hours={0: 1.0})
    levels = choose_levels(cands, scores, [0], labels, 0, 2.0)
    assert levels["a"] == 0.7 and sorted([levels["b"], levels["c"]]) == [0.7, NEVER]


def test_a_bundle_written_with_a_gate_requires_it_so_that_an_older_edgemon_refuses_it(tmp_path):
    """An edgemon that ignored the gate would store every run over its low base threshold."""
    from edgemon.analysis import bundle as bundles
    from edgemon.analysis.bundle import default_bundle_path, load_bundle
    from edgemon.analysis.bundle_write import write_bundle

    parent = load_bundle(default_bundle_path())
    common = dict(frontend=parent.frontend, window_s=parent.window_s, hop_s=parent.hop_s,
                  thresholds=parent.thresholds, precision=parent.members[0].precision)
    gated = write_bundle(tmp_path / "gated", parent.member_paths, list(parent.labels), **common,
                         extra={"operating_point": _gate_manifest()})
    plain = write_bundle(tmp_path / "plain", parent.member_paths, list(parent.labels), **common)
    assert gated.manifest["requires"] == ["event_gate"] and "requires" not in plain.manifest
    older = bundles.KNOWN_REQUIREMENTS - {"event_gate"}
    original, bundles.KNOWN_REQUIREMENTS = bundles.KNOWN_REQUIREMENTS, older
    try:
        with pytest.raises(BundleError, match=r"requires \['event_gate'\].*upgrade edgemon"):
            load_bundle(gated.path)
        load_bundle(plain.path)
    finally:
        bundles.KNOWN_REQUIREMENTS = original


def test_a_run_feature_calibration_tells_what_one_number_cannot_and_drops_nothing():
    """The calls and the false runs of ``_gate_field`` have the same confidences and lengths: a curve on
    the score or the evidence can only say their share; the run's features (the members' agreement)
    tell them apart. The fit rides as a gate at level 0: the point stores exactly what it stored."""
    votes = _gate_field()
    plain = OperatingPoint({"a": 0.3, "b": 0.3})
    report = field_report(votes, 1.0, grid=RULES["hysteresis"], point=plain)
    calibration = report["calibration_report"]
    assert calibration["input"].startswith("gate/run-features")
    assert calibration["calibrated"]["brier"] < 0.5 * calibration["evidence/platt"]["brier"]
    point = report["operating_point"]
    assert report["calibration_input"] == "gate" and point["min_gate"] == {"a": 0.0, "b": 0.0}
    loaded = OperatingPoint.from_manifest({"operating_point": point}, {})
    assert not loaded.decides_by_gate and not plain.decides_by_gate
    stored = Calibration.from_manifest(report)
    for stream in votes.assembled + votes.background_streams:
        before = stream.events(EventMerger(LABELS, 0, FRAME_S, plain))
        after = stream.events(EventMerger(LABELS, 0, FRAME_S, loaded, stored))
        assert [(e.label, e.start_s, e.end_s) for e in after] == [(e.label, e.start_s, e.end_s) for e in before]
        assert all(e.confidence == pytest.approx(json.loads(e.votes)["gate"]) for e in after)
    right = [e.confidence for e in votes.assembled[0].events(EventMerger(LABELS, 0, FRAME_S, loaded, stored))]
    assert max(right) > 0.8 and min(right) < 0.2     # it says "high" and "low", not the share for all


def test_a_point_with_a_scoring_gate_is_measured_by_its_own_rules_and_fitted_again():
    votes = _gate_field()
    first = field_report(votes, 1.0, grid=RULES["hysteresis"], point=OperatingPoint({"a": 0.3, "b": 0.3}))
    point = OperatingPoint.from_manifest({"operating_point": first["operating_point"]}, {})
    again = field_report(votes, 1.0, grid=RULES["hysteresis"], point=point)    # a re-bundled default's
    assert again["operating_point"]["event_gate"] == first["operating_point"]["event_gate"]
    assert again["at_point"]["events"] == first["at_point"]["events"]
    with pytest.raises(DataError, match="no event gate"):
        field_report(votes, 1.0, grid=RULES["gate"], point=point)


def test_info_names_a_run_feature_calibration_and_shows_no_gate_levels(tmp_path):
    from typer.testing import CliRunner

    from edgemon.cli import app

    point = _gate_manifest()
    point["min_gate"] = {label: 0.0 for label in point["min_gate"]}
    bundle = _bundle_copy(tmp_path, "scoring", operating_point=point, calibration_input="gate",
                          calibration={label: {"x": [0.0, 1.0], "y": [0.0, 1.0]} for label in point["min_gate"]})
    result = CliRunner().invoke(app, ["info", "--models", str(bundle.path), "--format", "text"])
    assert result.exit_code == 0, result.output
    assert "from the event's run (its length, confidences and how the members agree" in result.output
    assert "the event gate's probability an event needs" not in result.output


def test_a_class_without_held_out_events_takes_the_shared_intercept_and_says_so():
    from training.run_calibration import describe, fit_run_gate

    rng = np.random.default_rng(5)
    features = rng.normal(size=(60, len(FEATURES)))
    right = features[:, 0] + 0.5 * rng.normal(size=60) > 0
    label = np.ones(60, int)                                   # every event is of class a
    gate = fit_run_gate(features, label, right, LABELS, 0, 0.3)
    a, b = gate.classes["a"], gate.classes["b"]
    assert set(gate.classes) == {"a", "b"} and a.coef == b.coef and a.coef[0] > 0
    assert 0.0 < b.probability(features[0]) < 1.0             # b is still scored, by the shared model
    assert "none of them its own: the shared intercept" in describe(0.3, 60, 0)


def test_the_report_says_why_the_run_feature_fit_was_not_tried():
    from training.calibration import calibrate
    from training.field import ScoredEvents

    votes = _gate_field()
    report = field_report(votes, 1.0, grid=RULES["hysteresis"], point=OperatingPoint({"a": 0.3, "b": 0.3}))
    assert "run_features_skipped" not in report["calibration_report"]
    n = 20
    score = np.linspace(0.3, 0.9, n)
    few = ScoredEvents(np.ones(n, int), score, score, np.arange(n) % 2, np.arange(n) % 3 == 0, evidence=score,
                       features=np.zeros((n, len(FEATURES))))
    assert calibrate(few, LABELS, 0)[2]["run_features_skipped"].startswith("20 events, 7 right: it needs 30")
    without = ScoredEvents(np.ones(n, int), score, score, np.arange(n) % 2, np.arange(n) % 3 == 0, evidence=score)
    assert "no member probabilities" in calibrate(without, LABELS, 0)[2]["run_features_skipped"]
