"""A recording watch has analysed, met again: touched, moved or renamed inside the tree, copied
beside itself. Found by a newcomer trial: each was analysed again, its detections stored twice (or,
timed by its mtime, delivered again at new times) and its hours counted twice."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile

from edgemon.files.watcher import Watcher
from edgemon.status import collect_status
from edgemon.storage.fingerprint import SPAN_BYTES, _audio
from edgemon.storage.store import Store
from tests.watch_helpers import analyzer, fast_config, noise, query, watch_until_idle, write_wav

DETECTIONS = "SELECT source, start_s, label, start_utc, confidence FROM detections ORDER BY id"


@pytest.fixture
def duet(borneo_dir):
    """Twelve seconds of a real gibbon duet clip: a recording with detections."""
    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[0]
    return np.tile(soundfile.read(clip, dtype="float32")[0], 2)


def test_a_recording_moved_or_renamed_inside_the_tree_is_not_analysed_again(tmp_path, duet, caplog):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    assert watch_until_idle(root, db).processed == 1
    before = query(db, DETECTIONS)
    assert before
    (root / "day1").mkdir()
    os.rename(root / "20230201_053000.WAV", root / "day1" / "20230201_053000.WAV")
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db).processed == 0
    # said, at info: a user's tidying is no trouble in a journal's warnings (a newcomer trial)
    said = [r for r in caplog.records if "moved or renamed from" in r.getMessage()]
    assert [r.levelname for r in said] == ["INFO"]
    assert query(db, DETECTIONS) == before
    # the ledger follows the recording (review and reanalyse read it there), and nothing waits
    assert query(db, "SELECT source, path FROM files") == [("20230201_053000.WAV",
                                                            str(root / "day1" / "20230201_053000.WAV"))]
    assert query(db, "SELECT path, source FROM same_recordings") == [(str(root / "day1" / "20230201_053000.WAV"),
                                                                      "20230201_053000.WAV")]
    assert collect_status(db, directory=root)["backlog"]["waiting"] == 0
    assert watch_until_idle(root, db).processed == 0    # and at the next start


def test_a_recording_moved_back_to_its_name_is_where_the_ledger_says(tmp_path, duet):
    """Found in review: moved into a folder (the ledger followed it), then moved back, a recording
    kept the folder as its ledger path: reanalyse said it was no longer on disk, the review page
    found no audio for its detections."""
    from edgemon.storage.readonly import recording_path

    root, db = tmp_path / "rec", tmp_path / "d.db"
    original = write_wav(root / "20230201_053000.WAV", duet)
    assert watch_until_idle(root, db).processed == 1
    before = query(db, DETECTIONS)
    (root / "day1").mkdir()
    os.rename(original, root / "day1" / original.name)
    assert watch_until_idle(root, db).processed == 0
    os.rename(root / "day1" / original.name, original)            # and back
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT source, path FROM files") == [(original.name, str(original))]
    row = dict(zip(("source", "file_path", "file_size", "file_fingerprint", "file_tail_digest"),
                   query(db, "SELECT source, path, size, fingerprint, tail_digest FROM files")[0]))
    assert recording_path(row, None) == original
    assert query(db, DETECTIONS) == before
    assert watch_until_idle(root, db).processed == 0              # settled: nothing waits at the next start
    # The card read at another mount point: settled as before, its ledger path left alone (not a
    # write, and a line, per recording of the card).
    other = tmp_path / "mounted-elsewhere"
    shutil.copytree(root, other, copy_function=shutil.copy2)
    shutil.rmtree(root)
    assert watch_until_idle(other, db).processed == 0
    assert query(db, "SELECT source, path FROM files") == [(original.name, str(original))]


def test_a_recording_copied_back_to_its_name_is_where_the_ledger_says(tmp_path, duet):
    """Found in a diff review: moved into a folder (the ledger followed it), then copied back
    without its times (a new mtime: 'touched') and the folder's copy deleted, a recording kept the
    folder as its ledger path for as long as the daemon ran (the move back alone was mended)."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    original = write_wav(root / "20230201_053000.WAV", duet)
    assert watch_until_idle(root, db).processed == 1
    (root / "day1").mkdir()
    os.rename(original, root / "day1" / original.name)
    assert watch_until_idle(root, db).processed == 0
    shutil.copyfile(root / "day1" / original.name, original)
    os.remove(root / "day1" / original.name)
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT source, path FROM files") == [(original.name, str(original))]


