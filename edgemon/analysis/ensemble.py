"""Ensemble inference with onnxruntime: member probabilities and the majority vote.

Opening an ``Ensemble`` finishes the bundle's checks: each member's input and output names,
input width and class count against the manifest (from onnxruntime's metadata and one tiny probe
run), then the bundle's self-check on its reference windows (``edgemon.analysis.selfcheck``). A bundle
that fails any of them is refused before the first recording is touched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgemon.analysis.bundle import Bundle, load_bundle
from edgemon.analysis.decisions import OperatingPoint
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.selfcheck import SelfCheck, SelfCheckError, run_self_check
from edgemon.analysis.site_head import load_site_head
from edgemon.analysis.site_veto import load_site_veto
from edgemon.analysis.vote import Votes, majority_vote
from edgemon.errors import BundleError

# Telemetry is kept off by ORT_DISABLE_TELEMETRY (edgemon/__init__.py); this also stops its events
# where onnxruntime was imported before edgemon.
ort.disable_telemetry_events()

INPUT = "logmel"
OUTPUT = "probs"


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # The arena keeps the largest batch's buffers for good; without it peak memory falls by a
    # third at no measurable cost in speed (bench/edge_throughput.py).
    options.enable_cpu_mem_arena = False
    # The members are a few large operators (quantised LSTMs and matmuls): graph rewrites find
    # nothing to fuse and their layouts run 2-4 % slower per window (int8 and float32 members).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def open_member(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An onnxruntime session of the model at ``path``; BundleError naming it when it cannot be
    loaded (truncated, empty, not ONNX)."""
    try:
        return ort.InferenceSession(str(path), options or _session_options(1), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
        raise BundleError(f"{path}: onnxruntime cannot load this model: {_first_line(exc)}") from exc


def open_members(bundle: Bundle, threads: int = 1) -> list[ort.InferenceSession]:
    """The bundle's members as onnxruntime sessions, each checked against what the manifest
    declares (inputs, outputs, labels, frontend); BundleError naming the member that is not."""
    sessions, options = [], _session_options(threads)
    for path in bundle.member_paths:
        session = open_member(path, options)
        _check_signature(bundle, path, session)
        _check_member(bundle, path, session)
        sessions.append(session)
    return sessions


def _check_signature(bundle: Bundle, path, session: ort.InferenceSession) -> None:
    """Input name, rank and width, ``probs`` output and class count, from the session's
    metadata and one probe run on two frames of zeros (for what a graph leaves undeclared)."""
    n_features, n_classes = bundle.frontend.n_features, len(bundle.labels)
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT]:
        raise BundleError(f"{path}: model inputs {[i.name for i in inputs]}, expected one named {INPUT!r}")
    shape = inputs[0].shape
    if inputs[0].type != "tensor(float)" or len(shape) != 3:
        raise BundleError(f"{path}: input {INPUT!r} is {inputs[0].type} {shape}, expected float [batch, frames, features]")
    if isinstance(shape[2], int) and shape[2] != n_features:
        raise BundleError(f"{path}: model reads {shape[2]} features per frame, the bundle's "
                          f"{bundle.frontend.kind} frontend gives {n_features}")
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if OUTPUT not in outputs:
        raise BundleError(f"{path}: model has no output {OUTPUT!r} (outputs: {sorted(outputs)})")
    declared = outputs[OUTPUT]
    if declared is not None and (len(declared) != 2 or (isinstance(declared[1], int) and declared[1] != n_classes)):
        raise BundleError(f"{path}: output {OUTPUT!r} has shape {declared}, "
                          f"the manifest has {n_classes} labels")
    try:
        probe = session.run([OUTPUT], {INPUT: np.zeros((1, 2, n_features), np.float32)})[0]
    except Exception as exc:  # onnxruntime's errors are untyped
        raise BundleError(f"{path}: a probe run failed: {_first_line(exc)}") from exc
    if probe.shape != (1, n_classes):
        raise BundleError(f"{path}: a probe run gives probabilities of shape {probe.shape}, "
                          f"the manifest has {n_classes} labels")
    if not np.all(np.isfinite(probe)) or probe.min() < 0 or probe.max() > 1 + 1e-5:
        raise BundleError(f"{path}: output {OUTPUT!r} is not probabilities on a probe run")


