"""Bundles from run directories: members, manifest, optional int8 quantisation."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgemon.frontend import FrontendConfig
from training.errors import DataError
from training.export import quantize_int8


def bundle_runs(runs: list[Path], out: Path, int8: bool = False) -> dict:
    """Write a bundle whose members are the runs' ``model.onnx``, in the order given."""
    from edgemon.bundle import write_bundle

    configs, members, devel, test = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            model = run / "model.onnx"
            if not model.is_file() or not (run / "config.json").is_file():
                raise DataError(f"{run}: not a finished run directory (no model.onnx or config.json)")
            config = json.loads((run / "config.json").read_text())
            metrics = json.loads((run / "metrics.json").read_text())
            configs.append(config)
            devel.append(metrics["devel"]["uar"])
            test.append(metrics["test"]["uar"])
            members.append(quantize_int8(model, Path(tmp) / f"{i}.onnx") if int8 else model)
        first = configs[0]
        if any(c["labels"] != first["labels"] or c["frontend"] != first["frontend"] for c in configs):
            raise DataError("runs differ in labels or frontend; a bundle needs one of each")
        bundle = write_bundle(out, members, first["labels"], frontend=FrontendConfig.from_dict(first["frontend"]),
                              window_s=first["window_s"], hop_s=first["hop_s"], devel_uars=devel,
                              test_uars=test, precision="int8" if int8 else "fp32",
                              extra={"source_runs": [r.name for r in runs]})
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members)}


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
    thresholds = result["thresholds"]
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
                                                       else max_false_rate})
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
            "thresholds": bundle.thresholds}
