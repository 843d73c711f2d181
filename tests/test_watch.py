"""edgemon watch on real files: bad input never crashes it and never loses what is stored."""

from __future__ import annotations

import logging
import os
import struct
import threading
import time

import numpy as np
import pytest

from edgemon.files.watcher import Watcher
from edgemon.storage.store import Store
from tests.waits import wait_until
from tests.watch_helpers import (analyzer, fast_config, files_done, noise, query, unfinalised_header,
                                 watch_until_idle, write_wav)


@pytest.fixture
def good_recording(borneo_dir):
    """Six seconds of a real gibbon duet clip as 16-bit PCM."""
    import soundfile
    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[0]
    return soundfile.read(clip, dtype="float32")[0]


def ledger(db):
    return {row[0]: row[1:] for row in query(db, "SELECT source, state, attempts, error FROM files")}


def test_backlog_then_new_files_and_no_reprocessing(tmp_path, good_recording):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20180301_060000.WAV", good_recording)
    write_wav(root / "deeper" / "dir" / "20180301_070000.wav", good_recording)
    watcher = watch_until_idle(root, db)
    assert watcher.processed == 2
    first = query(db, "SELECT id, source, label, start_utc, time_source FROM detections ORDER BY id")
    assert first and {r[4] for r in first} == {"filename"}
    assert first[0][3].startswith("2018-03-01T06:00")
    write_wav(root / "20180301_080000.WAV", good_recording)
    watcher = watch_until_idle(root, db)
    assert watcher.processed == 1                       # only the new file
    assert query(db, "SELECT id, source, label, start_utc, time_source FROM detections WHERE id <= ?",
                 (first[-1][0],)) == first              # nothing stored was touched
    assert set(ledger(db)) == {"20180301_060000.WAV", "deeper/dir/20180301_070000.wav", "20180301_080000.WAV"}


