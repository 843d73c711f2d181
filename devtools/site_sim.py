"""A simulated site from the Borneo clips: one recorder's clips laid end to end into AudioMoth-named
recordings, analysed by a bundle into a detections database as ``watch`` stores them, reviews
simulated from the true labels, and the field measure (false events per hour of background, event
recall) on recordings whose truth is known. Shared by ``tests/test_adapt.py`` and
``bench/adapt_heldout.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import Bundle, load_bundle
from edgemon.analysis.bundle_write import write_bundle
from edgemon.review import reviews
from edgemon.storage.rows import Detection
from edgemon.storage.store import Store
from training.adapted_bundle import CALIBRATION_KEYS, parent_point, point_manifest
from training.bundling import complete_bundle
from training.errors import DataError
from training.onnx_export import quantize_int8, read_columns

SPLITS = ("train", "devel", "test", "pool")

Truth = dict[str, list[tuple[float, float, str]]]   # recording name -> (start_s, end_s, label) per clip


def lab_rows(borneo: Path, split: str) -> list[dict]:
    """The clip rows of ``lab/{split}.csv``."""
    with open(Path(borneo) / "lab" / f"{split}.csv", newline="") as f:
        return list(csv.DictReader(f))


def recorder_clips(borneo: Path, recorder: str, splits=SPLITS, exclude_recordings: set[str] = frozenset()) -> list[dict]:
    """``recorder``'s clip rows (``lab/*.csv``) of ``splits``, minus those cut from a source
    recording in ``exclude_recordings``; sorted by file name."""
    rows = [r for s in splits for r in lab_rows(borneo, s)
            if r["recorder"] == recorder and r["source_recording"] not in exclude_recordings]
    return sorted(rows, key=lambda r: r["filename"])


def source_recordings(borneo: Path, splits) -> set[str]:
    """The source recordings any clip of ``splits`` was cut from."""
    return {r["source_recording"] for s in splits for r in lab_rows(borneo, s)}


def lay_recordings(borneo: Path, clips: list[dict], out: Path, per_recording: int, seed: int = 0) -> Truth:
    """Clips end to end into AudioMoth-named 16 kHz WAVs of ``per_recording`` clips each, in a
    shuffled order that interleaves the labels; returns each recording's true spans."""
    rng = np.random.default_rng(seed)
    clips = [clips[i] for i in rng.permutation(len(clips))]
    truth = {}
    for n in range(0, len(clips), per_recording):
        k = n // per_recording
        name = f"2018{6 + k // 120:02d}{1 + k // 4 % 30:02d}_{6 * (k % 4):02d}0000.WAV"
        pieces, spans, t = [], [], 0.0
        for clip in clips[n:n + per_recording]:
            samples, rate = soundfile.read(Path(borneo) / "audio" / clip["filename"], dtype="float32")
            if rate != 16000:
                raise DataError(f"{clip['filename']}: {rate} Hz, expected 16000")
            pieces.append(samples)
            spans.append((t, t + len(samples) / rate, clip["label"]))
            t += len(samples) / rate
        soundfile.write(out / name, np.concatenate(pieces), 16000, subtype="PCM_16")
        truth[name] = spans
    return truth


