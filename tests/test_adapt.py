"""``edgemon-train adapt`` end to end on a Borneo recorder's unseen clips laid into recordings:
analysed by the shipped bundle, reviews simulated from the true labels, adapted, and the adapted
bundle run by the recorder's own pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile

from devtools.site_sim import analyse_into, lay_recordings, recorder_clips, simulate_reviews, source_recordings
from edgemon.analysis.analyzer import Analyzer, EventMerger, WindowVote
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint, clip_label
from edgemon.analysis.ensemble import Ensemble, majority_vote
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.site_head import SiteHead, embedding_width
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import BundleError
from edgemon.review import reviews
from edgemon.storage.readonly import ReadError, database_uuid, reviewed
from edgemon.storage.store import Detection, Store
from tests.review_helpers import make_review_db
from training.adapt import (CALIBRATION_ONLY, _check_not_fitted_on, CANDIDATES, AdaptConfig, AdaptError, adapt_bundle, choose_candidate,
                            clearly_better, held_out_comparison, new_events, parent_point)
from training.adapt_fit import fit_correction, fit_operating_point, fit_thresholds
from training.adapt_decisions import (decide, decide_scored, detection_labels, kept_runs, event_scores,
                                      grouped_folds, new_event_runs, unmatched)
from training.adapt_windows import (RecordingWindows, ReviewedWindows, background_windows, detection_spans,
                                    event_windows, recording_windows, review_targets, whole_recording, WholeRecordings)
from training.adapted_bundle import write_adapted
from training.bundling import softmax_confidence_max
from training.site_calibration import Scored, fit_shift, shifted_curves, site_calibration

TRAINED_ON = ("train", "devel")   # the shipped bundle's training data


def unseen_clips(borneo: Path, recorder: str) -> list[dict]:
    """``recorder``'s clips from recordings the shipped bundle never trained on (test and pool)."""
    return recorder_clips(borneo, recorder, ("test", "pool"), source_recordings(borneo, TRAINED_ON))


def test_event_scores_count_hits_false_alarms_and_misses():
    truth = np.array([0, 1, 1, 2, 0])
    predicted = np.array([1, 1, 0, 1, 0])   # a kept false alarm, a hit, a miss, a wrong class
    s = event_scores(predicted, truth, background=0)
    assert (s["hits"], s["false_alarms"], s["misses"]) == (1, 2, 2)
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2)) and s["background_kept"] == 0.5


def test_events_stored_where_nothing_was_reviewed_count_as_false_alarms_in_f1():
    s = event_scores(np.array([1, 1]), np.array([1, 1]), background=0, new_events=2)
    assert (s["hits"], s["false_alarms"], s["new_events"]) == (2, 0, 2) and s["f1"] == pytest.approx(4 / 6)


def test_folds_hold_out_whole_recordings():
    groups = ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"]
    folds = grouped_folds(groups, 3)
    assert sum(f.astype(int) for f in folds).tolist() == [1] * len(groups)
    for fold in folds:
        held = {g for g, k in zip(groups, fold) if k}
        assert not held & {g for g, k in zip(groups, fold) if not k}
    assert len(grouped_folds(groups, 10)) == 4


def test_event_windows_rebuild_the_pipeline_windows():
    spec = WindowSpec.from_seconds(4.0, 2.0, FrontendConfig())   # 125 frames every 62
    frame_s = 512 / 16000
    assert event_windows(0.0, 125 * frame_s, spec, frame_s) == [0]
    assert event_windows(62 * frame_s, (124 + 125) * frame_s, spec, frame_s) == [62, 124]


