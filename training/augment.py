"""Augmentations on log-mel features ``[frames, n_mels]`` (numpy, per clip, before batching).

The paper's masks (frequency and time masking, applied with probability p_r) and, off in the
paper's recipe, field augmentations: random crops of the deployment window, time shift, mixing
in a background clip at a random SNR, and random gain. Mixing and gain work on mel power, which
is additive for independent sources, so no audio has to be decoded again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from training.recipes import PAPER


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    p_fm: float = PAPER.p_fm    # fraction of mel bins masked
    p_tm: float = PAPER.p_tm    # fraction of frames masked (at least one)
    p_r: float = PAPER.p_r      # probability of applying the masks to a clip
    crop_frames: int = 0        # random crop to this many frames (0: whole clip)
    time_shift: bool = False    # circular shift by a random number of frames
    p_mix: float = 0.0          # probability of mixing in a background clip
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_db: float = 0.0        # random gain, uniform in [-gain_db, +gain_db]
    mix_other_recorders: bool = False  # mix in only background heard by another recorder
    log_floor: float = 1e-6     # the frontend's, to move between log-mel and mel power

    @property
    def needs_background(self) -> bool:
        return self.p_mix > 0


def random_crop(x: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    if frames <= 0 or len(x) <= frames:
        return x
    start = rng.integers(0, len(x) - frames + 1)
    return x[start:start + frames]


def fit_length(x: np.ndarray, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random stretch of ``x`` exactly ``frames`` long, tiling ``x`` when it is shorter."""
    if len(x) < frames:
        x = np.tile(x, (int(np.ceil(frames / len(x))), 1))
    return random_crop(x, frames, rng)


def mix_background(x: np.ndarray, background: np.ndarray, snr_db: float, floor: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Add a background log-mel at ``snr_db`` (ratio of mean mel powers) in the power domain."""
    signal = np.maximum(np.exp(x) - floor, 0.0)
    noise = np.maximum(np.exp(fit_length(background, len(x), rng)) - floor, 0.0)
    scale = signal.mean() / max(noise.mean(), 1e-12) / 10 ** (snr_db / 10)
    return np.log(signal + scale * noise + floor).astype(np.float32)


def apply_gain(x: np.ndarray, gain_db: float, floor: float) -> np.ndarray:
    power = np.maximum(np.exp(x) - floor, 0.0) * 10 ** (gain_db / 10)
    return np.log(power + floor).astype(np.float32)


def mask(x: np.ndarray, p_fm: float, p_tm: float, rng: np.random.Generator, groups: int = 1) -> np.ndarray:
    """Zero-out (to the minimum) a band of ``p_fm`` of the bins and ``p_tm`` of the frames.

    ``groups`` > 1: the features are that many views of the same mel bands side by side (log-mel
    and PCEN); the same band is masked in each, each filled with its own minimum.
    """
    x = x.copy()
    frames, width = x.shape
    bins = width // groups
    views = [x[:, g * bins:(g + 1) * bins] for g in range(groups)]  # views: writes land in x
    fills = [v.min() for v in views]
    if p_fm > 0:
        band = max(1, int(round(p_fm * bins)))
        start = rng.integers(0, bins - band + 1)
        for view, fill in zip(views, fills):
            view[:, start:start + band] = fill
    if p_tm > 0:
        length = min(frames, max(1, int(round(p_tm * frames))))
        start = rng.integers(0, frames - length + 1)
        for view, fill in zip(views, fills):
            view[start:start + length, :] = fill
    return x


def augment(x: np.ndarray, config: AugmentConfig, rng: np.random.Generator,
            backgrounds: list[np.ndarray] | None = None,
            to_input: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """One training view of a clip's log-mel ``[frames, n_mels]``; returns a new float32 array.

    ``to_input`` turns the augmented log-mel into the model input (PCEN) before the masks, which
    hide parts of what the model sees.
    """
    x = random_crop(x, config.crop_frames, rng)
    if config.time_shift and len(x) > 1:
        x = np.roll(x, rng.integers(1, len(x)), axis=0)
    if backgrounds and rng.random() < config.p_mix:
        bg = backgrounds[rng.integers(len(backgrounds))]
        x = mix_background(x, bg, rng.uniform(*config.snr_db), config.log_floor, rng)
    if config.gain_db > 0:
        x = apply_gain(x, rng.uniform(-config.gain_db, config.gain_db), config.log_floor)
    groups = 1
    if to_input is not None:
        mel_bins = x.shape[1]
        x = to_input(x)
        groups = x.shape[1] // mel_bins
    if (config.p_fm > 0 or config.p_tm > 0) and rng.random() < config.p_r:
        x = mask(x, config.p_fm, config.p_tm, rng, groups)
    return np.ascontiguousarray(x, dtype=np.float32)
