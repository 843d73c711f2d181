"""Deployment: the systemd unit passes `systemd-analyze verify`, its exposure score is low, it holds
what an unattended recorder needs, and deploy/install.sh installs, re-installs (changing
nothing), upgrades and uninstalls in a throwaway root: run, not read."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "edgemon.service"
INSTALL = DEPLOY / "install.sh"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None or not SYSTEM_UNITS.is_dir(),
                                   reason="needs systemd-analyze (Debian package systemd; scripts/setup-dev.sh installs it)")


def unit_settings(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (a key may repeat)."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def stub_root(tmp_path: Path, unit_text: str) -> Path:
    """A root holding systemd's own units (sysinit.target and the like), the unit under test and
    an executable standing in for edgemon."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/edgemon.service").write_text(unit_text)
    program = root / "opt/edgemon/venv/bin/edgemon"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, "verify", f"--root={root}", "edgemon.service"], capture_output=True, text=True)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = verify(stub_root(tmp_path / "good", UNIT.read_text()))
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    # The check can fail: a misspelt directive is reported.
    bad = verify(stub_root(tmp_path / "bad", UNIT.read_text().replace("NoNewPrivileges", "NoNewPrivilege")))
    assert "Unknown key" in bad.stderr and "NoNewPrivilege" in bad.stderr


@needs_systemd
def test_unit_security_exposure_is_low():
    result = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for edgemon.service: ([\d.]+) (\w+)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    print(f"\nsystemd-analyze security: exposure {found[1]} {found[2]}")
    assert float(found[1]) <= 1.5, result.stdout


def test_unit_holds_what_an_unattended_recorder_needs():
    unit = unit_settings(UNIT.read_text())
    one = {k: v[-1] for k, v in unit.items()}
    assert one[("Service", "Type")] == "notify" and one[("Service", "NotifyAccess")] == "main"
    watchdog_s = float(one[("Service", "WatchdogSec")])
    assert one[("Service", "Restart")] == "on-failure" and float(one[("Service", "RestartSec")]) > 0
    assert one[("Unit", "StartLimitIntervalSec")] == "0"                # never locked out
    assert one[("Service", "User")] == "edgemon" and one[("Service", "SupplementaryGroups")] == "audio"
    assert one[("Service", "ProtectSystem")] == "strict"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert one[("Service", key)] == "yes", key
    assert "MemoryMax" in {k for _, k in unit} and "CPUQuota" in {k for _, k in unit}
    # an analysis child killed for memory is recorded against its file; the unit goes on
    assert one[("Service", "OOMPolicy")] == "continue"
    after = " ".join(unit[("Unit", "After")])
    assert "sound.target" in after
    wants = " ".join(v for (s, k), vs in unit.items() if s == "Unit" and k in ("After", "Wants", "Requires") for v in vs)
    assert "time-sync" not in wants and "network-online" not in wants  # field units may never get time
    assert one[("Service", "ExecStart")] == "/opt/edgemon/venv/bin/edgemon run --config /etc/edgemon/edgemon.toml"

    example = tomllib.loads((DEPLOY / "edgemon.toml").read_text())
    writable = unit[("Service", "ReadWritePaths")] + [f"/var/lib/{one[('Service', 'StateDirectory')]}"]
    assert any(example["db"].startswith(w.lstrip("-") + "/") for w in writable)   # the database is writable
    assert example["health"]["progress_timeout_s"] < watchdog_s                   # stalls are caught


# --- install.sh in a throwaway root -------------------------------------------------------------

RPI_MACHINE_ID = "3f9a2c0123456789abcdef0123456789"
def seed_root_files(root: Path, hostname: str, machine_id: str | None) -> Path:
    """A root with only /etc/hostname and (unless None) /etc/machine-id."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text(hostname)
    if machine_id is not None:
        (root / "etc/machine-id").write_text(machine_id)
    return root


def seed_root(root: Path) -> Path:
    """The few files of a fresh Raspberry Pi OS a package install touches: users, groups, systemd
    units, the image's hostname (the same on every card) and this card's machine id."""
    etc = seed_root_files(root, "raspberrypi\n", RPI_MACHINE_ID + "\n") / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\naudio:x:29:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\naudio:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    return root


def source_tree(tmp_path: Path, version: str) -> Path:
    """A source tree of this checkout's package, numbered ``version``."""
    src = tmp_path / f"src-{version}"
    if src.exists():
        return src
    src.mkdir()
    for name in ("README.md", "edgemon"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(
            REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}))
    pyproject = (REPO / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject))
    return src


