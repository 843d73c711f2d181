"""scripts/choose_torch.sh: the CPU build of torch by default, decided within seconds whatever the
network does (pip asked with its configuration replaced by a local wheel directory; the CPU wheel
index played by local servers)."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fake_torch_wheel(folder: Path) -> Path:
    """A minimal valid wheel named like the local CPU build (pip reads only its metadata here)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "torch-2.13.0+cpu-py3-none-any.whl"
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> Path:
    """An empty virtual environment (no torch installed) for pip to install into."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    return venv


def choose(env_dir: Path, wheels: Path, cpu_index: str, *args: str, **env) -> tuple[str, str, float]:
    """Run the chooser, pip installing into ``env_dir`` and configured only by ``wheels``; return
    stdout, stderr and seconds."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
                 PIP=f"{sys.executable} -m pip --python {env_dir / 'bin' / 'python'}",
                 PYTHON=sys.executable, EDGEMON_TORCH_CPU_INDEX=cpu_index, **env)
    start = time.monotonic()
    run = subprocess.run(["bash", str(ROOT / "scripts" / "choose_torch.sh"), *args], env=clean,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip(), run.stderr, time.monotonic() - start


@pytest.fixture
def cpu_index(tmp_path):
    """A wheel index that answers: a local HTTP server with a torch/ page."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    (tmp_path / "index" / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def silent_index():
    """A wheel index that never answers: it accepts connections and says nothing."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_a_cpu_wheel_pip_already_gets_is_used_without_asking_the_network(tmp_path, bare_env, silent_index):
    fake_torch_wheel(tmp_path / "wheels")
    out, err, _ = choose(bare_env, tmp_path / "wheels", silent_index)
    assert out == "torch==2.13.0+cpu" and not err   # asked, the silent index would have cost a warning


def test_else_the_cpu_index_when_it_answers(tmp_path, bare_env, cpu_index):
    (tmp_path / "empty").mkdir()
    out, _, _ = choose(bare_env, tmp_path / "empty", cpu_index)
    assert out == f"torch==2.13.0+cpu {cpu_index}"


def test_a_silent_cpu_index_costs_seconds_and_a_warning(tmp_path, bare_env, silent_index):
    (tmp_path / "empty").mkdir()
    out, err, seconds = choose(bare_env, tmp_path / "empty", silent_index)
    # pip's own check takes 1-3 s (more on a loaded machine), the probe at most 5 s: never a stall.
    assert out == "torch==2.13.0" and "did not answer within 5 s" in err and seconds < 20


def test_gpu_and_a_chosen_index(tmp_path, bare_env, silent_index):
    fake_torch_wheel(tmp_path / "wheels")
    assert choose(bare_env, tmp_path / "wheels", silent_index, "--gpu")[0] == "torch==2.13.0"
    url = "https://download.pytorch.org/whl/cu128"
    assert choose(bare_env, tmp_path / "wheels", silent_index, EDGEMON_TORCH_INDEX=url)[0] == f"torch==2.13.0 {url}"


def stub(path: Path, body: str) -> None:
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def repo_with_logging_tools(tmp_path):
    """The set-up scripts in a copy of the repository where apt reports nothing installed and
    apt-get, sudo and the venv's pip only log what they are asked: the scripts' requests, seen
    without installing anything."""
    repo, bin_dir, log = tmp_path / "repo", tmp_path / "bin", tmp_path / "log"
    (repo / "scripts").mkdir(parents=True)
    for name in ("common.sh", "setup.sh", "setup-dev.sh", "choose_torch.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    (repo / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    stub(bin_dir / "dpkg-query", "exit 1")
    stub(bin_dir / "apt-get", f'echo "apt-get $*" >> {log}')
    stub(bin_dir / "sudo", '"$@"')
    stub(repo / ".venv" / "bin" / "python", "exit 0")
    stub(repo / ".venv" / "bin" / "pip", f'echo "pip $*" >> {log}')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("EDGEMON_TORCH", None)
    env.pop("EDGEMON_TORCH_INDEX", None)
    return repo, env, log


def test_the_edge_setup_asks_for_the_edge_only(repo_with_logging_tools):
    repo, env, log = repo_with_logging_tools
    subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, env=env, check=True, timeout=60)
    asked = log.read_text().splitlines()
    assert "apt-get install -y -qq libportaudio2 libsndfile1 python3-venv" in asked
    assert asked[-1] == "pip install -q -c constraints.txt -e ."   # no extras, no torch


def test_the_dev_setup_adds_the_services_and_the_cpu_torch(repo_with_logging_tools):
    repo, env, log = repo_with_logging_tools
    subprocess.run(["bash", "scripts/setup-dev.sh"], cwd=repo, env=env, check=True, timeout=60)
    installs = [line for line in log.read_text().splitlines() if line.startswith("apt-get install")]
    assert installs[0].split()[4:] == ["libportaudio2", "libsndfile1", "python3-venv", "postgresql",
                                       "pulseaudio", "pulseaudio-utils", "libasound2-plugins", "systemd",
                                       "chromium", "chromium-driver"]
    assert log.read_text().splitlines()[-1] == ("pip install -q -c constraints.txt torch==2.13.0+cpu "
                                                "-e .[train,dev]")
