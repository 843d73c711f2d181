"""The storage's read-only API (what export, status, the review page and ``edgemon-train adapt``
read through) and the UTC text helpers, on real SQLite files."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from edgemon.errors import AudioError, EdgemonError
from edgemon.storage.readonly import ReadError, open_read_only, quick_check, recording_path, reviewed, time_range
from edgemon.storage.store import Store
from edgemon.utc import UTC, parse_utc, utc_iso


class NamedError(EdgemonError):
    """A caller's own error class."""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_read_only_names_a_missing_file_in_the_callers_error(tmp_path):
    with pytest.raises(NamedError, match=f"^detections database not found: {tmp_path / 'none.db'}$"):
        open_read_only(tmp_path / "none.db", NamedError)


def test_open_read_only_refuses_a_file_that_is_not_sqlite_at_once(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, " * 100)
    with pytest.raises(NamedError, match=f"^cannot read detections database {garbage}: file is not a database$"):
        open_read_only(garbage, NamedError)
    assert garbage.read_bytes() == b"not a database, " * 100


def test_open_read_only_cannot_write(tmp_path):
    db = tmp_path / "d.db"
    Store(db).close()
    conn = open_read_only(db)
    try:
        assert conn.execute("SELECT count(*) FROM detections").fetchone()[0] == 0
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM detections")
    finally:
        conn.close()


def test_quick_check_of_a_sound_database_is_ok_on_both_kinds_of_connection(tmp_path):
    db = tmp_path / "d.db"
    store = Store(db)
    try:
        assert quick_check(store.db) == ["ok"] and store.integrity_check() == "ok"
    finally:
        store.close()
    with closing(open_read_only(db)) as conn:
        assert quick_check(conn) == ["ok"]


def test_reviewed_reads_a_database_from_before_reviews_without_writing_it(tmp_path):
    # Site adaptation reads a recorder's database copy: it must not migrate (write) it, and a
    # database that never had a review page gives no reviews rather than an error.
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE detections (id INTEGER PRIMARY KEY, source TEXT, start_s REAL)")
        conn.execute("CREATE TABLE files (source TEXT PRIMARY KEY, path TEXT)")
    conn.close()
    before = digest(db)
    assert reviewed(db) == []
    assert digest(db) == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]


def test_reviewed_names_a_missing_database(tmp_path):
    with pytest.raises(ReadError, match="detections database not found"):
        reviewed(tmp_path / "none.db")


def test_recording_path_prefers_the_given_directory_then_the_ledger(tmp_path):
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.wav").write_bytes(b"x")
    (tmp_path / "ledger.wav").write_bytes(b"x")
    row = {"source": "a.wav", "file_path": str(tmp_path / "ledger.wav")}
    assert recording_path(row, tmp_path / "copy") == tmp_path / "copy" / "a.wav"
    assert recording_path(row, None) == tmp_path / "ledger.wav"
    assert recording_path({"source": "b.wav", "file_path": None}, tmp_path / "copy") is None


def test_recording_path_finds_a_followed_recording_on_a_copy_of_the_card_by_its_ledger_paths_end(tmp_path):
    """watch follows a recording moved into a folder or converted to FLAC: its source keeps the
    name first analysed, its ledger path names where it was on the card. On a copy of the card
    every such recording was "missing" under --recordings (a review)."""
    (tmp_path / "copy" / "sub").mkdir(parents=True)
    (tmp_path / "copy" / "sub" / "b.flac").write_bytes(b"xy")
    (tmp_path / "copy" / "b.flac").write_bytes(b"o")              # another (shorter) recording of that name
    row = {"source": "b.wav", "file_path": "/media/card/sub/b.flac", "file_size": 2}
    assert recording_path(row, tmp_path / "copy") == tmp_path / "copy" / "sub" / "b.flac"
    with pytest.raises(AudioError, match="not the recording analysed"):   # only the other one there
        recording_path({**row, "file_path": "/media/card/elsewhere/b.flac"}, tmp_path / "copy")