def wheel(tmp_path: Path, version: str) -> Path:
    """An edgemon wheel of this checkout, numbered ``version``."""
    src = source_tree(tmp_path, version)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *isolation, "-w", str(tmp_path / "wheels"),
                    str(src)], check=True, capture_output=True)
    return next((tmp_path / "wheels").glob(f"edgemon-{version}-*.whl"))


def install(root: Path, *args: str) -> str:
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--pip-args", "--no-compile", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its mode, owner and size, link target, or (outside the
    virtual environment, which pip rewrites byte for byte) content hash."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel.startswith("usr/lib/systemd") or "__pycache__" in rel or rel.endswith("-"):  # -: shadow's backups
            continue
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid)
        elif "/venv/" in rel:
            found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size)
        else:
            found[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def version_in(root: Path) -> str:
    return subprocess.run([str(root / "opt/edgemon/venv/bin/python"), "-I", "-c",
                           "import importlib.metadata as m; print(m.version('edgemon'))"],
                          capture_output=True, text=True, check=True).stdout.strip()


@needs_systemd
@pytest.mark.skipif(os.geteuid() != 0, reason="useradd --prefix and chown need root (CI runs as root)")
def test_install_reinstall_upgrade_uninstall_in_a_throwaway_root(tmp_path):
    root = seed_root(tmp_path / "root")
    first, second = wheel(tmp_path, "0.1.0"), wheel(tmp_path, "0.1.1")

    out = install(root, "--source", str(first), "--mode", "listen")
    assert "installed edgemon 0.1.0" in out
    passwd = (root / "etc/passwd").read_text()
    user = re.search(r"^edgemon:x:(\d+):(\d+):[^:]*:/var/lib/edgemon:/usr/sbin/nologin$", passwd, re.M)
    assert user, passwd
    assert re.search(r"^audio:x:29:edgemon$", (root / "etc/group").read_text(), re.M)
    state = (root / "var/lib/edgemon").stat()
    assert (state.st_uid, stat.S_IMODE(state.st_mode)) == (int(user[1]), 0o750)
    config = root / "etc/edgemon/edgemon.toml"
    assert tomllib.loads(config.read_text())["mode"] == "listen"
    assert tomllib.loads(config.read_text())["device_id"] == "raspberrypi-3f9a2c"   # its own, not "edgemon"
    assert (root / "etc/systemd/system/edgemon.service").read_text() == UNIT.read_text()
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/edgemon.service") == \
        "/etc/systemd/system/edgemon.service"
    shown = subprocess.run([str(root / "opt/edgemon/venv/bin/edgemon"), "config", "--config", str(config), "--json"],
                           capture_output=True, text=True, check=True)   # the installed program runs
    assert '"listen"' in shown.stdout
    driver = subprocess.run([str(root / "opt/edgemon/venv/bin/python"), "-c", "import psycopg"], capture_output=True,
                            text=True)
    assert driver.returncode == 0, driver.stderr      # the sync extra: setting sync_url later just works
    # At the versions the tests passed with, not whatever the index had newest (pyproject gives lower bounds).
    pinned = dict(line.strip().split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    got = subprocess.run([str(root / "opt/edgemon/venv/bin/python"), "-c", "import importlib.metadata as m; "
                          "print(m.version('numpy'), m.version('onnxruntime'), m.version('watchdog'))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert got == [pinned["numpy"], pinned["onnxruntime"], pinned["watchdog"]], got
    assert verify(root).returncode == 0 and verify(root).stderr == ""    # the installed unit, real ExecStart

    before = tree(root)
    install(root, "--source", str(first))
    assert tree(root) == before                                          # idempotent: nothing changed

    config.write_text(config.read_text().replace('device_id = "raspberrypi-3f9a2c"', 'device_id = "site-07"'))
    (root / "var/lib/edgemon/edgemon.db").write_bytes(b"months of detections")
    out = install(root, "--source", str(second))
    assert "upgraded edgemon 0.1.0 -> 0.1.1" in out and version_in(root) == "0.1.1"
    shown = subprocess.run([str(root / "opt/edgemon/venv/bin/edgemon"), "--version"], capture_output=True, text=True)
    assert shown.stdout == "edgemon 0.1.1\n"                          # the installed version, not the source's
    assert 'device_id = "site-07"' in config.read_text()                 # the admin's settings kept
    assert (root / "etc/edgemon/edgemon.toml.dist").read_text() == (DEPLOY / "edgemon.toml").read_text()

    # A version that refuses the settings in force (it no longer knows `latitude`) is refused before
    # it is installed: checked after, it was in place, and the service looped at its next restart.
    config.write_text("latitude = 1.55\n" + config.read_text())
    registry = source_tree(tmp_path, "0.1.2") / "edgemon/settings_registry.py"
    registry.write_text(re.sub(r'    Setting\("latitude",.*?\),\n', "", registry.read_text(), count=1, flags=re.S))
    refused = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--source",
                              str(wheel(tmp_path, "0.1.2"))], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and "latitude" in refused.stderr, refused.stdout + refused.stderr
    assert "is not valid for the version this would install (see the error above): nothing was changed, " \
           "edgemon 0.1.1 stays" in refused.stderr
    assert version_in(root) == "0.1.1"
    config.write_text(config.read_text().replace("latitude = 1.55\n", ""))

    install(root, "--uninstall")
    assert not (root / "opt/edgemon").exists()
    assert not (root / "etc/systemd/system/edgemon.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edgemon.service").exists()
    assert config.exists() and "edgemon:" in (root / "etc/passwd").read_text()
    assert (root / "var/lib/edgemon/edgemon.db").read_bytes() == b"months of detections"

    out = install(root, "--uninstall", "--purge")
    assert not (root / "etc/edgemon").exists() and "edgemon" not in (root / "etc/passwd").read_text()
    assert "edgemon" not in (root / "etc/group").read_text()
    assert (root / "var/lib/edgemon/edgemon.db").read_bytes() == b"months of detections"   # data only if told
    assert "kept /var/lib/edgemon" in out


@needs_systemd
@pytest.mark.skipif(os.geteuid() != 0, reason="useradd --prefix and chown need root (CI runs as root)")
def test_install_over_what_an_earlier_install_left(tmp_path):
    """What a unit holds when it is installed again: data kept by `--uninstall --purge` (owned by the
    removed user's ids, now another system user's), a virtual environment whose creation failed
    (Debian's python3 without python3-venv leaves one with no pip), settings kept by an uninstall,
    and a checkout whose build/ holds a module of an earlier version."""
    root = seed_root(tmp_path / "root")
    etc = root / "etc"
    # The uid the removed edgemon user had, given since to another system user.
    with open(etc / "passwd", "a") as f:
        f.write("avahi:x:999:999:Avahi:/run/avahi:/usr/sbin/nologin\n")
    for name, line in (("group", "avahi:x:999:\n"), ("gshadow", "avahi:!::\n"), ("shadow", "avahi:!:19000::::::\n")):
        with open(etc / name, "a") as f:
            f.write(line)
    state = root / "var/lib/edgemon"
    (state / "clips").mkdir(parents=True)
    for path in (state, state / "clips", state / "edgemon.db", state / "clips/a.flac"):
        if not path.exists():
            path.write_bytes(b"months of detections")
        os.chown(path, 999, 999)
    (state / "root-made.csv").write_text("an export root made here\n")   # root's stays root's
    venv = root / "opt/edgemon/venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    config = etc / "edgemon/edgemon.toml"
    config.parent.mkdir()
    config.write_text((DEPLOY / "edgemon.toml").read_text().replace('device_id = "edgemon"', 'device_id = "site-07"'))
    kept = config.read_text()
    src = source_tree(tmp_path, "0.2.0")
    (src / "build/lib/edgemon").mkdir(parents=True)
    (src / "build/lib/edgemon/gone_in_0_2_0.py").write_text("OLD = True\n")

    out = install(root, "--source", str(src), "--mode", "listen", "--device-id", "site-08")
    assert "has no pip" in out and "installed edgemon 0.2.0" in out and version_in(root) == "0.2.0"
    uid = int(re.search(r"^edgemon:x:(\d+):", (etc / "passwd").read_text(), re.M)[1])
    assert uid != 999
    assert {p.name: p.stat().st_uid for p in (state, state / "clips", state / "edgemon.db", state / "clips/a.flac")} \
        == dict.fromkeys(("edgemon", "clips", "edgemon.db", "a.flac"), uid)
    assert (state / "root-made.csv").stat().st_uid == 0
    site = next(venv.glob("lib/python*/site-packages/edgemon"))
    assert not (site / "gone_in_0_2_0.py").exists()                       # not packed from the stale build/
    assert not list(src.glob("*.egg-info"))                                # the checkout is left as it was
    assert config.read_text() == kept                                      # never rewritten, and said so:
    assert 'with mode = "watch": --mode listen is not written into it' in out
    assert 'with device_id = "site-07": --device-id site-08 is not written into it' in out


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd --prefix and chown need root (CI runs as root)")
def test_an_upgrade_whose_command_line_needs_a_new_dependency_is_not_refused_as_bad_settings(tmp_path):
    """The settings are checked with the version about to be installed, imported from its source
    beside the installed dependencies; where it cannot import, it is checked after the install.
    Only edgemon.config was tried: a version whose command line imports a dependency not yet
    installed passed that, failed `python -m edgemon config` with ModuleNotFoundError, and the
    upgrade was refused for good as "not valid for the version this would install"."""
    root = seed_root(tmp_path / "root")
    config = root / "etc/edgemon/edgemon.toml"
    config.parent.mkdir()
    config.write_text((DEPLOY / "edgemon.toml").read_text())
    # An installed edgemon 0.1.0 whose interpreter is this one, and which never installs anything:
    # no pip and no venv (the run stops at creating the environment, past the check).
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/bash\n"
                    "for a in \"$@\"; do case \"$a\" in pip|venv) echo \"no $a here\" >&2; exit 1;; "
                    "*importlib.metadata*) echo 0.1.0; exit 0;; esac; done\n"
                    f"exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    venv = root / "opt/edgemon/venv/bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(fake)
    src = source_tree(tmp_path, "0.2.0")
    cli = src / "edgemon/cli.py"
    cli.write_text(cli.read_text().replace("\nimport typer\n", "\nimport typer\nimport edgemon_new_dependency\n", 1))
    result = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--no-start", "--source", str(src),
                             "--python", str(fake)], capture_output=True, text=True, timeout=120)
    assert "not valid for the version this would install" not in result.stderr, result.stderr
    assert "could not create the virtual environment" in result.stderr, result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="useradd --prefix and chown need root (CI runs as root)")
