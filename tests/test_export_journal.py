"""A cursor export killed part way (kill -9, a power cut, Ctrl-C) delivers each row once: its
renames are journaled beside the database before its cursor commits, and the next cursor export
finishes them or drops them (``edgemon.storage.export_journal``). Real processes are killed; the
files are real."""

from __future__ import annotations

import contextlib
import logging
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgemon.storage import export as export_module
from edgemon.storage.export import ExportError, export_detections
from edgemon.storage.store import Store
from tests.test_export import REC1, REC2, db_path, detection, read_csv  # noqa: F401 (fixture)
from tests.test_export_files import SUFFIX, read_table

KILL_AT = {
    # between the first table's rename and the second's: the cursor has moved
    "between renames": """
real = os.replace
renamed = []
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(END):
        renamed.append(dst)
        if len(renamed) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
""",
    # at the first rename into place: the cursor has moved
    "after the commit": """
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(END):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
""",
    # with the files staged and the journal on disk, before the cursor commits
    "before the commit": """
from edgemon.storage import export_files
real = export_files.stage
def stage(*args):
    real(*args)
    os.kill(os.getpid(), signal.SIGKILL)
export_files.stage = stage
""",
}


def killed_export(cwd: Path, db: Path, fmt: str, out: Path, moment: str, end: str) -> None:
    """An export in its own process, killed at ``moment``; paths as given (relative to ``cwd``)."""
    script = (f"import os, signal\nfrom pathlib import Path\nEND = {end!r}\n{KILL_AT[moment]}\n"
              "from edgemon.storage.export import export_detections\n"
              f"export_detections(Path({str(db)!r}), {fmt!r}, Path({str(out)!r}), new=True)\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -9, killed.stderr


def journals(db: Path) -> list[Path]:
    return sorted(Path(os.path.realpath(db)).parent.glob("*.export-journal.*"))


def csv_killed_after_commit(db: Path, directory: Path) -> Path:
    """``directory``/archive.csv holds 5 rows of a cursor; 2 more are stored, and the export that
    delivers them is killed after its commit. Returns the csv's path."""
    directory.mkdir(exist_ok=True)
    target = directory / "archive.csv"
    assert export_detections(db, "csv", target, new=True) == 5
    add_two(db)
    killed_export(directory.parent, db, "csv", target, "after the commit", "archive.csv")
    return target


def add_two(db: Path) -> None:
    with Store(db) as store:
        store.insert_detections([detection(REC1, 9.0, "bird", 0.6, "2024-05-01T06:00:09Z"),
                                 detection(REC2, 4.0, "bird", 0.6, "2024-05-02T06:00:04Z")])


def test_a_raven_cursor_killed_after_its_commit_still_claims_its_directory(db_path, tmp_path):
    """The owner note was written after the cursor committed, and not fsynced: killed (or a power
    cut) in between, the tables were the cursor's but unclaimed, and a plain filtered export then
    replaced them, losing rows the cursor had delivered (a review). It is now one of the tables."""
    from edgemon.storage.export import ExportError
    from edgemon.storage.raven_owner import OWNER_FILE

    out = tmp_path / "raven"
    out.mkdir()
    killed_export(tmp_path, Path(db_path.name), "raven", Path("raven"), "after the commit", SUFFIX)
    assert not (out / OWNER_FILE).exists()
    assert export_detections(db_path, "raven", out, new=True) == 0       # finishes what was journaled
    assert json.loads((out / OWNER_FILE).read_text())["cursors"]
    with pytest.raises(ExportError, match="is export cursor"):
        export_detections(db_path, "raven", out, label=["bird"])


@pytest.mark.parametrize("moment", sorted(KILL_AT))
def test_a_cursor_export_killed_mid_way_delivers_each_row_once(db_path, tmp_path, moment):
    """Found in review (seventeenth session): tables were renamed one by one inside the cursor's
    transaction, so a kill -9 between two renames left the first table extended and the cursor
    where it was; the next export appended the same rows to it again. The next export now
    finishes (or drops) what the killed one journaled, whichever side of its commit it died on,
    also from another working directory than the killed one's relative paths."""
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    add_two(db_path)
    killed_export(tmp_path, Path(db_path.name), "raven", Path("raven"), moment, SUFFIX)
    assert len(journals(db_path)) == 1
    again = export_detections(db_path, "raven", out, new=True)
    assert again == (2 if moment == "before the commit" else 0)
    assert [r["Begin Time (s)"] for r in read_table(out / f"20240501_060000{SUFFIX}")] == ["0.0", "3.0", "6.0", "9.0"]
    later = [(r["Selection"], r["Begin Time (s)"]) for r in read_table(out / f"20240502_060000{SUFFIX}")]
    assert later[-1][1] == "4.0" and [b for _, b in later].count("4.0") == 1
    assert [s for s, _ in later] == [str(n) for n in range(1, len(later) + 1)]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".2024")] and not journals(db_path)