def test_a_recording_cut_short_after_it_was_analysed_keeps_its_detections(tmp_path, good_recording):
    """Found by a newcomer trial: a recording truncated after analysis was analysed again and its
    detections of the audio that was cut off were deleted, their reviews orphaned."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    path = write_wav(root / "20180301_060000.WAV", np.concatenate([good_recording] * 3))
    watch_until_idle(root, db)
    before = query(db, "SELECT * FROM detections ORDER BY id")
    assert before
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    watcher = watch_until_idle(root, db)
    assert watcher.processed == 0 and query(db, "SELECT * FROM detections ORDER BY id") == before
    state, _, error = ledger(db)["20180301_060000.WAV"]
    assert state == "quarantined" and "cut short since it was analysed" in error and "detections are kept" in error
    from edgemon.files.reanalyse import reanalyse
    again = reanalyse(db, analyzer())        # named, not skipped without a word
    assert again.files == 0 and again.changed == [f"20180301_060000.WAV: quarantined by watch ({error})"]
    write_wav(path, np.concatenate([good_recording] * 4))   # restored, or grown: analysed again
    assert watch_until_idle(root, db).processed == 1
    # A shorter but whole recording saved under the name (a recorder that numbers its files, a
    # reformatted card) is a new recording: analysed, its own detections stored (a review found it refused).
    write_wav(path, good_recording)
    assert watch_until_idle(root, db).processed == 1
    assert ledger(db)["20180301_060000.WAV"][0] == "done"


@pytest.mark.parametrize("rate, channels, subtype", [(16000, 1, "PCM_U8"), (16000, 2, "PCM_16"),
                                                     (48000, 1, "PCM_24"), (192000, 1, "FLOAT")])
def test_other_formats_are_read(tmp_path, good_recording, rate, channels, subtype):
    import soxr
    x = soxr.resample(good_recording, 16000, rate) if rate != 16000 else good_recording
    if channels == 2:
        x = np.stack([x, x * 0.5], axis=1)
    write_wav(tmp_path / "rec" / "20180301_060000.WAV", x, rate, subtype)
    watch_until_idle(tmp_path / "rec", tmp_path / "d.db")
    (state, attempts, error), = ledger(tmp_path / "d.db").values()
    assert state == "done" and error is None
    duration, = query(tmp_path / "d.db", "SELECT duration_s FROM files")[0]
    assert duration == pytest.approx(len(good_recording) / 16000, abs=0.01)


def test_bad_files_are_recorded_and_never_stop_the_others(tmp_path, good_recording):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    good = write_wav(root / "20180301_060000.WAV", good_recording)
    watch_until_idle(root, db)
    stored = query(db, "SELECT * FROM detections ORDER BY id")
    assert stored
    raw = good.read_bytes()
    # Truncated at many offsets: inside the RIFF header, the fmt chunk, the data header, the data.
    for offset in (1, 4, 8, 12, 20, 36, 40, 44, 45, 1001, len(raw) // 3, len(raw) - 1):
        (root / "trunc" / f"20180302_{offset:06d}.WAV").parent.mkdir(exist_ok=True)
        (root / "trunc" / f"20180302_{offset:06d}.WAV").write_bytes(raw[:offset])
    (root / "zero.WAV").write_bytes(b"")
    (root / "text.WAV").write_bytes(b"this is a shopping list, not audio\n" * 50)
    liar = bytearray(raw)
    liar[40:44] = (10 * len(raw)).to_bytes(4, "little")  # data chunk claims far more than is there
    (root / "liar.WAV").write_bytes(bytes(liar))
    os.mkfifo(root / "fifo.WAV")                           # would block a naive reader forever
    unreadable = write_wav(root / "locked.WAV", good_recording)
    unreadable.chmod(0)
    watch_until_idle(root, db, timeout=180)
    entries = ledger(db)
    assert query(db, "SELECT * FROM detections WHERE source = ?", ("20180301_060000.WAV",)) == stored
    assert entries["20180301_060000.WAV"][0] == "done"
    for name in ("zero.WAV", "text.WAV", "fifo.WAV"):
        assert entries[name][0] == "quarantined", (name, entries[name])
    # An empty file is quarantined once its grace is over, not after three failed decodes.
    assert "empty file (0 bytes)" in entries["zero.WAV"][2]
    assert not any("b'" in (entry[2] or "") for entry in entries.values())   # soundfile's bytes path
    assert entries["liar.WAV"][0] == "done" and "declares" in entries["liar.WAV"][2]
    truncated = {k: v for k, v in entries.items() if k.startswith("trunc/")}
    assert len(truncated) == 12 and {v[0] for v in truncated.values()} <= {"done", "quarantined"}
    # Offsets past the header keep what audio there is.
    assert truncated["trunc/20180302_%06d.WAV" % (len(raw) - 1)][0] == "done"
    if os.geteuid() != 0:  # root reads a mode-000 file regardless
        assert entries["locked.WAV"][0] == "quarantined"
    assert Store(db).integrity_check() == "ok"


def test_a_flac_still_being_written_is_taken_once_complete(tmp_path, good_recording):
    """A newcomer trial: a FLAC written in blocks with pauses longer than settle_s was analysed at
    every pause (its STREAMINFO says 0 samples until it is closed), 7 times over, and a cursor
    export kept the events of the first, cut-short passes. An empty FLAC waited out its grace as
    an empty WAV does, instead of failing three decodes."""
    import soundfile

    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    (root / "20180302_060000.flac").write_bytes(b"")
    path = root / "20180301_060000.flac"
    writer = soundfile.SoundFile(path, "w", 16000, 1, format="FLAC")
    done = threading.Event()

    def recorder():   # blocks of 4.5 s of audio, each flushed, with pauses of 6 settle times
        for start in range(0, len(good_recording), 72000):
            writer.write(good_recording[start:start + 72000])
            writer.flush()
            time.sleep(1.2)
        writer.close()
        done.set()

    threading.Thread(target=recorder, daemon=True).start()
    # Written for about 5 s, longer than the grace: each growth starts the wait anew (a review saw
    # a long recording read at every grace period).
    watch_until_idle(root, db, incomplete_grace_s=3)
    assert done.is_set(), ledger(db)
    entries = ledger(db)
    assert entries["20180301_060000.flac"] == ("done", 1, None)   # once, whole, nothing odd noted
    (duration,) = query(db, "SELECT duration_s FROM files WHERE source = '20180301_060000.flac'")[0]
    assert duration == pytest.approx(len(good_recording) / 16000, abs=0.01)
    assert entries["20180302_060000.flac"][:2] == ("quarantined", 1) and "empty file" in entries["20180302_060000.flac"][2]


def test_a_flac_copy_that_stalls_is_waited_for_and_analysed_once_whole(tmp_path, good_recording):
    """A newcomer trial: a finished FLAC copied with a stall longer than settle_s (its STREAMINFO,
    written first, already whole) was analysed half-copied, then again; a cursor export between
    the two delivered a cut call and then the whole one. Waited for as a WAV declaring more data
    than it holds is."""
    import soundfile

    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, good_recording, 16000, format="FLAC")
    data = whole.read_bytes()
    path = root / "20180301_060000.flac"
    path.write_bytes(data[:len(data) // 2])
    done = threading.Event()

    def copy_resumes():   # the stall: 1.5 s, six settle times
        time.sleep(1.5)
        with open(path, "ab") as f:
            f.write(data[len(data) // 2:])
        done.set()

    threading.Thread(target=copy_resumes, daemon=True).start()
    watch_until_idle(root, db, incomplete_grace_s=30)
    assert done.is_set()
    assert ledger(db)["20180301_060000.flac"] == ("done", 1, None)   # once, whole, nothing odd noted
    (duration,) = query(db, "SELECT duration_s FROM files")[0]
    assert duration == pytest.approx(len(good_recording) / 16000, abs=0.01)


def test_a_file_still_being_written_is_taken_once_complete(tmp_path, good_recording):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    path = write_wav(root / "20180301_060000.WAV", good_recording)
    full = path.read_bytes()
    header_only = bytearray(full[:44])
    path.write_bytes(bytes(header_only))
    unfinalised_header(path)
    done = threading.Event()

    def recorder():  # append audio in bursts, then write the header at close, as an AudioMoth does
        partial = bytearray(path.read_bytes())
        for start in range(44, len(full), 32000):
            time.sleep(0.15)
            partial += full[start:start + 32000]
            path.write_bytes(bytes(partial))
            unfinalised_header(path)
        time.sleep(0.3)
        path.write_bytes(full)
        done.set()

    threading.Thread(target=recorder, daemon=True).start()
    watch_until_idle(root, db, incomplete_grace_s=30)
    assert done.is_set()
    (duration,) = query(db, "SELECT duration_s FROM files")[0]
    assert duration == pytest.approx(len(good_recording) / 16000, abs=0.01)
    assert query(db, "SELECT attempts, error FROM files") == [(1, None)]


def test_a_one_off_run_says_which_unfinished_header_it_waits_for(tmp_path, good_recording, caplog):
    """A newcomer trial: a card's WAV cut short (its header says longer) waited out the grace with
    --until-idle without a line, and looked like a hang."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    path = write_wav(root / "20180301_060000.WAV", good_recording)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])   # the header still claims it all
    caplog.set_level(logging.INFO, logger="edgemon")
    watch_until_idle(root, db, incomplete_grace_s=1.0)
    said = [r.getMessage() for r in caplog.records if "its header is not finished" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("20180301_060000.WAV: its header is not finished (")
    assert "waiting up to 1 s for it to be written, then it is read as far as it goes" in said[0]
    assert ledger(db)["20180301_060000.WAV"][0] == "done"


def test_a_file_deleted_while_queued_is_dropped(tmp_path, good_recording):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    doomed = write_wav(root / "20180301_060000.WAV", good_recording)
    keep = write_wav(root / "20180301_070000.WAV", good_recording)
    with Store(db) as store:
        watcher = Watcher(fast_config(root, settle_s=0.0), analyzer(), store)
        watcher.scan()
        assert watcher.pending == {doomed, keep}
        doomed.unlink()
        watcher.run(threading.Event())
    assert set(ledger(db)) == {"20180301_070000.WAV"}


def test_an_unreadable_directory_is_a_clear_error(tmp_path):
    from typer.testing import CliRunner
    from edgemon.cli import app

    result = CliRunner().invoke(app, ["watch", str(tmp_path / "missing"), "--db", str(tmp_path / "d.db"),
                                      "--until-idle"])
    assert result.exit_code == 1 and "missing: no such directory" in result.output
    assert not (tmp_path / "d.db").exists()            # issue 13: nothing created before the error


def test_a_dead_inotify_reader_is_replaced_and_the_directory_rescanned(tmp_path, good_recording):
    """Found in CI: watchdog 7 reads inotify on a thread of its own per observer. When it died,
    the observer and emitter threads still looked alive, so the watcher stayed deaf until its next
    rescan (an hour here) and a new recording waited that long. It now sees the dead reader,
    starts a new observer and rescans at once."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20180301_050000.WAV", good_recording)
    stop, made = threading.Event(), {}

    def run():
        with Store(db) as store:
            made["watcher"] = Watcher(fast_config(root, until_idle=False, rescan_s=3600.0), analyzer(), store)
            made["watcher"].run(stop)

    observers_before = set(threading.enumerate())
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: files_done(db) == 1, 60, "the first recording done")  # observing by then
        readers = [t for t in threading.enumerate() if type(t).__name__ == "InotifyFD" and t not in observers_before]
        assert len(readers) == 1
        readers[0].stop()                                 # as if a callback had raised in it
        readers[0].join(timeout=10)
        write_wav(root / "20180301_060000.WAV", good_recording)
        wait_until(lambda: files_done(db) == 2, 60, "the new recording done")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_hints_from_hidden_directories_are_skipped_as_the_scan_skips_them(tmp_path, good_recording):
    """Found in review: the scan skips hidden directories (a '.Trash-1000', a sync tool's
    '.stversions'), but a watchdog hint from inside one was analysed. Real observer, real events:
    the files appear only after the first scan."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    stop, made = threading.Event(), {}

    def run():
        with Store(db) as store:
            made["watcher"] = Watcher(fast_config(root, until_idle=False, rescan_s=3600.0), analyzer(), store)
            made["watcher"].run(stop)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)                                   # scanned (empty) and observing
        write_wav(root / ".Trash-1000" / "files" / "20180301_050000.WAV", good_recording)
        write_wav(root / "20180301_060000.WAV", good_recording)
        deadline = time.monotonic() + 60
        while "20180301_060000.WAV" not in ledger(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)                                   # (a hidden hint sorts first: it would be done)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert set(ledger(db)) == {"20180301_060000.WAV"}