def test_a_moved_recording_touched_after_is_said_touched_not_watched_from_another_directory(tmp_path, duet, caplog):
    """A hardening trial: a recording moved into a folder, then touched, was logged "analysed already
    as X, when another directory was watched": nothing was analysed twice, but the reason was wrong."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    assert watch_until_idle(root, db).processed == 1
    (root / "day1").mkdir()
    moved = root / "day1" / "20230201_053000.WAV"
    os.rename(root / "20230201_053000.WAV", moved)
    assert watch_until_idle(root, db).processed == 0
    os.utime(moved, ns=(moved.stat().st_atime_ns, moved.stat().st_mtime_ns + 10**9))
    caplog.clear()
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db).processed == 0
    said = [r.getMessage() for r in caplog.records if "not analysed again" in r.getMessage()]
    assert said == ["day1/20230201_053000.WAV: touched since it was found here as 20230201_053000.WAV, analysed "
                    "already (same size and audio): not analysed again"], said


def test_a_local_time_recorders_recording_renamed_is_known_by_its_start_in_its_clock_zone(tmp_path, duet):
    """Twins are asked for by start time: timed as UTC there and in the clock zone when analysed,
    a renamed Song Meter recording was analysed again."""
    from zoneinfo import ZoneInfo

    root, db, kuching = tmp_path / "rec", tmp_path / "d.db", ZoneInfo("Asia/Kuching")
    write_wav(root / "SMM07257_20230201_053000.wav", duet)
    assert watch_until_idle(root, db, clock_zone=kuching).processed == 1
    before = query(db, DETECTIONS)
    assert before and before[0][3].startswith("2023-01-31T21:30")
    os.rename(root / "SMM07257_20230201_053000.wav", root / "site 7 20230201_053000.wav")
    assert watch_until_idle(root, db, clock_zone=kuching).processed == 0
    assert query(db, DETECTIONS) == before


def test_the_old_path_of_a_recording_moved_after_analysis_is_not_called_unprocessed(tmp_path, duet, caplog):
    # A move seen live hints both paths; the old one, gone, was said to be "gone before it was
    # processed" (a newcomer trial read it as a lost recording).
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    watch_until_idle(root, db)
    (root / "day1").mkdir()
    os.rename(root / "20230201_053000.WAV", root / "day1" / "20230201_053000.WAV")
    caplog.set_level(logging.INFO, logger="edgemon")
    with Store(db) as store:
        watcher = Watcher(fast_config(root), analyzer(), store)
        assert watcher.step(root / "20230201_053000.WAV")
        assert watcher.step(root / "20230202_053000.WAV")     # never there, never analysed
    said = [r.getMessage() for r in caplog.records]
    assert "20230201_053000.WAV: no longer there (moved or deleted after it was analysed); its detections are " \
           "kept" in said
    assert "20230202_053000.WAV: gone before it was processed" in said
    assert not any(m.startswith("20230201_053000.WAV: gone before") for m in said)


def test_a_card_of_identical_recordings_costs_each_file_one_start_time(tmp_path, monkeypatch):
    """A newcomer trial: 3 000 recordings of the same audio (a dead microphone's silence on a fixed
    schedule) slowed from 0.01 s to 1.6 s a file, each reading the start of every earlier twin."""
    from edgemon.files import same_recording as module

    root, db = tmp_path / "rec", tmp_path / "d.db"
    for minute in range(8):
        write_wav(root / f"20230201_05{minute:02d}00.WAV", np.zeros(16000, np.float32))
    reads = []
    real = module.recording_time
    monkeypatch.setattr(module, "recording_time", lambda path, **kw: reads.append(path) or real(path, **kw))
    assert watch_until_idle(root, db).processed == 8          # another time each: analysed, not copies
    assert len(reads) <= 8, f"{len(reads)} start times read for 8 files"
    # A name of year 1 has no millisecond before it to ask for: analysed at its first attempt (a review).
    write_wav(root / "00010101_000000.WAV", np.zeros(16000, np.float32))
    assert watch_until_idle(root, db).processed == 1
    assert query(db, "SELECT state, attempts FROM files WHERE source = '00010101_000000.WAV'") == [("done", 1)]


def test_a_copy_beside_the_recording_is_not_analysed_again_but_another_recording_is(tmp_path, duet):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    watch_until_idle(root, db)
    before = query(db, DETECTIONS)
    shutil.copy(root / "20230201_053000.WAV", root / "20230201_053000 (1).WAV")
    assert watch_until_idle(root, db).processed == 0
    assert query(db, DETECTIONS) == before
    # Two recordings that only begin alike (the same first seconds of silence), same length: both
    # analysed; and the same audio renamed to another time (a clock mended by hand) is analysed there.
    quiet = np.zeros(3 * 16000, dtype=np.float32)
    write_wav(root / "20230202_053000.WAV", np.concatenate([quiet, noise(9, seed=1)]))
    write_wav(root / "20230202_053000 (1).WAV", np.concatenate([quiet, noise(9, seed=2)]))
    shutil.copy(root / "20230201_053000.WAV", root / "20230201_063000.WAV")
    assert watch_until_idle(root, db).processed == 3


def test_a_folder_of_copies_says_so_once_as_a_warning(tmp_path, duet, caplog):
    """A season trial: a card's folder copied beside itself gave a warning per file (thousands on a
    season's card), hiding the warnings that matter. The run's first copy is a warning, the rest
    information."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    for hour in (5, 6, 7):
        write_wav(root / "card" / f"20230201_0{hour}3000.WAV", duet)
    watch_until_idle(root, db)
    shutil.copytree(root / "card", root / "card-copy")
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db).processed == 0
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "a copy of" in r.getMessage()]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO, logging.INFO]
    assert "more copies this run are logged as information" in said[0][1]


