"""What an export or a listing may write over (a newcomer trial): never a database or a recording
given by mistake; a pipe or a device written as it is, not replaced; a link kept, and the file it
names written."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from edgemon.cli import app
from tests.test_export import db_path, read_csv  # noqa: F401 (fixture)

runner = CliRunner()


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recording(path, fmt: str | None = None):
    fmt = fmt or ("FLAC" if path.suffix == ".flac" else "WAV")
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000, format=fmt,
                    **({"subtype": "MPEG_LAYER_III"} if fmt == "MP3" else {}))
    return path


def refused(result, *words) -> bool:
    line = result.output.strip()
    return result.exit_code == 1 and "\n" not in line and "Traceback" not in line and all(w in line for w in words)


@pytest.mark.parametrize("kind", ["flac", "wav", "database"])
def test_an_export_never_writes_over_a_recording_or_a_database(db_path, tmp_path, kind):
    if kind == "database":
        victim = tmp_path / "other.db"
        victim.write_bytes(db_path.read_bytes())
    else:
        victim = recording(tmp_path / f"20230201_053000.{kind.upper()}")
    before = digest(victim)
    for option in (["--output", str(victim)], ["--output", str(tmp_path / "d.csv"), "--coverage", str(victim)]):
        result = runner.invoke(app, ["export-detections", "--db", str(db_path), *option])
        assert refused(result, str(victim), "nothing was written"), result.output
        assert digest(victim) == before
    result = runner.invoke(app, ["review", "--db", str(db_path), "--export", str(victim)])
    assert refused(result, str(victim)), result.output
    assert digest(victim) == before


def test_status_heartbeats_never_write_over_the_database(db_path, tmp_path):
    """It truncated the database it was pointed at before reading it: 0 bytes, every row gone."""
    before = digest(db_path)
    result = runner.invoke(app, ["status", "--db", str(db_path), "--heartbeats", str(db_path)])
    assert refused(result, "--heartbeats", "detections database"), result.output
    assert digest(db_path) == before
    other = tmp_path / "other.db"
    other.write_bytes(db_path.read_bytes())
    result = runner.invoke(app, ["status", "--db", str(db_path), "--heartbeats", str(other)])
    assert refused(result, str(other), "SQLite database"), result.output
    assert digest(other) == before


def test_status_heartbeats_write_a_new_file_whole(tmp_path):
    from devtools.recorder_db import make_recorder
    db = make_recorder(tmp_path / "unit.db", "rec-a", files=1, per_file=1, heartbeats=3)
    out = tmp_path / "beats.csv"
    result = runner.invoke(app, ["status", "--db", str(db), "--heartbeats", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_csv(out)) == 3 and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_export_through_a_link_keeps_the_link(db_path, tmp_path):
    target = tmp_path / "target.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and len(read_csv(target)) == 5


def test_an_export_into_a_pipe_writes_into_the_pipe(db_path, tmp_path):
    """A rename over it replaced the pipe by a file, and its reader waited for ever."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(fifo)])
    assert result.exit_code == 0, result.output
    if not got:   # still waiting: open the pipe once for writing so that it ends, then fail
        reader.join(5)
    if reader.is_alive():
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        reader.join(5)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0].decode().count("\n") == 6   # the header and five rows


def test_a_cursor_export_refuses_a_pipe_and_any_export_a_directory(db_path, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    # In a process of its own: reading what an earlier export left there waited for a writer for ever.
    done = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db_path),
                           "--cursor", "c", "--output", str(fifo)], capture_output=True, text=True, timeout=60)
    line = done.stderr.strip()
    assert done.returncode == 1 and "\n" not in line and str(fifo) in line and "not a regular file" in line, line
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", ""])   # typer makes it "."
    assert refused(result, "--output . is a directory"), result.output


def test_a_cursor_export_into_a_binary_file_says_it_is_no_export(db_path, tmp_path):
    binary = tmp_path / "notes.bin"
    binary.write_bytes(b"\x00\xf1\xfe" * 100)
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--cursor", "c", "--output", str(binary)])
    assert refused(result, str(binary), "not a file of this export format"), result.output
    assert binary.read_bytes() == b"\x00\xf1\xfe" * 100


@pytest.mark.parametrize("fmt", ["MP3", "W64", "CAF", "AU", "NIST", "OGG", "AIFF"])
def test_every_recording_libsndfile_reads_is_refused(db_path, tmp_path, fmt):
    """A review: an MP3 without an ID3 tag, W64, CAF, AU and NIST files were replaced."""
    victim = recording(tmp_path / "take.dat", fmt)
    before = digest(victim)
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(victim)])
    assert refused(result, str(victim), "a recording"), result.output
    assert digest(victim) == before