def test_watchdogs_shutdown_race_is_not_logged_as_an_error(caplog):
    """A newcomer trial saw 'ERROR watchdog.observers.inotify: InotifyEmitter.queue_events() called
    when the thread is inactive' on about one clean exit in five: watchdog's own race, harmless."""
    import logging

    import edgemon.files.events  # noqa: F401 (installs the filter)

    caplog.set_level(logging.INFO)
    inotify = logging.getLogger("watchdog.observers.inotify")
    inotify.error("InotifyEmitter.queue_events() called when the thread is inactive")
    inotify.error("inotify watch limit reached")
    assert [r.getMessage() for r in caplog.records if r.name == inotify.name] == ["inotify watch limit reached"]



def test_a_recording_with_no_time_in_its_name_or_header_is_said_and_listed(tmp_path, good_recording, caplog):
    """Found by a hostile-input trial: files of other recorders (Song Meter names) and renamed
    files were timed by the card copy's mtime, years late, with nothing said."""
    from edgemon.status import collect_status
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "SMM07257_20230201_060000.wav", good_recording)
    write_wav(root / "REC0001.WAV", good_recording)
    # Other audio: the same bytes timed by mtimes within a millisecond are a copy, rightly not
    # analysed again (a CI run wrote both in the same millisecond).
    write_wav(root / "REC0002.WAV", good_recording * 0.5)
    with caplog.at_level("INFO"):
        watch_until_idle(root, db)
    times = dict(query(db, "SELECT source, time_source FROM files"))
    assert times == {"SMM07257_20230201_060000.wav": "filename", "REC0001.WAV": "mtime", "REC0002.WAV": "mtime"}
    said = [r for r in caplog.records if "no start time in its name or header" in r.getMessage()]
    assert [r.levelname for r in said] == ["WARNING", "INFO"]
    problems = collect_status(db, directory=root)["problems"]
    assert any(p.startswith("2 file(s) timed by their modification time") and "REC0001.WAV" in p for p in problems), problems