@pytest.mark.parametrize("then", ["a plain export", "a coverage file"])
def test_the_dead_temp_sweep_leaves_a_journaled_export_alone(db_path, tmp_path, then):
    """Found in review: the next night, an export writing into the same directory (a plain one, or
    the cursor export's own --coverage file, written first) swept the killed export's temp files
    as dead, and the cursor was past their rows. Staged files are not temp files."""
    out = tmp_path / "outbox"
    target = csv_killed_after_commit(db_path, out)
    day_ago = time.time() - 86400
    for path in out.iterdir():
        os.utime(path, (day_ago, day_ago))
    if then == "a plain export":
        export_detections(db_path, "csv", out / "dump.csv")
    else:
        with export_module.atomic_text(out / "coverage.csv") as f:
            f.write("coverage\n")
    assert export_detections(db_path, "csv", target, new=True) == 0
    assert [row["start_s"] for row in read_csv(target)][-2:] == ["9.0", "4.0"] and len(read_csv(target)) == 7


def test_an_export_through_a_link_to_the_database_finds_the_journal(db_path, tmp_path):
    """Found in review: the journal sat beside the name the export was given, the locks beside the
    real file; killed through a link, the next export through the real path did not see it, and
    a later one through the link renamed the old table over rows delivered meanwhile."""
    link = tmp_path / "link.db"
    link.symlink_to(db_path)
    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    add_two(db_path)
    killed_export(tmp_path, link, "raven", out, "between renames", SUFFIX)
    assert export_detections(db_path, "raven", out, new=True) == 0
    with Store(db_path) as store:
        store.insert_detections([detection(REC2, 7.0, "bird", 0.6, "2024-05-02T06:00:07Z")])
    assert export_detections(db_path, "raven", out, new=True) == 1
    assert export_detections(link, "raven", out, new=True) == 0
    assert [r["Begin Time (s)"] for r in read_table(out / f"20240502_060000{SUFFIX}")][-2:] == ["4.0", "7.0"]


@pytest.mark.parametrize("unmounted", ["directory gone", "empty mount point"])
def test_an_output_not_mounted_keeps_the_journal_and_stops_only_its_cursor(db_path, tmp_path, caplog, unmounted):
    """Found in review (twice): a power cut after the commit, and the USB stick not yet mounted when
    the next export ran: the journal was dropped with a warning, and the rows with it; at first
    whenever the output's directory was gone, then still when it was the mount point itself (left
    as an empty directory). Now that cursor's exports refuse in one line until the stick is back;
    other cursors go on."""
    stick = tmp_path / "usb"
    target = csv_killed_after_commit(db_path, stick)
    aside = tmp_path / "stick-contents"
    stick.rename(aside)
    if unmounted == "empty mount point":
        stick.mkdir()
    with caplog.at_level(logging.WARNING):
        assert export_detections(db_path, "csv", tmp_path / "partner.csv", new=True, cursor_name="partner") == 7
    assert "not there (output not mounted?)" in caplog.text
    with pytest.raises(ExportError, match="not all in place.*staged file .*archive.csv.*not there") as refused:
        export_detections(db_path, "csv", target, new=True)
    assert "\n" not in str(refused.value)
    if stick.exists():
        stick.rmdir()
    aside.rename(stick)
    assert export_detections(db_path, "csv", target, new=True) == 0
    assert len(read_csv(target)) == 7 and not journals(db_path)


def test_a_journal_that_cannot_be_read_is_kept(db_path, tmp_path, monkeypatch):
    """Found in review: any error reading the journal (EACCES: written by a sudo run with umask
    077; EIO) was taken for a journal never written whole, and removed, though its cursor had
    moved. (Tests run as root, which reads a file of mode 0: the error is raised in its place.)"""
    target = csv_killed_after_commit(db_path, tmp_path / "outbox")
    [journal] = journals(db_path)
    read_text = Path.read_text

    def refused(self, *args, **kwargs):
        if self == journal:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)
    monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(ExportError, match="cannot read .*export-journal.*Permission denied"):
        export_detections(db_path, "csv", target, new=True)
    assert journal.exists()
    monkeypatch.undo()
    assert export_detections(db_path, "csv", target, new=True) == 0 and len(read_csv(target)) == 7


def test_an_interrupt_after_the_commit_still_moves_the_files(db_path, tmp_path, monkeypatch):
    """Found in review: a Ctrl-C arriving after the cursor's COMMIT, while its connection closed,
    removed the journal and the files as if nothing had been delivered."""
    real = export_module.advancing

    @contextlib.contextmanager
    def interrupted(*args, **kwargs):
        with real(*args, **kwargs):
            yield
        raise KeyboardInterrupt
    monkeypatch.setattr(export_module, "advancing", interrupted)
    target = tmp_path / "a.csv"
    with pytest.raises(KeyboardInterrupt):
        export_detections(db_path, "csv", target, new=True)
    assert len(read_csv(target)) == 5 and not journals(db_path)


