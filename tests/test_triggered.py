"""Triggered AudioMoth recordings (``…T.WAV``): the recorder leaves silent stretches out and
writes a 256-sample marker in their place (the count of 256-sample blocks it stands for, in the
signs of its first 32 samples). Found by a review: every detection after such a stretch was stored
as early as the stretch was long, with the name's exact time source."""

from __future__ import annotations

import datetime as dt
import sqlite3

import numpy as np
import pytest
import soundfile

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.files import triggered
from edgemon.files.classify import classify_files
from edgemon.files.reanalyse import reanalyse
from edgemon.files.triggered import MARKER_SAMPLES, silences, silences_of
from tests.watch_helpers import noise, watch_until_idle

RATE = 16000
BUFFER = 16384          # an AudioMoth SRAM buffer: 64 markers' worth


def marker(blocks: int) -> np.ndarray:
    """The 256 samples a recorder writes for ``blocks`` blocks of 256 samples left out."""
    code = np.zeros(MARKER_SAMPLES, dtype=np.int16)
    code[:32] = [1 if blocks >> i & 1 else -1 for i in range(32)]
    return code


def write_triggered(path, pieces) -> None:
    """``pieces``: int16 audio, or an int standing for that many silent SRAM buffers left out."""
    parts = [marker(p * BUFFER // MARKER_SAMPLES) if isinstance(p, int) else p for p in pieces]
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.concatenate(parts), RATE, subtype="PCM_16")


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def test_the_markers_are_found_and_turn_file_offsets_into_elapsed_time(tmp_path, monkeypatch):
    a, b, c = (_int16(noise(s, seed=s)) for s in (2, 1, 3))
    write_triggered(tmp_path / "20240101_050000T.WAV", [a, 3, b, 1, c])
    monkeypatch.setattr(triggered, "_READ_SAMPLES", 20_000)   # a marker across two reads, too
    found = silences(tmp_path / "20240101_050000T.WAV")
    first, second = len(a) / RATE, (len(a) + MARKER_SAMPLES + len(b)) / RATE
    assert found.at_s == pytest.approx((first, second))
    assert found.left_out_s == pytest.approx(((3 * BUFFER - MARKER_SAMPLES) / RATE, (BUFFER - MARKER_SAMPLES) / RATE))
    assert found.elapsed(1.0) == 1.0                                  # before the first stretch
    assert found.elapsed(first + 0.5) == pytest.approx(first + 0.5 + found.left_out_s[0])
    assert found.elapsed(second + 0.5) == pytest.approx(second + 0.5 + found.total_s)
    assert "2 silent stretch(es)" in found.note()
    # Only a triggered name is read; audio that only nearly looks like a marker is none.
    (tmp_path / "20240101_050000T.WAV").rename(tmp_path / "20240101_050000.WAV")
    assert not silences_of(tmp_path / "20240101_050000.WAV")
    almost = marker(192)
    almost[100] = 1
    write_triggered(tmp_path / "20240101_060000T.WAV", [a, almost, b])
    assert not silences_of(tmp_path / "20240101_060000T.WAV")


@pytest.fixture
def call(borneo_dir) -> np.ndarray:
    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[0]
    return _int16(np.tile(soundfile.read(clip, dtype="float32")[0], 2))


def test_watch_classify_and_reanalyse_time_a_call_after_a_silent_stretch(tmp_path, call):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    quiet = _int16(noise(2, seed=4, level=0.001))
    path = root / "20240101_050000T.WAV"
    write_triggered(path, [quiet, 59, quiet, quiet, quiet, call])   # about a minute left out before the call
    left_out = (59 * BUFFER - MARKER_SAMPLES) / RATE
    assert watch_until_idle(root, db).processed == 1
    name_time = dt.datetime(2024, 1, 1, 5, tzinfo=dt.timezone.utc)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT start_s, start_utc FROM detections").fetchall()
        note = conn.execute("SELECT error FROM files").fetchone()[0]   # a done file's note
    assert rows and "triggered recording: 1 silent stretch(es), 60.4 s in all" in note
    watched, marker_at = [], len(quiet) / RATE
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT start_s, start_utc, end_s FROM detections").fetchall()
    for start_s, start_utc, end_s in rows:   # timed in the burst that holds most of the event
        at = dt.datetime.fromisoformat(start_utc.replace("Z", "+00:00"))
        after = start_s >= marker_at or end_s - marker_at > marker_at - start_s
        expected = max(start_s, marker_at) + left_out if after else start_s
        assert (at - name_time).total_seconds() == pytest.approx(expected, abs=0.002)
        watched.append(start_utc)
    assert max(start_s for start_s, _, _ in rows) > marker_at + 2   # calls found after the stretch
    # The review page's effort counts the stretch as listened to, as the detections' times do (a
    # review: a call was charted in an hour drawn as "not listening").
    from edgemon.review.charts import effort_hours

    span_s = soundfile.info(path).duration + left_out
    with sqlite3.connect(db) as conn:
        bundle_id = conn.execute("SELECT bundle_id FROM files").fetchone()[0]
    for chosen in (None, bundle_id):
        by_hour, by_day = effort_hours(db, chosen)
        assert by_hour == pytest.approx({5: span_s / 3600}) and by_day == pytest.approx({"2024-01-01": span_s / 3600})
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    classified, errors = classify_files([path], analyzer)
    assert not errors and sorted(r["start_utc"] for r in classified) == sorted(watched)
    assert reanalyse(db, analyzer, again=True).files == 1
    with sqlite3.connect(db) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT start_utc FROM detections")) == sorted(watched)


def test_a_call_right_after_a_silent_stretch_is_timed_after_it_not_before(tmp_path, call):
    """An output trial: an AudioMoth resumes writing when a call crosses its threshold, so the call's
    first window (every 2 s) begins up to 2 s before the marker; timed from there, the detection was
    stored as early as the silence was long (5 minutes in the trial), and lasted as long."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    quiet = _int16(noise(2, seed=4, level=0.001))
    write_triggered(root / "20240101_050000T.WAV", [quiet, 18, call, quiet])   # ~18.4 s left out
    left_out = (18 * BUFFER - MARKER_SAMPLES) / RATE
    marker_at = len(quiet) / RATE
    assert watch_until_idle(root, db).processed == 1
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT start_s, end_s, start_utc, end_utc FROM detections").fetchall()
    straddling = [r for r in rows if r[0] < marker_at < r[1]]
    assert straddling, rows                                   # the case: its first window before the marker
    name_time = dt.datetime(2024, 1, 1, 5, tzinfo=dt.timezone.utc)
    for start_s, end_s, start_utc, end_utc in straddling:
        start, end = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (start_utc, end_utc))
        assert (start - name_time).total_seconds() == pytest.approx(marker_at + left_out, abs=0.002)
        assert (end - name_time).total_seconds() == pytest.approx(end_s + left_out, abs=0.002)
    [path] = root.iterdir()
    classified, _ = classify_files([path], Analyzer(load_bundle(default_bundle_path())))
    assert sorted(r["start_utc"] for r in classified) == sorted(r[2] for r in rows)   # classify times them alike


def test_a_triggered_file_cut_short_or_never_finalised_keeps_its_markers_and_its_analysis(tmp_path):
    """Found by a review: the markers were read with plain libsndfile. A triggered FLAC cut short
    (analysed as far as it goes) was then quarantined, and crashed `classify`; a WAV whose header
    was never finalised (read through a rewritten header) showed no marker: times silently wrong."""
    from tests.watch_helpers import unfinalised_header

    a, b = _int16(noise(8, seed=1)), _int16(noise(8, seed=2))
    root = tmp_path / "rec"
    write_triggered(root / "20240101_050000T.WAV", [a, 59, b])
    unfinalised_header(root / "20240101_050000T.WAV")
    assert silences(root / "20240101_050000T.WAV").at_s == pytest.approx((8.0,))
    cut = root / "20240101_060000T.FLAC"
    soundfile.write(cut, np.concatenate([a, marker(59 * BUFFER // MARKER_SAMPLES), b, b, b]), RATE,
                    subtype="PCM_16", format="FLAC")
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.7)])
    assert silences(cut).at_s == pytest.approx((8.0,))                # before the break
    assert not silences(tmp_path / "nothing.WAV") and not silences(tmp_path)
    watch_until_idle(root, tmp_path / "d.db", incomplete_grace_s=0.2)
    with sqlite3.connect(tmp_path / "d.db") as conn:
        rows = conn.execute("SELECT source, state, error FROM files ORDER BY source").fetchall()
    assert [(source, state) for source, state, _ in rows] == [("20240101_050000T.WAV", "done"),
                                                              ("20240101_060000T.FLAC", "done")], rows
    assert all("triggered recording: 1 silent stretch(es)" in error for _, _, error in rows), rows
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    _, errors = classify_files([cut], analyzer)
    assert errors == []