def test_a_file_touched_past_2262_is_analysed_and_stops_no_other(tmp_path, good_recording):
    """A review: a recording whose modification time (ext4 holds it; a stray `touch -d 2300-01-01`)
    overflowed SQLite's INTEGER raised out of the watcher at every start: a crash loop under
    systemd, and the files after it never analysed."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    write_wav(root / "20180301_060000.WAV", good_recording)
    write_wav(root / "20180302_060000.WAV", good_recording)
    future = 10_413_792_000 * 10**9   # 2300-01-01, past int64 nanoseconds
    os.utime(root / "20180301_060000.WAV", ns=(future, future))
    if (root / "20180301_060000.WAV").stat().st_mtime_ns < 2**63:
        pytest.skip("this file system cannot hold a time past 2262")
    watcher = watch_until_idle(root, db)
    assert watcher.processed == 2
    assert {source: state for source, (state, *_) in ledger(db).items()} == {
        "20180301_060000.WAV": "done", "20180302_060000.WAV": "done"}
    again = watch_until_idle(root, db)   # the clamped time is the ledger's: not analysed again
    assert again.processed == 0


class _FailingStore(Store):
    """A store whose commits of recordings fail as ``error`` says (a card going bad, a bug)."""

    error: Exception = RuntimeError("a bug nobody foresaw")

    def commit_file(self, *args, **kwargs):
        raise self.error


def _watch_failing(root, db, error) -> BaseException | None:
    """Watch ``root`` with commits failing, until idle (stopped after 60 s); what the watcher raised."""
    from tests.watch_helpers import analyzer, fast_config

    stop, raised = threading.Event(), []

    def run():
        with _FailingStore(db) as store:
            store.error = error
            try:
                Watcher(fast_config(root), analyzer(), store).run(stop)
            except BaseException as exc:
                raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()
    return raised[0] if raised else None


def test_an_unforeseen_failure_is_counted_against_its_file_and_a_corrupt_database_is_not_hidden(
        tmp_path, good_recording):
    """A review: the watcher's per-file catch-all retried a file for ever (each try, an attempt
    left open, isolated in a child process), and hid a database that had gone corrupt from the
    service, which would have restarted into recovery."""
    root = tmp_path / "rec"
    write_wav(root / "20180301_060000.WAV", good_recording)
    assert _watch_failing(root, tmp_path / "a.db", RuntimeError("a bug nobody foresaw")) is None
    (state, attempts, why), = query(tmp_path / "a.db", "SELECT state, attempts, error FROM files")
    assert (state, attempts) == ("quarantined", 3) and "RuntimeError: a bug nobody foresaw" in why
    assert query(tmp_path / "a.db", "SELECT count(*) FROM in_progress") == [(0,)]
    import sqlite3
    error = _watch_failing(root, tmp_path / "b.db", sqlite3.DatabaseError("database disk image is malformed"))
    assert isinstance(error, sqlite3.DatabaseError) and "malformed" in str(error)


def test_a_file_quarantined_by_an_unforeseen_failure_is_counted_in_the_closing_line(tmp_path, good_recording,
                                                                                     caplog):
    """Found by a header fuzzer: a WAV whose ds64 claimed 2**63 bytes failed outside the analysis,
    was quarantined by the per-file catch-all, and ``--until-idle``'s closing line left it out of
    its count of quarantined files."""
    root = tmp_path / "rec"
    write_wav(root / "20180301_060000.WAV", good_recording)
    caplog.set_level(logging.INFO, logger="edgemon.files.watcher")
    assert _watch_failing(root, tmp_path / "a.db", RuntimeError("a bug nobody foresaw")) is None
    assert "0 detection(s); 1 file(s) quarantined (edgemon status lists them)" in caplog.text


def test_rescans_are_spaced_out_where_a_scan_takes_long(tmp_path, monkeypatch):
    """Found by a review: a scan of 100 000 recordings took 7 s, every 30 s. Rescans now take at
    most a tenth of the time: a scan of 5 s is followed by the next 50 s later, not 30 s."""
    import edgemon.files.watcher as watcher_module

    now = [1000.0]
    monkeypatch.setattr(watcher_module.time, "monotonic", lambda: now[0])
    (tmp_path / "rec").mkdir()
    with Store(tmp_path / "d.db") as store:
        watcher = Watcher(fast_config(tmp_path / "rec", rescan_s=30.0), analyzer(), store)
        took = {"s": 5.0}
        monkeypatch.setattr(watcher, "scan", lambda quick=False: now.__setitem__(0, now[0] + took["s"]))
        assert watcher._scan_timed() == pytest.approx(1005.0 + 50.0)
        took["s"] = 0.5                        # a quick scan: rescan_s as configured
        assert watcher._scan_timed() == pytest.approx(1005.5 + 30.0)


def test_the_recordings_of_a_card_never_emptied_are_kept_in_little_memory(tmp_path):
    """Found in the weeks review: the watcher keeps the version of every analysed recording still
    on the card between scans, and kept it by ``Path``: about 525 bytes a recording, 52 MB of a
    season's 100 000 (the daemon at 193 MB, the unit's MemoryHigh 384 MB). Kept by the path's
    text it is less than half."""
    import datetime as dt
    import tracemalloc

    root, n = tmp_path / "rec", 4000
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    with Store(tmp_path / "d.db") as store:
        store.db.execute("PRAGMA synchronous = OFF")   # a ledger filled quickly; nothing here is about power cuts
        for i in range(n):
            when = start + dt.timedelta(minutes=10 * i)
            path = root / when.strftime("%Y%m%d") / when.strftime("%Y%m%d_%H%M%S.WAV")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"RIFF")   # only its size and mtime are looked at: it is in the ledger
            st = path.stat()
            store.commit_file(path.relative_to(root).as_posix(), path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                              duration_s=60.0, start_utc=when, time_source="filename", clock_suspect=False,
                              bundle_id="b", detections=[], fingerprint=f"{i:040x}", tail_digest=f"{i:040x}")
        watcher = Watcher(fast_config(root), analyzer(), store)
        tracemalloc.start()
        try:
            watcher.scan()
            assert len(watcher.settled) == n and not watcher.pending
            assert watcher.settled.get(path) == (st.st_size, st.st_mtime_ns) and path in set(watcher.settled)
            kept = tracemalloc.get_traced_memory()[0]
            watcher.settled.clear()
            held = kept - tracemalloc.get_traced_memory()[0]   # what forgetting them frees
        finally:
            tracemalloc.stop()
    assert held / n < 350, f"{held / n:.0f} bytes a recording"   # by Path 587 here, by text 265


def _analysed_card(store: Store, root, days: int, per_day: int) -> list:
    """A card of ``days`` folders of ``per_day`` recordings each, every one done in the ledger
    (only their sizes and mtimes are looked at by a scan); an MP3 beside them, and a link to the
    card's own directory (said once, not followed)."""
    import datetime as dt

    paths = []
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(days * per_day):
        when = start + dt.timedelta(days=i // per_day, minutes=i % per_day)
        path = root / when.strftime("%Y%m%d") / when.strftime("%Y%m%d_%H%M%S.WAV")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
        st = path.stat()
        store.commit_file(path.relative_to(root).as_posix(), path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                          duration_s=60.0, start_utc=when, time_source="filename", clock_suspect=False,
                          bundle_id="b", detections=[], fingerprint=f"{i:040x}", tail_digest=f"{i:040x}")
        paths.append(path)
    (root / "notes.mp3").write_bytes(b"ID3")
    (root / "loop").symlink_to(root)
    return paths


def test_an_idle_rescan_reads_only_the_directories_that_changed(tmp_path, monkeypatch):
    """Found in the idle-cost trial: an idle unit rescanned its whole card every 30 s, a stat
    per recording (0.42 s of CPU a rescan of 50 000 analysed recordings, 49 s an hour, against
    0.6 s an hour for an empty card). A rescan now lists only the directories changed since the
    last one and stats only their files; every ``full_rescan_s`` it stats them all."""
    import edgemon.files.directory as directory_module
    import edgemon.files.watcher as watcher_module

    # Every directory counts as changed long enough ago to be kept as listed (SETTLED_DIRECTORY_NS
    # is what guards a change made within a file system's time resolution, seconds on FAT).
    monkeypatch.setattr(directory_module, "SETTLED_DIRECTORY_NS", -10**12, raising=False)
    stats = []
    counted = watcher_module.file_version
    monkeypatch.setattr(watcher_module, "file_version", lambda path: stats.append(path) or counted(path))
    root = tmp_path / "rec"
    with Store(tmp_path / "d.db") as store:
        store.db.execute("PRAGMA synchronous = OFF")   # a ledger filled quickly; nothing here is about power cuts
        paths = _analysed_card(store, root, days=4, per_day=25)
        watcher = Watcher(fast_config(root, until_idle=False, rescan_s=30.0), analyzer(), store)
        watcher._scan_timed()                          # the first scan: every file
        assert len(stats) == 100 and len(watcher.settled) == 100 and not watcher.pending
        said = (dict(watcher.unreadable), dict(watcher.other_formats))
        stats.clear()
        watcher._scan_timed()                          # nothing changed: no file looked at
        assert stats == [] and len(watcher.settled) == 100 and not watcher.pending
        assert (watcher.unreadable, watcher.other_formats) == said   # still known, not said again
        new = write_wav(paths[30].parent / "20240102_120000.WAV", noise(0.5))
        os.utime(new.parent, ns=(1, 1))   # its directory changed (within a coarse clock's tick, it may not show)
        watcher._scan_timed()                          # only the changed directory's files
        assert watcher.pending == {new} and sorted(stats) == sorted([*paths[25:50], new])
        paths[60].write_bytes(b"RIFF, now longer")     # changed in place: its directory is not
        stats.clear()
        watcher._scan_timed()
        assert stats == [] and paths[60] not in watcher.pending
        watcher.full_scan_due = 0.0                    # full_rescan_s has passed
        watcher._scan_timed()
        assert len(stats) == 101 and watcher.pending == {new, paths[60]}


def test_a_quick_rescan_forgets_what_was_deleted_and_finds_what_was_added_below(tmp_path, monkeypatch):
    """A directory left as it was is not listed again, but the folders below it are looked at:
    a recording added two levels down, and one deleted, are seen at the next quick rescan."""
    import edgemon.files.directory as directory_module

    monkeypatch.setattr(directory_module, "SETTLED_DIRECTORY_NS", -10**12, raising=False)
    root = tmp_path / "rec"
    with Store(tmp_path / "d.db") as store:
        store.db.execute("PRAGMA synchronous = OFF")
        paths = _analysed_card(store, root, days=2, per_day=3)
        watcher = Watcher(fast_config(root, until_idle=False), analyzer(), store)
        watcher.scan()
        deep = write_wav(root / "20240101" / "site" / "20240101_090000.WAV", noise(0.5))
        os.utime(deep.parent.parent, ns=(1, 1))
        paths[4].unlink()
        os.utime(paths[4].parent, ns=(1, 1))
        watcher.scan(quick=True)
        assert watcher.pending == {deep}
        assert set(watcher.settled) == set(paths) - {paths[4]}


def test_reading_recordings_and_listing_folders_wakes_no_observer_thread(tmp_path, monkeypatch):
    """Found in the idle-cost trial: the observer asked the kernel for every event, so each
    directory a rescan listed and each file the analysis opened raised an "opened" and a
    "closed" event, waking two observer threads only to be dropped by ``Hints``. Only the events
    hints are made of are asked for now."""
    import queue

    from edgemon.files import events

    seen = []
    original = events.Hints.on_any_event
    monkeypatch.setattr(events.Hints, "on_any_event", lambda self, event: seen.append(event.event_type) or
                        original(self, event))
    root = tmp_path / "rec"
    recording = write_wav(root / "day" / "20240101_000000.WAV", noise(0.5))
    hints: queue.Queue = queue.Queue()
    observer = events.start_observer(root, hints)
    try:
        for _ in range(20):
            recording.read_bytes()
            os.listdir(recording.parent)
            os.listdir(root)
        marker = write_wav(root / "day" / "20240101_000100.WAV", noise(0.5))   # events come in order
        wait_until(lambda: marker in list(hints.queue), 10, "the new recording's hint")
    finally:
        events.stop_observer(observer)
    assert {"opened", "closed_no_write"}.isdisjoint(seen), sorted(set(seen))
    assert "created" in seen


def test_a_touched_recording_is_a_hint(tmp_path):
    """Found in a review: `edgemon status` says to mend a quarantined file and `touch` it, but a
    touch changes no directory, so quick rescans skipped it, and the observer was not asked for
    the event it raises (IN_ATTRIB): it was tried again only at the next full rescan, an hour on."""
    import queue

    from edgemon.files import events

    root = tmp_path / "rec"
    recording = write_wav(root / "day" / "20240101_000000.WAV", noise(0.5))
    hints: queue.Queue = queue.Queue()
    observer = events.start_observer(root, hints)
    try:
        os.utime(recording, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        wait_until(lambda: recording in list(hints.queue), 10, "the touched recording's hint")
    finally:
        events.stop_observer(observer)


def test_a_file_deleted_while_its_header_is_awaited_is_forgotten(tmp_path):
    """Found in the weeks review: a WAV deleted while the watcher waited for its header to be
    written (``incomplete_grace_s``) stayed in its header wait for as long as the daemon ran:
    2,000 such files, 2,000 entries."""
    root = tmp_path / "rec"
    with Store(tmp_path / "d.db") as store:
        watcher = Watcher(fast_config(root, settle_s=0.0, until_idle=False), analyzer(), store)
        path = write_wav(root / "20240101_000000.WAV", noise(0.5))
        unfinalised_header(path)
        assert watcher.step(path) is False and path in watcher.header_wait   # its header awaited
        path.unlink()
        assert watcher.step(path) is True                                   # gone: nothing more to do
        assert path not in watcher.header_wait and path not in watcher.stability


def test_an_observer_that_cannot_start_is_retried_less_and_less_often(tmp_path, monkeypatch):
    """Found by a review: an observer that could not start (the inotify watch limit of a card of
    many folders) was retried, with a full rescan and two warnings, every rescan period for ever."""
    import math

    import edgemon.files.watcher as watcher_module

    tries = []
    monkeypatch.setattr(watcher_module, "start_observer", lambda root, hints: tries.append(time.monotonic()))
    (tmp_path / "rec").mkdir()
    started = time.monotonic()
    watch_until_idle(tmp_path / "rec", tmp_path / "d.db", stop_after_s=2.0, until_idle=False, rescan_s=0.1)
    elapsed = time.monotonic() - started
    # the first start, then retries 0.1, 0.2, 0.4 ... s apart: at most log2(elapsed / 0.1) + 2 in all
    assert 2 <= len(tries) <= math.log2(elapsed / 0.1) + 2, (len(tries), elapsed)


def test_a_failed_attempt_names_its_file_once(tmp_path, caplog):
    """A newcomer trial: 'X.WAV: attempt failed, now failed: /full/path/X.WAV: cannot decode …',
    the file named twice, the second time by a path the first had shortened."""
    root, db = tmp_path / "card", tmp_path / "w.db"
    root.mkdir()
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    (root / "20180301_060000.WAV").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with caplog.at_level(logging.WARNING, logger="edgemon.files.analyse_file"):
        watch_until_idle(root, db, incomplete_grace_s=0)
    [line] = [r.getMessage() for r in caplog.records if "attempt failed" in r.getMessage()][:1]
    assert line.count("20180301_060000.WAV") == 1 and "no data chunk" in line, line