def test_a_copy_of_the_database_file_alone_knows_how_far_its_cursor_went(db_path, tmp_path):
    """Found in a newcomer trial: after a cursor export the cursor's move sat only in the
    write-ahead log (the export's read-only connection closes last and cannot fold it in), so a
    field worker who copied detections.db alone got a copy whose next export delivered every row
    again. The export now writes its move through to the database file."""
    target = tmp_path / "archive.csv"
    assert export_detections(db_path, "csv", target, new=True) == 5
    copy = tmp_path / "backup.db"
    copy.write_bytes(db_path.read_bytes())          # cp detections.db, without its -wal
    assert export_detections(copy, "csv", target, new=True) == 0
    assert len(read_csv(target)) == 5


def test_status_names_a_cursor_whose_files_are_not_in_place(db_path, tmp_path):
    """Found in a newcomer trial: with a killed export's staged files gone with the stick it wrote
    to, every export on that cursor was refused, and `edgemon status` said "problems: none" (its
    cron job's failures were seen by no one)."""
    from edgemon.status import collect_status

    def export_problems():
        return [p for p in collect_status(db_path)["problems"] if "export" in p]

    stick = tmp_path / "usb"
    csv_killed_after_commit(db_path, stick)
    aside = tmp_path / "first-stick"
    stick.rename(aside)
    stick.mkdir()                                    # another stick in its place
    with pytest.raises(ExportError, match="not there"):
        export_detections(db_path, "csv", stick / "archive.csv", new=True)
    [problem] = export_problems()
    assert "export cursor 'default' is past rows whose files are not in place" in problem
    stick.rmdir()
    aside.rename(stick)                              # the right stick back
    assert export_detections(db_path, "csv", stick / "archive.csv", new=True) == 0
    assert export_problems() == []


@pytest.mark.parametrize("new", [False, True])
def test_an_export_stopped_by_sigterm_leaves_no_temp_files(db_path, tmp_path, new):
    """Found in a newcomer trial: Ctrl-C removed an export's hidden temp files, but SIGTERM (what
    systemd and `timeout` send) left them, complete tables beside the real ones that sync tools
    copied. SIGTERM now interrupts an export as Ctrl-C does; a cursor stays where it was."""
    out = tmp_path / "raven"
    out.mkdir()
    script = ("import os, signal, sys\nfrom edgemon.storage import tables\nreal = tables.raven_row\n"
              "def row(*args):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return real(*args)\n"
              "tables.raven_row = row\nfrom edgemon.cli import app\n"
              f"sys.argv = ['edgemon', 'export-detections', '--db', {str(db_path)!r}, '--format', 'raven', "
              f"'--output', {str(out)!r}{', ' + repr('--new') if new else ''}]\napp()\n")
    stopped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert stopped.returncode == 143 and "stopped by SIGTERM" in stopped.stderr, stopped.stderr
    assert [p.name for p in out.iterdir()] in ([], [".edgemon-raven-owner"])
    assert not journals(db_path)
    assert export_detections(db_path, "raven", out, new=new) == 5


def test_a_file_moved_away_after_a_kill_is_not_brought_back_whole(db_path, tmp_path):
    """Found in a newcomer trial: between a kill after the commit and the next export, a sync job
    moved the outbox's file away; the next export renamed the staged file (the old file plus the
    new rows) into place, and the sync job delivered the old rows a second time. Now that cursor's
    export refuses in one line, naming the staged file, and `edgemon status` lists it."""
    target = csv_killed_after_commit(db_path, tmp_path / "outbox")
    target.rename(tmp_path / "delivered.csv")           # the sync job's move
    with pytest.raises(ExportError, match="archive.csv changed since the interrupted export .*moved away"):
        export_detections(db_path, "csv", target, new=True)
    assert not target.exists() and len(journals(db_path)) == 1


def test_status_is_quiet_about_an_export_stopped_before_its_commit(db_path, tmp_path):
    """Found in review: every journal was listed as "past rows", also one whose cursor never moved
    (stopped before its commit), whose files its next export only removes."""
    from edgemon.status import collect_status

    out = tmp_path / "raven"
    out.mkdir()
    assert export_detections(db_path, "raven", out, new=True) == 5
    add_two(db_path)
    killed_export(tmp_path, db_path, "raven", out, "before the commit", SUFFIX)
    assert len(journals(db_path)) == 1
    assert not [p for p in collect_status(db_path)["problems"] if "export" in p]
