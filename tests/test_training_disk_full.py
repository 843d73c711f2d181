"""Training commands on a disk that fills while they write: one line naming what could not be
written, and no checkpoint, ONNX model or result file cut short for a later command to read. The
full disk is a small tmpfs in a user+mount namespace (``unshare -Urm``), as in test_faults.py."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from tests.test_faults import unshare_works
from tests.test_training import TINY_FIT

REPO = Path(__file__).resolve().parent.parent
needs_unshare = pytest.mark.skipif(not unshare_works(),
                                   reason="needs `unshare -Urm` and tmpfs mounts (user namespaces disabled here)")


def on_a_small_disk(tmp_path: Path, size: str, command: list[str], keep: str) -> subprocess.CompletedProcess:
    """``command`` run in the repository with a tmpfs of ``size`` at ``tmp_path/disk``; what it
    left at ``disk/<keep>`` is copied to ``tmp_path/left`` (the tmpfs goes with the namespace)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} || exit 9\n"
              f"{shlex.join(command)}; rc=$?\n"
              f"cp -r {shlex.quote(str(disk / keep))} {shlex.quote(str(tmp_path / 'left'))} 2>/dev/null\n"
              "exit $rc")
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)


def said_one_line(done: subprocess.CompletedProcess, names: str) -> str:
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and names in last and "No space left on device" in last, last
    return last


@needs_unshare
@pytest.mark.parametrize("size", ["150k", "300k"])   # full at the checkpoint; at the ONNX model
def test_fit_on_a_full_disk_names_the_file_and_leaves_no_model_cut_short(tiny_dataset, tmp_path, size):
    """torch.save into a full disk was a traceback ("unexpected pos 74496 vs 74384"), the ONNX export
    "[Errno 28] No space left on device" naming nothing; both left the file cut short."""
    run = tmp_path / "disk" / "run"
    done = on_a_small_disk(tmp_path, size, [sys.executable, "-m", "training", "fit", "--data", str(tiny_dataset),
                                            "--out", str(run), *TINY_FIT, "--epochs", "2"], "run")
    said_one_line(done, str(run))
    left = tmp_path / "left"
    assert (left / "config.json").is_file()          # it got as far as training, then filled the disk
    assert not list(left.glob(".*.tmp")), list(left.iterdir())
    if (left / "checkpoint.pt").exists():
        torch.load(left / "checkpoint.pt", weights_only=False)
    if (left / "model.onnx").exists():
        onnx.checker.check_model(onnx.load(str(left / "model.onnx")))
        assert {p.key for p in onnx.load(str(left / "model.onnx")).metadata_props} >= {"labels", "frontend"}
