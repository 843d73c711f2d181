"""``edgemon-train adapt`` end to end on a Borneo recorder's unseen clips laid into recordings:
analysed by the shipped bundle, reviews simulated from the true labels, adapted, and the adapted
bundle run by the recorder's own pipeline."""

from __future__ import annotations

import csv
import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.site_head import SiteHead
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import BundleError
from edgemon.review import reviews
from edgemon.storage.store import Detection, Store
from tests.review_helpers import make_review_db
from training.adapt import (AdaptError, _write_adapted, adapt_bundle, event_scores, event_windows,
                            grouped_folds, review_targets)

TRAINED_ON = ("train", "devel")   # the shipped bundle's training data


def unseen_clips(borneo: Path, recorder: str) -> list[dict]:
    """``recorder``'s clips from recordings the shipped bundle never trained on (test and pool)."""
    seen = {r["source_recording"] for s in TRAINED_ON for r in csv.DictReader(open(borneo / "lab" / f"{s}.csv"))}
    rows = [r for s in ("test", "pool") for r in csv.DictReader(open(borneo / "lab" / f"{s}.csv"))
            if r["recorder"] == recorder and r["source_recording"] not in seen]
    return sorted(rows, key=lambda r: r["filename"])


def lay_recordings(borneo: Path, clips: list[dict], out: Path, per_recording: int) -> dict[str, list]:
    """Clips end to end into AudioMoth-named WAVs of ``per_recording`` clips each, interleaving the
    labels; returns each recording's true spans (start_s, end_s, label)."""
    rng = np.random.default_rng(0)
    clips = [clips[i] for i in rng.permutation(len(clips))]
    truth = {}
    for n in range(0, len(clips), per_recording):
        name = f"201806{1 + n // per_recording // 4:02d}_{6 * (n // per_recording % 4):02d}0000.WAV"
        pieces, spans, t = [], [], 0.0
        for clip in clips[n:n + per_recording]:
            samples, rate = soundfile.read(borneo / "audio" / clip["filename"], dtype="float32")
            pieces.append(samples)
            spans.append((t, t + len(samples) / rate, clip["label"]))
            t += len(samples) / rate
        soundfile.write(out / name, np.concatenate(pieces), 16000, subtype="PCM_16")
        truth[name] = spans
    return truth


def analyse_into(db: Path, recordings: Path, bundle_path: Path) -> None:
    """Detections of every recording, stored as ``watch`` stores them (times from the file names)."""
    analyzer = Analyzer(load_bundle(bundle_path))
    with Store(db) as store:
        for path in sorted(recordings.glob("*.WAV")):
            analysis = analyzer.analyse_file(path)
            start = dt.datetime.strptime(path.stem, "%Y%m%d_%H%M%S").replace(tzinfo=dt.timezone.utc)
            detections = [Detection(device_id="S19", source=path.name, start_s=e.start_s, end_s=e.end_s,
                                    start_utc=start + dt.timedelta(seconds=e.start_s),
                                    end_utc=start + dt.timedelta(seconds=e.end_s), time_source="filename",
                                    clock_suspect=False, label=e.label, confidence=e.confidence, votes=e.votes,
                                    bundle_id=analyzer.bundle.bundle_id) for e in analysis.events]
            st = path.stat()
            store.commit_file(path.name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                              duration_s=analysis.duration_s, start_utc=start, time_source="filename",
                              clock_suspect=False, bundle_id=analyzer.bundle.bundle_id, detections=detections)


def true_label(spans: list, start_s: float, end_s: float) -> str:
    """The label of the clip the detection overlaps most."""
    overlap = [(min(end_s, b) - max(start_s, a), label) for a, b, label in spans]
    return max(overlap)[1]


def simulate_reviews(db: Path, truth: dict[str, list]) -> dict[str, int]:
    """Judge every detection from the true labels, as a careful reviewer would; returns the counts."""
    counts: dict[str, int] = {}
    for row in reviews.list_detections(db, order="time", limit=10_000):
        label = true_label(truth[row["source"]], row["start_s"], row["end_s"])
        verdict = "correct" if label == row["label"] else "wrong" if label == "background" else "relabel"
        reviews.add_verdict(db, row["id"], verdict, "simulated", label if verdict == "relabel" else None)
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def test_event_scores_count_hits_false_alarms_and_misses():
    truth = np.array([0, 1, 1, 2, 0])
    predicted = np.array([1, 1, 0, 1, 0])   # a kept false alarm, a hit, a miss, a wrong class
    s = event_scores(predicted, truth, background=0)
    assert (s["hits"], s["false_alarms"], s["misses"]) == (1, 2, 2)
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 2)) and s["background_kept"] == 0.5


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


def test_review_targets_map_verdicts_to_classes():
    labels = ("background", "a", "b")
    rows = [{"verdict": "wrong", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "correct", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "relabel", "label": "a", "new_label": "b", "end_s": 1},
            {"verdict": "unsure", "label": "a", "new_label": None, "end_s": 1},
            {"verdict": "relabel", "label": "a", "new_label": "zebra", "end_s": 1}]
    assert [t for _, t in review_targets(rows, labels, "background")] == [0, 1, 2]


def test_too_few_reviews_are_refused_and_nothing_is_written(tmp_path):
    db, recordings = make_review_db(tmp_path)
    first = reviews.list_detections(db)[0]
    reviews.add_verdict(db, first["id"], "wrong", "ann")
    with pytest.raises(AdaptError, match="1 usable review"):
        adapt_bundle(default_bundle_path(), db, recordings, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def site(borneo_dir, tmp_path_factory):
    """A third of recorder S19's unseen clips as four recordings, analysed by the shipped bundle, every
    detection reviewed from the true labels."""
    root = tmp_path_factory.mktemp("site")
    recordings = root / "recordings"
    recordings.mkdir()
    clips = unseen_clips(borneo_dir, "S19")[::3]     # every third clip: 30 clips, ~5 min of audio
    truth = lay_recordings(borneo_dir, clips, recordings, per_recording=8)
    db = root / "site.db"
    analyse_into(db, recordings, default_bundle_path())
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
    assert held[summary["method"]]["f1"] >= held["parent"]["f1"]
    assert set(held) == {"parent", "thresholds", "head", "head+thresholds"}
    # The recorder runs it, with the head when the head was chosen, else with new thresholds.
    analyzer = Analyzer(adapted)
    if "head" in summary["method"]:
        assert analyzer.ensemble.site_head is not None
    else:
        assert analyzer.ensemble.site_head is None and adapted.thresholds != parent.thresholds
    first = sorted(recordings.glob("*.WAV"))[0]
    assert analyzer.analyse_file(first).duration_s > 0


def _zero_head(bundle, d: int) -> SiteHead:
    m, c = len(bundle.members), len(bundle.labels)
    return SiteHead(np.zeros((m, d + c, c), np.float32), np.zeros((m, c), np.float32),
                    np.zeros((m, d + c), np.float32), np.ones((m, d + c), np.float32))


def test_a_zero_site_head_leaves_the_parent_unchanged_and_a_tampered_one_is_refused(tmp_path):
    parent = load_bundle(default_bundle_path())
    out = _write_adapted(parent, _zero_head(parent, 128), tmp_path / "zero", {"parent_bundle": parent.bundle_id})
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
    with pytest.raises(BundleError, match="site head expects 64-wide embeddings, member00.onnx gives 128"):
        _write_adapted(parent, _zero_head(parent, 64), tmp_path / "narrow", {})
    assert not (tmp_path / "narrow").exists()
