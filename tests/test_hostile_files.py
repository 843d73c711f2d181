"""Hostile names, headers and entries in a recorder directory, and a daemon that dies on a file:
each is recorded once, and the files after it go on (issue 14)."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edgemon.analysis import audio
from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.errors import AudioError
from edgemon.files.backlog import BacklogProgress
from edgemon.files.classify import classify_files
from edgemon.files.reanalyse import reanalyse
from edgemon.safetext import name_from_stored, shown, stored_name
from edgemon.status import collect_status
from edgemon.storage.lock import DatabaseInUseError, hold_database, hold_exports
from edgemon.storage.store import Store
from tests.conftest import hoots, tone
from tests.waits import wait_until
from tests.watch_helpers import fault_env, files_done, noise, query, unfinalised_header, watch_until_idle, write_wav

REPO = Path(__file__).resolve().parents[1]


def recording(path: Path, seed: int = 0, seconds: float = 8.0) -> Path:
    """Faint noise then hoots the embedded bundle labels, so the file has detections (it stores a
    helmeted hornbill only from three windows on: 8 s)."""
    return write_wav(path, np.concatenate([tone(0, 1.0, seed=seed), hoots(seconds - 1.0, seed=seed + 1)]))


def ledger(db: Path) -> dict:
    return {row[0]: row[1:] for row in query(db, "SELECT source, state, attempts, error FROM files")}


def daemon(root: Path, db: Path, *extra: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                             "--settle-s", "0", "--rescan-s", "0.2", "--retry-s", "0.1", *extra],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, **popen)


# --- #1: names that are not UTF-8 -------------------------------------------------------------

def test_names_that_are_not_utf8_are_stored_escaped_and_the_files_after_them_go_on(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "a.WAV", seed=1)
    os.makedirs(os.fsencode(root) + b"/d\xff")
    # Latin-1 names from a PC; each its own recording (one recording's copies would be noted as such)
    os.rename(recording(tmp_path / "3.WAV", seed=3), os.fsencode(root) + b"/d\xff/caf\xe9.WAV")
    recording(root / "back\\slash.WAV", seed=4)
    recording(root / "z.WAV", seed=2)
    watch_until_idle(root, db)
    entries = ledger(db)
    assert set(entries) == {"a.WAV", "d\\xff/caf\\xe9.WAV", "back\\\\slash.WAV", "z.WAV"}
    assert {e[0] for e in entries.values()} == {"done"}
    for source in entries:                                  # each stored name leads back to its file
        assert (root / name_from_stored(source)).is_file()
    assert len(query(db, "SELECT * FROM detections WHERE source = ?", ("d\\xff/caf\\xe9.WAV",))) > 0
    assert collect_status(db, directory=root)["backlog"]["waiting"] == 0


def test_stored_names_round_trip_and_log_text_has_no_control_characters():
    for name in ("caf\udce9.WAV", "a\\b", "a\\xe9", "plain.WAV", "x\ny", "é\u202e"):
        assert name_from_stored(stored_name(name)) == name
        assert stored_name(name).encode("utf-8")           # storable: no lone surrogates
        assert shown(stored_name(name)).isprintable() and shown(name).isprintable()
    assert stored_name("20180301_060000.WAV") == "20180301_060000.WAV"


# --- #11: log forging ----------------------------------------------------------------------------

def test_a_name_cannot_forge_a_log_line(tmp_path, caplog):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "x\n2026-12-03 07:00:00,000 ERROR edgemon.files.watcher: disk on fire.WAV")
    (root / "y\x1b[2J\u202e.WAV").write_bytes(b"not audio\n")
    caplog.set_level(logging.INFO)
    watch_until_idle(root, db, max_attempts=1)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("edgemon")]
    assert any("disk on fire" in m for m in messages) and any("\\x1b[2J" in m for m in messages)
    assert all(m.isprintable() for m in messages), [m for m in messages if not m.isprintable()]


# --- #2: hostile headers, and files that kill the daemon -------------------------------------------

def wav_claiming(rate: int, frames: int = 400) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(frames, np.int16), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[24:32] = struct.pack("<II", rate, rate * 2)        # sample rate, byte rate
    return bytes(data)


def test_an_absurd_sample_rate_is_refused_per_file(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    (root / "a_one_hertz.WAV").write_bytes(wav_claiming(1))
    (root / "b_2MHz.WAV").write_bytes(wav_claiming(2_000_000))
    recording(root / "c.WAV")
    watch_until_idle(root, db)
    entries = ledger(db)
    assert entries["c.WAV"][0] == "done"
    for name in ("a_one_hertz.WAV", "b_2MHz.WAV"):
        assert entries[name][0] == "quarantined" and "outside 1000-768000 Hz" in entries[name][2], entries[name]
    with pytest.raises(AudioError, match="sample rate 1 Hz"):
        audio.load(root / "a_one_hertz.WAV")


def test_audio_in_formats_watch_does_not_take_is_said_not_passed_over(tmp_path, caplog):
    """A newcomer trial: MP3s copied into the watched directory were skipped without a word, and
    --until-idle said "0 file(s) analysed"."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "c.WAV")
    for name in ("20240103_110000.mp3", "20240103_120000.MP3", "walk.ogg", ".hidden.mp3", "notes.txt"):
        (root / name).write_bytes(b"not looked at")
    caplog.set_level(logging.INFO, logger="edgemon")
    assert watch_until_idle(root, db).processed == 1
    said = [r.getMessage() for r in caplog.records if "formats watch does not analyse" in r.getMessage()]
    assert said == ["3 file(s) in formats watch does not analyse (2 .mp3, 1 .ogg): it takes WAV and FLAC; "
                    "convert them, or run `edgemon classify` on them"]


