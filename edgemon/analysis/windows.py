"""Cutting a log-mel sequence into the fixed windows a bundle declares."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgemon.analysis.frontend import FrontendConfig


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Window length and hop in frames (one frame = ``hop_length / sample_rate`` seconds)."""

    frames: int
    hop: int

    @classmethod
    def from_seconds(cls, window_s: float, hop_s: float, frontend: FrontendConfig) -> "WindowSpec":
        frame_s = frontend.hop_length / frontend.sample_rate
        return cls(frames=max(2, int(round(window_s / frame_s))), hop=max(1, int(round(hop_s / frame_s))))


def window_starts(n_frames: int, spec: WindowSpec) -> np.ndarray:
    """First frame of each window: every ``hop`` frames, plus one window ending on the last frame
    so the tail is never skipped. A sequence shorter than a window gives one (short) window."""
    if n_frames <= spec.frames:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, n_frames - spec.frames + 1, spec.hop))
    if starts[-1] + spec.frames < n_frames:
        starts.append(n_frames - spec.frames)
    return np.asarray(starts, dtype=np.int64)


def cut_windows(logmel: np.ndarray, spec: WindowSpec) -> tuple[np.ndarray, np.ndarray]:
    """``[frames, n_mels]`` -> (windows ``[N, min(frames, spec.frames), n_mels]``, starts ``[N]``)."""
    starts = window_starts(len(logmel), spec)
    length = min(len(logmel), spec.frames)
    windows = np.stack([logmel[s:s + length] for s in starts])
    return windows, starts
