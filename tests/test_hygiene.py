"""The suite's own guards (tests/conftest.py ``no_leaked_threads``, pyproject's ``filterwarnings``) can
fail a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LEAKY = '''
import threading
import warnings
from pathlib import Path

from tests.conftest import no_leaked_threads  # noqa: F401  (the autouse guard under test)

stop = threading.Event()


def test_leaks_a_thread():
    threading.Thread(target=stop.wait, name="leaky-worker").start()


def test_joins_its_thread():
    thread = threading.Thread(target=lambda: None, name="tidy-worker")
    thread.start()
    thread.join()


def test_warns():
    warnings.warn("something is off", UserWarning)


def test_leaves_a_file_open():
    f = Path(__file__).open()
    del f


def test_an_allowed_optuna_warning():
    warnings.warn("RetryHeartbeatStaleTrialCallback is experimental (supported from v2.8.0).", Warning)


def teardown_module():
    stop.set()
'''


def test_the_guards_fail_a_leaked_thread_a_warning_and_an_open_file_but_not_a_joined_thread(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
                             str(tmp_path / "test_leaky.py")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = result.stdout
    assert result.returncode == 1, out
    assert "the test left non-daemon thread(s) running: leaky-worker" in out
    assert "UserWarning: something is off" in out
    assert "ResourceWarning: unclosed file" in out
    assert out.rstrip().splitlines()[-1].startswith("2 failed, 3 passed, 1 error"), out
    assert "ERROR " in out and "test_leaky.py::test_leaks_a_thread" in out, out
    assert "FAILED " in out and "test_leaky.py::test_warns" in out, out
    assert "FAILED " in out and "test_leaky.py::test_leaves_a_file_open" in out, out