def test_a_header_claiming_a_thousand_channels_is_refused_per_file(tmp_path):
    # A mono recording under a damaged header claiming 1000 channels was analysed as 1000-sample
    # averages, without a word (a newcomer trial).
    root, db = tmp_path / "rec", tmp_path / "d.db"
    root.mkdir()
    buffer = io.BytesIO()
    soundfile.write(buffer, noise(4.0), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[22:24] = struct.pack("<H", 1000)                  # channels
    data[28:34] = struct.pack("<IH", 16000 * 2000, 2000)    # byte rate, block align
    (root / "thousand.WAV").write_bytes(bytes(data))
    recording(root / "c.WAV")
    watch_until_idle(root, db)
    entries = ledger(db)
    assert entries["c.WAV"][0] == "done"
    assert entries["thousand.WAV"][0] == "quarantined" and "claims 1000 channels" in entries["thousand.WAV"][2]
    assert not query(db, "SELECT * FROM detections WHERE source = 'thousand.WAV'")


def test_blocks_stay_bounded_whatever_the_rate_and_channels(tmp_path):
    path = tmp_path / "wide.wav"
    soundfile.write(path, np.zeros((48000, 64), np.int16), 48000, subtype="PCM_16")   # 64 channels
    reads = []
    real_read = soundfile.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        reads.append(frames * self.channels)
        return real_read(self, frames, *args, **kwargs)

    soundfile.SoundFile.read = spy
    try:
        blocks = list(audio.iter_blocks(path, block_seconds=10.0))
    finally:
        soundfile.SoundFile.read = real_read
    assert reads and max(reads) <= audio.MAX_BLOCK_SAMPLES
    assert sum(map(len, blocks)) == pytest.approx(16000, abs=2) and max(map(len, blocks)) <= 160000


def test_a_file_that_kills_the_daemon_is_counted_before_the_work_and_quarantined(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    for name in ("20240701_060000.WAV", "20240701_070000_killer.WAV", "20240701_080000.WAV"):
        recording(root / name, seed=len(name))
    env = fault_env(tmp_path, EDGEMON_TEST_DIE_ON="killer")
    first = daemon(root, db, "--until-idle", env=env)
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL                  # it died on the killer ...
    assert query(db, "SELECT source, interrupted FROM in_progress") == [("20240701_070000_killer.WAV", 0)]
    second = daemon(root, db, "--until-idle", env=env)          # ... whose attempt was committed first
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    entries = ledger(db)
    state, attempts, error = entries["20240701_070000_killer.WAV"]
    assert state == "quarantined" and attempts == 3 and "killed by SIGKILL" in error, entries
    assert [entries[n][0] for n in ("20240701_060000.WAV", "20240701_080000.WAV")] == ["done", "done"]
    assert query(db, "SELECT COUNT(*) FROM in_progress") == [(0,)]


def test_a_daemon_that_loses_power_again_and_again_on_a_good_file_never_quarantines_it(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    for name in ("20240701_060000.WAV", "20240701_070000_cut.WAV"):
        recording(root / name, seed=len(name))
    cuts = 3                                                    # max_attempts, in a row
    env = fault_env(tmp_path, EDGEMON_TEST_DIE_ON="_cut", EDGEMON_TEST_CUTS=f"{tmp_path / 'cuts'}:{cuts}")
    for _ in range(cuts):
        run = daemon(root, db, "--until-idle", env=env)
        run.communicate(timeout=120)
        assert run.returncode == -signal.SIGKILL
    assert query(db, "SELECT interrupted FROM in_progress") == [(cuts - 1,)]
    assert "20240701_070000_cut.WAV: analysis cut short 3 times in a row" in collect_status(db)["problems"]
    run = daemon(root, db, "--until-idle", env=env)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    assert "cut short 3 time(s) in a row" in stderr
    assert {k: v[:2] for k, v in ledger(db).items()} == {"20240701_060000.WAV": ("done", 1),
                                                         "20240701_070000_cut.WAV": ("done", 1)}
    assert len(query(db, "SELECT * FROM detections WHERE source = '20240701_070000_cut.WAV'")) > 0


# --- #3: one daemon per database -----------------------------------------------------------------------

def test_a_second_daemon_on_the_same_database_is_refused_and_readers_are_not(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV")
    first = daemon(root, db, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: files_done(db) >= 1 or first.poll() is not None, 60, "the first file", interval=0.1)
        assert first.poll() is None
        other_root = tmp_path / "other"
        other_root.mkdir()
        second = daemon(other_root, db, "--until-idle")
        _, stderr = second.communicate(timeout=60)
        assert second.returncode == 1
        assert stderr.strip().splitlines()[-1] == (f"error: another edgemon (pid {first.pid}) is using this "
                                                   f"database {db.resolve()}")
        for reader in (["status", "--db", str(db)], ["export-detections", "--db", str(db)]):
            done = subprocess.run([sys.executable, "-m", "edgemon", *reader], cwd=REPO, capture_output=True,
                                  text=True, timeout=60)
            assert done.returncode == 0, done.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
    again = daemon(root, db, "--until-idle")                   # the lock went with its holder
    assert again.communicate(timeout=60) and again.returncode == 0


def test_a_second_daemon_reaching_the_database_through_a_link_meets_the_same_lock(tmp_path):
    # A newcomer trial ran two watchers on one database, one through `ln -s a.db b.db`: each
    # locked its own `<name>.lock` and files were analysed twice.
    data = tmp_path / "card"
    data.mkdir()
    db = data / "a.db"
    (tmp_path / "b.db").symlink_to(db)
    (tmp_path / "linked").symlink_to(data, target_is_directory=True)
    with hold_database(db):
        for other in (tmp_path / "b.db", tmp_path / "linked" / "a.db"):
            with pytest.raises(DatabaseInUseError, match=f"pid {os.getpid()}"):
                with hold_database(other):
                    pass
    with hold_exports(tmp_path / "b.db"):
        with pytest.raises(DatabaseInUseError):
            with hold_exports(db, wait_s=0):
                pass
    with hold_database(tmp_path / "b.db"):                      # released: the next holder may take it
        pass


def test_a_database_with_a_hard_link_is_refused_by_the_daemon_lock(tmp_path):
    """A hard link is a second name the path-named lock cannot see: two watchers through `a.db` and
    `b.db` each held their own lock and left the database corrupt (a review)."""
    from edgemon.storage.store import Store

    db = tmp_path / "a.db"
    Store(db).db.close()
    os.link(db, tmp_path / "b.db")
    for name in (db, tmp_path / "b.db"):
        with pytest.raises(DatabaseInUseError, match=r"[ab].db has 2 names \(hard links\).*keep one name"):
            with hold_database(name):
                pass
    (tmp_path / "b.db").unlink()
    with hold_database(db):                                       # one name again: taken
        pass
    run = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(tmp_path), "--db", str(db), "--until-idle"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# --- #7: unreadable directories --------------------------------------------------------------------

UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


@pytest.mark.skipif(bool(UNPRIVILEGED) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_unreadable_directories_are_said_once_and_shown_in_status(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV")
    recording(root / "locked" / "20240701_070000.WAV")
    (root / "locked").chmod(0)
    try:
        watch = [*UNPRIVILEGED, sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                 "--until-idle", "--settle-s", "0", "--rescan-s", "0.1"]
        run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stderr.count("cannot read directory") == 1, run.stderr
        assert f"{root / 'locked'} (Permission denied)" in run.stderr
        problems = collect_status(db)["problems"]
        assert any("cannot read directory" in p and "locked" in p for p in problems), problems
        (root / "locked").chmod(0o755)                          # readable again: taken, and no longer a problem
        run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "cannot read directory" not in run.stderr, run.stderr
        assert ledger(db)["locked/20240701_070000.WAV"][0] == "done"
        assert not [p for p in collect_status(db)["problems"] if "cannot read" in p]
        root.chmod(0)                                           # the watched directory itself, under `edgemon run`
        (tmp_path / "empty.toml").write_text("")
        env = dict(os.environ, EDGEMON_DIRECTORY=str(root), EDGEMON_DB=str(tmp_path / "new.db"))
        run = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "edgemon", "run", "--config",
                              str(tmp_path / "empty.toml")], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 1
        assert run.stderr.strip().splitlines()[-1] == f"error: {root}: cannot read the directory: Permission denied"
        assert not (tmp_path / "new.db").exists() and not (tmp_path / "new.db.lock").exists()
        run = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "edgemon", "watch", str(root), "--db",
                              str(tmp_path / "new.db"), "--until-idle"], cwd=REPO, capture_output=True, text=True,
                             timeout=60)                        # and as `watch DIRECTORY`: the same one line
        assert run.returncode == 1
        assert run.stderr.strip().splitlines()[-1] == f"error: {root}: cannot read the directory: Permission denied"
        assert "Usage:" not in run.stderr
        assert not (tmp_path / "new.db").exists() and not (tmp_path / "new.db.lock").exists()
    finally:
        root.chmod(0o755)
        (root / "locked").chmod(0o755)


@pytest.mark.skipif(bool(UNPRIVILEGED) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_an_unreadable_recording_says_permission_denied_and_is_taken_once_mended_and_touched(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV")
    locked = root / "20240701_070000.WAV"
    recording(locked)
    locked.chmod(0)
    watch = [*UNPRIVILEGED, sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
             "--until-idle", "--settle-s", "0", "--retry-s", "0"]
    run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    state, _, error = ledger(db)["20240701_070000.WAV"]
    assert state == "quarantined" and error.endswith("cannot read: Permission denied"), error
    closing = run.stderr.strip().splitlines()[-1]               # --until-idle says what the run did
    assert "nothing left to do: 1 file(s) analysed this run" in closing
    assert closing.endswith("; 1 file(s) quarantined (edgemon status lists them)"), closing
    locked.chmod(0o644)
    os.utime(locked)                                            # `touch`: what the README says retries it
    run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert ledger(db)["20240701_070000.WAV"][0] == "done"


def test_watching_a_missing_directory_creates_no_database(tmp_path):
    run = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(tmp_path / "missing"),
                          "--db", str(tmp_path / "d.db"), "--until-idle"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'}: no such directory"
    assert list(tmp_path.iterdir()) == []                       # no database, no lock file


# --- #8: symlink loops and dangling links -----------------------------------------------------------

def test_symlink_loops_and_dangling_links_are_recorded_once(tmp_path, caplog):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV")
    os.symlink("loop.WAV", root / "loop.WAV")
    os.symlink("nowhere.wav", root / "dangling.WAV")
    watch_until_idle(root, db, timeout=30)                      # --until-idle finishes
    entries = ledger(db)
    assert entries["loop.WAV"][0] == "quarantined" and "loop" in entries["loop.WAV"][2]
    assert entries["dangling.WAV"][0] == "quarantined" and "dangling" in entries["dangling.WAV"][2]
    assert entries["20240701_060000.WAV"][0] == "done"
    caplog.clear()
    caplog.set_level(logging.INFO)
    watch_until_idle(root, db, timeout=30, until_idle=False, stop_after_s=1.5)   # several rescans
    assert not [r for r in caplog.records if "loop.WAV" in r.getMessage() or "dangling" in r.getMessage()]


def test_an_analysed_recording_whose_link_dangles_for_a_while_keeps_its_ledger_row(tmp_path):
    """A diff review: a recording linked into the watched directory and analysed, whose link then
    dangled (its disk unmounted, the file moved away for a while), was quarantined as a "dangling
    symbolic link": its done row gone from ``--recordings`` (the effort), a problem in status, and
    the recording analysed again once the link reached it again; as a recording that cannot be
    stat'ed for a while, it keeps its row."""
    root, db, disk = tmp_path / "rec", tmp_path / "d.db", tmp_path / "disk"
    target = recording(disk / "20240701_070000.WAV")
    root.mkdir()
    (root / target.name).symlink_to(target)
    assert watch_until_idle(root, db).processed == 1
    analysed = query(db, "SELECT * FROM files")
    assert [row[:2] for row in query(db, "SELECT source, state FROM files")] == [(target.name, "done")]
    disk.rename(tmp_path / "unmounted")                          # the link dangles
    assert watch_until_idle(root, db).processed == 0
    assert query(db, "SELECT * FROM files") == analysed          # the ledger row as it was
    (tmp_path / "unmounted").rename(disk)                        # and reaches it again
    assert watch_until_idle(root, db).processed == 0             # not analysed again
    assert query(db, "SELECT * FROM files") == analysed


# --- issue 13: backlog progress --------------------------------------------------------------------

def test_backlog_progress_says_files_hours_and_eta(tmp_path, caplog):
    root = tmp_path / "rec"
    paths = [recording(root / f"2024070{i}_060000.WAV", seed=i, seconds=3.6) for i in range(1, 6)]
    now = [0.0]
    progress = BacklogProgress(every_s=60.0, clock=lambda: now[0])
    assert progress.update(done=0, waiting=set(paths), audio_s=0.0, busy_s=0.0) is None    # not due yet
    now[0] = 61.0
    line = progress.update(done=2, waiting=set(paths[2:]), audio_s=7.2, busy_s=0.5)
    assert line == "backlog: 2/5 file(s) done, 7.2 of 18 s of audio, ETA 1 s"
    now[0] = 62.0
    done = progress.update(done=5, waiting=set(), audio_s=18.0, busy_s=1.2)
    assert done == "backlog done: 5 file(s), 18 s of audio in 1 s of analysis, 1 min in all"   # apart
    # a second backlog counts its own files, audio and time, not the daemon's since its start (a review)
    now[0] = 100.0
    assert progress.update(done=5, waiting={paths[0]}, audio_s=18.0, busy_s=1.2) is None
    now[0] = 170.0
    assert progress.update(done=5, waiting={paths[0]}, audio_s=18.0, busy_s=1.2).startswith("backlog: 0/1 file(s)")
    now[0] = 180.0
    assert (progress.update(done=6, waiting=set(), audio_s=21.6, busy_s=3.2)
            == "backlog done: 1 file(s), 3.6 s of audio in 2 s of analysis, 1 min in all")
    caplog.set_level(logging.INFO)
    watch_until_idle(root, tmp_path / "d.db", progress_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog")]
    assert lines[0].startswith("backlog: 0/5 file(s) done, 0 of 18 s of audio")
    assert lines[-1].startswith("backlog done: 5 file(s)")
    # Lines come between files, not only between passes over the directory (a newcomer trial: a
    # backlog all there at the start is one pass, and 200 files went by without a line).
    caplog.clear()
    watch_until_idle(root, tmp_path / "e.db", progress_s=0.001)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog")]
    assert any(line.startswith(f"backlog: {n}/5 file(s) done") for n in range(1, 5) for line in lines), lines
    assert lines[-1].startswith("backlog done: 5 file(s)")
    # With --settle-s 0 the first file was done before the backlog was counted: "0/4 ... backlog
    # done: 4 file(s)" of 5 (a newcomer trial).
    caplog.clear()
    watch_until_idle(root, tmp_path / "f.db", progress_s=0.0, settle_s=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog")]
    assert lines[0].startswith("backlog: 0/5 file(s) done") and lines[-1].startswith("backlog done: 5 file(s)"), lines
    # And while one long file is decoded, block by block (it said nothing until the file ended).
    caplog.clear()
    recording(tmp_path / "long" / "20240701_070000.WAV", seconds=30.0)
    watch_until_idle(tmp_path / "long", tmp_path / "g.db", progress_s=0.0, settle_s=0.0, block_s=5.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog")]
    assert sum(line.startswith("backlog: 0/1 file(s) done") for line in lines) >= 6, lines   # a line per block
    # A file whose writer has not finished its header waits its grace: the line says so, where only
    # "ETA 1 s" was said for two minutes (a newcomer trial).
    caplog.clear()
    unfinalised_header(recording(tmp_path / "held" / "20240701_080000.WAV"))
    watch_until_idle(tmp_path / "held", tmp_path / "h.db", progress_s=0.0, settle_s=0.0, incomplete_grace_s=1.5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backlog")]
    assert any(line.endswith("; 1 file(s) wait for their writer to finish the header (up to 2 s from their last "
                             "change)") for line in lines), lines


def test_an_isolated_analysis_equals_the_daemons_own_and_reports_each_block(tmp_path):
    from edgemon.files.isolate import Isolated
    from tests.watch_helpers import analyzer

    path = recording(tmp_path / "20240701_060000.WAV", seconds=12.0)
    blocks = []
    isolated = Isolated(analyzer().bundle.path, block_s=5.0).analyse(path, on_block=lambda: blocks.append(1))
    own = analyzer().analyse_file(path, 5.0)
    assert len(blocks) == 3 and isolated.duration_s == own.duration_s
    assert [(e.label, e.start_s, e.end_s) for e in isolated.events] == \
        [(e.label, e.start_s, e.end_s) for e in own.events]
    assert [e.confidence for e in isolated.events] == pytest.approx([e.confidence for e in own.events], abs=1e-3)


@pytest.mark.skipif(bool(UNPRIVILEGED) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_a_file_that_cannot_be_stated_is_tried_like_an_unreadable_file(tmp_path):
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "20240701_060000.WAV")
    recording(root / "listable" / "20240701_070000.WAV")
    (root / "listable").chmod(0o644)                            # listed, but its files cannot be reached
    try:
        run = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                              "--until-idle", "--settle-s", "0", "--rescan-s", "0.1", "--retry-s", "0.1"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        (root / "listable").chmod(0o755)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("cannot stat") == 3, run.stderr      # three tries, then quarantined
    state, attempts, error = ledger(db)["listable/20240701_070000.WAV"]
    assert (state, attempts, error) == ("quarantined", 3, "cannot stat: Permission denied")


@pytest.mark.skipif(bool(UNPRIVILEGED) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_an_analysed_recording_that_cannot_be_stated_for_a_while_keeps_its_ledger_row(tmp_path):
    """Found in review: a recording analysed already whose directory could be listed but not
    entered for a while became a failed attempt, then 'quarantined' with size 0: gone from
    ``--recordings`` (the effort), listed by status as a problem, and analysed again once mended."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    recording(root / "listable" / "20240701_070000.WAV")
    watch = [sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle", "--settle-s",
             "0", "--rescan-s", "0.1", "--retry-s", "0.1"]
    run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    analysed = query(db, "SELECT * FROM files")
    (root / "listable").chmod(0o644)                            # listed, but its file cannot be reached
    try:
        run = subprocess.run([*UNPRIVILEGED, *watch], cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        (root / "listable").chmod(0o755)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("cannot stat") == 1, run.stderr      # said once, not tried three times
    assert "analysed already" in run.stderr and "quarantined" not in run.stderr, run.stderr
    assert query(db, "SELECT * FROM files") == analysed          # the ledger row as it was
    run = subprocess.run(watch, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "0 file(s) analysed this run" in run.stderr, run.stderr   # reachable again: not analysed again
    assert query(db, "SELECT * FROM files") == analysed


def test_a_recording_named_at_the_end_of_the_calendar_is_stored_without_times(tmp_path):
    """Found in review: '99991231_235959.WAV' is a (suspect) start time whose detections' ends
    overflow the calendar; the OverflowError escaped the per-file handling, and the file,
    already marked in progress, crashed the daemon at every start."""
    root = tmp_path / "rec"
    recording(root / "99991231_235959.WAV", seconds=8.0)
    recording(root / "20240701_060000.WAV", seconds=8.0)
    watch_until_idle(root, tmp_path / "d.db")
    assert {k: v[0] for k, v in ledger(tmp_path / "d.db").items()} == {
        "99991231_235959.WAV": "done", "20240701_060000.WAV": "done"}
    stored = query(tmp_path / "d.db", "SELECT source, clock_suspect FROM detections")
    assert ("99991231_235959.WAV", 1) in stored


def test_classify_and_reanalyse_give_no_times_past_the_calendar_as_watch_does(tmp_path):
    """Found in the time review: watch stores '99991231_235959.WAV' without times, while classify
    and reanalyse crashed on the same file with OverflowError."""
    root = tmp_path / "rec"
    recording(root / "99991231_235959.WAV", seconds=8.0)
    watch_until_idle(root, tmp_path / "d.db")
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    rows, errors = classify_files([root], analyzer)
    assert errors == [] and [(r["start_utc"], r["end_utc"], r["clock_suspect"]) for r in rows] == \
        [("9999-12-31T23:59:59.000Z", None, 1)]
    stored = query(tmp_path / "d.db", "SELECT bundle_id, start_utc, end_utc FROM detections")
    again = reanalyse(tmp_path / "d.db", analyzer, again=True)
    assert again.files == 1 and again.failed == []
    assert query(tmp_path / "d.db", "SELECT bundle_id, start_utc, end_utc FROM detections") == stored


def test_backlog_progress_never_opens_a_fifo(tmp_path):
    """Found in review: the progress line read the header of every waiting file, and opening a
    FIFO named *.wav blocks for ever (the watchdog then kills the daemon in a loop)."""
    import threading

    fifo = tmp_path / "20240701_060000.WAV"
    os.mkfifo(fifo)
    progress = BacklogProgress(every_s=0.0)
    done = threading.Thread(target=progress.update, kwargs=dict(done=0, waiting={fifo}, audio_s=0.0, busy_s=0.0),
                            daemon=True)
    done.start()
    done.join(10)
    alive = done.is_alive()
    if alive:   # unblock the thread: a writer opening the FIFO releases the reader
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not alive


def test_a_child_killed_by_a_real_time_signal_is_named():
    from edgemon.files.isolate import _signal_name

    assert _signal_name(9) == "SIGKILL" and _signal_name(40) == "signal 40"


# --- an isolated analysis that hangs, a file deleted while analysed ----------------------------

def _suspect(root: Path, db: Path, name: str, seed: int) -> Path:
    """A recording whose earlier analysis never ended (its attempt is open): analysed isolated."""
    path = recording(root / name, seed=seed)
    with Store(db) as store:
        st = path.stat()
        store.begin_attempt(name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns)
    return path


def _run_watcher(root: Path, db: Path, isolated, **overrides) -> None:
    import threading

    from edgemon.files.watcher import Watcher
    from tests.watch_helpers import analyzer, fast_config

    with Store(db) as store:
        Watcher(fast_config(root, **overrides), analyzer(), store, isolated=isolated).run(threading.Event())


def _isolated_children() -> list[int]:
    """Our child processes running an isolated analysis."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"edgemon.files.isolate" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def test_an_isolated_analysis_that_hangs_is_killed_recorded_and_the_next_file_goes_on(tmp_path, caplog):
    """Found in review: the daemon waited on a hung child for ever. Here a real child is
    stopped (SIGSTOP) as soon as it starts: it is killed at its time limit, the file is
    recorded with the reason, and the file after it is analysed."""
    import threading

    from edgemon.files.isolate import Isolated
    from tests.watch_helpers import analyzer

    root, db = tmp_path / "rec", tmp_path / "d.db"
    _suspect(root, db, "20240701_060000.WAV", seed=1)
    recording(root / "20240701_070000.WAV", seed=2)
    stopped: list[int] = []
    done = threading.Event()

    def freeze_children() -> None:
        while not done.is_set():
            for pid in set(_isolated_children()) - set(stopped):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            time.sleep(0.01)

    freezer = threading.Thread(target=freeze_children, daemon=True)
    freezer.start()
    isolated = Isolated(analyzer().bundle.path, block_s=5.0, timeout_floor_s=3.0, timeout_per_audio_s=0.1)
    assert isolated.timeout_s(root / "20240701_060000.WAV") == (3.0, 8.0)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            _run_watcher(root, db, isolated, max_attempts=1)
    finally:
        done.set()
        freezer.join()
    assert time.monotonic() - started < 60
    entries = ledger(db)
    state, _, error = entries["20240701_060000.WAV"]
    assert state == "quarantined" and error.startswith("AnalysisTimedOut: the analysis process hung: no result within 3 s "
                                                        "(the limit for 8 s of audio); killed"), entries
    assert entries["20240701_070000.WAV"][0] == "done"
    assert len(stopped) == 1 and not Path(f"/proc/{stopped[0]}").exists()   # killed and reaped
    assert query(db, "SELECT COUNT(*) FROM in_progress") == [(0,)]


def test_a_file_deleted_while_analysed_in_a_child_is_not_a_failure(tmp_path, caplog):
    """Found in review: the isolated child's decoder error about a file deleted meanwhile was
    recorded as the file's failure; watch's own path says "deleted while being processed"."""
    from edgemon.files.isolate import Isolated
    from tests.watch_helpers import analyzer

    class DeletedMeanwhile(Isolated):   # the recorder's card is emptied as the child starts
        def analyse(self, path, on_block=lambda: None, preroll=None):
            path.unlink()
            return super().analyse(path, on_block, preroll)

    root, db = tmp_path / "rec", tmp_path / "d.db"
    _suspect(root, db, "20240701_060000.WAV", seed=3)
    recording(root / "20240701_070000.WAV", seed=4)
    with caplog.at_level(logging.INFO):
        _run_watcher(root, db, DeletedMeanwhile(analyzer().bundle.path, block_s=5.0))
    assert {k: v[0] for k, v in ledger(db).items()} == {"20240701_070000.WAV": "done"}
    assert query(db, "SELECT COUNT(*) FROM in_progress") == [(0,)]
    assert "20240701_060000.WAV: deleted while being processed" in caplog.text


def test_a_recording_its_recorder_never_closed_or_a_cut_flac_is_analysed_as_far_as_its_audio_goes(tmp_path):
    """Found by a hostile-input trial: an AudioMoth file whose header was never finalised (power
    lost) was stored as done with 0.0 s of audio and no detections; a FLAC missing its last bytes
    was quarantined whole. Both now give their audio, with a note in the ledger."""
    root, db = tmp_path / "rec", tmp_path / "d.db"
    never_closed = recording(root / "20180301_060000.WAV", seconds=8.0)
    unfinalised_header(never_closed)
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, np.concatenate([tone(0, 1.0), hoots(15.0, seed=3)]), 16000, format="FLAC")
    (root / "20180301_070000.flac").write_bytes(whole.read_bytes()[:whole.stat().st_size * 3 // 4])
    watch_until_idle(root, db)
    rows = {r[0]: r[1:] for r in query(db, "SELECT source, state, duration_s, error FROM files")}
    state, duration, note = rows["20180301_060000.WAV"]
    assert state == "done" and duration == pytest.approx(8.0, abs=0.01) and "data size 0 in the header" in note
    state, duration, note = rows["20180301_070000.flac"]
    assert state == "done" and 8.0 < duration < 16.0 and "decoding stopped at" in note
    assert query(db, "SELECT count(*) FROM detections WHERE source = '20180301_060000.WAV'")[0][0] > 0


def test_linked_directories_are_followed_once_and_a_link_back_up_cannot_loop(tmp_path):
    """Found by a hostile-input trial: a directory linked into the card (another card mounted
    elsewhere) was skipped without a word."""
    root, db, elsewhere = tmp_path / "rec", tmp_path / "d.db", tmp_path / "card2"
    recording(root / "20240701_060000.WAV")
    recording(elsewhere / "20240701_070000.WAV", seed=4)
    (root / "siteB").symlink_to(elsewhere, target_is_directory=True)
    (root / "siteB-again").symlink_to(elsewhere, target_is_directory=True)   # the same directory twice
    (elsewhere / "up").symlink_to(root, target_is_directory=True)            # a loop back to the top
    # A review: a link to a directory inside the root analysed its files under both names, and a
    # link to the root's parent took in what lies beside the root.
    recording(root / "cards" / "A" / "20240701_080000.WAV", seed=5)
    (root / "a_link").symlink_to(root / "cards" / "A", target_is_directory=True)
    recording(tmp_path / "beside" / "20240701_090000.WAV", seed=6)
    (root / "parent").symlink_to(tmp_path, target_is_directory=True)
    watch_until_idle(root, db)
    assert sorted(ledger(db)) == ["20240701_060000.WAV", "cards/A/20240701_080000.WAV", "siteB/20240701_070000.WAV"]
    status = collect_status(db, directory=root)
    assert status["backlog"]["waiting"] == 0
    said = "which holds the watched directory (link the card's own directory instead)"
    assert sorted(p for p in status["problems"] if "link" in p) == [   # the root itself, or above it
        f"directory link {root / 'parent'} not followed: a link to {tmp_path}, {said}",
        f"directory link {root / 'siteB' / 'up'} not followed: a link to {root}, {said}"]


@pytest.mark.skipif(bool(UNPRIVILEGED) and shutil.which("setpriv") is None, reason="root without setpriv")
def test_a_database_in_a_directory_that_cannot_be_written_says_so(tmp_path):
    """SQLite keeps -wal and -shm beside the database: in a directory this user may not write it
    said only "unable to open database file" or "attempt to write a readonly database" (a review)."""
    from edgemon.storage.store import Store

    card = tmp_path / "card"
    card.mkdir()
    Store(card / "d.db").db.close()
    (card / "d.db.lock").touch()                 # the daemon's lock is there from an earlier run
    card.chmod(0o555)
    try:
        run = subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "edgemon", "watch", str(card), "--db",
                              str(card / "d.db"), "--until-idle"], cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        card.chmod(0o755)
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith(
        f"(its directory {card.resolve()} is not writable here: SQLite keeps its -wal and -shm files there)"), run.stderr



def test_amounts_of_audio_are_said_in_a_unit_that_fits():
    """A newcomer trial: a run over a few short files ended "0.00 h of audio", read as nothing
    analysed; seconds under a minute, minutes under an hour, then hours."""
    from edgemon.amounts import audio_amount, audio_amounts

    assert [audio_amount(s) for s in (0, 0.4, 42, 216, 3596, 3600, 81720)] == [
        "0 s", "0.4 s", "42 s", "3.6 min", "59.9 min", "1.00 h", "22.70 h"]
    assert audio_amounts(216, 81720) == "0.06 of 22.70 h" and audio_amounts(12, 36) == "12 of 36 s"
    assert audio_amount(59.7) == "1.0 min" and audio_amount(59.4) == "59 s"   # not "60 s" (a review)
