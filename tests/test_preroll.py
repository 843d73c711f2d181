"""A call cut by the boundary of two contiguous recordings: the second is analysed after the end
of the first (``files.preroll``), so a call neither part of which is long enough alone is stored
once, in the second recording, from its start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis import audio
from edgemon.analysis.bundle import default_bundle_path
from edgemon.analysis.lead_in import Lead, recording_events
from edgemon.analysis.merging import WindowVote
from edgemon.files.isolate import Isolated
from edgemon.files.preroll import Listings, PreRoll, analyse_after, find_preroll, preroll_frames
from edgemon.files.reanalyse import reanalyse
from edgemon.storage.store import Store
from tests.conftest import hoots
from tests.watch_helpers import analyzer, fault_env, query, watch_until_idle, write_wav

RATE = 16000
BEFORE = ("noise_S11_20180223_060002_4620.39686741252_4631.69407480131_.flac",
          "noise_S11_20180228_080003_6192.62858717597_6201.10949357265_.flac")
AFTER = ("noise_S11_20180228_080003_6207.99022895109_6216.91918323288_.flac",
         "noise_S11_20180228_080003_6237.30536200528_6244.79416237065_.flac")
HELMETED = "hornbill.helmeted_S12_20180221_080003_2713.66546049579_2720.41818219277_.flac"   # 6.75 s
ARGUS = "long.argus_S11_20180411_100004_4908.93964292191_4916.04440224291_.flac"             # 7.1 s
STORED_BEFORE = "hornbill.helmeted_S19_20180308_100004_563.964211169191_570.556915764348_.flac"   # 6.6 s
CALL_AT_S = 19.78   # where the call begins: after the two background clips


def laid(borneo_dir, call: str) -> np.ndarray:
    """Background, background, the call, background, background (16 kHz)."""
    return np.concatenate([soundfile.read(borneo_dir / "audio" / name, dtype="float32")[0]
                           for name in (*BEFORE, call, *AFTER)])


def cut(root, samples: np.ndarray, at_s: int, gap_s: int = 0, suffix: str = "") -> None:
    """Two AudioMoth recordings, the second named as starting ``gap_s`` after the first ends."""
    write_wav(root / f"20260201_060000{suffix}.WAV", samples[:at_s * RATE])
    write_wav(root / f"20260201_0600{at_s + gap_s:02d}{suffix}.WAV", samples[at_s * RATE:])


def stored(db, label: str) -> list[tuple]:
    return query(db, "SELECT source, start_s, end_s, votes FROM detections WHERE label = ? ORDER BY source",
                 [label])


def test_a_call_cut_near_its_middle_is_stored_once_in_the_second_recording(borneo_dir, tmp_path):
    samples = laid(borneo_dir, HELMETED)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    write_wav(whole / "20260201_060000.WAV", samples)
    watch_until_idle(whole, tmp_path / "whole.db")
    assert [s[0] for s in stored(tmp_path / "whole.db", "hornbill_helmeted")] == ["20260201_060000.WAV"]

    cut(parts, samples, 23)   # 3.2 s of the call in the first recording, 3.5 s in the second
    watch_until_idle(parts, tmp_path / "parts.db")
    # Alone, neither part holds the three windows a helmeted hornbill needs: it was stored nowhere.
    (found,) = stored(tmp_path / "parts.db", "hornbill_helmeted")
    assert found[:2] == ("20260201_060023.WAV", 0.0) and 0 < found[2] < 7
    assert json.loads(found[3])["lead"] > 0   # judged with windows of the recording before
    assert query(tmp_path / "parts.db", "SELECT start_utc FROM detections") == [("2026-02-01T06:00:23.000Z",)]


def test_a_call_the_first_recording_stores_is_not_stored_again(borneo_dir, tmp_path):
    samples = laid(borneo_dir, STORED_BEFORE)
    cut(tmp_path / "rec", samples, 24)   # 4.2 s of the call before the cut, enough alone; 2.4 s after
    watch_until_idle(tmp_path / "rec", tmp_path / "d.db")
    assert [s[:3] for s in stored(tmp_path / "d.db", "hornbill_helmeted")] == [("20260201_060000.WAV", 15.872, 24.0)]


def test_what_the_first_recording_stored_decides_and_without_it_its_windows_do(borneo_dir, tmp_path):
    cut(tmp_path, laid(borneo_dir, STORED_BEFORE), 24)
    second = tmp_path / "20260201_060024.WAV"

    def events(stored):
        lead = PreRoll(tmp_path / "20260201_060000.WAV", preroll_frames(analyzer()), stored)
        return [(e.label, e.start_s) for e in analyse_after(analyzer(), audio.iter_blocks(second, 10.0), lead).events]

    assert events(()) == [("hornbill_helmeted", 0.0)]   # judged whole: had the first stored nothing
    assert events(("hornbill_helmeted",)) == []      # it did: the second's part alone is too short
    assert events(None) == []   # not known: the pre-roll's own windows already hold what the class needs


def test_recordings_not_contiguous_or_triggered_are_analysed_alone(borneo_dir, tmp_path):
    samples = laid(borneo_dir, HELMETED)
    cut(tmp_path / "gap", samples, 23, gap_s=5)
    cut(tmp_path / "triggered", samples, 23, suffix="T")
    for case in ("gap", "triggered"):
        watch_until_idle(tmp_path / case, tmp_path / f"{case}.db")
        assert stored(tmp_path / f"{case}.db", "hornbill_helmeted") == [], case


def _long_recording(borneo_dir) -> np.ndarray:
    """About 80 s of test clips, calls among them."""
    names = [*BEFORE, "duet_S11_20180223_060002_6520.95161419885_6527.67233247546_.flac", ARGUS, *AFTER,
             "duet_S11_20180223_060002_6563.80419406737_6571.03696706982_.flac", HELMETED, *AFTER, *BEFORE]
    return np.concatenate([soundfile.read(borneo_dir / "audio" / n, dtype="float32")[0] for n in names])


def test_detections_away_from_the_start_are_those_of_the_recording_alone(borneo_dir, tmp_path):
    samples = laid(borneo_dir, HELMETED)
    first, second = samples[:23 * RATE], np.concatenate([samples[23 * RATE:], _long_recording(borneo_dir)])
    write_wav(tmp_path / "alone" / "20260201_060023.WAV", second)
    write_wav(tmp_path / "after" / "20260201_060000.WAV", first)
    write_wav(tmp_path / "after" / "20260201_060023.WAV", second)
    watch_until_idle(tmp_path / "alone", tmp_path / "alone.db")
    watch_until_idle(tmp_path / "after", tmp_path / "after.db")
    sql = ("SELECT start_s, end_s, start_utc, end_utc, label, confidence, score, votes FROM detections "
           "WHERE source = '20260201_060023.WAV' AND start_s >= 20 ORDER BY start_s")
    alone = query(tmp_path / "alone.db", sql)
    assert len(alone) >= 3 and query(tmp_path / "after.db", sql) == alone   # bit for bit
    assert query(tmp_path / "after.db", "SELECT start_s FROM detections WHERE label = 'hornbill_helmeted' "
                                        "AND source = '20260201_060023.WAV'")[:1] == [(0.0,)]


def test_an_isolated_analysis_reads_the_pre_roll_too(borneo_dir, tmp_path):
    samples = laid(borneo_dir, HELMETED)
    cut(tmp_path, samples, 23)
    lead = PreRoll(tmp_path / "20260201_060000.WAV", preroll_frames(analyzer()), stored=())
    analysis = Isolated(default_bundle_path()).analyse(tmp_path / "20260201_060023.WAV", preroll=lead)
    assert [(e.label, e.start_s) for e in analysis.events] == [("hornbill_helmeted", 0.0)]


def test_reanalyse_reads_the_pre_roll_as_watch_does(borneo_dir, tmp_path):
    samples = laid(borneo_dir, HELMETED)
    cut(tmp_path / "rec", samples, 23)
    watch_until_idle(tmp_path / "rec", tmp_path / "d.db")
    before = stored(tmp_path / "d.db", "hornbill_helmeted")
    result = reanalyse(tmp_path / "d.db", analyzer(), again=True)
    assert result.files == 2 and not result.failed
    assert stored(tmp_path / "d.db", "hornbill_helmeted") == before and len(before) == 1


def test_a_recording_before_that_kills_its_reader_is_not_read_as_a_pre_roll(tmp_path):
    """A review: a recording that kills the analysis reading it (``files.isolate``) was read again
    as its successor's pre-roll, in the daemon, which died on the successor, then in the
    successor's child: the successor was quarantined for its predecessor's fault. Only a
    recording analysed as it is now is a pre-roll."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20240701_060000.WAV", hoots(12.0, seed=1))
    write_wav(root / "20240701_060012.WAV", hoots(12.0, seed=2))   # contiguous with it
    env = fault_env(tmp_path, EDGEMON_TEST_DIE_ON="060000.WAV")
    command = [sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--settle-s", "0",
               "--rescan-s", "0.2", "--retry-s", "0.1", "--until-idle"]
    for _ in range(8):   # restarted after each death, as systemd does
        if subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                          timeout=120).returncode == 0:
            break
    entries = {r[0]: r[1:] for r in query(db, "SELECT source, state, attempts FROM files")}
    assert entries["20240701_060000.WAV"][0] == "quarantined"
    assert entries["20240701_060012.WAV"] == ("done", 1), entries   # never blamed for the one before