def _check_member(bundle: Bundle, path, session: ort.InferenceSession) -> None:
    """The labels and frontend the model's metadata declares are the manifest's."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        labels = tuple(json.loads(meta["labels"]))
        frontend = FrontendConfig.from_dict(json.loads(meta["frontend"]))
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from exc
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BundleError(f"{path}: model metadata lacks labels or frontend ({_first_line(exc)})") from exc
    if labels != bundle.labels:
        raise BundleError(f"{path}: model labels {labels} differ from the manifest's")
    if frontend != bundle.frontend:
        raise BundleError(f"{path}: model frontend differs from the manifest's")


class Ensemble:
    """The bundle's members as onnxruntime sessions, checked against the bundle's declarations.

    ``verify`` runs the self-check and raises ``SelfCheckError`` when it fails; with
    ``verify=False`` (``edgemon info``, training writing the expected probabilities) the result is
    only computed on request (``run_self_check``). ``self_check`` holds the last result.
    """

    def __init__(self, bundle: Bundle, threads: int = 1, verify: bool = True):
        self.bundle = bundle
        self.sessions = open_members(bundle, threads)
        self.site_head = load_site_head(bundle, self.sessions)   # None unless ``edgemon-train adapt`` wrote one
        self.site_veto = load_site_veto(bundle, self.sessions)   # likewise
        self.self_check: SelfCheck | None = None
        if verify:
            result = self.run_self_check()
            if not result.passed:
                raise SelfCheckError(f"{bundle.path}: self-check on this CPU {result.summary()}; "
                                     "this onnxruntime build or CPU misbehaves, refusing to run blind")

    def run_self_check(self) -> SelfCheck:
        """Run the bundle's reference windows through every member and compare (see ``selfcheck``)."""
        self.self_check = run_self_check(self.bundle, self.raw_member_probs)
        return self.self_check

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    def member_probs(self, logmel: np.ndarray) -> np.ndarray:
        """Features float32 ``[B, frames, n_features]`` -> probabilities ``[M, B, C]``.

        The models' input is named ``logmel`` for every frontend kind (PCEN too), so older
        bundles and newer ones share one graph signature."""
        feed = {INPUT: np.ascontiguousarray(logmel, dtype=np.float32)}
        if self.site_head is None and self.site_veto is None:
            return self.raw_member_probs(logmel)
        outputs = [s.run([OUTPUT, "embedding"], feed) for s in self.sessions]
        return self.site_corrected(np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs]))

    def site_corrected(self, probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """The members' raw ``probs [M, B, C]`` through the bundle's site head, then its site veto
        (each only if the bundle has one), from their ``embeddings [M, B, d]``."""
        if self.site_head is not None:
            probs = self.site_head.member_probs(probs, embeddings)
        if self.site_veto is not None:
            probs = self.site_veto.member_probs(probs, embeddings)
        return probs

    def raw_member_probs(self, logmel: np.ndarray) -> np.ndarray:
        """The members' own probabilities ``[M, B, C]``, before any site head or veto: what the
        self-check's reference probabilities were recorded from."""
        feed = {INPUT: np.ascontiguousarray(logmel, dtype=np.float32)}
        return np.stack([s.run([OUTPUT], feed)[0] for s in self.sessions])

    def vote(self, logmel: np.ndarray) -> Votes:
        return majority_vote(self.member_probs(logmel))


def describe_bundle(path) -> tuple[dict, SelfCheck]:
    """What ``edgemon info`` shows: the verified bundle's declarations and its self-check on
    this CPU, which is run and reported here, never raised (the caller decides)."""
    bundle = load_bundle(path)
    ensemble = Ensemble(bundle, verify=False)
    check = ensemble.run_self_check()
    return {"bundle_id": bundle.bundle_id, "path": str(bundle.path), "format_version": bundle.format_version,
            "labels": bundle.labels, "background_label": bundle.background_label,
            "label_names": bundle.label_names, "confidence_max": bundle.confidence_max,
            "thresholds": bundle.thresholds, "window_s": bundle.window_s, "hop_s": bundle.hop_s,
            "members": [dataclasses.asdict(m) for m in bundle.members],
            "frontend": bundle.frontend.to_dict(), "self_check": check.to_dict(),
            # Where its figures come from: training data, grouped-CV scores, operating point,
            # calibration, adaptation (whichever the manifest records).
            "confidence": _confidence_meaning(bundle.manifest, bundle.confidence_max),
            "site_corrections": _site_corrections(ensemble),
            "provenance": {k: bundle.manifest[k] for k in PROVENANCE if k in bundle.manifest}}, check


def _site_corrections(ensemble: Ensemble) -> dict:
    """What ``edgemon-train adapt`` added that changes the members' output: empty for a plain bundle."""
    out: dict = {}
    if ensemble.site_head is not None:
        out["site_head"] = "a learnt correction of each member's probabilities from its embedding"
    if ensemble.site_veto is not None:
        veto = ensemble.site_veto
        out["site_veto"] = {"false_alarm_windows": len(veto.background), "call_windows": len(veto.calls),
                            "neighbours": veto.k}
    return out


def _confidence_meaning(manifest: dict, ceiling: float) -> str:
    if manifest.get("calibration"):
        source = manifest.get("calibration_input", "score")
        point = OperatingPoint.from_manifest(manifest, manifest.get("thresholds") or {})  # checked when read
        if source == "gate" and point.gate is not None and not point.decides_by_gate:
            # a gate at level 0 drops nothing: it is the run-feature calibration itself
            source = "run (its length, confidences and how the members agree: a logistic fit)"
        # an adapted bundle's own calibration is its parent's shifted to the site's reviews
        site = (manifest.get("adapted") or {}).get("calibration") or {}
        fitted = "fitted on grouped-CV recorders"
        if site.get("written") == "site":
            count = f"{site['detections']} " if isinstance(site.get("detections"), int) else ""
            fitted = f"fitted to this site's {count}reviewed detections (edgemon-train adapt: the parent's map shifted)"
        meaning = (f"calibrated: an estimate, {fitted}, of the probability that a detection "
                   f"is right, per class, from the event's "
                   f"{source} (fits in provenance.calibration_fits)")
    else:
        meaning = "uncalibrated: the raw vote score (the members' normalised-softmax probability), not a probability of being right"
    expected = (manifest.get("operating_point") or {}).get("expected") or {}
    if ceiling < 0.9:
        meaning += f"; it never exceeds {ceiling:g}, so --min-confidence 0.9 is refused"
        if ((expected.get("at_min_confidence_0.9") or {}).get("events") or 0) > 0:
            # The grouped-CV figure comes from per-fold fits, which may exceed the final fit's top.
            meaning += (": operating_point.expected.at_min_confidence_0.9 counts held-out events of grouped CV "
                        "under per-fold fits, not what this bundle stores")
    return meaning


PROVENANCE = ("trained_on", "thresholds_from", "operating_point", "calibration_input", "calibration_fits",
              "adapted", "source_runs", "rebundled_from")