def test_a_file_timed_by_its_mtime_touched_or_copied_again_keeps_its_times(tmp_path, duet):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    path = write_wav(root / "walk transect A.wav", duet)
    watch_until_idle(root, db)
    before = query(db, DETECTIONS)
    assert before and query(db, "SELECT time_source FROM files") == [("mtime",)]
    later = path.stat().st_mtime + 3600
    os.utime(path, (later, later))                 # `touch`, or a card copied again without -p
    assert watch_until_idle(root, db).processed == 0
    assert query(db, DETECTIONS) == before
    assert query(db, "SELECT mtime_ns FROM files") == [(path.stat().st_mtime_ns,)]
    assert collect_status(db, directory=root)["backlog"]["waiting"] == 0


def test_a_recorder_with_an_unset_clock_repeating_a_name_is_told_to_rename(tmp_path, caplog):
    """Found by a newcomer trial: an AudioMoth whose clock is unset writes 19700101_000000.WAV again
    after a battery change; the new recording was left alone with advice for two recorders."""
    import logging

    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "19700101_000000.WAV", noise(6, seed=1))
    watch_until_idle(root, db)
    write_wav(root / "19700101_000000.WAV", noise(6, seed=2))       # the next deployment, same name
    with caplog.at_level(logging.WARNING, logger="edgemon.files.watcher"):
        assert watch_until_idle(root, db).processed == 0
    assert "its names repeat: rename the file to have it analysed" in caplog.text
    os.rename(root / "19700101_000000.WAV", root / "19700101_000000-deployment2.WAV")
    assert watch_until_idle(root, db).processed == 1                # renamed, as advised: analysed