def test_an_offline_upgrade_checks_the_settings_with_the_wheel_it_installs_not_the_checkout(tmp_path):
    """With --wheels and no --source, pip installs the wheelhouse's edgemon; the check before the
    install read the checkout install.sh lies in instead (its branch for the wheelhouse came after
    the checkout's, so never ran from a checkout): a checkout of another version refused settings
    the wheel takes, or passed settings it refuses."""
    root = seed_root(tmp_path / "root")
    config = root / "etc/edgemon/edgemon.toml"
    config.parent.mkdir()
    config.write_text("latitude = 1.55\n" + (DEPLOY / "edgemon.toml").read_text())
    fake = tmp_path / "python3"   # an installed 0.1.0 that never installs anything (no pip, no venv)
    fake.write_text("#!/bin/bash\n"
                    "for a in \"$@\"; do case \"$a\" in pip|venv) echo \"no $a here\" >&2; exit 1;; "
                    "*importlib.metadata*) echo 0.1.0; exit 0;; esac; done\n"
                    f"exec {sys.executable} \"$@\"\n")
    fake.chmod(0o755)
    (root / "opt/edgemon/venv/bin").mkdir(parents=True)
    (root / "opt/edgemon/venv/bin/python").symlink_to(fake)
    # A checkout whose edgemon no longer knows `latitude`, beside a wheelhouse whose edgemon does.
    checkout = source_tree(tmp_path, "0.1.9")
    shutil.copytree(DEPLOY, checkout / "deploy")
    registry = checkout / "edgemon/settings_registry.py"
    registry.write_text(re.sub(r'    Setting\("latitude",.*?\),\n', "", registry.read_text(), count=1, flags=re.S))
    wheels = wheel(tmp_path, "0.2.0").parent
    result = subprocess.run(["bash", str(checkout / "deploy/install.sh"), "--root", str(root), "--no-apt", "--no-start",
                             "--wheels", str(wheels), "--python", str(fake)], capture_output=True, text=True, timeout=300)
    assert "not valid for the version this would install" not in result.stderr, result.stderr
    assert "could not create the virtual environment" in result.stderr, result.stdout + result.stderr


