"""Ensemble inference with onnxruntime: member probabilities and the majority vote."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime as ort

from edgemon.bundle import Bundle
from edgemon.errors import BundleError
from edgemon.frontend import FrontendConfig
from edgemon.site_head import load_site_head


@dataclasses.dataclass(frozen=True)
class Votes:
    """Result of a vote over ``B`` windows by ``M`` members and ``C`` classes."""

    winner: np.ndarray        # int [B]: the voted class index
    confidence: np.ndarray    # float [B]: mean member probability of the voted class
    member_labels: np.ndarray  # int [M, B]: each member's argmax
    mean_probs: np.ndarray    # float [B, C]


def majority_vote(member_probs: np.ndarray) -> Votes:
    """Majority vote of member argmaxes; a tie goes to the tied class of highest mean probability.

    ``member_probs`` is ``[M, B, C]``. Deterministic: equal mean probabilities among tied classes
    fall to the lowest class index.
    """
    member_probs = np.asarray(member_probs, dtype=np.float64)
    n_classes = member_probs.shape[2]
    member_labels = member_probs.argmax(axis=2)                               # [M, B]
    counts = np.stack([(member_labels == c).sum(axis=0) for c in range(n_classes)], axis=1)  # [B, C]
    mean_probs = member_probs.mean(axis=0)                                     # [B, C]
    tied = counts == counts.max(axis=1, keepdims=True)
    winner = np.where(tied, mean_probs, -np.inf).argmax(axis=1)
    confidence = mean_probs[np.arange(len(winner)), winner]
    return Votes(winner=winner, confidence=confidence, member_labels=member_labels,
                 mean_probs=mean_probs)


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # The arena keeps the largest batch's buffers for good; without it peak memory falls by a
    # third at no measurable cost in speed (bench/edge_throughput.py).
    options.enable_cpu_mem_arena = False
    return options


class Ensemble:
    """The bundle's members as onnxruntime sessions, checked against the bundle's declarations."""

    def __init__(self, bundle: Bundle, threads: int = 1):
        self.bundle = bundle
        self.sessions = []
        options = _session_options(threads)
        for path in bundle.member_paths:
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own untyped errors for bad models
                raise BundleError(f"{path}: onnxruntime cannot load this model: {exc}") from exc
            self._check_member(path, session)
            self.sessions.append(session)
        self.site_head = load_site_head(bundle, self.sessions)   # None unless ``edgemon-train adapt`` wrote one

    def _check_member(self, path, session: ort.InferenceSession) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        try:
            labels = tuple(json.loads(meta["labels"]))
            frontend = FrontendConfig.from_dict(json.loads(meta["frontend"]))
        except (KeyError, ValueError) as exc:
            raise BundleError(f"{path}: model metadata lacks labels or frontend ({exc})") from exc
        if labels != self.bundle.labels:
            raise BundleError(f"{path}: model labels {labels} differ from the manifest's")
        if frontend != self.bundle.frontend:
            raise BundleError(f"{path}: model frontend differs from the manifest's")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    def member_probs(self, logmel: np.ndarray) -> np.ndarray:
        """Features float32 ``[B, frames, n_features]`` -> probabilities ``[M, B, C]``.

        The models' input is named ``logmel`` for every frontend kind (PCEN too), so older
        bundles and newer ones share one graph signature."""
        feed = {"logmel": np.ascontiguousarray(logmel, dtype=np.float32)}
        if self.site_head is not None:
            outputs = [s.run(["probs", "embedding"], feed) for s in self.sessions]
            return self.site_head.member_probs(np.stack([o[0] for o in outputs]), np.stack([o[1] for o in outputs]))
        return np.stack([s.run(["probs"], feed)[0] for s in self.sessions])

    def vote(self, logmel: np.ndarray) -> Votes:
        return majority_vote(self.member_probs(logmel))