def test_what_only_looks_alike_is_analysed(tmp_path, monkeypatch):
    """Found by a review: two recorders' files of one name and size that begin in silence, the first
    card's gone, were taken for a move (the second never analysed, the ledger pointed at its
    audio); a file completed at the size it was preallocated at was taken as touched; and a twin
    that could not be looked at stopped the watcher."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    quiet = np.zeros(3 * 16000, dtype=np.float32)
    first = write_wav(root / "A" / "20230202_053000.WAV", np.concatenate([quiet, noise(9, seed=1)]))
    watch_until_idle(root, db)
    first.unlink()                                   # the first card emptied
    write_wav(root / "B" / "20230202_053000.WAV", np.concatenate([quiet, noise(9, seed=2)]))
    assert watch_until_idle(root, db).processed == 1
    assert dict(query(db, "SELECT source, path FROM files"))["A/20230202_053000.WAV"] == str(first)

    whole = np.concatenate([noise(6, seed=3), noise(6, seed=4)])
    stalled = write_wav(root / "20230203_053000.WAV", np.concatenate([whole[:6 * 16000], np.zeros(6 * 16000)]))
    watch_until_idle(root, db)                       # a copy that set its size first and stalled
    write_wav(stalled, whole)                        # completed, at the same size
    assert watch_until_idle(root, db).processed == 1

    # A twin that cannot be looked at (EACCES, a failing card) is no twin: the file is analysed.
    import filecmp

    shutil.copy(root / "B" / "20230202_053000.WAV", root / "20230202_053000 (1).WAV")

    def shut(a, b, shallow=True):
        raise PermissionError(13, "Permission denied", str(a))

    monkeypatch.setattr(filecmp, "cmp", shut)
    assert watch_until_idle(root, db).processed == 1


def test_a_copy_whose_original_goes_a_file_timed_by_its_mtime_and_a_reused_name(tmp_path, duet):
    """Found by a second review: a copy was analysed again once its original was deleted; a file
    timed by its mtime (microseconds; the ledger keeps milliseconds) was never recognised as moved;
    and a recording moved away while the next card's file of the same name took its place was
    analysed again under its new name."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    watch_until_idle(root, db)
    before = query(db, DETECTIONS)
    (root / "archive").mkdir()
    shutil.copy(root / "20230201_053000.WAV", root / "archive" / "20230201_053000.WAV")   # no -p: a new mtime
    assert watch_until_idle(root, db).processed == 0
    (root / "20230201_053000.WAV").unlink()
    assert watch_until_idle(root, db).processed == 0 and query(db, DETECTIONS) == before
    assert query(db, "SELECT path FROM files") == [(str(root / "archive" / "20230201_053000.WAV"),)]

    walk = write_wav(root / "walk transect A.wav", duet[: 8 * 16000])
    watch_until_idle(root, db)
    timed = query(db, DETECTIONS)
    (root / "day1").mkdir()
    os.rename(walk, root / "day1" / "walk transect A.wav")
    assert watch_until_idle(root, db).processed == 0 and query(db, DETECTIONS) == timed

    write_wav(root / "20230301_053000.WAV", duet[: 10 * 16000])
    watch_until_idle(root, db)
    moved = query(db, DETECTIONS)
    (root / "dump1").mkdir()
    os.rename(root / "20230301_053000.WAV", root / "dump1" / "20230301_053000.WAV")
    write_wav(root / "20230301_053000.WAV", noise(10, seed=5))    # the next card's, same name and size
    assert watch_until_idle(root, db).processed == 0               # the move recognised; the new one left alone
    assert query(db, DETECTIONS) == moved


