"""Bundles are verified before use; the vote is deterministic."""

import json

import numpy as np
import pytest
import torch

from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.bundle_write import check_replaceable, write_bundle
from edgemon.analysis.ensemble import Ensemble, majority_vote
from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import BundleError
from tests.conftest import write_manifest
from training.model import ModelConfig, PrimateBiLSTM
from training.errors import DataError
from training.onnx_export import export_onnx, quantize_int8, read_columns

LABELS = ["background", "a", "b"]


@pytest.fixture(scope="module")
def member_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    files = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = PrimateBiLSTM(ModelConfig(hidden=16, layers=1, n_classes=3)).eval()
        files.append(export_onnx(model, root / f"m{seed}.onnx", tuple(LABELS), FrontendConfig()))
    return files


@pytest.fixture
def bundle_dir(member_files, tmp_path):
    write_bundle(tmp_path / "b", member_files, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0,
                 devel_uars=[0.5, 0.6])
    return tmp_path / "b"


def test_written_bundle_loads_and_runs(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.labels == tuple(LABELS) and len(bundle.members) == 2
    assert bundle.members[1].devel_uar == 0.6
    votes = Ensemble(bundle).vote(np.random.default_rng(0).standard_normal((4, 125, 128)).astype(np.float32))
    assert votes.winner.shape == (4,) and votes.member_labels.shape == (2, 4)
    assert np.all((votes.confidence > 0) & (votes.confidence <= 1))


def test_tampered_member_is_refused_naming_the_file(bundle_dir):
    with open(bundle_dir / "member01.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="member01.onnx.*sha256"):
        load_bundle(bundle_dir)


def test_missing_member_and_missing_manifest(bundle_dir, tmp_path):
    (bundle_dir / "member00.onnx").unlink()
    with pytest.raises(BundleError, match="member00.onnx.*missing"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="nowhere: no such bundle directory"):
        load_bundle(tmp_path / "nowhere")
    (tmp_path / "detections.db").write_bytes(b"")                  # a database given as --models
    with pytest.raises(BundleError, match="detections.db: a file, not a bundle directory"):
        load_bundle(tmp_path / "detections.db")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="empty/manifest.json: no bundle manifest here"):
        load_bundle(tmp_path / "empty")


@pytest.mark.parametrize("change, message", [
    ({"frontend": {**FrontendConfig().to_dict(), "kind": "cqt"}}, "unknown frontend kind"),
    ({"format_version": 99}, "bundle format 99 is newer than this edgemon reads"),
    ({"voting": "borda"}, "unknown voting rule"),
    ({"hop_s": 0}, "hop_s"),
    ({"thresholds": {"zebra": 0.5}}, "unknown labels"),
])
def test_bad_manifests_are_refused(bundle_dir, change, message):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    write_manifest(bundle_dir, {**manifest, **change})
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_member_whose_labels_differ_from_the_manifest_is_refused(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["labels"] = ["background", "b", "a"]
    write_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match="member00.onnx: model labels"):
        Ensemble(load_bundle(bundle_dir))


def probs(*rows):
    return np.array(rows, dtype=np.float64)


def test_majority_wins_over_confidence():
    # Members x windows x classes: two members say class 1 weakly, one says class 2 strongly.
    p = np.array([[[0.3, 0.4, 0.3]], [[0.3, 0.4, 0.3]], [[0.0, 0.01, 0.99]]])
    votes = majority_vote(p)
    assert votes.winner.tolist() == [1]
    assert votes.confidence[0] == pytest.approx(0.27)


def test_tie_goes_to_the_higher_mean_probability():
    p = np.array([[[0.1, 0.8, 0.1]], [[0.1, 0.3, 0.6]]])  # one vote each for 1 and 2
    assert majority_vote(p).winner.tolist() == [1]
    p = np.array([[[0.1, 0.5, 0.4]], [[0.1, 0.05, 0.85]]])  # mean: 1 -> 0.275, 2 -> 0.625
    assert majority_vote(p).winner.tolist() == [2]


def test_exact_tie_falls_to_the_lowest_index_and_untied_classes_never_win():
    p = np.array([[[0.0, 0.6, 0.4]], [[0.0, 0.4, 0.6]]])
    assert majority_vote(p).winner.tolist() == [1]
    # Class 0 has the highest mean but no member voted for it.
    p = np.array([[[0.45, 0.55, 0.0]], [[0.45, 0.0, 0.55]], [[0.45, 0.55, 0.0]]])
    assert majority_vote(p).winner.tolist() == [1]


def test_a_bundle_never_replaces_what_is_not_a_bundle(member_files, bundle_dir, tmp_path):
    """Found by a newcomer trial: `bundle RUN --out RUN` deleted the training run, `--out .` the
    working directory's files, and `--out FILE` the file; a bundle replaces only an earlier bundle."""
    def write(out, members=member_files):
        return write_bundle(out, members, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(BundleError, match="run: exists and is not an edgemon bundle"):
        write(run)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes")
    with pytest.raises(BundleError, match="notes.txt: exists and is not a directory"):
        write(notes)
    assert notes.read_text() == "field notes"
    inside = bundle_dir / "member00.onnx"
    with pytest.raises(BundleError, match="holds the files this bundle is made from"):
        write(bundle_dir, [inside, inside])
    assert write(bundle_dir).bundle_id   # an earlier bundle is replaced, as before
    (tmp_path / "empty").mkdir()
    assert write(tmp_path / "empty").labels == tuple(LABELS)
    # A site's adapted bundle is not (a newcomer trial's typo replaced one with a toy); adapt may.
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    (bundle_dir / "manifest.json").write_text(json.dumps({**manifest, "adapted": {"from": "parent"}}))
    with pytest.raises(BundleError, match="holds a bundle adapted to a site"):
        write(bundle_dir)
    assert json.loads((bundle_dir / "manifest.json").read_text())["adapted"] == {"from": "parent"}
    check_replaceable(bundle_dir, adapted_ok=True)


@pytest.mark.parametrize("damage", ["truncated", "empty", "other labels"])
def test_a_damaged_member_is_refused_naming_it_and_the_bundle_there_is_kept(member_files, bundle_dir, tmp_path,
                                                                           damage):
    """A newcomer trial: `bundle-cv` with a fold model cut short replaced a good bundle with one
    whose member could not be loaded, then stopped with a protobuf traceback. A review: a member
    that loads but does not fit the bundle (another cv run's labels) did the same."""
    bad = tmp_path / "fold1.onnx"
    if damage == "other labels":
        model = PrimateBiLSTM(ModelConfig(hidden=16, layers=1, n_classes=4)).eval()
        export_onnx(model, bad, (*LABELS, "c"), FrontendConfig())
    else:
        bad.write_bytes(member_files[1].read_bytes()[:500] if damage == "truncated" else b"")
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    said = r"onnxruntime cannot load this model" if damage != "other labels" else r"the manifest has 3 labels"
    with pytest.raises(BundleError, match=rf"fold1\.onnx: .*{said}"):
        write_bundle(bundle_dir, [member_files[0], bad], LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")]   # no staging left
    if damage == "other labels":
        return
    with pytest.raises(DataError, match=r"fold1\.onnx: not a readable ONNX model"):
        read_columns(bad, tmp_path / "out.onnx", FrontendConfig())
    with pytest.raises(DataError, match=r"fold1\.onnx: not a readable ONNX model"):
        quantize_int8(bad, tmp_path / "out.onnx")


def test_a_bundle_directory_is_readable_by_others_as_the_umask_allows(bundle_dir):
    """A second newcomer trial: bundles were written drwx------ (mkdtemp's mode), so the edgemon
    service user could not read one built by another user."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(bundle_dir.stat().st_mode) == 0o777 & ~mask


def test_a_failed_swap_leaves_the_earlier_bundle_in_place(tmp_path):
    """A review: adapt moved the earlier bundle into its staging directory before renaming the new
    one into place, so a failure between the two renames removed it with the staging directory."""
    from edgemon.analysis.bundle_write import swap_into_place

    out = tmp_path / "site-bundle"
    out.mkdir()
    (out / "manifest.json").write_text("earlier")
    with pytest.raises(FileNotFoundError):
        swap_into_place(tmp_path / "never-assembled", out)
    assert (out / "manifest.json").read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-bundle"]
    new = tmp_path / "assembled"
    new.mkdir()
    (new / "manifest.json").write_text("new")
    swap_into_place(new, out)
    assert (out / "manifest.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["site-bundle"]


KILLED_WRITE = """
import os, sys
from pathlib import Path
from edgemon.analysis import bundle_write
from edgemon.analysis.frontend import FrontendConfig

out, where, threshold, members = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), [Path(p) for p in sys.argv[4:]]
real_replace, real_exchange = os.replace, getattr(bundle_write, "_exchange", None)   # None before it
if where == "aside":        # killed once the old bundle is moved aside (a power cut, the OOM killer)
    def replace(a, b):
        real_replace(a, b)
        if Path(b).name.endswith(".old"):
            os._exit(9)
    bundle_write.os.replace = replace
elif where == "exchanged":  # killed right after the swap, before anything was cleaned
    bundle_write._exchange = lambda a, b: real_exchange(a, b) and os._exit(9)
elif where == "no-exchange-aside":   # a file system without RENAME_EXCHANGE, killed between the renames
    bundle_write._exchange = lambda a, b: False
    def replace(a, b):
        real_replace(a, b)
        if Path(b).name.endswith(".old"):
            os._exit(9)
    bundle_write.os.replace = replace
bundle_write.write_bundle(out, members, ["background", "a", "b"], frontend=FrontendConfig(), window_s=4.0,
                          hop_s=2.0, thresholds={"background": 0.0, "a": threshold, "b": threshold})
"""


def test_a_write_killed_at_any_step_leaves_a_whole_bundle(member_files, tmp_path):
    """A review: killed between moving the old bundle aside and renaming the new one in, a write
    left no bundle at --out (the recorder's service then cannot start), the old one hidden."""
    import subprocess
    import sys

    out = tmp_path / "site"

    def write(where, threshold):
        return subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out), where, str(threshold),
                               *map(str, member_files)], capture_output=True, text=True).returncode

    assert write("whole", 0.5) == 0
    killed = write("aside", 0.6) == 9       # never, where the kernel exchanges the two in one step
    assert load_bundle(out).thresholds["a"] == (0.5 if killed else 0.6)
    assert write("exchanged", 0.7) == 9
    assert load_bundle(out).thresholds["a"] == 0.7
    assert write("no-exchange-aside", 0.8) == 9
    with pytest.raises(BundleError, match=r"site: no such bundle directory \(a bundle write cut short left "
                                          r"the previous one at .*\.site\.old: rename it back\)"):
        load_bundle(out)
    assert write("whole", 0.9) == 0          # the next write mends it
    assert load_bundle(out).thresholds["a"] == 0.9


