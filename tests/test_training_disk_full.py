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


@needs_unshare
def test_cv_ensemble_on_a_full_disk_keeps_its_earlier_votes_and_result(tiny_dataset, tmp_path):
    """A full disk cut <out>.votes.npz short where a whole one had been ("[Errno 28]" naming no file);
    --reuse-votes then ended in a BadZipFile traceback, and a result cut short made the same command
    refuse its own --out."""
    from tests.test_cv_ensemble import LOGMEL, WINDOW, _load, _recipe
    from training.cv import cross_validate

    cross_validate([_recipe("mel", LOGMEL)], _load(tiny_dataset)(LOGMEL), k=2, out=tmp_path / "cv", **WINDOW)
    disk = tmp_path / "disk"
    disk.mkdir()
    ensemble = shlex.join([sys.executable, "-m", "training", "cv-ensemble", str(tmp_path / "cv" / "mel"),
                           "--data", str(tiny_dataset), "--out", str(disk / "ens.json")])
    d = shlex.quote(str(disk))
    fill = f"dd if=/dev/zero of={d}/gap bs=4k count=2 2>/dev/null; dd if=/dev/zero of={d}/filler bs=4k 2>/dev/null; rm {d}/gap"
    check = (f"{shlex.quote(sys.executable)} -c 'import sys; from training.field_votes import FieldVotes; "
             f"FieldVotes.load(sys.argv[1])' {d}/ens.votes.npz")
    script = "\n".join([
        f"mount -t tmpfs -o size=2m tmpfs {d} || exit 9",
        fill,                                                       # 8 kB free: the votes do not fit
        f"{ensemble} >/dev/null; echo rc=$? >&2",
        f"test ! -e {d}/ens.votes.npz || {check} || echo votes-cut-short >&2",
        f"rm {d}/filler",
        f"{ensemble} --reuse-votes >/dev/null 2>{d}/reuse.err; grep -q Traceback {d}/reuse.err && echo reuse-traceback >&2",
        f"{ensemble} >/dev/null 2>&1 || exit 7",                  # room again: measured and written
        f"cp {d}/ens.json {d}/../result.json",
        fill,                                                       # measured again into a full disk
        f"{ensemble} >/dev/null 2>&1",
        f"{check} || echo votes-lost >&2",
        f"cmp -s {d}/ens.json {d}/../result.json || echo result-lost >&2",
        f"rm {d}/filler",
        f"{ensemble} --reuse-votes >/dev/null 2>&1; echo reused=$? >&2"])
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    err = done.stderr
    assert done.returncode == 0 and "rc=1" in err and "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and str(disk / "ens.votes.npz") in said[0] and "No space left" in said[0], said
    assert not {"votes-cut-short", "reuse-traceback", "votes-lost", "result-lost"} & set(err.split()), err[-3000:]
    assert "reused=0" in err, err[-3000:]


def test_a_write_interrupted_leaves_nothing_beside_the_file(tmp_path, monkeypatch):
    """Found in a review: a second Ctrl-C while a run is written (``runs._signals_held``) stopped
    ``write_whole`` between its write and its rename, and its part-written ``.NAME.tmp`` stayed."""
    import os

    from training import out_dirs

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"whole")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(out_dirs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        out_dirs.write_whole(target, b"new")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"] and target.read_bytes() == b"whole"