def test_two_recordings_that_begin_and_end_in_the_same_silence_are_told_apart(tmp_path):
    """The header (an AudioMoth's comment names device and time) is in the last-bytes digest: a
    second card's recording of one name that begins and ends in digital silence was taken as
    touched and never analysed. (Its first audio is the first card's, so it is analysed under
    the name as before this check, not left alone: the digests of the first audio cannot tell.)"""
    import struct

    root, db = tmp_path / "rec", tmp_path / "d.db"
    quiet = np.zeros(3 * 16000, dtype=np.float32)

    def recording(seed: int, device: bytes) -> None:
        path = write_wav(root / "20230401_053000.WAV", np.concatenate([quiet, noise(4, seed=seed), quiet]))
        data = path.read_bytes()
        comment = b"ICMT" + struct.pack("<I", len(device)) + device
        info = b"LIST" + struct.pack("<I", 4 + len(comment)) + b"INFO" + comment
        body = data[12:]
        path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(info) + len(body)) + b"WAVE" + info + body)

    recording(1, b"Recorded by AudioMoth 24F319036A\0\0")
    watch_until_idle(root, db)
    recording(2, b"Recorded by AudioMoth 24F3190369\0\0")   # card B, the same name, size and silences
    assert watch_until_idle(root, db).processed == 1     # not taken for the first card's, touched


def test_a_recording_analysed_by_an_older_edgemon_is_recognised_when_moved_after_the_upgrade(tmp_path, duet):
    """Ledger rows from before tail digests were kept have none: such a recording, moved, was
    analysed again under its new name and its detections stored twice. The first run of the new
    version reads the digests of the files still in place."""
    import sqlite3

    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    write_wav(root / "20230201_063000.WAV", noise(12, seed=3))
    assert watch_until_idle(root, db).processed == 2
    before = query(db, DETECTIONS)
    now = query(db, "SELECT source, fingerprint, tail_digest FROM files ORDER BY source")
    bare = hashlib.sha1(_audio(root / "20230201_053000.WAV", SPAN_BYTES)).hexdigest()
    with sqlite3.connect(db) as con:   # as earlier edgemons left them: a bare digest (m012), none (before)
        con.execute("UPDATE files SET tail_digest = NULL, fingerprint = ? WHERE source = '20230201_053000.WAV'",
                    [bare])
        con.execute("UPDATE files SET tail_digest = NULL, fingerprint = NULL WHERE source = '20230201_063000.WAV'")
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT source, fingerprint, tail_digest FROM files ORDER BY source") == now
    (root / "day1").mkdir()
    os.rename(root / "20230201_053000.WAV", root / "day1" / "20230201_053000.WAV")
    assert watch_until_idle(root, db).processed == 0
    assert query(db, DETECTIONS) == before


