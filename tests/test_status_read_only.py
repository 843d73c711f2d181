"""``edgemon status`` on a database whose file system went read-only under a running daemon (an
SD card the kernel remounts read-only after an I/O error, common on a Pi): the daemon's last
heartbeat is still fresh, so status said "running" with no problem for up to 11 minutes while
nothing could be stored (a field trial)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_faults import unshare_works

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent('''
    """Runs inside a user+mount namespace: a tmpfs at MNT holds the database, then goes read-only."""
    import datetime as dt, json, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from edgemon.status import collect_status
    from edgemon.storage.rows import Heartbeat
    from edgemon.storage.store import Store

    mnt, state = Path(sys.argv[2]), sys.argv[3]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    now = dt.datetime.now(dt.timezone.utc)
    with Store(mnt / "d.db") as store:
        store.add_heartbeat(Heartbeat(run_id="r", mode="watch", device_id="unit", at_utc=now,
                                      started_utc=now, uptime_s=0.0, state=state))
    report = {"before": collect_status(mnt / "d.db", now=now)["problems"]}
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    after = collect_status(mnt / "d.db", now=now)
    report.update(after=after["problems"], service=after["service"]["state"])
    print(json.dumps(report))
''')


def status_on_a_mount_gone_read_only(tmp_path: Path, state: str) -> dict:
    script, mnt = tmp_path / "child.py", tmp_path / "mnt"
    script.write_text(CHILD)
    mnt.mkdir()
    done = subprocess.run(["unshare", "-Urm", sys.executable, str(script), str(ROOT), str(mnt), state],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")
def test_a_database_gone_read_only_under_a_running_daemon_is_a_problem(tmp_path):
    report = status_on_a_mount_gone_read_only(tmp_path, "ok")
    assert report["service"] == "running"
    assert not any("read-only" in p for p in report["before"]), report["before"]
    said = [p for p in report["after"] if "mounted read-only" in p]
    assert len(said) == 1 and "nothing new can be stored" in said[0], report["after"]


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")
def test_a_stopped_units_database_read_from_a_read_only_card_is_no_problem(tmp_path):
    report = status_on_a_mount_gone_read_only(tmp_path, "stopping")
    assert report["service"] == "stopped"
    assert not any("read-only" in p for p in report["after"]), report["after"]
