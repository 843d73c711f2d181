"""The sync drop-in opens the unit's network only as far as sync needs: the unit with it still
passes `systemd-analyze verify`, keeps IPAddressDeny=any, and stays in systemd's "OK" band."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

from tests.test_deploy import ANALYZE, DEPLOY, INSTALL, UNIT, needs_systemd, stub_root, unit_settings

DROP_IN = DEPLOY / "edgemon-sync.conf"


def root_with_drop_in(tmp_path: Path, drop_in: str) -> Path:
    root = stub_root(tmp_path, UNIT.read_text())
    (root / "etc/systemd/system/edgemon.service.d").mkdir()
    (root / "etc/systemd/system/edgemon.service.d/sync.conf").write_text(drop_in)
    return root


def exposure(root: Path) -> float:
    result = subprocess.run([ANALYZE, "security", "--offline=true", f"--root={root}", "edgemon.service"],
                            capture_output=True, text=True)
    found = re.search(r"Overall exposure level for edgemon.service: ([\d.]+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    return float(found[1])


def test_drop_in_opens_only_inet_to_listed_addresses():
    unit, drop = unit_settings(UNIT.read_text()), unit_settings(DROP_IN.read_text())
    assert unit[("Service", "IPAddressDeny")] == ["any"] and unit[("Service", "PrivateNetwork")] == ["yes"]
    assert ("Service", "IPAddressDeny") not in drop          # the unit's deny-all stays in force
    assert drop[("Service", "PrivateNetwork")] == ["no"]
    assert set(drop[("Service", "RestrictAddressFamilies")][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    allowed = drop[("Service", "IPAddressAllow")]
    assert allowed and not {"any", "0.0.0.0/0", "::/0"} & set(allowed)


@needs_systemd
def test_unit_with_drop_in_verifies_and_stays_ok(tmp_path):
    root = root_with_drop_in(tmp_path / "sync", DROP_IN.read_text())
    result = subprocess.run([ANALYZE, "verify", f"--root={root}", "edgemon.service"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    closed = exposure(stub_root(tmp_path / "closed", UNIT.read_text()))
    opened = exposure(root)
    print(f"\nexposure without sync {closed}, with the sync drop-in {opened}")
    # systemd scores any IPAddressAllow= alike, so the static test above is what rejects allow-all.
    assert closed < opened <= 2.0, (closed, opened)


# --- install.sh places the drop-in only while sync_url is set ----------------------------------

def root_with_settings(tmp_path: Path, sync_url: str | None) -> Path:
    """A root holding settings and, standing in for the installed program, this checkout's real
    edgemon (install.sh reads sync_url through `edgemon config`, as it does after a real install)."""
    root = tmp_path / "root"
    program = root / "opt/edgemon/venv/bin/edgemon"
    program.parent.mkdir(parents=True)
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m edgemon "$@"\n')
    program.chmod(0o755)
    write_settings(root, sync_url)
    return root


def write_settings(root: Path, sync_url: str | None) -> None:
    conf = root / "etc/edgemon/edgemon.toml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text('device_id = "site-07"\n[sync]\n' + (f'sync_url = "{sync_url}"\n' if sync_url else ""))


def place_drop_in(root: Path) -> str:
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--sync-drop-in"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_install_places_the_drop_in_while_sync_url_is_set(tmp_path):
    installed = "etc/systemd/system/edgemon.service.d/sync.conf"
    root = root_with_settings(tmp_path, "postgresql://recorder@10.20.30.40:5433/fleet?passfile=/etc/edgemon/pgpass")
    out = place_drop_in(root)
    assert f"installed /{installed}" in out
    text = (root / installed).read_text()
    assert text == DROP_IN.read_text().replace("IPAddressAllow=192.0.2.10/32", "IPAddressAllow=10.20.30.40")
    assert unit_settings(text)[("Service", "IPAddressAllow")] == ["10.20.30.40"]   # the fleet database only
    assert stat.S_IMODE((root / installed).stat().st_mode) == 0o644
    assert place_drop_in(root) == ""                                   # again: nothing to change

    write_settings(root, "postgresql://recorder@fleet.example.org/fleet")   # a name: the admin's edit is kept
    (root / installed).write_text(text.replace("10.20.30.40", "10.20.30.41"))
    out = place_drop_in(root)
    assert "names a host, not an IP address" in out and "10.20.30.41" in (root / installed).read_text()

    write_settings(root, None)                                         # sync off: the network closes again
    assert f"removed /{installed}" in place_drop_in(root)
    assert not (root / installed).exists() and not (root / installed).parent.exists()
    assert place_drop_in(root) == ""


def test_sync_drop_in_names_a_refused_settings_file_in_one_line(tmp_path):
    """Settings edgemon refuses gave json.load an empty input: its traceback followed edgemon's
    one line, before install.sh's own."""
    root = root_with_settings(tmp_path, None)
    conf = root / "etc/edgemon/edgemon.toml"
    conf.write_text(conf.read_text() + "bogus_key = 1\n")
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--sync-drop-in"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {conf}: unknown setting [sync] bogus_key",
        "install.sh: error: cannot read sync_url from /etc/edgemon/edgemon.toml (see the error above); fix it and "
        "run again"], result.stderr
    assert not (root / "etc/systemd/system/edgemon.service.d").exists()