def test_install_refuses_what_it_cannot_do(tmp_path):
    bad = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path), "--mode", "record"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--mode must be watch or listen" in bad.stderr
    bare = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path / "bare"), "--no-apt", "--no-start"],
                          capture_output=True, text=True, timeout=120)   # groupadd's "cannot lock" before
    assert bare.returncode == 1 and bare.stderr.strip().splitlines() == [
        f"install.sh: error: --root {tmp_path / 'bare'} has no etc/passwd: give a tree that holds an /etc with its "
        f"passwd and group (e.g. copied from a Raspberry Pi OS image)"], bare.stderr
    # Settings the service's user cannot read (copied in as root's 0600): the unit failed at every
    # start, every 15 s, after an install that said nothing (a review). Refused before the program is installed.
    root = seed_root(tmp_path / "root")
    config = root / "etc/edgemon/edgemon.toml"
    config.parent.mkdir()
    config.write_text((DEPLOY / "edgemon.toml").read_text())
    config.chmod(0o600)
    private = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--no-start"],
                             capture_output=True, text=True, timeout=120)
    assert private.returncode == 1 and private.stderr.strip().splitlines() == [
        "install.sh: error: /etc/edgemon/edgemon.toml cannot be read by user edgemon, which the service runs as "
        f"(mode 600, owner {config.stat().st_uid}:{config.stat().st_gid}): chmod 0644 /etc/edgemon/edgemon.toml, or chgrp edgemon and chmod 0640 it, and run "
        "again"], private.stderr
    assert not (root / "opt/edgemon/venv").exists()
    # Readable through a group the user belongs to (root:audio 0640, the diff review): not refused
    os.chown(config, 0, 29)
    config.chmod(0o640)
    python = tmp_path / "python-without-venv"   # gets past the check, then stops at once, before any install
    python.write_text('#!/bin/sh\ncase "$1" in -m) echo "no venv here" >&2; exit 3;; *) exec python3 "$@";; esac\n')
    python.chmod(0o755)
    through_audio = subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-apt", "--no-start", "--python",
                                    str(python)], capture_output=True, text=True, timeout=120)
    assert through_audio.returncode == 1 and "could not create the virtual environment" in through_audio.stderr
    assert "cannot be read by user" not in through_audio.stderr, through_audio.stderr
    if os.geteuid() != 0:
        no_root = subprocess.run(["bash", str(INSTALL), "--no-apt"], capture_output=True, text=True)
        assert no_root.returncode == 1 and "run as root" in no_root.stderr


