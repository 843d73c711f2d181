"""A recorder's card pulled (or its reader failing) while watch works through it.

The file system stays mounted over a card that is gone: names and sizes still come from the
kernel's cache, every read of the card gives EIO, and libsndfile reports that as "System error."
(a WAV) or "Format not recognised." (a FLAC). Those recordings are not damaged: they must not be
quarantined (a quarantined file is looked at again only when its size or mtime changes, so the
card put back kept them unanalysed for good; a field trial: a whole backlog within 2 minutes).
The kernel refusing to read is simulated by ``os.pread`` and ``iter_blocks`` while ``pulled``."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from edgemon.analysis import audio
from edgemon.errors import AudioError, EdgemonError
from tests.watch_helpers import query, watch_until_idle, write_wav
from tests.conftest import hoots


@pytest.fixture
def card(tmp_path, monkeypatch):
    root = tmp_path / "card"
    root.mkdir()
    for minute in range(3):
        write_wav(root / f"20240701_06{minute:02d}00.WAV", hoots(8.0, seed=minute))
    pulled = threading.Event()
    pulled.set()
    real_pread, real_blocks = os.pread, audio.iter_blocks

    def on_card(target) -> bool:
        return str(target).startswith(str(root))

    def pread(fd, n, offset):
        if pulled.is_set() and on_card(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    def iter_blocks(path, *args, **kwargs):
        if pulled.is_set() and on_card(path):
            raise AudioError(f"{path}: cannot decode audio: System error.")
        return real_blocks(path, *args, **kwargs)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(audio, "iter_blocks", iter_blocks)
    return root, pulled


def test_a_card_pulled_mid_backlog_quarantines_nothing_and_is_analysed_once_back(tmp_path, card):
    root, pulled = card
    db = tmp_path / "d.db"
    threading.Timer(1.5, pulled.clear).start()   # put back after many retries (retry_s 0.1)
    watch_until_idle(root, db, until_idle=False, stop_after_s=6.0)
    states = dict(query(db, "SELECT source, state FROM files"))
    assert states == {f"20240701_06{m:02d}00.WAV": "done" for m in range(3)}, states
    assert query(db, "SELECT count(*) FROM detections")[0][0] > 0


def test_retries_while_the_card_is_out_are_not_counted_against_its_recordings(tmp_path, card):
    """Counted, an hour out of the reader left every recording at dozens of failed attempts, and
    one that then failed for a reason of its own was quarantined at its first real failure."""
    root, _ = card
    db = tmp_path / "d.db"
    watch_until_idle(root, db, until_idle=False, stop_after_s=1.5)   # never put back; retried every 0.1 s
    rows = query(db, "SELECT state, attempts FROM files")
    assert len(rows) == 3 and set(rows) == {("failed", 0)}, rows


def test_a_one_off_run_on_a_card_that_cannot_be_read_ends_in_one_line_and_quarantines_nothing(tmp_path, card):
    root, _ = card
    db = tmp_path / "d.db"
    with pytest.raises(EdgemonError, match=r"Input/output error.*run again") as raised:
        watch_until_idle(root, db)
    assert "20240701_060000.WAV" in str(raised.value)
    assert query(db, "SELECT count(*) FROM files WHERE state = 'quarantined'")[0][0] == 0


def test_a_one_off_run_whose_directory_cannot_be_listed_fails_rather_than_say_nothing_is_left(tmp_path, monkeypatch):
    """The card failing as it is listed (the directory opens, reading its entries gives EIO):
    `watch --until-idle` said "nothing left to do: 0 file(s) analysed" and exited 0, which
    `watch --until-idle && next-step` reads as the card done."""
    root = tmp_path / "card"
    write_wav(root / "20240701_060000.WAV", hoots(8.0))
    real_scandir = os.scandir

    class Failing:
        def __init__(self, path):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __iter__(self):
            return self

        def __next__(self):
            raise OSError(errno.EIO, os.strerror(errno.EIO), self.path)

        def close(self):
            pass

    def scandir(path="."):
        return Failing(os.fspath(path)) if os.fspath(path) == str(root) else real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(EdgemonError, match=r"cannot read the directory: Input/output error"):
        watch_until_idle(root, tmp_path / "d.db")


def test_a_recording_the_card_cannot_even_stat_is_retried_not_counted(tmp_path, monkeypatch):
    """The diff review: a card pulled so far that stat itself fails (EIO) had its recordings'
    failed attempts counted, and quarantined within max_attempts, as a file that cannot be read."""
    root = tmp_path / "card"
    write_wav(root / "20240701_060000.WAV", hoots(8.0))
    real_stat, real_lstat = os.stat, os.lstat

    def failing(real):
        def look(path, *args, **kwargs):
            if str(path).startswith(str(root / "2")):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
            return real(path, *args, **kwargs)
        return look

    monkeypatch.setattr(os, "stat", failing(real_stat))
    monkeypatch.setattr(os, "lstat", failing(real_lstat))
    db = tmp_path / "d.db"
    watch_until_idle(root, db, until_idle=False, stop_after_s=1.5)   # retried every 0.1 s
    rows = query(db, "SELECT state, attempts, error FROM files")
    assert [r[:2] for r in rows] == [("failed", 0)] and "Input/output error" in rows[0][2], rows


def test_a_passing_io_error_on_the_database_path_does_not_stop_the_store(tmp_path, monkeypatch):
    """The diff review: any error stat'ing the database's path was taken for the database deleted,
    and stopped the daemon with that message; only a path that names nothing, or another file, is."""
    import edgemon.storage.store as store_module
    from edgemon.storage.store import Store

    db = tmp_path / "d.db"
    real_stat = os.stat
    with Store(db) as store:
        monkeypatch.setattr(store_module.os, "stat", lambda p, *a, **k: (_ for _ in ()).throw(
            OSError(errno.EIO, "Input/output error")) if str(p) == str(db) else real_stat(p, *a, **k))
        store.set_unreadable_dirs({"x": "gone"})                       # written, not refused
        monkeypatch.setattr(store_module.os, "stat", real_stat)
    assert query(db, "SELECT count(*) FROM unreadable_dirs")[0][0] == 1


def test_one_recording_with_a_bad_sector_is_counted_and_quarantined_while_the_others_are_analysed(tmp_path,
                                                                                              monkeypatch):
    """A bad sector under one recording's header gives the same EIO as a card pulled, but only for
    that file: it was taken for the card gone, retried for ever uncounted, and a one-off run ended
    saying to put the card back while the card was in."""
    root = tmp_path / "card"
    for minute in range(3):
        write_wav(root / f"20240701_06{minute:02d}00.WAV", hoots(8.0, seed=minute))
    bad = str(root / "20240701_060100.WAV")
    real_pread, real_blocks = os.pread, audio.iter_blocks

    def pread(fd, n, offset):
        if os.readlink(f"/proc/self/fd/{fd}") == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    def iter_blocks(path, *args, **kwargs):
        if str(path) == bad:
            raise AudioError(f"{path}: cannot decode audio: System error.")
        return real_blocks(path, *args, **kwargs)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(audio, "iter_blocks", iter_blocks)
    db = tmp_path / "d.db"
    watch_until_idle(root, db)   # a one-off run ends as usual: no "put the card back"
    states = dict(query(db, "SELECT source, state FROM files"))
    assert states == {"20240701_060000.WAV": "done", "20240701_060100.WAV": "quarantined",
                      "20240701_060200.WAV": "done"}, states


def test_a_file_beside_them_that_refuses_for_its_own_reason_does_not_make_a_pulled_card_a_bad_sector(card, tmp_path,
                                                                                                  monkeypatch):
    """Found by a review: a file beside a failing recording was taken to "read" when its own read
    failed for a reason of its own (permission denied), so a pulled card's recordings were
    quarantined as bad sectors; only a read that gives bytes says the card is there."""
    root, _ = card
    locked = root / "CONFIG.TXT"
    locked.write_text("Sample rate (kHz): 48\n")
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.fsdecode(path) == str(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(locked))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    db = tmp_path / "d.db"
    with pytest.raises(EdgemonError, match=r"Input/output error.*run again"):
        watch_until_idle(root, db)
    assert query(db, "SELECT count(*) FROM files WHERE state = 'quarantined'")[0][0] == 0