def test_a_class_whose_threshold_is_one_is_said_never_to_be_detected(member_files, tmp_path, caplog):
    """A newcomer trial: bundle-cv printed thresholds of 1.0 for three classes, and watch then
    stored none of them, with no word anywhere but `edgemon info`."""
    import logging

    caplog.set_level(logging.WARNING, logger="edgemon")
    write_bundle(tmp_path / "b", member_files, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0,
                 thresholds={"background": 1.0, "a": 1.0, "b": 0.4})
    said = [r.getMessage() for r in caplog.records if "will never be detected" in r.getMessage()]
    assert len(said) == 1 and ": a will never be detected (threshold 1.0" in said[0], said


STAGED_THEN_KILLED = """
import sys, time
from pathlib import Path
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.frontend import FrontendConfig

def finish(staging):
    print(staging, flush=True)
    time.sleep(600)   # killed here, its bundle assembled

write_bundle(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]], ["background", "a", "b"], frontend=FrontendConfig(),
             window_s=4.0, hop_s=2.0, finish=finish)
"""


def test_the_staging_of_a_killed_write_is_removed_by_the_next(member_files, tmp_path):
    """A review: a write killed outright (SIGKILL, a power cut) left its staging directory beside
    --out for good (cleaned only in ``finally:``). The next write removes it, its writer gone; a
    live writer's stays."""
    import os
    import subprocess
    import sys

    out = tmp_path / "site"
    write_bundle(out, member_files, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)
    child = subprocess.Popen([sys.executable, "-c", STAGED_THEN_KILLED, str(out), *map(str, member_files)],
                             stdout=subprocess.PIPE, text=True)
    staging = child.stdout.readline().strip()
    child.kill()
    child.wait()
    child.stdout.close()
    assert staging and (tmp_path / staging).parent == tmp_path and (tmp_path / staging).is_dir(), staging
    live = tmp_path / f".site.{os.getpid()}.abcd_123"       # a writer still at work
    live.mkdir()
    write_bundle(out, member_files, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "site"])
    assert list(load_bundle(out).labels) == LABELS


FULL_DISK_WRITE = """
import resource, signal, sys
from pathlib import Path
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import BundleError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    write_bundle(Path(sys.argv[1]), [Path(p) for p in sys.argv[3:]], ["background", "a", "b"],
                 frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)
except BundleError as e:
    print(e)
"""


def test_a_bundle_the_disk_has_no_room_for_is_one_line_naming_out(member_files, tmp_path):
    """A review: a full disk while the members were copied said "[Errno 28] No space left on device:
    '…/member01.onnx' -> '…/.site.adapt.euirz97x/.bundle.egx2qijk/member01.onnx'"; now one line naming
    --out, and the bundle there is left as it was."""
    import subprocess
    import sys

    out = tmp_path / "site"
    write_bundle(out, member_files, LABELS, frontend=FrontendConfig(), window_s=4.0, hop_s=2.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = member_files[0].stat().st_size // 2
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WRITE, str(out), str(limit), *map(str, member_files)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"--out {out}: cannot write there (File too large)\n", done
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
