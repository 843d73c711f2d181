"""The sync drop-in opens the unit's network only as far as sync needs: the unit with it still
passes `systemd-analyze verify`, keeps IPAddressDeny=any, and stays in systemd's "OK" band."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.test_deploy import ANALYZE, DEPLOY, UNIT, needs_systemd, stub_root, unit_settings

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
