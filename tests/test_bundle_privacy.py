"""No telemetry: running a bundle leaves nothing of onnxruntime's under a fresh HOME (issue 14).

onnxruntime 1.32 on Linux writes a device id and a telemetry queue under
~/.cache/Microsoft/DeveloperTools/.onnxruntime/ as soon as it is imported, unless
ORT_DISABLE_TELEMETRY is set first; importing edgemon sets it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_in_fresh_home(home: Path, code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}   # this process has it from edgemon
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_loading_and_running_the_bundle_writes_no_telemetry(tmp_path):
    result = run_in_fresh_home(tmp_path, (
        "import numpy as np\n"
        "from edgemon.analysis.bundle import default_bundle_path, load_bundle\n"
        "from edgemon.analysis.ensemble import Ensemble\n"
        "e = Ensemble(load_bundle(default_bundle_path()))\n"
        "assert e.self_check.passed\n"
        "print(e.member_probs(np.zeros((2, 126, 256), np.float32)).shape)\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 2, 5)"
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == []


def test_the_check_would_see_telemetry_files(tmp_path):
    """The same probe without edgemon: onnxruntime alone writes them here (1.32), so the test
    above can fail; a build that never writes them makes it vacuous, and this says so."""
    result = run_in_fresh_home(tmp_path, "import onnxruntime\n")
    assert result.returncode == 0, result.stderr
    if not any(p.name == "deviceid" for p in tmp_path.rglob("*")):
        pytest.skip("this onnxruntime writes no telemetry files even when enabled")
