"""The bundle's self-check: do this CPU and this onnxruntime give the members' expected
probabilities on the bundle's reference windows?

An int8 kernel that misbehaves on one CPU (seen: probabilities off by up to 0.43 on an emulated
ARM core with SME) would otherwise leave the recorder running blind with exit 0. The reference
windows are real audio (mono 16-bit FLAC at the frontend's rate, one window per class at least,
end to end); they go through the frontend and every member as one batch, exactly as when the
expected probabilities were written, so only the CPU and the libraries differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import soundfile

from edgemon.analysis.bundle import Bundle, SelfCheckSpec
from edgemon.analysis.frontend import FrontendConfig, features
from edgemon.errors import BundleError


class SelfCheckError(BundleError):
    """This CPU's member probabilities on the bundle's reference windows differ from the expected."""


@dataclasses.dataclass(frozen=True)
class SelfCheck:
    """Result of the self-check; ``max_abs_diff`` is None when the bundle has no reference windows."""

    windows: int
    tolerance: float | None
    max_abs_diff: float | None = None
    worst: str = ""               # "member01.onnx on window 3 (gibbon_duet)"

    @property
    def available(self) -> bool:
        return self.max_abs_diff is not None

    @property
    def passed(self) -> bool:
        return not self.available or self.max_abs_diff <= self.tolerance

    def summary(self) -> str:
        if not self.available:
            return "not run: the bundle carries no reference windows"
        verdict = "passed" if self.passed else "FAILED"
        return (f"{verdict}: {self.windows} reference windows, max |p - expected| = {self.max_abs_diff:.4f} "
                f"(tolerance {self.tolerance:g}{'' if self.passed else ', worst ' + self.worst})")

    def to_dict(self) -> dict:
        return {"result": "not run" if not self.available else "passed" if self.passed else "failed",
                "windows": self.windows, "max_abs_diff": None if self.max_abs_diff is None else round(self.max_abs_diff, 6),
                "tolerance": self.tolerance, "worst": self.worst or None, "summary": self.summary()}


def read_reference_audio(spec: SelfCheckSpec, sample_rate: int) -> np.ndarray:
    """The reference windows as float32 ``[windows, samples]`` in [-1, 1] at ``sample_rate`` Hz."""
    try:
        audio, rate = soundfile.read(spec.file, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as exc:
        raise BundleError(f"{spec.file}: unreadable reference windows: {str(exc).splitlines()[0]}") from exc
    lengths = [w.samples for w in spec.windows]
    if rate != sample_rate or audio.shape[1] != 1 or len(audio) != sum(lengths):
        raise BundleError(f"{spec.file}: reference audio is {len(audio)} samples x {audio.shape[1]} channel(s) "
                          f"at {rate} Hz, the manifest declares {sum(lengths)} x 1 at {sample_rate} Hz")
    return audio[:, 0].reshape(len(lengths), lengths[0])


def reference_features(audio: np.ndarray, frontend: FrontendConfig) -> np.ndarray:
    """Windows float32 ``[N, samples]`` -> model input float32 ``[N, frames, n_features]``, each window
    through the frontend on its own (as the expected probabilities were computed)."""
    return np.stack([features(window, frontend) for window in audio]).astype(np.float32)


def run_self_check(bundle: Bundle, member_probs: Callable[[np.ndarray], np.ndarray]) -> SelfCheck:
    """Compare ``member_probs(features)`` (``[M, N, C]``) with the bundle's expected probabilities."""
    spec = bundle.self_check
    if spec is None:
        return SelfCheck(windows=0, tolerance=None)
    got = member_probs(reference_features(read_reference_audio(spec, bundle.frontend.sample_rate), bundle.frontend))
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(spec.expected, np.float64))   # [M, N, C]
    if not np.all(np.isfinite(diff)):
        diff = np.where(np.isfinite(diff), diff, np.inf)
    m, w, _ = np.unravel_index(int(np.argmax(diff)), diff.shape)
    window = spec.windows[w]
    return SelfCheck(windows=len(spec.windows), tolerance=spec.tolerance, max_abs_diff=float(diff.max()),
                     worst=f"{bundle.members[m].file} on window {w} ({window.label})")