def test_a_file_replaced_while_it_waits_for_its_digests_lends_them_to_no_row(tmp_path):
    """The digests of an older edgemon's recordings are read a batch at a scan, from a list made
    at the first: another card's recording of the name and size, written there meanwhile, lent
    its digests to the first card's row and was then taken as that recording touched, never
    analysed (a review)."""
    from edgemon.files.same_recording import complete_digests, same_recording, undigested_files
    from edgemon.storage.store import Store

    root = tmp_path / "rec"
    path = write_wav(root / "20230201_053000.WAV", noise(12, seed=1))
    st = path.stat()
    with Store(tmp_path / "d.db") as store:   # as an edgemon older than fingerprints left it
        store.commit_file("20230201_053000.WAV", path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                          duration_s=12.0, start_utc=None, time_source="filename", clock_suspect=False,
                          bundle_id="b1", detections=[])
        work = undigested_files(store, {path: (st.st_size, st.st_mtime_ns)}, lambda p: p.relative_to(root).as_posix())
        assert len(work) == 1
        write_wav(path, noise(12, seed=2))          # card B's recording, same name and size, later
        os.utime(path, ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
        assert path.stat().st_size == st.st_size
        assert complete_digests(store, work, lambda: None) == 0
        entry = store.file_entry("20230201_053000.WAV")
        assert entry["tail_digest"] is None
        assert same_recording(store, path, "20230201_053000.WAV", path.stat(), entry) is None


def test_moved_copied_and_other_recordings_are_settled_at_a_start_without_reading_them(tmp_path, duet):
    """Found by a review: a recording noted as moved or copied, or as another recording under an
    analysed name, was read again (and its twins looked for) at every start, twice per file."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet)
    write_wav(root / "20230202_053000.WAV", noise(6, seed=1))
    watch_until_idle(root, db)
    (root / "site7").mkdir()
    os.rename(root / "20230201_053000.WAV", root / "site7" / "20230201_053000.WAV")
    assert watch_until_idle(root, db).processed == 0
    shutil.copy(root / "site7" / "20230201_053000.WAV", root / "20230201_053000 (1).WAV")
    write_wav(root / "20230202_053000.WAV", noise(6, seed=2))     # a second recorder's card, same name
    assert watch_until_idle(root, db).processed == 0
    noted = {root / "site7" / "20230201_053000.WAV", root / "20230201_053000 (1).WAV",
             root / "20230202_053000.WAV"}
    with Store(db) as store:
        watcher = Watcher(fast_config(root), analyzer(), store)
        watcher.scan()
        assert watcher.pending == set() and set(watcher.settled) == noted
        assert watcher.others == {root / "20230202_053000.WAV"}     # still named in --until-idle's last line
        # A file changed since it was noted is looked at again.
        os.utime(root / "20230201_053000 (1).WAV", ns=(1, 1))
        watcher.settled.clear()
        watcher.scan()
        assert watcher.pending == {root / "20230201_053000 (1).WAV"}


def test_what_is_no_longer_there_is_forgotten_at_the_next_scan(tmp_path):
    """Found by a review: a unit that deletes the recordings it analysed kept every name it had
    ever seen (the watcher's memory grew by about 500 bytes a file for as long as it ran)."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    paths = [write_wav(root / f"20230201_05{m:02d}00.WAV", noise(2, seed=m)) for m in range(3)]
    watch_until_idle(root, db)
    with Store(db) as store:
        watcher = Watcher(fast_config(root), analyzer(), store)
        watcher.scan()
        assert set(watcher.settled) == set(paths)
        watcher.retry_at[paths[1]] = 1e12
        for path in paths[:2]:
            path.unlink()
        watcher.scan()
        assert set(watcher.settled) == {paths[2]} and watcher.retry_at == {}


def _convert(wav, flac, subtype="PCM_16", delete=False):
    """What `flac` or sox does to a card of WAVs: the same samples in another format and name."""
    data, rate = soundfile.read(wav, dtype="int32")
    soundfile.write(flac, data, rate, subtype=subtype, format="FLAC")
    if delete:
        wav.unlink()


def test_a_recording_converted_to_flac_in_the_tree_is_not_analysed_again(tmp_path, duet):
    """The README listed it as not recognised: a card of WAVs compressed to FLAC where watch
    looks stored every recording's detections twice (its bytes differ from the first one on)."""
    from edgemon.storage.fingerprint import not_analysed_as

    root, db = tmp_path / "rec", tmp_path / "d.db"
    wav = write_wav(root / "20230201_053000.WAV", duet)
    watch_until_idle(root, db)
    before = query(db, DETECTIONS)
    assert before
    _convert(wav, root / "20230201_053000.flac")             # beside its original: a copy
    assert watch_until_idle(root, db).processed == 0
    assert query(db, DETECTIONS) == before
    assert query(db, "SELECT path FROM files") == [(str(wav),)]
    wav.unlink()                                              # the original deleted: moved
    assert watch_until_idle(root, db).processed == 0
    assert query(db, DETECTIONS) == before
    flac = root / "20230201_053000.flac"
    assert query(db, "SELECT source, path, size FROM files") == [("20230201_053000.WAV", str(flac),
                                                                 flac.stat().st_size)]
    with Store(db) as store:     # review and reanalyse read it there, and take it for the recording
        assert not_analysed_as(store.file_entry("20230201_053000.WAV"), flac) is None
    assert watch_until_idle(root, db).processed == 0
    assert collect_status(db, directory=root)["backlog"]["waiting"] == 0

    # Converted into another folder at 24 bits, the original deleted before watch saw the FLAC.
    other = write_wav(root / "20230202_053000.WAV", duet[: 10 * 16000])
    watch_until_idle(root, db)
    (root / "flac").mkdir()
    _convert(other, root / "flac" / "20230202_053000.FLAC", subtype="PCM_24", delete=True)
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT count(*) FROM detections WHERE source = '20230202_053000.FLAC'") == [(0,)]

    # Another recording's audio under the name and start of an analysed one is analysed.
    write_wav(root / "20230203_053000.WAV", duet[: 8 * 16000])
    watch_until_idle(root, db)
    soundfile.write(root / "20230203_053000.flac", noise(8, seed=3), 16000, subtype="PCM_16")
    assert watch_until_idle(root, db).processed == 1
    # Two recorders' cards in one database: the same name, start and (a dead microphone's) silence in
    # the same format are two recordings, not a conversion; both hours count.
    write_wav(root / "siteA" / "20230204_053000.WAV", np.zeros(5 * 16000, np.float32))
    write_wav(root / "siteB" / "20230204_053000.WAV", np.zeros(5 * 16000, np.float32), subtype="PCM_24")
    assert watch_until_idle(root, db).processed == 2


def test_a_recording_analysed_before_decoded_digests_is_known_converted_while_its_original_is_there(tmp_path, duet):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    wav = write_wav(root / "20230201_053000.WAV", duet)
    gone = write_wav(root / "20230202_053000.WAV", duet[: 10 * 16000])
    watch_until_idle(root, db)
    with Store(db) as store, store.db.conn:
        store.db.execute("UPDATE files SET samples_digest = NULL")    # as an earlier edgemon left them
    _convert(wav, root / "20230201_053000.flac")
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT samples_digest IS NOT NULL FROM files WHERE source = '20230201_053000.WAV'") == [(1,)]
    # With the original gone nothing tells the FLAC's audio from another's: analysed (README says so).
    _convert(gone, root / "20230202_053000.flac", delete=True)
    assert watch_until_idle(root, db).processed == 1


def test_a_card_watched_from_its_parent_after_one_folder_says_no_move(tmp_path, duet, caplog):
    """A newcomer trial: one night's folder watched, then the whole card: every file of that night
    was warned "moved or renamed from" its own, unchanged path (its name under the watched
    directory changed, nothing else)."""
    card, db = tmp_path / "card", tmp_path / "d.db"
    write_wav(card / "20230201" / "20230201_053000.WAV", duet)
    watch_until_idle(card / "20230201", db)
    before = query(db, DETECTIONS)
    caplog.set_level(logging.INFO, logger="edgemon")
    assert watch_until_idle(card, db).processed == 0
    assert query(db, DETECTIONS) == before
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "20230201_053000.WAV" in r.getMessage()]
    assert said == [(logging.INFO, "20230201/20230201_053000.WAV: analysed already as 20230201_053000.WAV, when "
                                   "another directory was watched: not analysed again")], said


def test_a_watch_with_another_bundle_over_analysed_recordings_says_reanalyse(tmp_path, duet, caplog):
    """A newcomer trial: watch with a retrained bundle over a directory already analysed said
    "0 file(s) analysed" and nothing of why."""
    import sqlite3

    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20230201_053000.WAV", duet[: 8 * 16000])
    watch_until_idle(root, db)
    caplog.set_level(logging.INFO, logger="edgemon")
    assert watch_until_idle(root, db).processed == 0
    assert not any("another bundle" in r.getMessage() for r in caplog.records)   # its own bundle: nothing to say
    with sqlite3.connect(db) as conn:       # as if a bundle of last season had analysed it
        conn.execute("UPDATE analyses SET bundle_id = 'last-season-0123'")
    caplog.clear()
    watcher = watch_until_idle(root, db)
    assert watcher.processed == 0
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nothing left to do")]
    assert said and said[0].endswith(f"; 1 recording(s) here were analysed by another bundle, not by "
                                     f"{watcher.analyzer.bundle.bundle_id}: `edgemon reanalyse --db {db}` "
                                     f"runs it on them"), said   # the embedded bundle: no --models (an upgrade trial)


def test_clock_timezone_set_after_the_first_watch_is_said_not_silent(tmp_path, caplog):
    """A Borneo trial: a Song Meter's local-time names were first watched without clock_timezone
    (read as UTC); with the setting mended, the next watch said nothing and every duet stayed 8 h
    off. Its stored times are kept, as documented, but the run now says so, and how to mend it."""
    from zoneinfo import ZoneInfo

    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "SMA01234_20240501_053800.wav", noise(4.0))
    write_wav(root / "SMA01234_20240502_061000.wav", noise(4.0))
    assert watch_until_idle(root, db).processed == 2
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db).processed == 0   # the same setting: nothing to say
    assert "clock_timezone" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db, clock_zone=ZoneInfo("Asia/Kuching")).processed == 0
    said = [r for r in caplog.records if "clock_timezone" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING"]
    assert "2 of 2 recording(s)" in said[0].getMessage()
    assert "stored at 2024-05-01T05:38:00.000Z, now read as 2024-04-30T21:38:00.000Z" in said[0].getMessage()
    assert "new database" in said[0].getMessage()
    assert query(db, "SELECT start_utc FROM files ORDER BY source")[0][0].startswith("2024-05-01T05:38")


def test_a_recording_timed_by_an_offset_less_guano_time_is_checked_too(tmp_path, caplog):
    """A review: the start check read only recordings timed by their names, though
    clock_timezone moves an offset-less GUANO time alike (a recorder naming files without a time)."""
    from zoneinfo import ZoneInfo

    from tests.test_recorder import guano, wav_bytes, write

    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    write(root / "night one.wav", wav_bytes(seconds=4.0, rate=16000, after=[guano(Timestamp="2024-05-01T05:38:00")]))
    assert watch_until_idle(root, db).processed == 1
    assert query(db, "SELECT time_source, start_utc FROM files")[0][0] == "metadata"
    with caplog.at_level("INFO", logger="edgemon"):
        assert watch_until_idle(root, db, clock_zone=ZoneInfo("Asia/Kuching")).processed == 0
    said = [r.getMessage() for r in caplog.records if "clock_timezone" in r.getMessage()]
    assert len(said) == 1 and "1 of 1 recording(s)" in said[0] and "now read as 2024-04-30T21:38:00.000Z" in said[0]


def test_a_recording_moved_after_clock_timezone_was_mended_is_not_analysed_again(tmp_path, duet):
    """A Borneo trial: watched first without clock_timezone (its local-time name read as UTC), a
    Song Meter recording moved after the setting was mended was taken for a new one, analysed
    again beside its old rows: its calls and its hours counted twice."""
    from zoneinfo import ZoneInfo

    root, db, kuching = tmp_path / "rec", tmp_path / "d.db", ZoneInfo("Asia/Kuching")
    write_wav(root / "SMA01234_20240501_053800.wav", duet)
    assert watch_until_idle(root, db).processed == 1
    before = query(db, DETECTIONS)
    assert before and before[0][3].startswith("2024-05-01T05:38")   # read as UTC then
    (root / "day1").mkdir()
    os.rename(root / "SMA01234_20240501_053800.wav", root / "day1" / "SMA01234_20240501_053800.wav")
    assert watch_until_idle(root, db, clock_zone=kuching).processed == 0
    assert query(db, DETECTIONS) == before and query(db, "SELECT count(*) FROM files") == [(1,)]