def test_a_refused_recording_is_named_once_when_two_ways_lead_to_it(tmp_path, monkeypatch):
    """Found walking the adapt loop with a --recordings copy whose files were swapped: the source
    name and the end of the ledger's path both lead to the same file, and the one-line warning
    said why it was refused twice over."""
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "a.wav").write_bytes(b"other")
    row = {"source": "a.wav", "file_path": "/media/card/a.wav", "file_size": 10}   # shorter: not it
    with pytest.raises(AudioError) as refused:
        recording_path(row, tmp_path / "copy")
    assert str(refused.value).count(str(tmp_path / "copy" / "a.wav")) == 1, str(refused.value)
    # a relative --recordings and the ledger's absolute path to the same file (the diff review)
    row = {"source": "a.wav", "file_path": str(tmp_path / "copy" / "a.wav"), "file_size": 10}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioError) as refused:
        recording_path(row, Path("copy"))
    assert str(refused.value).count("when analysed") == 1, str(refused.value)


def test_time_range_is_half_open_and_skips_absent_bounds():
    assert time_range("t", None, None) == ([], [])
    assert time_range("d.start_utc", "2024-05-01T00:00:00.000Z", "2024-05-02T00:00:00.000Z") == (
        ["d.start_utc >= ?", "d.start_utc < ?"], ["2024-05-01T00:00:00.000Z", "2024-05-02T00:00:00.000Z"])
    assert time_range("m", None, "x") == (["m < ?"], ["x"])


def test_parse_utc_reads_the_stores_text_back_and_naive_text_as_utc():
    when = dt.datetime(2024, 5, 1, 6, 0, 0, 250000, tzinfo=UTC)
    assert parse_utc(utc_iso(when)) == when
    assert parse_utc("2024-05-01T08:00:00+02:00") == dt.datetime(2024, 5, 1, 6, tzinfo=UTC)
    assert parse_utc("2024-05-01T06:00:00") == dt.datetime(2024, 5, 1, 6, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_utc("yesterday")


def _wal_database(path: Path) -> Path:
    with closing(sqlite3.connect(path)) as conn, conn:   # WAL, as the store keeps it
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE detections (id INTEGER PRIMARY KEY, label TEXT)")
        conn.execute("INSERT INTO detections (label) VALUES ('a')")
    return path


def test_only_a_database_nothing_can_change_counts_as_frozen(tmp_path, monkeypatch):
    """Where it lies on a read-only mount, or is this user's own in a directory it may not write
    (not another user's: its owner may be writing it, found by a review), and no WAL with pending changes or journal lies
    beside the real file (a symlink's target's directory is the one that counts)."""
    import edgemon.storage.readonly as readonly

    db = _wal_database(tmp_path / "detections.db")
    link = tmp_path / "link" / "d.db"
    link.parent.mkdir()
    link.symlink_to(db)
    assert not readonly.frozen(db)
    real_access, real_statvfs = readonly.os.access, readonly.os.statvfs
    monkeypatch.setattr(readonly.os, "access",
                        lambda p, mode: False if mode == readonly.os.W_OK and Path(p) == tmp_path else real_access(p, mode))
    assert readonly.frozen(db)            # this user's own database, in a directory it may not write
    monkeypatch.setattr(readonly.os, "geteuid", lambda: 12345)
    assert not readonly.frozen(db)        # another user's: its owner may be writing it

    class ReadOnlyMount:
        f_flag = readonly.os.ST_RDONLY

    monkeypatch.setattr(readonly.os, "statvfs", lambda p: ReadOnlyMount if Path(p) == tmp_path else real_statvfs(p))
    assert readonly.frozen(db) and readonly.frozen(link)
    (tmp_path / "detections.db-wal").write_bytes(b"\0" * 32)   # changes still in a WAL: immutable would miss them
    assert not readonly.frozen(db) and not readonly.frozen(link)
    (tmp_path / "detections.db-wal").unlink()
    (tmp_path / "detections.db-journal").write_bytes(b"\0" * 32)
    assert not readonly.frozen(db)


def test_a_database_on_read_only_storage_is_read(tmp_path):
    """A database copied alone onto read-only storage (a card mounted ro): ``mode=ro`` must create
    the WAL's shared-memory file beside it and failed ('unable to open database file'); it is read
    ``immutable``. Needs a real read-only bind mount (root, and a kernel that allows it here)."""
    import shutil
    import subprocess

    source, mounted = tmp_path / "card", tmp_path / "mounted"
    source.mkdir()
    mounted.mkdir()
    _wal_database(source / "detections.db")
    if shutil.which("mount") is None or subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(mounted)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("needs a read-only bind mount (mount --bind -o ro, as root)")
    try:
        with closing(open_read_only(mounted / "detections.db", NamedError)) as conn:
            assert [tuple(r) for r in conn.execute("SELECT label FROM detections")] == [("a",)]
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
