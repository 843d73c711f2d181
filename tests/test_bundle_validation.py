"""Hostile or broken bundles are refused at load, in one line naming the file (issue 14, #5),
and the manifest's version policy: unknown fields ignored, a newer major format refused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgemon.analysis.bundle import FORMAT_VERSION, load_bundle, sha256_of
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import FrontendConfig
from edgemon.cli import app
from edgemon.errors import BundleError
from tests.conftest import tone, write_manifest
from tests.watch_helpers import write_wav
from training.model import ModelConfig, PrimateBiLSTM
from training.onnx_export import export_onnx

LABELS = ["background", "a", "b"]
runner = CliRunner()


def export(path: Path, labels=LABELS, n_classes: int = 3, n_mels: int = 128) -> Path:
    torch.manual_seed(0)
    model = PrimateBiLSTM(ModelConfig(n_mels=n_mels, hidden=8, layers=1, n_classes=n_classes)).eval()
    return export_onnx(model, path, tuple(labels), FrontendConfig())


def rename(src: Path, dst: Path, old: str, new: str) -> Path:
    """The same model with graph input or output ``old`` called ``new``."""
    proto = onnx.load(str(src))
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name == old:
            value.name = new
    for node in proto.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    good = export(root / "good.onnx")
    return {"good": good,
            "input_renamed": rename(good, root / "input.onnx", "logmel", "features"),
            "output_renamed": rename(good, root / "output.onnx", "probs", "scores"),
            "narrow": export(root / "narrow.onnx", n_mels=64),                     # reads 64 of 128 features
            "4_outputs_2_labels": export(root / "more.onnx", labels=LABELS[:2], n_classes=3),
            "3_outputs_4_labels": export(root / "fewer.onnx", labels=LABELS + ["c"], n_classes=3)}


def bundle_of(tmp_path: Path, member: Path, labels=LABELS) -> Path:
    """A bundle whose one member is ``member``, for labels ``labels``: written with a sound model
    (``write_bundle`` refuses to write such a bundle), then altered as a hand or another tool would."""
    write_bundle(tmp_path / "b", [export(tmp_path / "sound.onnx")], LABELS, frontend=FrontendConfig(),
                 window_s=4.0, hop_s=2.0)
    (tmp_path / "b" / "member00.onnx").write_bytes(member.read_bytes())
    edit(tmp_path / "b", lambda m: {**m, "labels": list(labels), "thresholds": {label: 0.0 for label in labels},
                                    "members": [{**m["members"][0], "sha256": sha256_of(tmp_path / "b" / "member00.onnx")}]})
    return tmp_path / "b"


def edit(bundle_dir: Path, change) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest = change(manifest) if callable(change) else {**manifest, **change}
    write_manifest(bundle_dir, manifest)


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("model, labels, message", [
    ("input_renamed", LABELS, r"member00.onnx: model inputs \['features'\], expected one named 'logmel'"),
    ("output_renamed", LABELS, r"member00.onnx: model has no output 'probs'"),
    ("narrow", LABELS, r"member00.onnx: model reads 64 features per frame, the bundle's logmel frontend gives 128"),
    ("4_outputs_2_labels", LABELS[:2], r"member00.onnx: output 'probs' has shape .*3.*the manifest has 2 labels"),
    ("3_outputs_4_labels", LABELS + ["c"], r"member00.onnx: output 'probs' has shape .*3.*the manifest has 4 labels"),
])
def test_member_signature_is_checked_when_the_ensemble_opens(models, tmp_path, model, labels, message):
    bundle = load_bundle(bundle_of(tmp_path, models[model], labels))
    with pytest.raises(BundleError, match=message) as caught:
        Ensemble(bundle)
    one_line(str(caught.value))


def test_a_probe_run_catches_what_the_graph_does_not_declare(models, tmp_path):
    # The narrow model with its input width made symbolic: only a run shows it cannot read 128.
    proto = onnx.load(str(models["narrow"]))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "features"
    onnx.save(proto, str(tmp_path / "symbolic.onnx"))
    bundle = load_bundle(bundle_of(tmp_path, tmp_path / "symbolic.onnx"))
    with pytest.raises(BundleError, match=r"member00.onnx: a probe run failed: ") as caught:
        Ensemble(bundle)
    one_line(str(caught.value))


def test_a_member_whose_probs_are_not_probabilities_is_refused(models, tmp_path):
    proto = onnx.load(str(models["good"]))
    for node in proto.graph.node:
        node.output[:] = ["probs_raw" if n == "probs" else n for n in node.output]
    proto.graph.node.append(onnx.helper.make_node("Neg", ["probs_raw"], ["probs"]))
    onnx.save(proto, str(tmp_path / "negated.onnx"))
    with pytest.raises(BundleError, match=r"member00.onnx: output 'probs' is not probabilities on a probe run"):
        Ensemble(load_bundle(bundle_of(tmp_path, tmp_path / "negated.onnx")))


def test_watch_and_classify_refuse_a_bad_bundle_in_one_line(models, tmp_path):
    bundle_dir = bundle_of(tmp_path, models["input_renamed"])
    recordings = tmp_path / "rec"
    recordings.mkdir()
    wav = write_wav(recordings / "20240101_000000.WAV", tone(500, 6.0))
    result = runner.invoke(app, ["classify", str(wav), "--models", str(bundle_dir)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert one_line(result.output.strip()).startswith("error: ") and "'logmel'" in result.output
    db = tmp_path / "e.db"
    result = runner.invoke(app, ["watch", str(recordings), "--db", str(db), "--models", str(bundle_dir),
                                 "--until-idle", "--settle-s", "0"])
    assert result.exit_code == 1, result.output           # before: exit 0, every recording quarantined
    assert "member00.onnx: model inputs" in result.output


@pytest.mark.parametrize("change, message", [
    (lambda m: [], "manifest must be a JSON object, not list"),
    (lambda m: "x", "manifest must be a JSON object, not str"),
    ({"background_label": "noise"}, "background_label 'noise' is not one of the labels"),
    ({"labels": ["background", "a", "a"]}, "labels repeat"),
    ({"labels": []}, "labels must be a non-empty JSON list"),
    ({"labels": "background"}, "labels must be a non-empty JSON list"),
    ({"labels": ["background", 3, "b"]}, "each label must be a non-empty printable string"),
    ({"labels": ["background", "a\nERROR fake", "b"]}, "each label must be a non-empty printable string"),
    ({"members": {}}, "members must be a non-empty JSON list"),
    ({"members": ["member00.onnx"]}, r"members\[0\] must be a JSON object"),
    ({"window_s": "4"}, "window_s must be a finite number"),
    ({"window_s": float("nan")}, "window_s must be a finite number"),
    ({"hop_s": 5.0}, r"hop_s = 5.0 is outside \(0, 4\]"),
    ({"thresholds": {"a": "high"}}, r"thresholds\['a'\] must be a finite number"),
    ({"thresholds": {"a": 1.5}}, r"thresholds\['a'\] = 1.5 is outside \[0, 1\]"),
    ({"thresholds": [0.5]}, "thresholds must be a JSON object"),
    ({"frontend": None}, "frontend must be a JSON object"),
    ({"frontend": {"kind": "logmel", "n_mels": "many"}}, "malformed frontend|frontend"),
    ({"bundle_id": ""}, "bundle_id must be a non-empty printable string"),
    ({"format": "other"}, "not an edgemon-bundle manifest"),
    ({"format_version": "1"}, "not an edgemon-bundle manifest"),
    ({"format_version": FORMAT_VERSION + 1}, f"bundle format {FORMAT_VERSION + 1} is newer than this edgemon reads"),
    ({"requires": ["calibration"]}, r"bundle requires \['calibration'\], which this edgemon does not implement"),
    ({"confidence_max": 0}, r"confidence_max = 0 is outside \(0, 1\]"),
    ({"label_names": {"zebra": {"scientific": "Equus quagga", "common": "plains zebra"}}},
     "label_names has 'zebra', which is not one of the labels"),
    ({"label_names": {"a": {"scientific": "Aus aus"}}}, r"label_names\['a'\].common must be a non-empty"),
    ({"label_names": {"a": "Aus aus"}}, r"label_names\['a'\] must be a JSON object"),
    # Not in the bundle id, so an edit loaded, and info and adapt answered with a traceback (a review).
    ({"adapted": "hand-written note"}, "adapted must be a JSON object, not str"),
    ({"adapted": {"reviews": "site A"}}, "adapted.reviews must be a JSON object, not str"),
    ({"adapted": {"calibration": "site"}}, "adapted.calibration must be a JSON object, not str"),
])
def test_malformed_manifests_are_refused_in_one_line(models, tmp_path, change, message):
    bundle_dir = bundle_of(tmp_path, models["good"])
    edit(bundle_dir, change)
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(bundle_dir)
    assert one_line(str(caught.value)).startswith(f"{bundle_dir / 'manifest.json'}: ")


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "unreadable manifest"),
    ("{" + " " * (5 << 20) + "}", "manifest is larger than"),
    (b"{\"labels\": \"caf\xe9\"}", "unreadable manifest"),
    ("{'format': 1}", "unreadable manifest"),
])
def test_unparseable_manifests_are_refused_in_one_line(models, tmp_path, text, message):
    bundle_dir = bundle_of(tmp_path, models["good"])
    path = bundle_dir / "manifest.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BundleError, match=message) as caught:
        load_bundle(bundle_dir)
    assert one_line(str(caught.value)).startswith(f"{path}: ")


@pytest.mark.parametrize("where", ["parent", "absolute", "etc_passwd", "symlink", "sub_dotdot"])
def test_member_paths_outside_the_bundle_are_never_read(models, tmp_path, where):
    bundle_dir = bundle_of(tmp_path, models["good"])
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(models["good"].read_bytes())
    name = {"parent": "../outside.onnx", "absolute": str(outside), "etc_passwd": "/etc/passwd",
            "symlink": "link.onnx", "sub_dotdot": "sub/../../outside.onnx"}[where]
    if where == "symlink":
        os.symlink(outside, bundle_dir / "link.onnx")
    target = Path("/etc/passwd") if where == "etc_passwd" else outside
    digest = hashlib.sha256(target.read_bytes()).hexdigest()   # a matching hash must not help

    def point(manifest):
        manifest["members"][0].update(file=name, sha256=digest)
        return manifest

    edit(bundle_dir, point)
    with pytest.raises(BundleError, match="not a path inside the bundle directory|leads out of the bundle") as caught:
        load_bundle(bundle_dir)
    one_line(str(caught.value))


def test_a_symlink_inside_the_bundle_to_a_member_inside_it_is_fine(models, tmp_path):
    bundle_dir = bundle_of(tmp_path, models["good"])
    (bundle_dir / "models").mkdir()
    os.replace(bundle_dir / "member00.onnx", bundle_dir / "models" / "m.onnx")
    os.symlink("models/m.onnx", bundle_dir / "member00.onnx")
    assert load_bundle(bundle_dir).member_paths[0].name == "member00.onnx"


def test_unknown_fields_are_ignored_by_design(models, tmp_path):
    bundle_dir = bundle_of(tmp_path, models["good"])

    def add(manifest):
        manifest["uncertainty"] = {"kind": "conformal", "per_label": {"a": [1.0, 0.0]}}
        manifest["deployment"] = "field"
        manifest["members"][0]["provenance"] = {"run": "x"}
        return manifest

    edit(bundle_dir, add)
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest["deployment"] == "field" and bundle.members[0].file == "member00.onnx"
    Ensemble(bundle)


@pytest.mark.parametrize("field, value", [
    ("calibration", {"a": {"x": [0.9, 0.1], "y": [0.1, 0.9]}}),     # x decreasing
    ("calibration", {"a": {"x": [0.1, 0.9], "y": [0.1, 1.5]}}),     # y beyond 1
    ("calibration", {"a": {"x": [0.1, float("nan"), 0.9], "y": [0.1, 0.5, 0.9]}}),   # stored NaN (a review)
    ("operating_point", "field"),
])
def test_what_the_recorder_decides_with_is_checked_when_the_bundle_is_read(models, tmp_path, field, value):
    """A second newcomer trial: `edgemon info` showed a bundle with a reversed calibration as fine,
    and `classify` then refused it. (A falling y is allowed: a Platt fit may fall with the score.)"""
    bundle_dir = bundle_of(tmp_path, models["good"])
    edit(bundle_dir, lambda manifest: {**manifest, field: value})
    with pytest.raises(BundleError, match="malformed operating point or calibration"):
        load_bundle(bundle_dir)


def test_old_bundle_without_the_new_fields_loads_and_runs(models, tmp_path):
    """A manifest exactly as edgemon wrote them before names, confidence_max and self-checks."""
    bundle_dir = tmp_path / "old"
    bundle_dir.mkdir()
    (bundle_dir / "member00.onnx").write_bytes(models["good"].read_bytes())
    (bundle_dir / "manifest.json").write_text(json.dumps({
        "format": "edgemon-bundle", "format_version": 1, "bundle_id": "old-1", "created_at": "2026-11-01T00:00:00+00:00",
        "labels": LABELS, "background_label": "background", "frontend": FrontendConfig().to_dict(),
        "members": [{"file": "member00.onnx", "sha256": sha256_of(bundle_dir / "member00.onnx"),
                     "devel_uar": 0.5, "test_uar": None, "precision": "fp32"}],
        "voting": "majority", "window_s": 4.0, "hop_s": 2.0, "thresholds": {"a": 0.2}}))
    bundle = load_bundle(bundle_dir)
    assert bundle.label_names == {} and bundle.confidence_max == 1.0 and bundle.self_check is None
    assert bundle.names_of("a") == ("", "")
    ensemble = Ensemble(bundle)
    assert not ensemble.self_check.available and ensemble.self_check.passed
    probs = ensemble.member_probs(np.zeros((2, 20, 128), np.float32))
    assert probs.shape == (1, 2, 3)


def test_a_bundle_edited_by_hand_is_refused_until_it_has_an_id_of_its_own(tmp_path):
    """A newcomer trial: a copy of the default with a stricter operating point kept the default's
    id, and `reanalyse` with it replaced (deleted) the default's reviewed detections."""
    import shutil

    from edgemon.analysis.bundle import default_bundle_path

    strict = tmp_path / "strict"
    shutil.copytree(default_bundle_path(), strict)
    manifest = json.loads((strict / "manifest.json").read_text())
    manifest["operating_point"]["min_windows"] = {**manifest["operating_point"].get("min_windows", {}), "gibbon_duet": 2}
    (strict / "manifest.json").write_text(json.dumps(manifest))
    info = runner.invoke(app, ["info", "--models", str(strict)])
    assert info.exit_code != 0 and len(info.output.strip().splitlines()) == 1, info.output
    assert "manifest.json" in info.output and "edited since" in info.output
    suggested = info.output.split('set "bundle_id" to "')[1].split('"')[0]
    assert suggested.startswith("default-edited-") and suggested != manifest["bundle_id"]
    manifest["bundle_id"] = suggested
    (strict / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(strict).bundle_id == suggested
    # What decides nothing (a label's common name) may be edited and keeps the id.
    manifest = json.loads((default_bundle_path() / "manifest.json").read_text())
    manifest["label_names"] = {label: {"scientific": label, "common": f"my {label}"} for label in manifest["labels"]}
    (strict / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(strict).bundle_id == manifest["bundle_id"]


def test_a_threshold_edited_where_the_recorder_does_not_read_it_is_refused(tmp_path):
    """A newcomer trial: the top-level `thresholds` block, edited by hand (with a new id, as the
    refusal above asks), did nothing: the recorder applies `operating_point.thresholds`."""
    import shutil

    from edgemon.analysis.bundle import default_bundle_path

    mine = tmp_path / "mine"
    shutil.copytree(default_bundle_path(), mine)
    manifest = json.loads((mine / "manifest.json").read_text())
    manifest["thresholds"]["gibbon_duet"] = 0.6
    write_manifest(mine, manifest)   # under the id its decisions make
    with pytest.raises(BundleError, match=r"thresholds\['gibbon_duet'\] is 0.6 but operating_point.thresholds"):
        load_bundle(mine)
    manifest["operating_point"]["thresholds"]["gibbon_duet"] = 0.6
    write_manifest(mine, manifest)
    assert load_bundle(mine).thresholds["gibbon_duet"] == 0.6