def test_a_databases_write_ahead_log_is_refused(db_path, tmp_path):
    """A review: only the detections database's own -wal was refused; another's was replaced,
    and that database lost every row not yet checkpointed."""
    import sqlite3

    other = tmp_path / "other.db"
    held = sqlite3.connect(other)
    held.execute("PRAGMA journal_mode = WAL")
    held.execute("PRAGMA wal_autocheckpoint = 0")
    held.execute("CREATE TABLE t (x)")
    held.execute("INSERT INTO t VALUES (1)")
    held.commit()
    try:
        wal = tmp_path / "other.db-wal"
        before = digest(wal)
        result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(wal)])
        assert refused(result, str(wal), "a SQLite write-ahead log"), result.output
        assert digest(wal) == before
    finally:
        held.close()


def test_dev_stdout_writes_through_the_descriptor(db_path, tmp_path):
    """A review: --output /dev/stdout, stdout redirected to a file (>>), renamed a new file over
    it: what was there before, and what the shell wrote after, were lost."""
    out = tmp_path / "out.csv"
    out.write_text("PRE\n")
    script = (f"{shlex.quote(sys.executable)} -m edgemon export-detections --db {shlex.quote(str(db_path))} "
              f"--output /dev/stdout -q >> {shlex.quote(str(out))}; echo POST >> {shlex.quote(str(out))}")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "PRE" and lines[1].startswith("id,") and len(lines) == 8 and lines[-1] == "POST", lines


def test_a_replaced_file_keeps_its_mode(db_path, tmp_path):
    out = tmp_path / "private.csv"
    out.write_text("old\n")
    out.chmod(0o600)
    assert runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out)]).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(read_csv(out)) == 5


def test_a_raven_cursor_refuses_a_pipe_among_its_tables(db_path, tmp_path):
    """A review: a FIFO under a table's name was read for what it held, for ever."""
    tables = tmp_path / "raven"
    tables.mkdir()
    names = runner.invoke(app, ["export-detections", "--db", str(db_path), "--format", "raven", "--output",
                                str(tables)])
    assert names.exit_code == 0, names.output
    first = sorted(tables.glob("*.selection.table.txt"))[0]
    for path in tables.iterdir():
        path.unlink()
    os.mkfifo(first)
    done = subprocess.run([sys.executable, "-m", "edgemon", "export-detections", "--db", str(db_path), "--format",
                           "raven", "--output", str(tables), "--cursor", "r"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "not a regular file" in done.stderr and str(first) in done.stderr, done.stderr
    assert stat.S_ISFIFO(os.lstat(first).st_mode)


def test_temp_files_of_a_killed_export_are_swept_by_the_next(db_path, tmp_path):
    """A newcomer trial: exports killed with SIGKILL left their hidden temp files beside the target
    (87-189 per kill into a Raven directory), and a later export minutes after left them all. Gone
    now once their writer is dead and they are ten minutes old; a live writer's, or a fresh one, stay."""
    from edgemon.storage.export_files import STALE_TEMP_S

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    old = os.path.getmtime(db_path) - STALE_TEMP_S - 60
    left = {name: out / name for name in (f".d.csv.{dead.pid}-0123abcd.tmp", f".d.csv.{os.getpid()}-0123abcd.tmp",
                                          f".e.csv.{dead.pid}-89abcdef.tmp")}
    for i, path in enumerate(left.values()):
        path.write_text("half a row")
        if i < 2:
            os.utime(path, (old, old))
    assert STALE_TEMP_S <= 600
    result = runner.invoke(app, ["export-detections", "--db", str(db_path), "--output", str(out / "d.csv")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted(list(left)[1:])


@pytest.mark.parametrize("fmt", ["csv", "raven"])
def test_temp_files_of_a_killed_export_are_swept_by_one_with_nothing_new(db_path, tmp_path, fmt):
    """A review: the sweep ran only when an export opened a file, so a cursor export with nothing
    new left the temps of 22 killed Raven exports (3875 files, 29 MB) where they were."""
    from edgemon.storage.export_files import STALE_TEMP_S

    out = tmp_path / "out"
    out.mkdir()
    target = out if fmt == "raven" else out / "d.csv"
    export = ["export-detections", "--db", str(db_path), "--format", fmt, "--output", str(target), "--cursor", "c"]
    first = runner.invoke(app, export)
    assert first.exit_code == 0, first.output
    written = {p.name: digest(p) for p in out.iterdir()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = os.path.getmtime(db_path) - STALE_TEMP_S - 60
    name = min(n for n in written if not n.startswith("."))   # a table, or the csv file
    left = [f".{name}.{dead.pid}-0123abcd.tmp", f".{name}.{os.getpid()}-0123abcd.tmp",
            f".{name}.{dead.pid}-89abcdef.tmp"]
    for i, temp in enumerate(left):
        (out / temp).write_text("half a row")
        if i < 2:
            os.utime(out / temp, (old, old))
    again = runner.invoke(app, export)
    assert again.exit_code == 0, again.output
    assert {p.name: digest(p) for p in out.iterdir() if p.name in written} == written   # nothing new written
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, *left[1:]])