def test_review_targets_compare_a_review_only_with_those_of_its_own_recording():
    """A year at a busy site (20,000 reviews): each review was compared with every one kept before
    it, 290 million comparisons before adapt read any audio. Counted here as the comparisons of
    recording names, which grew with the square of the reviews."""
    compared = []

    class Name(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            compared.append(other)
            return str.__eq__(self, other)

    rows = [{"source": Name(f"{i:05d}.WAV"), "bundle_id": ("old", "new")[i % 2], "start_s": 1.0, "end_s": 4.0,
             "verdict": "correct", "label": "a", "new_label": None} for i in range(400)]
    assert len(review_targets(rows, ("background", "a"), "background")) == 400
    assert len(compared) < len(rows)

def test_review_targets_map_verdicts_to_classes():
    labels = ("background", "a", "b")
    rows = [{"verdict": "wrong", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "correct", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "relabel", "label": "a", "new_label": "b", "end_s": 1},
            {"verdict": "unsure", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "relabel", "label": "a", "new_label": "zebra", "end_s": 1}]
    assert [t for _, t in review_targets(rows, labels, "background")] == [0, 1, 2]
    # One sound judged as two bundles' detections (before and after reanalyse) counts once, by its
    # latest verdict, whatever each bundle called it; overlapping detections of one bundle are two sounds.
    sound = {"source": "r.WAV", "new_label": None, "label": "a"}
    rows = [{**sound, "bundle_id": "old", "start_s": 2.0, "end_s": 6.0, "verdict": "correct"},
            {**sound, "bundle_id": "old", "start_s": 5.0, "end_s": 9.0, "verdict": "correct", "label": "b"},
            {**sound, "bundle_id": "new", "start_s": 2.5, "end_s": 6.5, "verdict": "wrong"}]
    assert [(r["bundle_id"], r["start_s"], t) for r, t in review_targets(rows, labels, "background")] == \
        [("new", 2.5, 0)]
    rows[2]["start_s"], rows[2]["end_s"] = 30.0, 34.0
    assert len(review_targets(rows, labels, "background")) == 3
    rows[2]["bundle_id"], rows[2]["start_s"], rows[2]["end_s"] = "old", 5.5, 9.5   # one bundle: three sounds
    assert len(review_targets(rows, labels, "background")) == 3
    # Neighbours whose edges touch (adjacent events share a frame) are two sounds, also across
    # bundles: a newcomer trial's verdict on one was dropped for the other's.
    touching = [{**sound, "bundle_id": "A", "start_s": 49.6, "end_s": 55.584, "verdict": "correct"},
                {**sound, "bundle_id": "B", "start_s": 55.552, "end_s": 59.552, "verdict": "correct"}]
    assert len(review_targets(touching, labels, "background")) == 2
    # A latest verdict adapt cannot use (unsure; a species the bundle does not know) still outweighs
    # the older one on the sound: it was taught by the older verdict (a review).
    for latest in ({"verdict": "unsure"}, {"verdict": "relabel", "new_label": "zebra"}):
        rows = [{**sound, "bundle_id": "old", "start_s": 2.0, "end_s": 6.0, "verdict": "correct"},
                {**sound, "bundle_id": "new", "start_s": 2.5, "end_s": 6.5, **latest}]
        assert review_targets(rows, labels, "background") == []


def test_too_few_reviews_are_refused_and_nothing_is_written(tmp_path):
    db, recordings = make_review_db(tmp_path)
    with pytest.raises(AdaptError, match="no judged review .* review some with `edgemon review` first"):
        adapt_bundle(default_bundle_path(), db, recordings, tmp_path / "new")
    first = reviews.list_detections(db)[0]
    reviews.add_verdict(db, first["id"], "wrong", "ann")
    with pytest.raises(AdaptError, match="1 usable review"):
        adapt_bundle(default_bundle_path(), db, recordings, tmp_path / "new")
    # Said before any audio is read (a review: the members ran over every reviewed recording
    # first): with none of the recordings to be found, the refusal is still about the reviews.
    away = recordings.rename(tmp_path / "away")
    with pytest.raises(AdaptError, match="1 usable review"):
        adapt_bundle(default_bundle_path(), db, None, tmp_path / "new")
    away.rename(recordings)
    assert not (tmp_path / "new").exists()



def test_a_parent_that_made_none_of_the_reviewed_detections_is_refused(tmp_path):
    """A newcomer trial: an edited copy of the default, adapted from the reviews of the default's
    detections, charged the parent with every event it stores there (no detection of its own to
    match), and the choice between candidates leaned on that."""
    db, recordings = make_review_db(tmp_path)            # detections of "default-test"
    for row in reviews.list_detections(db):
        reviews.add_verdict(db, row["id"], "correct", "ann")
    with pytest.raises(AdaptError, match=r"holds no detection of default-\w+, only of default-test: adapt the "
                                         r"bundle that made them, or first run `edgemon reanalyse"):
        adapt_bundle(default_bundle_path(), db, recordings, tmp_path / "new", AdaptConfig(min_reviews=2))
    assert not (tmp_path / "new").exists()
    other = tmp_path / "study.db"      # another tool's SQLite file (an Optuna study, say)
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE trials (id INTEGER)")
    with pytest.raises(ReadError, match=r"study\.db: not an edgemon database"):
        adapt_bundle(default_bundle_path(), other, recordings, tmp_path / "new")


def test_reviews_of_detections_no_longer_stored_are_named_when_left_out(tmp_path, caplog):
    """Found by a newcomer trial: after reanalyse removed detections, adapt used fewer reviews
    than were given and said nothing."""
    import logging

    db, recordings = make_review_db(tmp_path)
    first = reviews.list_detections(db)[0]
    reviews.add_verdict(db, first["id"], "wrong", "ann")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM detections WHERE id = ?", [first["id"]])     # as reanalyse removes it
    caplog.set_level(logging.WARNING)
    with pytest.raises(AdaptError, match="no judged review"):
        adapt_bundle(default_bundle_path(), db, recordings, tmp_path / "new")
    assert any("1 review(s) of detections no longer stored left out" in r.getMessage() for r in caplog.records)

@pytest.fixture(scope="module")
def site(borneo_dir, tmp_path_factory):
    """Recorder S19's unseen clips as recordings, analysed by the shipped bundle, every detection
    reviewed from the true labels. All of them: on a third, the shipped bundle stores no false detection."""
    root = tmp_path_factory.mktemp("site")
    recordings = root / "recordings"
    recordings.mkdir()
    clips = unseen_clips(borneo_dir, "S19")          # 89 clips, about 15 minutes of audio
    truth = lay_recordings(borneo_dir, clips, recordings, per_recording=8)
    db = root / "site.db"
    analyse_into(db, sorted(recordings.glob("*.WAV")), default_bundle_path(), device_id="S19")
    counts = simulate_reviews(db, truth)
    return root, recordings, db, truth, counts


def test_adapt_end_to_end_on_a_recorder_the_bundle_never_heard(site):
    root, recordings, db, truth, counts = site
    assert counts.get("correct", 0) >= 10 and counts.get("wrong", 0) + counts.get("relabel", 0) >= 1
    out = root / "adapted"
    result = subprocess.run([sys.executable, "-m", "training", "adapt", str(default_bundle_path()),
                             "--reviews", str(db), "--recordings", str(recordings), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    parent = load_bundle(default_bundle_path())
    adapted = load_bundle(out)
    assert summary["bundle_id"] == adapted.bundle_id != parent.bundle_id
    assert adapted.manifest["adapted"]["parent_bundle"] == parent.bundle_id
    assert adapted.manifest["adapted"]["reviews"]["used"] == sum(v for k, v in counts.items() if k != "unsure")
    held = summary["held_out"]
    decided_by = "parent" if summary["method"] == CALIBRATION_ONLY else summary["method"]
    assert held[decided_by]["f1"] >= held["parent"]["f1"]
    assert set(held) == {"parent", *CANDIDATES}
    # The stored confidence: the site's shift when it scored better on held-out recordings, else the parent's map.
    note = adapted.manifest["adapted"]["calibration"]
    assert note == summary["calibration"] and note["held_out"] == held[decided_by]["calibration"]
    site, kept = note["held_out"]["site"], note["held_out"]["parent"]
    assert site["detections"] == kept["detections"] > 0
    if note["written"] == "site":
        assert site["brier"] < kept["brier"] and adapted.manifest["calibration"] != parent.manifest["calibration"]
    else:
        assert adapted.manifest["calibration"] == parent.manifest["calibration"]
    # The recorder runs it: with the head when the head was chosen, else with new thresholds, or
    # with the parent's decisions and the site's calibration alone.
    analyzer = Analyzer(adapted)
    parents_point = OperatingPoint.from_manifest(parent.manifest, parent.thresholds)
    if "head" in summary["method"]:
        assert analyzer.ensemble.site_head is not None
    elif summary["method"] == CALIBRATION_ONLY:
        assert analyzer.merger.point == parents_point and note["written"] == "site"
    else:
        assert analyzer.ensemble.site_head is None
        # the refit may keep the parent's point; a new veto counts as a change of its own
        assert summary["point_changed"] == ("veto" in summary["method"] or analyzer.merger.point != parents_point)
    first = sorted(recordings.glob("*.WAV"))[0]
    assert analyzer.analyse_file(first).duration_s > 0
    text = subprocess.run([sys.executable, "-m", "edgemon", "info", "--models", str(out), "--format", "text"],
                          capture_output=True, text=True, timeout=60).stdout
    assert f"adapted to a site from bundle {parent.bundle_id}: method {summary['method']}" in text
    parents_own = OperatingPoint.from_manifest(parent.manifest, parent.thresholds)
    written = OperatingPoint.from_manifest(adapted.manifest, adapted.thresholds)
    assert summary["point_changed"] == ("head" in summary["method"] or "veto" in summary["method"]
                                        or written != parents_own)
    assert ("refitted unchanged" in text) == (not summary["point_changed"])
    assert f"highest confidence it can store: {adapted.confidence_max:g}" in text
    # Adapted again on the reviews it was fitted on, its corrections would be scored in-sample:
    # refused, naming the parent to adapt instead (found by a review).
    again = subprocess.run([sys.executable, "-m", "training", "adapt", str(out), "--reviews", str(db),
                            "--recordings", str(recordings), "--out", str(root / "again")],
                           capture_output=True, text=True, timeout=300)
    said = again.stdout + again.stderr
    assert again.returncode == 1 and "is already adapted to this site" in said and parent.bundle_id in said, said
    assert not (root / "again").exists()
    copied = root / "copied.db"            # a copy of the database is known by its own id, not its path
    shutil.copy(db, copied)
    again = subprocess.run([sys.executable, "-m", "training", "adapt", str(out), "--reviews", str(copied),
                            "--recordings", str(recordings), "--out", str(root / "again")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "is already adapted to this site" in again.stdout + again.stderr


def test_members_of_other_embedding_widths_are_refused_before_anything_runs(tmp_path):
    import torch

    from edgemon.analysis.bundle_write import write_bundle
    from edgemon.analysis.frontend import FrontendConfig
    from tests.conftest import TINY_LABELS
    from training.model import ModelConfig, PrimateBiLSTM
    from training.onnx_export import export_onnx

    torch.manual_seed(0)
    members = [export_onnx(PrimateBiLSTM(ModelConfig(hidden=h, layers=1, n_classes=3)).eval(), tmp_path / f"{h}.onnx",
                           TINY_LABELS, FrontendConfig()) for h in (8, 12)]
    bundle = write_bundle(tmp_path / "mixed", members, list(TINY_LABELS), frontend=FrontendConfig(),
                          window_s=1.5, hop_s=0.5)
    with pytest.raises(AdaptError, match=r"embeddings differ in width \(8, 12\)"):
        adapt_bundle(bundle.path, tmp_path / "no.db", None, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def _width(bundle) -> int:
    """The width of the members' ``embedding`` output, read from the first member."""
    import onnxruntime

    return embedding_width(onnxruntime.InferenceSession(str(bundle.member_paths[0]), providers=["CPUExecutionProvider"]))


def _zero_head(bundle, d: int) -> SiteHead:
    m, c = len(bundle.members), len(bundle.labels)
    return SiteHead(np.zeros((m, d + c, c), np.float32), np.zeros((m, c), np.float32),
                    np.zeros((m, d + c), np.float32), np.ones((m, d + c), np.float32))


def test_a_zero_site_head_leaves_the_parent_unchanged_and_a_tampered_one_is_refused(tmp_path):
    parent = load_bundle(default_bundle_path())
    out = write_adapted(parent, _zero_head(parent, _width(parent)), tmp_path / "zero", {"parent_bundle": parent.bundle_id})
    windows = np.random.default_rng(0).standard_normal((3, 125, parent.frontend.n_features)).astype(np.float32)
    plain, headed = Ensemble(parent), Ensemble(out)
    assert headed.site_head is not None and plain.site_head is None
    np.testing.assert_allclose(headed.member_probs(windows), plain.member_probs(windows), rtol=1e-4, atol=1e-6)
    assert out.bundle_id.startswith("zero-") and out.manifest["adapted"]["parent_bundle"] == parent.bundle_id
    head_file = out.path / out.manifest["site_head"]["file"]
    head_file.write_bytes(head_file.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="site_head.npz: site head file does not match its sha256"):
        Ensemble(load_bundle(out.path))


def test_a_site_head_of_the_wrong_width_is_refused_and_nothing_is_written(tmp_path):
    parent = load_bundle(default_bundle_path())
    width = _width(parent)
    with pytest.raises(BundleError, match=f"site head expects {width // 2}-wide embeddings, member00.onnx gives {width}"):
        write_adapted(parent, _zero_head(parent, width // 2), tmp_path / "narrow", {})
    assert not (tmp_path / "narrow").exists()


ADAPT_KILLED = """
import sys, time
from pathlib import Path
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from training import adapted_bundle

def swap(new, out):
    print(new, flush=True)
    time.sleep(600)   # killed here, before the swap (a power cut, timeout -s KILL)

adapted_bundle.swap_into_place = swap
adapted_bundle.write_adapted(load_bundle(default_bundle_path()), None, Path(sys.argv[1]), {})
"""


def test_the_staging_of_a_killed_adapt_is_removed_by_the_next(tmp_path):
    """A review: `adapt` killed outright left `.<out>.adapt.XXXX` (4.4 MB, the members) beside --out
    for good, and a later adapt to the same --out left it too. Now the next write removes it, its
    writer gone; a live writer's stays."""
    import os

    parent = load_bundle(default_bundle_path())
    child = subprocess.Popen([sys.executable, "-c", ADAPT_KILLED, str(tmp_path / "site")], stdout=subprocess.PIPE,
                             text=True)
    inner = Path(child.stdout.readline().strip())
    child.kill()
    child.wait()
    child.stdout.close()
    assert inner.name == "bundle" and inner.parent.parent == tmp_path and inner.is_dir(), inner
    assert inner.parent.name.startswith(".site.adapt.")
    live = tmp_path / f".site.adapt.{os.getpid()}.abcd_123"     # a writer still at work
    live.mkdir()
    out = write_adapted(parent, None, tmp_path / "site", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "site"])
    assert len(out.members) == len(parent.members)


ADAPT_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.errors import BundleError
from training.adapted_bundle import write_adapted

parent = load_bundle(default_bundle_path())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    write_adapted(parent, None, Path(sys.argv[1]), {})
except BundleError as e:
    print(e)
"""


def test_an_adapted_bundle_the_disk_has_no_room_for_is_one_line_naming_out(tmp_path):
    """A review: `adapt` onto a full disk said "error: [Errno 28] No space left on device:
    '…/member01.onnx' -> '…/.site.adapt.euirz97x/.bundle.egx2qijk/member01.onnx'"; now one line naming
    --out, and the adapted bundle there is left as it was."""
    out = tmp_path / "site"
    write_adapted(load_bundle(default_bundle_path()), None, out, {})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = subprocess.run([sys.executable, "-c", ADAPT_FULL_DISK, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout == f"--out {out}: cannot write there (File too large)\n", done
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def _drop(labels, detection, point, confidence=None):
    confidence = np.full(len(labels), 0.5) if confidence is None else np.asarray(confidence)
    return kept_runs(np.asarray(labels), confidence, np.asarray(detection), ("background", "a", "b"),
                     point, 0)[0].tolist()


def test_runs_the_operating_point_does_not_keep_are_dropped_within_each_detection():
    labels = [0, 2, 2, 0, 2, 1, 1, 1]
    detection = [0, 0, 0, 0, 1, 1, 1, 1]
    assert _drop(labels, detection, OperatingPoint({}, {"b": 3})) == [0, 0, 0, 0, 0, 1, 1, 1]   # b needs three windows
    assert _drop(labels, detection, OperatingPoint({}, {"b": 2})) == [0, 2, 2, 0, 0, 1, 1, 1]
    # a run of class a split by a detection boundary counts per detection
    assert _drop([1, 1, 1, 1], [0, 0, 1, 1], OperatingPoint({}, {"a": 3})) == [0, 0, 0, 0]
    # summed confidence and an opening level, as EventMerger applies them
    confidence = [0.9, 0.6, 0.6, 0.9, 0.9, 0.3, 0.3, 0.3]
    assert _drop(labels, detection, OperatingPoint({}, {}, {"a": 1.0}), confidence) == [0, 2, 2, 0, 2, 0, 0, 0]
    assert _drop(labels, detection, OperatingPoint({}, {}, {}, {"b": 0.8}), confidence) == [0, 0, 0, 0, 2, 1, 1, 1]


def test_runs_kept_in_numpy_are_the_recorders_events():
    """``kept_runs`` against ``EventMerger.merge`` on the same random window votes, for
    points with each rule: the same runs survive."""
    rng = np.random.default_rng(7)
    names = ("background", "a", "b")
    for point in (OperatingPoint({}, {"a": 2, "b": 3}), OperatingPoint({}, {}, {"a": 1.1, "b": 0.7}),
                  OperatingPoint({}, {"a": 2}, {"b": 1.0}, {"a": 0.6, "b": 0.5})):
        labels = rng.choice(3, size=400, p=[0.5, 0.3, 0.2])
        confidence = np.round(rng.uniform(0.3, 0.9, size=400), 4)
        kept = kept_runs(labels, confidence, np.zeros(400, int), names, point, 0)[0]
        merger = EventMerger(names, 0, 1.0, point)
        events = merger.merge([WindowVote(i, 1, int(l), float(c), (int(l),)) for i, (l, c) in enumerate(zip(labels, confidence))],
                              400.0)
        from_merger = np.zeros(400, int)
        for e in events:
            from_merger[int(e.start_s):int(e.end_s)] = names.index(e.label)
        assert from_merger.tolist() == kept.tolist() and 0 < len(events) < (labels != 0).sum()


def test_a_gated_point_drops_in_numpy_the_runs_the_recorder_drops():
    """The event gate read from the members' probabilities, as ``EventMerger`` reads it."""
    from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate
    from edgemon.analysis.vote import majority_vote

    rng = np.random.default_rng(3)
    names = ("background", "a", "b")
    member_probs = rng.dirichlet([2.0, 1.0, 1.0], size=(2, 400))
    votes = majority_vote(member_probs)
    gate = EventGate({label: ClassGate((0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                                       tuple(rng.normal(size=len(FEATURES))), 0.0) for label in ("a", "b")})
    point = OperatingPoint({}, min_gate={"a": 0.5, "b": 0.6}, gate=gate)
    kept = kept_runs(votes.winner, votes.confidence, np.zeros(400, int), names, point, 0, member_probs)[0]
    merger = EventMerger(names, 0, 1.0, point)
    window_votes = [WindowVote(i, 1, int(votes.winner[i]), float(votes.confidence[i]),
                               tuple(int(m) for m in votes.member_labels[:, i]),
                               tuple(tuple(map(float, m)) for m in member_probs[:, i])) for i in range(400)]
    from_merger = np.zeros(400, int)
    for e in merger.merge(window_votes, 400.0):
        from_merger[int(e.start_s):int(e.end_s)] = names.index(e.label)
    assert from_merger.tolist() == kept.tolist() and 0 < (kept != 0).sum() < (votes.winner != 0).sum()


def test_a_scoring_gate_is_read_for_kept_runs_only_when_scores_are_asked():
    """A gate at level 0 (a run-feature calibration) drops nothing: the decisions are those without
    it; ``decide_scored`` gives each kept run's gate as the recorder computes it, and the threshold
    searches' ``decide`` no longer computes it (it made adapt ten times slower)."""
    from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate
    from edgemon.analysis.vote import majority_vote
    from training.adapt_decisions import decide, decide_scored

    rng = np.random.default_rng(4)
    names = ("background", "a", "b")
    member_probs = rng.dirichlet([2.0, 1.0, 1.0], size=(2, 200))
    detection = np.repeat(np.arange(20), 10)
    gate = EventGate({label: ClassGate((0.0,) * len(FEATURES), (1.0,) * len(FEATURES),
                                       tuple(rng.normal(size=len(FEATURES))), 0.0) for label in ("a", "b")})
    plain = OperatingPoint({}, min_windows={"a": 2})
    scoring = OperatingPoint({}, min_windows={"a": 2}, min_gate={"a": 0.0, "b": 0.0}, gate=gate)
    assert not scoring.decides_by_gate
    assert decide(member_probs, detection, 20, names, scoring, 0).tolist() == \
        decide(member_probs, detection, 20, names, plain, 0).tolist()
    kept, window_gate = kept_runs(majority_vote(member_probs).winner, majority_vote(member_probs).confidence,
                                  detection, names, scoring, 0, member_probs)
    assert np.isnan(window_gate[kept == 0]).all() and not np.isnan(window_gate[kept != 0]).any()
    labels, _, _, gates = decide_scored(member_probs, detection, 20, names, scoring, 0)
    assert ((labels == 0) | (gates > 0)).all() and (labels != 0).sum() > 5
    skipped = kept_runs(majority_vote(member_probs).winner, majority_vote(member_probs).confidence, detection, names,
                        scoring, 0, member_probs, with_gates=False)[1]
    assert np.isnan(skipped).all()


def test_unstored_windows_mark_those_inside_a_stored_or_reviewed_detection():
    starts = np.arange(0, 40, 2)                               # 20 windows of 4 frames, frame_s = 1
    windows = RecordingWindows(starts, np.full(20, 4), np.zeros((1, 20, 3)), np.zeros((1, 20, 4)), 40.0)
    part = whole_recording(windows, [(10.0, 14.0)], 1.0, "r", np.array([0, 19]))   # windows 4-6 overlap it
    assert np.flatnonzero(part.stored).tolist() == [4, 5, 6] and np.flatnonzero(part.background).tolist() == [0, 19]
    joined = WholeRecordings.join([part, whole_recording(windows, [], 1.0, "s", np.array([3]))])
    assert joined.recording.tolist() == [0] * 20 + [1] * 20 and not joined.stored[20:].any()
    assert joined.names == ("r", "s") and np.flatnonzero(joined.background).tolist() == [0, 19, 23]
    s = joined.of({"s"})
    assert s.names[s.recording[0]] == "s" and s.recording.tolist() == [1] * 20 and not s.only_background
    assert joined.of({"s"}, only_background=True).recording.tolist() == [1]


def test_new_event_runs_are_the_recorders_events_outside_stored_detections():
    """Runs as ``EventMerger`` forms them; one that overlaps a stored detection is decided and
    scored there, any other is new, whatever lies beside it (found by a review: runs beside a
    detection, of another class or with a background window between, were taken as that
    detection's and not counted)."""
    rng = np.random.default_rng(5)
    names = ("background", "a", "b")
    member_probs = rng.dirichlet([2.0, 1.0, 1.0], size=(2, 400))
    votes = majority_vote(member_probs)
    point = OperatingPoint({"a": 0.4}, {"b": 2})
    merger = EventMerger(names, 0, 1.0, point)
    labels = np.where((votes.winner == 1) & (votes.confidence < 0.4), 0, votes.winner)
    events = merger.merge([WindowVote(i, 1, int(labels[i]), float(votes.confidence[i]),
                                      tuple(int(m) for m in votes.member_labels[:, i])) for i in range(400)], 400.0)
    nothing_stored = np.zeros(400, bool)
    runs = new_event_runs(member_probs, np.zeros(400, int), nothing_stored, names, point, 0)
    assert [(first, last + 1, names[c]) for _, first, last, c in runs] == [
        (int(e.start_s), int(e.end_s), e.label) for e in events] and len(runs) > 10

    def calls(*classes):
        probs = np.zeros((1, len(classes), 3))
        probs[0, np.arange(len(classes)), classes] = 1.0
        return probs

    stored = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], bool)   # a detection on windows 4-6
    one_recording = np.zeros(10, int)
    # a run of another class beside it, and one of its class past a background window: both new
    assert new_event_runs(calls(0, 2, 2, 1, 1, 1, 1, 0, 0, 0), one_recording, stored, names, point, 0) == [(0, 1, 2, 2)]
    assert new_event_runs(calls(0, 1, 1, 0, 1, 1, 1, 0, 0, 0), one_recording, stored, names, point, 0) == [(0, 1, 2, 1)]
    # the detection carried on into the windows beside it: not new; dropped, its neighbours are
    assert new_event_runs(calls(0, 0, 1, 1, 1, 1, 1, 1, 0, 0), one_recording, stored, names, point, 0) == []
    assert new_event_runs(calls(0, 1, 1, 0, 0, 0, 0, 1, 1, 0), one_recording, stored, names, point, 0) == [
        (0, 1, 2, 1), (0, 7, 8, 1)]
    # recordings end runs
    assert new_event_runs(calls(1, 1, 1, 1), np.array([0, 0, 1, 1]), np.zeros(4, bool), names, point, 0) == [
        (0, 0, 1, 1), (1, 2, 3, 1)]
    assert new_event_runs(calls(), np.zeros(0, int), np.zeros(0, bool), names, point, 0) == []


def test_where_the_parent_stored_nothing_is_read_from_its_own_detections(tmp_path):
    """Found by a review: another bundle's detections (``reanalyse``) hid the audio under them
    from the count of a candidate's new events."""
    db = tmp_path / "site.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE detections (source TEXT, start_s REAL, end_s REAL, bundle_id TEXT)")
        conn.executemany("INSERT INTO detections VALUES (?, ?, ?, ?)",
                         [("r", 10.0, 14.0, "parent"), ("r", 100.0, 400.0, "other"), ("s", 1.0, 2.0, "parent")])
    conn.close()
    assert detection_spans(db, "r", "parent") == [(10.0, 14.0)]
    assert sorted(detection_spans(db, "r")) == [(10.0, 14.0), (100.0, 400.0)]


def test_new_events_both_store_are_ties_and_the_rest_count_in_full():
    """Found by a review: an event both the candidate and the baseline store counted as a win and
    a loss, so shared events pushed the sign test toward a coin flip."""
    candidate = [(0, 10, 12, 1), (0, 30, 31, 2), (1, 5, 6, 1)]
    baseline = [(0, 11, 14, 1), (0, 30, 31, 1), (2, 0, 3, 2)]
    assert unmatched(candidate, baseline) == 2      # the first overlaps one of its class; the others do not
    assert unmatched(baseline, candidate) == 2 and unmatched([], baseline) == 0


def test_held_out_comparison_counts_what_each_candidate_stores_on_unreviewed_windows():
    """Found by the adapt bench: a site head chosen on held-out reviews (it dropped all three
    reviewed false alarms of S18) stored three false events on that recorder's unreviewed audio,
    against the baseline's one; the comparison saw only reviewed detections. Now the events each
    candidate stores on the held-out recordings' windows outside every stored detection count as
    false alarms."""
    bundle = load_bundle(default_bundle_path())
    ensemble = Ensemble(bundle)
    duet, rng = bundle.labels.index("gibbon_duet"), np.random.default_rng(0)

    def windows(n: int, label: int, p: float) -> np.ndarray:
        probs = np.full((2, n, len(bundle.labels)), (1 - p) / (len(bundle.labels) - 1))
        probs[:, :, label] = p
        return probs

    recordings = [f"r{i}" for i in range(4)]
    probs, detection, targets, groups = [], [], [], []
    for g in recordings:
        for target, p in ((duet, 0.9), (duet, 0.9), (duet, 0.9), (0, 0.6)):   # three right, one wrong
            probs.append(windows(3, duet, p))
            detection += [len(targets)] * 3
            targets.append(target)
            groups.append(g)
    # the recordings' windows: the members call a duet in r0, r1 and r2 where nothing was stored
    # (two events), and in r2 next to a stored detection (that detection's, carried on)
    whole = [np.concatenate([windows(4, 0, 0.9), windows(3, duet, 0.9) if g != "r3" else windows(3, 0, 0.9)],
                            axis=1) for g in recordings]
    probs, whole_probs = np.concatenate(probs, axis=1), np.concatenate(whole, axis=1)
    stored = np.zeros(28, bool)
    stored[20] = True                                          # r2's last window: inside a detection
    data = ReviewedWindows(probs, rng.normal(size=probs.shape[:2] + (192,)), np.array(detection), np.array(targets),
                           groups, list(range(len(targets))), whole=WholeRecordings(
                               whole_probs, rng.normal(size=whole_probs.shape[:2] + (192,)),
                               tuple(recordings), np.repeat(np.arange(4), 7), stored, np.zeros(28, bool)))
    scores = held_out_comparison(bundle, ensemble, data, AdaptConfig(steps=20))
    with pytest.raises(ValueError, match="background windows alone"):   # a training side holds no more
        new_events(ensemble, bundle, None, parent_point(bundle), data.subset(np.ones(16, bool), whole=False))
    parent = scores["parent"]
    assert (parent["hits"], parent["false_alarms"], parent["new_events"]) == (12, 4, 2)
    assert parent["f1"] == pytest.approx(24 / (24 + 4 + 2))
    assert scores["thresholds"]["new_events"] > 0
    for name in CANDIDATES:     # the same events as the baseline's are ties
        assert scores[name]["versus_baseline"]["losses"] <= (scores[name]["new_events"]
                                                             + scores[name]["false_alarms"] + scores[name]["misses"])
    assert scores["thresholds"]["versus_baseline"] == {"wins": 0, "losses": 0}
    for s in scores.values():   # every candidate pays for its own
        assert s["f1"] == pytest.approx(2 * s["hits"] / (2 * s["hits"] + s["false_alarms"] + s["new_events"] + s["misses"]))


def _windows(per_detection: list[int], label: int, confidence: float) -> np.ndarray:
    probs = np.full((sum(per_detection), 3), (1 - confidence) / 2)
    probs[:, label] = confidence
    return probs


def _reviewed(runs: list[tuple[int, float]], truth: list[int]):
    """One reviewed detection per ``(windows, confidence of class a)`` run, over three recordings:
    (member probabilities ``[1, N, 3]``, each window's detection, the ``ReviewedWindows``)."""
    probs = np.concatenate([_windows([n], 1, c) for n, c in runs])[None]
    detection = np.repeat(np.arange(len(runs)), [n for n, _ in runs])
    data = ReviewedWindows(probs, np.zeros((1, len(detection), 4)), detection, np.array(truth),
                           [f"r{i % 3}" for i in range(len(runs))], list(range(len(runs))))
    return probs, detection, data


def test_operating_point_learns_that_false_alarms_are_single_windows():
    """Six calls three windows long and six false alarms one window long, all at the same
    confidence: no threshold separates them, two windows per event does."""
    probs, detection, data = _reviewed([(3, 0.8)] * 6 + [(1, 0.8)] * 6, [1] * 6 + [0] * 6)   # one member
    labels = ("background", "a", "b")
    point = fit_operating_point(probs, data, labels, OperatingPoint({"a": 0.0}), 0, evidence=(1, 2, 3))
    assert point.min_windows == {"a": 2}
    assert decide(probs, detection, 12, labels, point, 0).tolist() == [1] * 6 + [0] * 6
    only_thresholds = fit_operating_point(probs, data, labels, OperatingPoint({"a": 0.0}), 0, evidence=(1,))
    assert only_thresholds.min_windows == {} and decide(probs, detection, 12, labels, only_thresholds, 0).tolist() == [1] * 12


def test_a_class_the_reviews_say_nothing_of_keeps_the_parents_threshold_and_windows():
    probs, detection, data = _reviewed([(3, 0.8)] * 6 + [(1, 0.8)] * 6, [1] * 6 + [0] * 6)
    labels = ("background", "a", "b")
    parent = OperatingPoint({"a": 0.3, "b": 0.37}, {"b": 5})       # no review is of class b
    assert fit_thresholds(probs, data, labels, parent, 0).thresholds == {"a": 0.3, "b": 0.37}
    point = fit_operating_point(probs, data, labels, parent, 0, evidence=(1, 2, 3))
    assert point.thresholds["b"] == 0.37 and point.min_windows == {"a": 2, "b": 5}


def test_a_summed_confidence_separates_what_threshold_and_windows_cannot():
    """Calls of three windows at 0.5 and of two at 0.7; false alarms of two windows at 0.5 and of
    one at 0.7: the best threshold and windows keep three false alarms, a summed confidence of
    1.25 none."""
    probs, detection, data = _reviewed([(3, 0.5)] * 3 + [(2, 0.7)] * 3 + [(2, 0.5)] * 3 + [(1, 0.7)] * 3,
                                       [1] * 6 + [0] * 6)
    labels = ("background", "a", "b")
    plain = fit_operating_point(probs, data, labels, OperatingPoint({"a": 0.0}), 0, evidence=(1, 2, 3))
    assert decide(probs, detection, 12, labels, plain, 0).tolist() == [1] * 9 + [0] * 3
    summed = fit_operating_point(probs, data, labels, OperatingPoint({"a": 0.0}), 0, evidence=(1, 2, 3),
                                 summed=(0.5, 1.0, 1.25, 1.5), opening=(0.6,))
    assert summed.min_evidence == {"a": 1.25} and summed.open_threshold == {}   # the laxest level that separates
    assert decide(probs, detection, 12, labels, summed, 0).tolist() == [1] * 6 + [0] * 6
    # where the reviews cannot tell levels apart, the parent's stays
    parent = OperatingPoint({"a": 0.0}, {}, {}, {"a": 0.45})
    kept = fit_operating_point(probs, data, labels, parent, 0, evidence=(1, 2, 3), summed=(1.25,), opening=(0.4, 0.5))
    assert kept.open_threshold == {"a": 0.45} and kept.min_evidence == {"a": 1.25}


def test_refitting_keeps_the_parents_summed_confidence_and_opening_level():
    """A parent whose point holds a class by its summed confidence and an opening level (as the
    shipped bundle's hysteresis point does): the fits re-choose thresholds and windows and keep the
    rest, and the held-out decisions apply them, as the recorder would."""
    probs, detection, data = _reviewed([(3, 0.8)] * 6 + [(1, 0.6)] * 6, [1] * 6 + [0] * 6)
    labels = ("background", "a", "b")
    parent = OperatingPoint({"a": 0.0, "b": 0.3}, {}, {"b": 1.5}, {"a": 0.7})
    assert decide(probs, detection, 12, labels, parent, 0).tolist() == [1] * 6 + [0] * 6   # the opening level
    for point in (fit_thresholds(probs, data, labels, parent, 0),
                  fit_operating_point(probs, data, labels, parent, 0, evidence=(1, 2))):
        assert point.min_evidence == {"b": 1.5} and point.open_threshold == {"a": 0.7}
        assert decide(probs, detection, 12, labels, point, 0).tolist() == [1] * 6 + [0] * 6


def test_an_evidence_rule_is_written_as_the_operating_point_the_recorder_uses(tmp_path):
    from tests.test_field import _bundle_copy

    # without the default's point and calibration (which reads the point's event gate)
    parent = _bundle_copy(tmp_path, "parent")
    point = OperatingPoint({**parent.thresholds, "great_argus": 0.5}, {"great_argus": 3})
    with_rule = write_adapted(parent, None, tmp_path / "rule", {"parent_bundle": parent.bundle_id}, point)
    without = write_adapted(parent, None, tmp_path / "plain", {"parent_bundle": parent.bundle_id},
                             OperatingPoint(point.thresholds))
    assert with_rule.manifest["operating_point"] == {"thresholds": point.thresholds, "min_windows": {"great_argus": 3}}
    hysteresis = dataclasses.replace(point, min_evidence={"great_argus": 1.5}, open_threshold={"gibbon_duet": 0.5})
    held = write_adapted(parent, None, tmp_path / "held", {"parent_bundle": parent.bundle_id}, hysteresis)
    assert held.manifest["operating_point"]["open_threshold"] == {"gibbon_duet": 0.5}
    assert Analyzer(held).merger.point == OperatingPoint(point.thresholds, {"great_argus": 3}, {"great_argus": 1.5},
                                                         {"gibbon_duet": 0.5})
    assert held.bundle_id != with_rule.bundle_id
    other_level = write_adapted(parent, None, tmp_path / "held", {"parent_bundle": parent.bundle_id},
                                dataclasses.replace(hysteresis, open_threshold={"gibbon_duet": 0.55}))
    other_sum = write_adapted(parent, None, tmp_path / "held", {"parent_bundle": parent.bundle_id},
                              dataclasses.replace(hysteresis, min_evidence={"great_argus": 2.0}))
    assert len({held.bundle_id, other_level.bundle_id, other_sum.bundle_id}) == 3
    assert "operating_point" not in without.manifest and without.thresholds["great_argus"] == 0.5
    assert with_rule.bundle_id.split("-")[-1] != without.bundle_id.split("-")[-1]
    assert Analyzer(with_rule).merger.point.windows_needed("great_argus") == 3
    assert Analyzer(without).merger.point.windows_needed("great_argus") == 1


def test_recording_windows_are_the_recorders_windows(tmp_path):
    """The members' outputs adapt learns from are those the recorder decides on: same windows,
    same batches (dynamic int8 quantisation depends on the batch), same votes."""
    rng = np.random.default_rng(1)
    path = tmp_path / "20180601_060000.WAV"
    # 131 s: 14 decode blocks, most of whose window counts are not multiples of a batch
    soundfile.write(path, (0.05 * rng.standard_normal(16000 * 131)).astype(np.float32), 16000, subtype="PCM_16")
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    windows = recording_windows(analyzer.ensemble, path)
    votes = analyzer.analyse_file(path, keep_votes=True).windows
    assert windows.starts.tolist() == [v.start_frame for v in votes]
    assert windows.lengths.tolist() == [v.frames for v in votes]
    mine = majority_vote(windows.probs).confidence
    np.testing.assert_allclose(mine, [v.confidence for v in votes], rtol=0, atol=1e-6)
    assert windows.duration_s == pytest.approx(131.0)


def test_background_windows_are_beside_wrong_detections_or_plainly_background_and_never_in_a_detection():
    spec = WindowSpec(frames=4, hop=2)
    starts = np.arange(0, 40, 2)                               # 20 windows of 4 frames
    probs = np.zeros((1, 20, 3))
    probs[0, :, :] = (0.3, 0.5, 0.2)                           # a call ranked first
    probs[0, 12:15, :] = (0.45, 0.15, 0.4)                     # background first, but class 2 at its threshold
    probs[0, 15:, :] = (0.42, 0.3, 0.28)                       # background first, no call at its threshold:
    windows = RecordingWindows(starts, np.full(20, 4), probs, np.zeros((1, 20, 3)), 40.0)   # far from 0.9
    detections = [(10.0, 14.0), (30.0, 34.0)]                  # frame_s = 1: windows 5-6 and 15-16 overlap them
    picked = background_windows(windows, detections, [(10.0, 14.0)], spec, 1.0, 0, AdaptConfig(neighbours=1),
                                np.array([0.0, 0.35, 0.4]))
    # beside the wrong one (two frames either side): 6 and 14, not 8-12 (inside it) nor 16 (beyond);
    # confident: 34-38, not 28-32 (inside the other detection)
    assert starts[picked].tolist() == [6, 14, 34, 36, 38]
    # A parent with a site head: read on what the head makes of the members, which here calls them class 1
    headed = probs.copy()
    headed[0, 15:, :] = (0.42, 0.36, 0.22)
    picked = background_windows(windows, detections, [(10.0, 14.0)], spec, 1.0, 0, AdaptConfig(neighbours=1),
                                np.array([0.0, 0.35, 0.4]), headed)
    assert starts[picked].tolist() == [6, 14]


def test_held_out_folds_keep_the_background_windows_of_their_own_recordings_only():
    """A fold fitted without recording 'b' must not learn from 'b's background windows; a
    training side holds the background windows of its recordings and nothing more of them."""
    whole = WholeRecordings(np.arange(12.0).reshape(1, 6, 2), np.zeros((1, 6, 4)), ("a", "b"),
                            np.array([0, 1, 0, 1, 0, 0]), np.array([True, False, False, True, False, False]),
                            np.array([True, True, False, True, True, False]))
    data = ReviewedWindows(np.zeros((1, 3, 2)), np.zeros((1, 3, 4)), np.array([0, 1, 2]), np.array([1, 0, 1]),
                           ["a", "b", "b"], [10, 11, 12], whole)
    assert data.background_count == 4 and data.extra_probs[0, :, 0].tolist() == [0.0, 2.0, 6.0, 8.0]
    held = data.subset(np.array([True, False, False]))
    assert held.review_ids == [10] and held.detection.tolist() == [0]
    assert held.whole.probs[0, :, 0].tolist() == [0.0, 4.0, 8.0, 10.0]
    assert held.whole.stored.tolist() == [True, False, False, False]
    assert held.background_count == 2 and held.extra_probs[0, :, 0].tolist() == [0.0, 8.0]
    training = data.subset(np.array([True, False, False]), whole=False)
    assert training.whole.only_background and training.whole.probs[0, :, 0].tolist() == [0.0, 8.0]
    assert training.extra_probs[0, :, 0].tolist() == [0.0, 8.0] and training.background_count == 2


def test_a_correction_of_one_class_leaves_the_other_logits_alone():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(1, 40))
    embeddings = rng.standard_normal((1, 40, 5))
    targets = rng.integers(0, 3, 40)
    head = fit_correction(probs, embeddings, targets, np.ones(40), 3, 0.01, AdaptConfig(steps=50), only=0)
    assert np.abs(head.weights[0][:, 0]).max() > 0 and head.bias[0][0] != 0
    assert not head.weights[0][:, 1:].any() and not head.bias[0][1:].any()


def test_detection_labels_are_clip_label_of_each_detection():
    rng = np.random.default_rng(3)
    detection = np.sort(rng.integers(0, 40, 300))
    window_labels = rng.integers(0, 4, 300)
    window_labels[detection % 7 == 0] = 0                      # some detections all background
    confidence = rng.choice([0.25, 0.5, 0.75], 300)           # repeated values: ties on weight too
    n = int(detection.max()) + 1
    expected = [clip_label(window_labels[detection == d], confidence[detection == d], 0) for d in range(n)]
    assert detection_labels(window_labels, confidence, detection, n, 4, 0).tolist() == expected


def test_the_best_candidate_is_chosen_and_one_worse_than_the_parent_refused():
    clear, by_chance = {"wins": 6, "losses": 0}, {"wins": 3, "losses": 0}
    scores = {"parent": {"f1": 0.80}, "thresholds": {"f1": 0.85},
              "thresholds+evidence": {"f1": 0.85, "versus_baseline": clear},
              "head": {"f1": 0.70, "versus_baseline": clear}, "head+thresholds": {"f1": 0.84, "versus_baseline": clear},
              "veto+thresholds+evidence": {"f1": 0.85, "versus_baseline": clear}}
    assert choose_candidate(scores) == "thresholds"            # a tie goes to the simpler
    scores["thresholds+evidence"]["f1"] = 0.86
    assert choose_candidate(scores) == "thresholds+evidence"
    # Found by the adapt bench: on S18's 12 reviews a site head dropped the three held-out false
    # alarms (F1 1.0 against 0.857) and stored three false events on its other audio against the
    # baseline's one. Three wins and no loss is a coin flip's 1 in 8: the baseline is kept.
    scores["head"] = {"f1": 1.0, "versus_baseline": by_chance}
    assert choose_candidate(scores) == "thresholds+evidence"
    scores["head"]["versus_baseline"] = clear
    assert choose_candidate(scores) == "head"
    no_better = {"detections": 20, "brier": 0.20, "ece": 0.1}
    worse = {name: {"f1": 0.70, "versus_baseline": clear} for name in CANDIDATES} | {
        "parent": {"f1": 0.71, "calibration": {"parent": no_better, "site": no_better}}}
    with pytest.raises(AdaptError, match=r"worse than its parent .*0\.700 < 0\.710.*calibration is no better"):
        choose_candidate(worse)
    # no candidate beats the parent, but the site's calibration of the parent's detections does
    worse["parent"]["calibration"]["site"] = {"detections": 20, "brier": 0.12, "ece": 0.05}
    assert choose_candidate(worse) == CALIBRATION_ONLY


def test_where_every_reviewed_detection_was_wrong_fewer_false_alarms_win():
    """A review: at a site where all 31 reviewed detections were false alarms, every F1 was 0, the
    tie went to the baseline and the parent's decisions were written again as an adapted bundle,
    though a site head dropped every false alarm with 31 wins and no loss against the baseline."""
    none_right = {"f1": 0.0, "hits": 0, "misses": 0}
    scores = {"parent": none_right | {"false_alarms": 31, "new_events": 0},
              "thresholds": none_right | {"false_alarms": 31, "new_events": 0},
              "thresholds+evidence": none_right | {"false_alarms": 31, "new_events": 0,
                                                   "versus_baseline": {"wins": 0, "losses": 0}},
              "head": none_right | {"false_alarms": 0, "new_events": 0, "versus_baseline": {"wins": 31, "losses": 0}},
              "head+thresholds": none_right | {"false_alarms": 0, "new_events": 2,
                                               "versus_baseline": {"wins": 29, "losses": 2}},
              "veto+thresholds+evidence": none_right | {"false_alarms": 31, "new_events": 0,
                                                        "versus_baseline": {"wins": 0, "losses": 0}}}
    assert choose_candidate(scores) == "head"


def test_clearly_better_is_a_one_sided_sign_test():
    assert not clearly_better(0, 0) and not clearly_better(4, 0) and clearly_better(5, 0)   # 1/16, 1/32
    assert clearly_better(9, 1) and not clearly_better(8, 2) and not clearly_better(1, 9)  # 0.011, 0.055


def test_an_adapted_bundle_keeps_the_parents_names_reference_windows_and_calibration(tmp_path):
    """Until the sixth session an adapted bundle lost them: its detections had no species names,
    its confidence fell back to the raw score, and the recorder no longer checked its members."""
    parent = load_bundle(default_bundle_path())
    adapted = write_adapted(parent, None, tmp_path / "kept", {"parent_bundle": parent.bundle_id})
    for key in ("label_names", "calibration", "calibration_input", "calibration_fits", "confidence_max"):
        assert adapted.manifest[key] == parent.manifest[key], key
    assert adapted.self_check is not None and Ensemble(adapted).self_check.passed
    assert adapted.path.stat().st_mode & 0o077 != 0     # not mkdtemp's 0700: the service's user reads it
    calibration = {"calibration": {"gibbon_duet": {"x": [0.0, 1.0], "y": [0.0, 0.95]}}, "calibration_input": "score",
                   "calibration_fits": {"gibbon_duet": "site shift"}}
    shifted = write_adapted(parent, None, tmp_path / "site", {"parent_bundle": parent.bundle_id}, calibration=calibration)
    assert shifted.manifest["calibration"] == calibration["calibration"]
    assert shifted.manifest["calibration_fits"] == {"gibbon_duet": "site shift"}
    assert shifted.bundle_id.split("-")[-1] != adapted.bundle_id.split("-")[-1]   # another confidence, another id
    # great_argus now stores its raw score, whose ceiling is the members' softmax bound
    assert shifted.manifest["confidence_max"] == pytest.approx(max(0.95, softmax_confidence_max(parent.member_paths)))
    assert Analyzer(shifted).merger.calibration("gibbon_duet", 0.5) == pytest.approx(0.475)



def test_info_says_a_site_calibration_is_fitted_to_the_site_not_on_grouped_cv_recorders(tmp_path):
    """Found walking the adapt loop: `edgemon info` on a bundle whose stored confidence is the
    site's calibration said "calibrated: an estimate, fitted on grouped-CV recorders", two lines
    above "stored confidence: the site calibration"."""
    from edgemon.analysis.ensemble import describe_bundle

    parent = load_bundle(default_bundle_path())
    kept = write_adapted(parent, None, tmp_path / "kept", {"parent_bundle": parent.bundle_id,
                                                           "calibration": {"written": "parent's"}})
    assert "fitted on grouped-CV recorders" in describe_bundle(kept.path)[0]["confidence"]
    calibration = {"calibration": {"gibbon_duet": {"x": [0.0, 1.0], "y": [0.0, 0.95]}}, "calibration_input": "score",
                   "calibration_fits": {"gibbon_duet": "site shift"}}
    site = write_adapted(parent, None, tmp_path / "site", {"parent_bundle": parent.bundle_id, "calibration": {
        "written": "site", "a": 0.8, "b": 0.96, "detections": 49}}, calibration=calibration)
    meaning = describe_bundle(site.path)[0]["confidence"]
    assert "grouped-CV" not in meaning and "fitted to this site's 49 reviewed detections" in meaning, meaning

def test_decided_detections_carry_the_score_and_evidence_of_their_windows():
    probs, detection, data = _reviewed([(3, 0.8), (1, 0.6), (2, 0.3)], [1, 0, 1])
    labels = ("background", "a", "b")
    decided, score, evidence, gate = decide_scored(probs, detection, 3, labels, OperatingPoint({"a": 0.5}), 0)
    assert decided.tolist() == [1, 1, 0]
    assert score.tolist() == pytest.approx([0.8, 0.6, 0.0]) and evidence.tolist() == pytest.approx([2.4, 0.6, 0.0])
    assert np.isnan(gate).all()   # no gate at this point


def test_decided_detections_carry_their_gate_probability_for_a_calibration_on_the_gate():
    """A gated parent calibrated on the gate: the site calibration reads each reviewed detection's
    gate, as the recorder does (a review found it reading the score instead)."""
    from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate
    from training.site_calibration import confidences

    probs, detection, data = _reviewed([(3, 0.8), (1, 0.6), (2, 0.3)], [1, 0, 1])
    labels = ("background", "a", "b")
    weights = np.zeros(len(FEATURES))
    weights[FEATURES.index("max_confidence")] = 1.0     # the gate rises with the highest confidence
    gate = EventGate({"a": ClassGate((0.6,) * len(FEATURES), (0.1,) * len(FEATURES), tuple(weights), 0.0)})
    point = OperatingPoint({"a": 0.5}, min_gate={"a": 0.1}, gate=gate)
    decided, score, evidence, gates = decide_scored(probs, detection, 3, labels, point, 0)
    assert decided.tolist() == [1, 1, 0]
    assert gates[:2].tolist() == pytest.approx([round(1 / (1 + np.exp(-2.0)), 4), 0.5]) and gates[2] == 0.0
    calibration = Calibration({"a": ((0.0, 1.0), (0.0, 0.5))}, "gate")
    scored = Scored(decided, score, evidence, data.targets, gates)
    assert confidences(calibration, labels, scored, decided != 0).tolist() == pytest.approx(gates[:2] / 2)
    with pytest.raises(ValueError, match="event gate"):
        confidences(calibration, labels, Scored(decided, score, evidence, data.targets), decided != 0)


def test_a_site_shift_follows_the_share_of_right_detections_and_a_few_reviews_move_it_little():
    labels, background = ("background", "a", "b"), 0
    parent = Calibration({"a": ((0.0, 1.0), (0.0, 1.0))}, "score")
    half = np.full(40, 0.5)
    site_right = Scored(np.ones(40, int), half, half, np.ones(40, int))            # all right at 0.5
    site_wrong = Scored(np.ones(40, int), half, half, np.r_[np.ones(4, int), np.zeros(36, int)])   # 1 in 10 right
    high = site_calibration(parent, labels, background, site_right)[0]("a", 0.5)
    low = site_calibration(parent, labels, background, site_wrong)[0]("a", 0.5)
    assert high > 0.85 and 0.08 < low < 0.2
    few = fit_shift(np.full(3, 0.5), np.ones(3))
    assert 0.5 < few(np.array([0.5]))[0] < 0.75                                     # three reviews: a nudge
    curves = shifted_curves(parent, labels, background, fit_shift(half, site_wrong.right()))
    assert set(curves) == {"a", "b"} and np.all(np.diff(curves["a"]["y"]) >= 0)       # b was raw: now a curve too
    assert site_calibration(parent, labels, background, Scored(*(a[:5] for a in dataclasses.astuple(site_wrong)[:4])))[1].detections == 0


def test_the_same_sounds_judged_again_under_the_adapted_bundle_are_still_its_own_reviews(tmp_path):
    """Found walking the loop: review, adapt, reanalyse with the adapted bundle and judge its
    detections (the page asks for that), then adapt the adapted bundle. Each sound's latest
    verdict is now one given on the adapted bundle's detection, under a new review id, so the
    check by ids let the bundle be scored on the sounds it was fitted on ("worse than its
    parent on held-out recordings", said of in-sample figures)."""
    db, recordings = make_review_db(tmp_path)
    fitted = [reviews.add_verdict(db, row["id"], "correct", "ann") for row in reviews.list_detections(db)]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        fitted_ids = [conn.execute("SELECT id FROM reviews WHERE source = ? AND start_s = ?",
                                   [r["source"], r["start_s"]]).fetchone()[0] for r in fitted]
    adapted = types.SimpleNamespace(path=tmp_path / "adapted", manifest={"adapted": {
        "parent_bundle": "default-test", "reviews": {"database_uuid": database_uuid(db), "review_ids": fitted_ids}}})
    # reanalysed with the adapted bundle: the same sounds, a little shorter
    with Store(db) as store, contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        for source in {r["source"] for r in fitted}:
            rows = conn.execute("SELECT * FROM detections WHERE source = ?", [source]).fetchall()
            store.replace_detections(source, "adapted-1", [Detection(
                device_id=r["device_id"], source=source, start_s=r["start_s"] + 0.5, end_s=r["end_s"],
                start_utc=r["start_utc"], end_utc=r["end_utc"], time_source=r["time_source"],
                clock_suspect=False, label=r["label"], confidence=r["confidence"], votes=r["votes"],
                bundle_id="adapted-1") for r in rows])
    again = [reviews.add_verdict(db, row["id"], "correct", "ann") for row in reviews.list_detections(db, bundle_id="adapted-1")]
    assert len(again) == len(fitted)
    latest = [r["id"] for r, _ in review_targets(reviewed(db), ("background", "gibbon_duet", "great_argus",
                                                                  "hornbill_helmeted"), "background")]
    assert not set(latest) & set(fitted_ids)     # every sound's latest verdict is a new review
    with pytest.raises(AdaptError, match=f"is already adapted to this site: {len(fitted)} of these {len(fitted)} "
                                         f"reviews made it"):
        _check_not_fitted_on(adapted, db, latest)
    # a sound it was not fitted on is its to be judged by: a new detection of its own, judged
    with Store(db) as store, contextlib.closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        last = conn.execute("SELECT * FROM detections WHERE bundle_id = 'adapted-1' ORDER BY end_s DESC").fetchone()
        store.insert_detections([Detection(
            device_id=last["device_id"], source=last["source"], start_s=last["end_s"] + 30.0,
            end_s=last["end_s"] + 33.0, start_utc=None, end_utc=None, time_source=last["time_source"],
            clock_suspect=False, label=last["label"], confidence=0.9, votes=last["votes"], bundle_id="adapted-1")])
    new = next(row for row in reviews.list_detections(db, bundle_id="adapted-1")
               if row["start_s"] == last["end_s"] + 30.0)
    reviews.add_verdict(db, new["id"], "wrong", "ann")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        new_review = conn.execute("SELECT max(id) FROM reviews").fetchone()[0]
    assert new_review not in fitted_ids and new_review not in latest
    _check_not_fitted_on(adapted, db, [new_review])
    with pytest.raises(AdaptError, match="1 of these 2 reviews made it"):
        _check_not_fitted_on(adapted, db, [new_review, latest[0]])


def test_an_adapted_bundle_is_never_written_over_its_parent_or_a_run(tmp_path):
    parent = load_bundle(default_bundle_path())
    with pytest.raises(BundleError, match="holds the files this bundle is made from"):
        write_adapted(parent, None, parent.path, {"parent_bundle": parent.bundle_id})
    run = tmp_path / "run"
    run.mkdir()
    (run / "cv.json").write_text("{}")
    with pytest.raises(BundleError, match="not an edgemon bundle"):
        write_adapted(parent, None, run, {"parent_bundle": parent.bundle_id})
    assert (run / "cv.json").read_text() == "{}" and load_bundle(default_bundle_path()).bundle_id == parent.bundle_id


def test_adapt_refuses_a_recordings_directory_that_does_not_exist(tmp_path):
    """Found by a newcomer trial: every review silently fell back to the ledger's paths."""
    from typer.testing import CliRunner

    from training.cli import app
    result = CliRunner().invoke(app, ["adapt", str(tmp_path / "bundle"), "--reviews", str(tmp_path / "r.db"),
                                      "--recordings", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--recordings" in result.output and "not a directory" in result.output
    assert not (tmp_path / "out").exists()


def test_reviews_of_recordings_the_parent_never_analysed_are_left_out(tmp_path, caplog):
    """A review: after `reanalyse --models PARENT` reached four of eight reviewed recordings, the
    parent was charged with every event it would store on the other four (never analysed, so
    nothing of it stored there): held-out F1 0.615, against 0.750 after a full reanalyse."""
    from edgemon.files.reanalyse import reanalyse
    from training.adapt import reviewed_windows

    db, recordings = make_review_db(tmp_path)
    for row in reviews.list_detections(db):
        reviews.add_verdict(db, row["id"], "correct", "ann")
    away = recordings / "S01/20240502_070000.WAV"
    away.rename(tmp_path / "away.WAV")
    bundle = load_bundle(default_bundle_path())
    assert reanalyse(db, Analyzer(bundle)).files == 1          # the parent analysed one recording of two
    (tmp_path / "away.WAV").rename(away)
    data = reviewed_windows(bundle, Ensemble(bundle), db, recordings)
    assert set(data.groups) == {"S01/20240501_060000.WAV"}
    assert re.search(r"1 recording\(s\) never analysed by \S+ \(run .*\), their \d+ review\(s\) left out: "
                     r"S01/20240502_070000.WAV$", caplog.text, re.M), caplog.text


def test_recordings_left_out_are_said_in_one_line_not_one_each(caplog):
    """A scale trial: a season's reviews of a card long since cleared logged "recording not found"
    once per recording, 7 210 lines."""
    from training.adapt import LeftOut

    left = LeftOut("not found")
    for i in range(40):
        left.add(f"{i:02d}.WAV", 2)
    with caplog.at_level(logging.WARNING, logger="training.adapt"):
        left.say()
        LeftOut("never analysed").say()   # none: nothing said
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "40 recording(s) not found, their 80 review(s) left out: 00.WAV, 01.WAV, 02.WAV, " \
                   "03.WAV, 04.WAV and 35 more"


def test_a_bridged_detection_is_scored_by_the_gate_of_its_joined_runs_as_the_recorder_stores_it():
    """The recorder joins kept runs of one class a window apart into one event (``BRIDGE``) and
    stores the event gate's probability of the joined windows, which a calibration reading the
    gate (the default's run-feature fit) turns into the confidence. ``decide_scored`` must give
    that number, not the highest of the runs' own (a review: 75 of 1124 grouped-CV events of the
    default are bridged, and there the two were 0.21 apart on average)."""
    from edgemon.analysis.event_gate import FEATURES, ClassGate, EventGate
    from edgemon.analysis.merging import BRIDGE

    names = ("background", "a", "b")
    coef = tuple(1.0 if name == "log_windows" else 0.0 for name in FEATURES)   # longer runs: likelier calls
    gate = EventGate({label: ClassGate((0.0,) * len(FEATURES), (1.0,) * len(FEATURES), coef, 0.0)
                      for label in ("a", "b")})
    scoring = OperatingPoint({}, min_gate={"a": 0.0, "b": 0.0}, gate=gate)
    call, pause = [0.1, 0.8, 0.1], [0.8, 0.1, 0.1]
    member_probs = np.array([[call] * 4 + [pause] + [call] * 4] * 2)           # [2 members, 9 windows, 3]
    votes = majority_vote(member_probs)
    hop = 62
    windows = [WindowVote(i * hop, 125, int(votes.winner[i]), float(votes.confidence[i]),
                          tuple(int(m) for m in votes.member_labels[:, i]),
                          tuple(tuple(map(float, m[i])) for m in member_probs)) for i in range(9)]
    merger = EventMerger(names, 0, 0.032, scoring, Calibration({"a": ((0.0, 1.0), (0.0, 1.0))}, "gate"),
                         hop_frames=hop, bridge=BRIDGE)
    [event] = merger.merge(windows, 9 * hop * 0.032)
    assert json.loads(event.votes)["joined"] == 2
    labels, _, _, gates = decide_scored(member_probs, np.zeros(9, int), 1, names, scoring, 0)
    assert labels.tolist() == [1]
    assert gates[0] == pytest.approx(json.loads(event.votes)["gate"], abs=1e-4) == pytest.approx(event.confidence)


def test_the_attempts_bench_counts_events_as_the_recorder_stores_them(monkeypatch):
    """``bench/adapt_attempts.py`` decides each recording's windows "exactly as the recorder decides":
    with the default's point it needs the members' probabilities (its event gate reads them; it
    raised ValueError) and the recorder's bridge (a call with a one-window pause is one event)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from adapt_attempts import counts

    bundle = load_bundle(default_bundle_path())
    duet = bundle.labels.index("gibbon_duet")
    w, c = 12, len(bundle.labels)
    probs = np.full((2, w, c), 0.02)
    probs[:, :, duet] = 0.9
    probs[:, 5, duet], probs[:, 5, 0] = 0.02, 0.9                   # a pause of one window mid-call
    probs /= probs.sum(axis=2, keepdims=True)
    merger = Analyzer(bundle).merger
    windows = RecordingWindows(np.arange(w) * merger.hop_frames, np.full(w, 2 * merger.hop_frames), probs,
                               np.zeros((2, w, 4)), (w + 1) * merger.hop_frames * merger.frame_s)
    first_run_s = 5 * merger.hop_frames * merger.frame_s            # the call labelled up to the pause
    got = counts(windows, probs, bundle, merger.point, [(0.0, first_run_s, "gibbon_duet")])
    assert got["found"] == 1 and got["false_events"] == 0          # one event, bridged over the pause
