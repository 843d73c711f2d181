"""Bundles from run directories: members, manifest, optional int8 quantisation; each bundle's
label names, confidence ceiling and self-check reference windows (``complete_bundle``)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import soundfile

from edgemon.analysis import audio
from edgemon.analysis.bundle import SELF_CHECK_TOLERANCE, Bundle, ReferenceWindow, load_bundle, sha256_of
from edgemon.analysis.bundle_write import replace_manifest, write_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.selfcheck import reference_features
from edgemon.errors import AudioError
from training.data import listed_name, read_label_list
from training.errors import DataError
from training.onnx_export import quantize_int8, read_columns
from training.species import label_names, read_label_names

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.flac"
# What makes two trainings one recipe, beside the model, augmentation and frontend: not how long
# (final members may train on more data for more epochs), the seed or the device.
RECIPE_OPTIM = ("lr", "batch_size", "weight_decay", "lr_decay", "gamma", "average_last", "hard_negatives",
                "near_call_negatives", "background_share", "recorder_adversary")


def softmax_confidence_max(member_files: list[Path]) -> float | None:
    """The ensemble's highest confidence: the mean over members of the highest probability each
    can give a class (the vote's confidence is the mean of member probabilities; the largest
    member's bound overstated it when temperatures differ); None when a member does not declare
    its head.

    A normalised-softmax member's logits are cosines divided by its temperature tau, so within
    [-1/tau, 1/tau]: p <= 1 / (1 + (C - 1) exp(-2 / tau)). An upper bound, not always reached.
    """
    bounds = []
    for path in member_files:
        props = _metadata(path)
        try:
            config = json.loads(props["model_config"])
            tau, n_classes = float(config["tau"]), int(config["n_classes"])
        except (KeyError, ValueError, TypeError):
            return None
        bounds.append(1.0 / (1.0 + (n_classes - 1) * math.exp(-2.0 / tau)))
    return sum(bounds) / len(bounds) if bounds else None


def _metadata(model: Path) -> dict[str, str]:
    """An exported model's metadata (``training.onnx_export``: labels, model_config, hyperparameters)."""
    return {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}


def pick_reference_windows(data_dir: Path, labels: tuple[str, ...], window_s: float, sample_rate: int,
                           split: str = "train") -> tuple[np.ndarray, list[ReferenceWindow]]:
    """One real window per label from ``split``: the centre ``window_s`` of the first clip (by file
    name) at least that long, else of the longest clip zero-padded. float32 ``[labels, samples]``."""
    clips = read_label_list(Path(data_dir) / "lab" / f"{split}.csv", Path(data_dir) / "audio")
    size = int(round(window_s * sample_rate))
    windows, chosen = [], []
    for label in labels:
        best = None
        for clip in sorted((c for c in clips if c.label == label), key=lambda c: c.path.name):
            try:
                samples = audio.load(clip.path, sample_rate)
            except AudioError as exc:
                raise DataError(str(exc)) from exc
            if best is None or len(samples) > len(best[1]):
                best = (clip, samples)
            if len(samples) >= size:
                break
        if best is None:
            raise DataError(f"{data_dir}: no {split} clip of {label!r} for the bundle's reference windows")
        clip, samples = best
        start = max((len(samples) - size) // 2, 0)
        window = np.zeros(size, np.float32)
        window[:min(size, len(samples))] = samples[start:start + size]
        windows.append(window)
        # Named as its list names it (a set kept as a folder per class: 'siamang/AM11_054.wav').
        chosen.append(ReferenceWindow(label, listed_name(clip, data_dir), round(start / sample_rate, 3), size))
    return np.stack(windows), chosen


def add_reference_windows(bundle_dir: Path, windows: np.ndarray, meta: list[ReferenceWindow],
                          tolerance: float = SELF_CHECK_TOLERANCE) -> Bundle:
    """Store ``windows`` (float32 ``[N, samples]``) as the bundle's 16-bit FLAC reference and each
    member's probabilities on them as expected by the self-check. Members are not touched.

    The expected probabilities come from the stored FLAC read back, through the recorder's own
    path (``selfcheck.reference_features``, all windows as one batch), so they differ from a
    recorder's only by its CPU and libraries.
    """
    bundle = load_bundle(bundle_dir)
    target = bundle.path / REFERENCE_FILE
    tmp = bundle.path / f".{REFERENCE_FILE}.tmp"
    soundfile.write(tmp, np.clip(windows, -1, 1).reshape(-1), bundle.frontend.sample_rate,
                    subtype="PCM_16", format="FLAC")
    os.replace(tmp, target)
    stored, _ = soundfile.read(target, dtype="float32")
    stored = stored.reshape(windows.shape)
    expected = Ensemble(bundle, verify=False).member_probs(reference_features(stored, bundle.frontend))
    return replace_manifest(bundle.path, {"self_check": {
        "file": REFERENCE_FILE, "sha256": sha256_of(target), "tolerance": tolerance,
        "windows": [dataclasses.asdict(w) for w in meta],
        "expected": [[[round(float(p), 6) for p in row] for row in m] for m in expected]}})


def reference_from(data_dir: Path | None, labels, window_s: float, frontend: FrontendConfig):
    """The self-check's reference windows from ``data_dir``'s train split (None without one),
    picked before a bundle is written: a data set that cannot give them (no clip of a label)
    then leaves the bundle it would replace as it was."""
    if data_dir is None:
        return None
    return pick_reference_windows(data_dir, tuple(labels), window_s, frontend.sample_rate)


def complete_bundle(bundle_dir: Path, data_dir: Path | None = None, reference=None,
                    names_from: Path | None = None) -> Bundle:
    """Give a bundle what the recorder shows and checks beyond its members: the labels' names,
    ``confidence_max``, and reference windows: those ``reference_from`` picked before the bundle
    was written, else from ``data_dir``'s train split (skipped when both are None). Works on an
    existing bundle; member files and the bundle id stay as they are.

    The names: those the data set (``names_from``, else ``data_dir``) gives in
    ``lab/label_names.csv``; else those the manifest already carries (a rebundled bundle's, kept
    from its parent: they were replaced by the table's); else ``training.species``' table."""
    bundle = load_bundle(bundle_dir)
    names_dir = names_from if names_from is not None else data_dir
    given = read_label_names(names_dir, bundle.labels) if names_dir is not None else None
    if given is None:
        given = bundle.manifest.get("label_names") or label_names(bundle.labels)
    changes = {"label_names": given}
    ceiling = stored_confidence_max(bundle.manifest, softmax_confidence_max(bundle.member_paths), bundle.labels)
    if ceiling is not None:
        changes["confidence_max"] = round(ceiling, 6)
    bundle = replace_manifest(bundle.path, changes)
    if reference is None and data_dir is not None:
        reference = reference_from(data_dir, bundle.labels, bundle.window_s, bundle.frontend)
    if reference is None:
        return bundle
    return add_reference_windows(bundle.path, *reference)


def stored_confidence_max(manifest: dict, raw_ceiling: float | None, labels) -> float | None:
    """The highest confidence the recorder can store: a calibrated class reaches the top of its
    curve, an uncalibrated one the raw vote's ceiling (None: unknown)."""
    curves = manifest.get("calibration") or {}
    tops = [max(curves[label]["y"]) for label in labels if label in curves]
    if len(tops) < len(labels) - 1:   # some call class stores its raw score
        tops.append(raw_ceiling)
    return None if None in tops or not tops else float(max(tops))


def shared_frontend(frontends: list[FrontendConfig], where) -> FrontendConfig:
    """The one frontend a bundle streams: its members' own if they agree, else log-mel and PCEN
    side by side (``logmel_pcen``), each member reading its own columns."""
    if len(set(frontends)) == 1:
        return frontends[0]
    combined = dataclasses.replace(frontends[0], kind="logmel_pcen")
    if any(dataclasses.replace(f, kind=combined.kind) != combined for f in frontends):
        raise DataError(f"{where}: the runs' frontends differ beyond log-mel or PCEN; a bundle streams one")
    return combined


def read_thresholds_file(path: Path, labels: list[str], window: tuple[float, float],
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
    # Checked here, naming this file: found only in the staged manifest, the error named a
    # temporary directory (a review).
    bad = {k: v for k, v in (thresholds.items() if isinstance(thresholds, dict) else [])
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
    if not isinstance(thresholds, dict) or bad:
        raise DataError(f"{path}: thresholds must map each label to a finite number"
                        + (f", not {bad}" if bad else f", not {thresholds!r}"))
    return thresholds, provenance


def recipe_of(config: dict) -> dict:
    """What a run's ``config.json`` (or a fold model's ``hyperparameters``) says of its recipe."""
    return {"model": config.get("model"), "augment": config.get("augment"), "frontend": config.get("frontend"),
            "optim": {k: (config.get("optim") or {}).get(k) for k in RECIPE_OPTIM}}


def check_same_recipes(path: Path, members, runs: list[Path], configs: list[dict]) -> None:
    """Refuse thresholds chosen on grouped CV of other recipes than the runs': the point and the
    calibration hold for the vote they were measured on (the rebundle check's twin: a bundle of
    final h = 128 runs took the point of an h = 192 pair, silently). Each cv-ensemble member is
    read from its first fold model; one that is no longer there is said, not guessed."""
    measured = []
    for member in members or []:
        folds = sorted(Path(member).glob("fold*.onnx"))
        if not folds:
            log.warning("%s: its member %s has no fold model here; not checked that the runs are its recipes",
                        path, member)
            return
        props = _metadata(folds[0])
        try:
            measured.append((Path(member).name, recipe_of(json.loads(props["hyperparameters"]))))
        except (KeyError, ValueError, TypeError):
            log.warning("%s: %s records no hyper-parameters; not checked that the runs are its recipes", path, folds[0])
            return
    unmatched = [recipe for _, recipe in measured]
    for run, config in zip(runs, configs):
        recipe = recipe_of(config)
        if recipe in unmatched:
            unmatched.remove(recipe)
            continue
        nearest = min(measured, key=lambda m: len(_differences(m[1], recipe)))
        raise DataError(f"{path}: chosen for recipes {', '.join(n for n, _ in measured)}; {run} is none of them "
                        f"({', '.join(_differences(nearest[1], recipe)[:4])} differ from {nearest[0]}'s)")


def _differences(a: dict, b: dict) -> list[str]:
    return [f"{part}.{key}" for part in a for key in sorted(set(a[part] or {}) | set(b[part] or {}))
            if (a[part] or {}).get(key) != (b[part] or {}).get(key)]


def field_manifest(field: dict) -> dict:
    """The manifest fields of a field report (``training.operating.field_report``): the operating
    point with what grouped CV expects of it, and the calibration curves."""
    return {"operating_point": field["operating_point"], "calibration": field["calibration"],
            "calibration_input": field.get("calibration_input", "score"),
            "calibration_fits": field.get("calibration_fits", {})}


def check_reference_data(data_dir: Path | None) -> None:
    """Before anything is written: a bundle built without its reference windows would be left behind.
    Without ``data_dir`` it says what the bundle then lacks (a trial with its own species: the
    display names of its ``label_names.csv`` went missing without a word)."""
    if data_dir is None:
        log.warning("no --data: the bundle gets no self-check reference windows and no display names from a "
                    "label_names.csv (give --data DIR, the clips its models were trained on, for both)")
    if data_dir is not None and not (Path(data_dir) / "lab" / "train.csv").is_file():
        raise DataError(f"--data {data_dir}: not a data set (no lab/train.csv) for the reference windows")
    if data_dir is not None:   # a malformed names file refused before anything is written
        labels = {c.label for c in read_label_list(Path(data_dir) / "lab" / "train.csv", Path(data_dir) / "audio")}
        read_label_names(data_dir, labels)


def _run_record(run: Path) -> tuple[dict, dict]:
    """A run's ``config.json`` and ``metrics.json``, checked for what a bundle reads of them: a
    damaged one was a traceback (``[]``, ``{}``) or an error naming no file (a review)."""
    records = []
    for name, keys in (("config.json", ("labels", "window_s", "hop_s", "frontend")), ("metrics.json", ("devel", "test"))):
        try:
            record = json.loads((run / name).read_text())
            if not isinstance(record, dict) or any(k not in record for k in keys):
                raise ValueError(f"it lacks {', '.join(k for k in keys if not isinstance(record, dict) or k not in record)}")
            if name == "metrics.json" and not all(isinstance(record[k], dict) and "uar" in record[k] for k in keys):
                raise ValueError("its devel or test entry has no uar")
        except (OSError, ValueError) as e:
            raise DataError(f"{run / name}: not a finished run's {name} ({e})") from None
        records.append(record)
    return records[0], records[1]

def bundle_runs(runs: list[Path], out: Path, int8: bool = False, thresholds_from: Path | None = None,
                reference_data: Path | None = None) -> dict:
    """Write a bundle whose members are the runs' ``model.onnx``, in the order given, with the
    thresholds of a ``cv-ensemble`` result when ``thresholds_from`` names one, and (see
    ``complete_bundle``) names, confidence ceiling and reference windows from ``reference_data``."""
    check_reference_data(reference_data)
    configs, devel, test = [], [], []
    for run in runs:
        if not (run / "model.onnx").is_file() or not (run / "config.json").is_file():
            raise DataError(f"{run}: not a finished run directory (no model.onnx or config.json)")
        config, metrics = _run_record(run)
        configs.append(config)
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
        thresholds, provenance = read_thresholds_file(thresholds_from, first["labels"], (first["window_s"], first["hop_s"]),
                                                  [f.kind for f in frontends])
        check_same_recipes(thresholds_from, provenance["thresholds_from"]["members"], runs, configs)
    reference = reference_from(reference_data, first["labels"], first["window_s"], frontend)
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
                                     **provenance},
                              finish=functools.partial(complete_bundle, reference=reference,
                                                       names_from=reference_data))
    if not thresholds_from:
        # A newcomer trial: fit -> bundle -> watch stored 580 detections an hour, and only `info`
        # said why ("uncalibrated, 0.00").
        log.warning("%s has no operating point: its thresholds are 0, so every window's winner is stored (a flood "
                    "on a real night); for a field point run `cv` and `cv-ensemble`, then `bundle --thresholds "
                    "RESULT.json`", bundle.path)
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
            "frontend": frontend.kind, "self_check": bundle.self_check is not None,
            **({} if thresholds_from else {"operating_point": None})}


def bundle_cv(cv_dir: Path, recipe: str, out: Path, int8: bool = False,
              max_false_rate: float | None = None, reference_data: Path | None = None) -> dict:
    """A bundle of one averaged recipe's fold models (an ensemble selected by grouped CV), with
    the thresholds chosen on their held-out windows (again, for ``max_false_rate`` when given)."""
    from training.data import BACKGROUND
    from training.thresholds import choose_thresholds

    check_reference_data(reference_data)
    summary_path = Path(cv_dir) / "cv.json"
    if not summary_path.is_file():
        raise DataError(f"{cv_dir}: no cv.json (run edgemon-train cv first)")
    summary = json.loads(summary_path.read_text())
    result = summary["recipes"].get(recipe)
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
    reference = reference_from(reference_data, result["labels"], result["window_s"],
                               FrontendConfig.from_dict(result["frontend_config"]))
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
                                     # every fold model learnt from devel (and the pool) but its
                                     # held-out recorders: `score` then says devel is not held out
                                     "trained_on": ["train+devel+pool" if (summary.get("pool") or {}).get("clips")
                                                    else "train+devel"]
                                                   * len(members),
                                     "cv_uar_mean": result["uar_mean"], "cv_uar_std": result["uar_std"],
                                     "max_false_rate": result["max_false_rate"] if max_false_rate is None
                                                       else max_false_rate,
                                     **(field_manifest(result["field"]) if "field" in result and max_false_rate is None
                                        else {})},
                              finish=functools.partial(complete_bundle, reference=reference,
                                                       names_from=reference_data))
    return {"bundle": str(bundle.path), "bundle_id": bundle.bundle_id, "members": len(bundle.members),
            "thresholds": bundle.thresholds, "self_check": bundle.self_check is not None}