def analyse_into(db: Path, recordings: list[Path], bundle_path: Path, device_id: str = "site") -> None:
    """Detections of every recording, stored as ``watch`` stores them (times from the file names)."""
    analyzer = Analyzer(load_bundle(bundle_path))
    with Store(db) as store:
        for path in sorted(recordings):
            analysis = analyzer.analyse_file(path)
            start = dt.datetime.strptime(path.stem, "%Y%m%d_%H%M%S").replace(tzinfo=dt.timezone.utc)
            detections = [Detection(device_id=device_id, source=path.name, start_s=e.start_s, end_s=e.end_s,
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


def judge(db: Path, row: dict, truth: Truth) -> str:
    """Store the verdict a careful reviewer gives ``row`` (a ``list_detections`` row); return it."""
    label = true_label(truth[row["source"]], row["start_s"], row["end_s"])
    verdict = "correct" if label == row["label"] else "wrong" if label == "background" else "relabel"
    reviews.add_verdict(db, row["id"], verdict, "simulated", label if verdict == "relabel" else None)
    return verdict


def simulate_reviews(db: Path, truth: Truth) -> dict[str, int]:
    """Judge every detection from the true labels; returns the verdict counts."""
    counts: dict[str, int] = {}
    for row in reviews.list_detections(db, order="time", limit=1_000_000):
        verdict = judge(db, row, truth)
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def review_in_teach_order(db: Path, truth: Truth, sources: set[str], budget: int) -> dict[str, int]:
    """Judge up to ``budget`` detections of the recordings ``sources``, one at a time in the review
    page's 'teach' order (which changes as verdicts come in); returns the verdict counts."""
    counts: dict[str, int] = {}
    for _ in range(budget):
        rows = [r for r in reviews.list_detections(db, unreviewed_only=True, limit=1_000_000) if r["source"] in sources]
        if not rows:
            break
        verdict = judge(db, rows[0], truth)
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def field_counts(bundle: Bundle | Path, recordings: list[Path], truth: Truth) -> dict:
    """The recorder's own analysis of ``recordings`` against their truth: a detection is a false
    event unless it overlaps a clip of its label; a call is found when a detection of its label
    overlaps it. Returns counts, the hours of background, and every detection's stored confidence
    and whether it is right (``confidence``, ``right``)."""
    analyzer = Analyzer(bundle if isinstance(bundle, Bundle) else load_bundle(bundle))
    found, calls, background_s, confidence, right = 0, 0, 0.0, [], []
    for path in recordings:
        events = analyzer.analyse_file(path).events
        spans = truth[path.name]
        background_s += sum(b - a for a, b, label in spans if label == "background")
        for e in events:
            confidence.append(round(e.confidence, 5))
            right.append(any(label == e.label and a < e.end_s and e.start_s < b for a, b, label in spans))
        for a, b, label in spans:
            if label != "background":
                calls += 1
                found += any(e.label == label and a < e.end_s and e.start_s < b for e in events)
    return {"false_events": right.count(False), "background_h": background_s / 3600, "calls": calls, "found": found,
            "confidence": confidence, "right": right}


def fold_parent(models: list[Path], like: Bundle, out: Path, reference_data: Path | None = None,
                with_point: bool = False) -> Bundle:
    """A bundle of one grouped-CV fold's member models made as the shipped bundle ``like`` was: each
    member reading its columns of ``like``'s frontend, int8 when ``like``'s are, ``like``'s
    window, hop and thresholds, self-check windows from ``reference_data``. ``with_point``: also
    ``like``'s operating point (its evidence rules: fewest windows, summed confidence, opening
    level), as the recorder applies it, and its calibration (fitted on the grouped-CV events of
    the same recipe, this fold's among them: if anything, kind to the parent); not its expected
    figures, which are ``like``'s own."""
    int8 = like.members[0].precision == "int8"
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for i, model in enumerate(models):
            if not Path(model).is_file():
                raise DataError(f"{model}: fold model missing")
            member = read_columns(Path(model), Path(tmp) / f"{i}.fp32.onnx", like.frontend)
            members.append(quantize_int8(member, Path(tmp) / f"{i}.onnx") if int8 else member)
        bundle = write_bundle(out, members, list(like.labels), frontend=like.frontend, window_s=like.window_s,
                              hop_s=like.hop_s, thresholds=like.thresholds, background_label=like.background_label,
                              precision="int8" if int8 else "fp32",
                              extra={"source_runs": [str(m) for m in models], "trained_on": ["cv fold"] * len(models),
                                     **({"operating_point": point_manifest(parent_point(like)),
                                         **{k: like.manifest[k] for k in CALIBRATION_KEYS if k in like.manifest}}
                                        if with_point else {})})
    return complete_bundle(bundle.path, reference_data)
