"""One window vote: fit, the search's ensemble, cv, cv-ensemble and score all vote as the recorder
does, through the bundle's own Analyzer and the checks of its Ensemble."""

import json

import numpy as np
import pytest
import torch

from edgemon.analysis.bundle import load_bundle, sha256_of
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.frontend import FrontendConfig
from edgemon.errors import BundleError
from tests.conftest import TINY_LABELS, write_manifest
from training.data import load_split
from training.field import windows_of
from training.field_votes import field_votes
from training.model import ModelConfig, PrimateBiLSTM
from training.onnx_export import export_onnx
from training.recorder_votes import clip_windows, windowed_metrics
from training.runs import score_bundle

WINDOW = {"window_s": 0.5, "hop_s": 0.25}


def _bundle(root):
    torch.manual_seed(0)
    model = PrimateBiLSTM(ModelConfig(hidden=8, layers=1, n_classes=3)).eval()
    member = export_onnx(model, root / "m.onnx", TINY_LABELS, FrontendConfig())
    return write_bundle(root / "bundle", [member], list(TINY_LABELS), frontend=FrontendConfig(), **WINDOW).path


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("votes"))


def test_fits_windows_are_the_windows_score_and_cv_vote_on(tiny_bundle, tiny_dataset):
    bundle = load_bundle(tiny_bundle)
    split = load_split(tiny_dataset, "test", TINY_LABELS)
    fit_side = clip_windows(bundle, split)
    scored = windows_of(field_votes([bundle], split, [(None, np.arange(len(split)))]))
    assert len(fit_side["winner"]) > len(split)   # several windows per clip
    for key in ("clip", "winner", "confidence"):
        np.testing.assert_array_equal(fit_side[key], scored[key])


def test_the_uar_fit_writes_is_the_one_score_reports_untuned(tiny_bundle, tiny_dataset):
    split = load_split(tiny_dataset, "test", TINY_LABELS)
    assert windowed_metrics(load_bundle(tiny_bundle), split)["uar"] == \
        score_bundle(tiny_bundle, tiny_dataset, "test")["untuned"]["uar"]


def test_a_bundle_that_fails_its_checks_is_refused_naming_the_member(tiny_dataset, tmp_path):
    broken = _bundle(tmp_path)   # written sound (write_bundle refuses such a member), then its member swapped
    torch.manual_seed(0)
    model = PrimateBiLSTM(ModelConfig(hidden=8, layers=1, n_classes=3)).eval()
    export_onnx(model, broken / "member00.onnx", ("background", "x", "y"), FrontendConfig())
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["members"][0]["sha256"] = sha256_of(broken / "member00.onnx")
    write_manifest(broken, manifest)
    with pytest.raises(BundleError, match="member00.onnx: model labels"):
        windowed_metrics(load_bundle(broken), load_split(tiny_dataset, "test", TINY_LABELS))


def test_scoring_a_split_the_members_were_trained_on_says_so(tiny_dataset, tmp_path, caplog):
    """A newcomer read `score --split devel` of members trained on train + devel as held out."""
    path = _bundle(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "trained_on": ["train+devel+pool"]}))
    with caplog.at_level("WARNING", logger="training.runs"):
        devel = score_bundle(path, tiny_dataset, "devel")
        test = score_bundle(path, tiny_dataset, "test")
    assert devel["note"] == "members trained on devel: not a held-out score" and "note" not in test
    assert [r.getMessage() for r in caplog.records] == [
        f"{manifest['bundle_id']}: 1 of the bundle's 1 member(s) were trained on devel: these scores are not held out"]


def test_the_field_measure_stores_on_each_clip_what_the_recorder_stores(tiny_bundle, tiny_dataset, tmp_path):
    """At a point that needs several windows, the recorder folds a clip's end-aligned last window
    into the one it nearly repeats; the field measure counted it as one more window, so its clip
    UAR said calls were found that the recorder never stored (a review: 0.79 against 0.61 on test)."""
    import dataclasses
    import shutil

    import soundfile

    from edgemon.analysis.analyzer import Analyzer
    from edgemon.analysis.decisions import OperatingPoint

    bundle = load_bundle(tiny_bundle)
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for clip in load_split(data, "test", TINY_LABELS).clips:
        # 512 * (17 + 8k) samples: 18 + 8k frames, so the last window starts 2 frames after the
        # last regular one (16-frame windows every 8)
        x, rate = soundfile.read(clip.path, dtype="float32")
        soundfile.write(clip.path, x[:512 * (17 + 8 * ((len(x) // 512 - 17) // 8))], rate)
    split = load_split(data, "test", TINY_LABELS)
    votes = field_votes([bundle], split, [(None, np.arange(len(split)))])
    calls = [label for label in TINY_LABELS if label != "background"]
    point = OperatingPoint({label: 0.0 for label in TINY_LABELS}, min_windows={label: 3 for label in calls})
    recorder = Analyzer(bundle)
    recorder.merger = dataclasses.replace(recorder.merger, point=point)
    folded = 0
    for clip, stream in zip(split.clips, votes.clips):
        stored = [(e.label, e.start_s, e.end_s) for e in recorder.analyse_file(clip.path).events]
        measured = [(e.label, e.start_s, e.end_s) for e in stream.events(votes.merger(point))]
        assert measured == stored, clip.path.name
        folded += len(stream.start) > 1 and 0 < stream.start[-1] - stream.start[-2] < votes.hop_frames / 2
    assert folded, "no clip ends on a window that nearly repeats the one before: the test shows nothing"