def device_id(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), *args, "--print-device-id"],
                          capture_output=True, text=True)


def test_each_unit_gets_its_own_device_id_unless_told(tmp_path):
    """Every Raspberry Pi image is called `raspberrypi`: the machine id tells the units apart, so
    exports merged from several recorders can be told apart; --device-id names a unit explicitly."""
    ids = []
    for n, machine_id in enumerate(("3f9a2c0123456789abcdef0123456789", "77e1d0aa23456789abcdef0123456789")):
        root = seed_root_files(tmp_path / f"pi{n}", hostname="raspberrypi\n", machine_id=machine_id + "\n")
        shown = device_id(root)
        assert shown.returncode == 0, shown.stderr
        ids.append(shown.stdout.strip())
    assert ids == ["raspberrypi-3f9a2c", "raspberrypi-77e1d0"]
    odd = seed_root_files(tmp_path / "odd", hostname="Field Unit #7\n", machine_id=None)
    assert device_id(odd).stdout.strip() == "Field-Unit--7"            # no machine id: the hostname alone
    assert device_id(odd, "--device-id", "danum-07").stdout.strip() == "danum-07"
    bad = device_id(odd, "--device-id", 'x"y')
    assert bad.returncode == 1 and "--device-id must be" in bad.stderr



def test_the_wheel_carries_every_file_the_package_reads(tmp_path):
    """An installed recorder has only the wheel: the embedded bundle (members, reference windows)
    and the review page's templates and static files must be in it (the editable install of the
    tests hides a missing package-data entry; the review page once shipped without them)."""
    import zipfile

    names = set(zipfile.ZipFile(wheel(tmp_path, "0.1.0")).namelist())
    shipped = {p.relative_to(REPO).as_posix() for d in ("edgemon/models", "edgemon/review")
               for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert shipped - names == set()
