"""Bundles from run directories: members, manifest, optional int8 quantisation."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from edgemon.frontend import FrontendConfig
from training.errors import DataError
from training.export import quantize_int8, read_columns


def shared_frontend(frontends: list[FrontendConfig], where) -> FrontendConfig:
    """The one frontend a bundle streams: its members' own if they agree, else log-mel and PCEN
    side by side (``logmel_pcen``), each member reading its own columns."""
    if len(set(frontends)) == 1:
        return frontends[0]
    combined = dataclasses.replace(frontends[0], kind="logmel_pcen")
    if any(dataclasses.replace(f, kind=combined.kind) != combined for f in frontends):
        raise DataError(f"{where}: the runs' frontends differ beyond log-mel or PCEN; a bundle streams one")
    return combined


def _thresholds_file(path: Path, labels: list[str], window: tuple[float, float],
                     kinds: list[str]) -> tuple[dict, dict]:
    """Thresholds and their provenance from a ``cv-ensemble`` JSON, checked against the runs."""
    try:
        result = json.loads(Path(path).read_text())
        thresholds = result["thresholds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a cv-ensemble result with thresholds ({type(exc).__name__}: {exc})") from exc
    if result.get("labels") != labels:
        raise DataError(f"{path}: thresholds are for labels {result.get('labels')}, the runs have {labels}")
    if (result.get("window_s"), result.get("hop_s")) != window:
        raise DataError(f"{path}: thresholds are for {result.get('window_s')} s windows every "
                        f"{result.get('hop_s')} s, the runs for {window[0]} s every {window[1]} s")
    if "frontend_kinds" in result and sorted(result["frontend_kinds"]) != sorted(kinds):
        raise DataError(f"{path}: thresholds are for members on {result['frontend_kinds']}, the runs are on {kinds}")
    provenance = {"thresholds_from": {
        "file": Path(path).name, "members": result.get("members"), "max_false_rate": result.get("max_false_rate"),
        "cv_uar_mean": result.get("uar_mean"), "cv_uar_std": result.get("uar_std")}}
    if result.get("field"):  # a field operating point and calibration chosen on grouped CV
        thresholds = result["field"]["operating_point"]["thresholds"]
        provenance.update(field_manifest(result["field"]))
    return thresholds, provenance


def field_manifest(field: dict) -> dict:
    """The manifest fields of a field report (``training.operating.field_report``): the operating
    point with what grouped CV expects of it, and the calibration curves."""
    return {"operating_point": field["operating_point"], "calibration": field["calibration"],
            "calibration_input": field.get("calibration_input", "score"),
            "calibration_fits": field.get("calibration_fits", {})}


def bundle_runs(runs: list[Path], out: Path, int8: bool = False, thresholds_from: Path | None = None) -> dict:
    """Write a bundle whose members are the runs' ``model.onnx``, in the order given, with the
    thresholds of a ``cv-ensemble`` result when ``thresholds_from`` names one."""
    from edgemon.bundle import write_bundle

    configs, devel, test = [], [], []
    for run in runs:
        if not (run / "model.onnx").is_file() or not (run / "config.json").is_file():
            raise DataError(f"{run}: not a finished run directory (no model.onnx or config.json)")
        configs.append(json.loads((run / "config.json").read_text()))
        metrics = json.loads((run / "metrics.json").read_text())
        devel.append(metrics["devel"]["uar"])
        test.append(metrics["test"]["uar"])
    first = configs[0]
    for run, c in zip(runs, configs):
        if (c["labels"], c["window_s"], c["hop_s"]) != (first["labels"], first["window_s"], first["hop_s"]):
            raise DataError(f"{run}: labels or recorder window differ from {runs[0]}'s; a bundle has one of each")
    frontends = [FrontendConfig.from_dict(c["frontend"]) for c in configs]
    frontend = shared_frontend(frontends, runs[0])
    thresholds, provenance = None, {}
    if thresholds_from:
        thresholds, provenance = _thresholds_file(thresholds_from, first["labels"], (first["window_s"], first["hop_s"]),
                                                  [f.kind for f in frontends])
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for i, run in enumerate(runs):
            member = read_columns(run / "model.onnx", Path(tmp) / f"{i}.fp32.onnx", frontend)
            members.append(quantize_int8(member, Path(tmp) / f"{i}.onnx") if int8 else member)
        bundle = write_bundle(out, members, first["labels"], frontend=frontend,
                              window_s=first["window_s"], hop_s=first["hop_s"], devel_uars=devel,
                              test_uars=test, thresholds=thresholds, precision="int8" if int8 else "fp32",
                              extra={"source_runs": [r.name for r in runs],
                                     # a member trained on train + devel has no held-out devel score
                                     "trained_on": [c.get("trained_on", "train") for c in configs],
                                     **provenance})
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
            "frontend": frontend.kind}


def bundle_cv(cv_dir: Path, recipe: str, out: Path, int8: bool = False,
              max_false_rate: float | None = None) -> dict:
    """A bundle of one averaged recipe's fold models (an ensemble selected by grouped CV), with
    the thresholds chosen on their held-out windows (again, for ``max_false_rate`` when given)."""
    import numpy as np

    from edgemon.bundle import write_bundle
    from training.data import BACKGROUND
    from training.thresholds import choose_thresholds

    summary_path = Path(cv_dir) / "cv.json"
    if not summary_path.is_file():
        raise DataError(f"{cv_dir}: no cv.json (run edgemon-train cv first)")
    result = json.loads(summary_path.read_text())["recipes"].get(recipe)
    if result is None or "members" not in result:
        raise DataError(f"{summary_path}: recipe {recipe!r} has no fold models "
                        "(only recipes with --average-last keep them)")
    thresholds = result["field"]["operating_point"]["thresholds"] if "field" in result else result["thresholds"]
    if max_false_rate is not None:
        windows = np.load(Path(cv_dir) / recipe / "held_out_windows.npz")
        labels = tuple(result["labels"])
        background = labels.index(BACKGROUND)
        thresholds = choose_thresholds(windows["winner"], windows["confidence"], windows["target"] == background,
                                       labels, background, max_false_rate)
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for i, name in enumerate(result["members"]):
            model = Path(cv_dir) / recipe / name
            if not model.is_file():
                raise DataError(f"{model}: fold model missing")
            members.append(quantize_int8(model, Path(tmp) / f"{i}.onnx") if int8 else model)
        bundle = write_bundle(out, members, result["labels"],
                              frontend=FrontendConfig.from_dict(result["frontend_config"]),
                              window_s=result["window_s"], hop_s=result["hop_s"],
                              devel_uars=result["fold_uar"], thresholds=thresholds,
                              precision="int8" if int8 else "fp32",
                              extra={"selected_by": f"grouped cross-validation, recipe {recipe}",
                                     "cv_uar_mean": result["uar_mean"], "cv_uar_std": result["uar_std"],
                                     "max_false_rate": result["max_false_rate"] if max_false_rate is None
                                                       else max_false_rate,
                                     **(field_manifest(result["field"]) if "field" in result and max_false_rate is None
                                        else {})})
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
            "thresholds": bundle.thresholds}