def test_a_backlog_lists_its_directory_once_not_for_each_recording(tmp_path, monkeypatch):
    """A review: the directory was listed again for each recording's pre-roll, n² entries for a
    backlog of n (watch on 4 000 short files took twice as long as before the pre-roll)."""
    rec = tmp_path / "rec"
    names = [f"20260201_0600{s:02d}.WAV" for s in range(0, 60, 12)]   # contiguous, 12 s each
    for i, name in enumerate(names):
        write_wav(rec / name, hoots(12.0, seed=i))
    listed, scandir = [], os.scandir
    monkeypatch.setattr(os, "scandir", lambda d: (listed.append(d), scandir(d))[1])
    listings = Listings()
    with Store(tmp_path / "d.db") as store:
        for name in names:
            find_preroll(rec / name, name, analyzer(), store, listings=listings)
    assert len(listed) == 1
    assert listings.named_before(rec / names[3]) == rec / names[2]
    version = os.stat(rec).st_mtime_ns
    write_wav(rec / "20260201_060100.WAV", hoots(12.0))   # the recorder's next one: listed again,
    os.utime(rec, ns=(version, version))   # even where the directory's time did not move (FAT: 2 s)
    assert listings.named_before(rec / "20260201_060100.WAV") == rec / names[-1] and len(listed) == 2


def test_a_lead_says_how_far_before_the_recording_its_first_window_began():
    """An event joining two runs across a window of another vote (``EventMerger.joins``), the
    first run wholly in the lead: its ``"lead"`` counted the windows before the recording's start
    (3), and the review page, which plays that many hops of the recording before, began one hop
    after the call's first window (4 hops before)."""
    merger = analyzer().merger
    label = merger.labels.index("hornbill_helmeted")
    hop = merger.hop_frames

    probs = tuple(tuple(0.9 if c == label else 0.1 / (len(merger.labels) - 1) for c in range(len(merger.labels)))
                  for _ in range(3))   # three members, each 0.9 for the class

    def run(*hops):
        return [WindowVote(h * hop, 125, label, 0.9, (label,) * 3, probs) for h in hops]

    windows = run(-4, -3, -2) + run(0, 1, 2)   # a kept run, the lead's last window not of it, a kept run
    lead = Lead(np.zeros(4 * hop * 512, np.float32), stored=frozenset())
    (event,) = recording_events(merger, windows, 60.0, 2, False, lead, 4 * hop)
    assert event.start_s == 0.0 and json.loads(event.votes)["lead"] == 4
