"""The one feature frontend, shared by training and the recorder.

16 kHz mono float32 in [-1, 1] -> model input ``[frames, n_features]``: log-mel (the paper's),
per-channel energy normalisation (PCEN) of the same mel power, or both side by side
(``logmel_pcen``, ``2 * n_mels`` features). Its parameters are a frozen
dataclass that every model carries (``FrontendConfig.to_dict``); the recorder rebuilds it with
``FrontendConfig.from_dict`` and refuses a model whose frontend it does not compute.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from edgemon.errors import FrontendMismatchError

KNOWN_KINDS = ("logmel", "pcen", "logmel_pcen")


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    """Frontend parameters. Defaults are the paper's log-mel: n_fft 1024, hop 512, 128 bands at 16 kHz."""

    kind: str = "logmel"
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    # Periodic Hann window, centred frames with zero padding, power spectrum, Slaney mel scale
    # and area-normalised filters: the same as librosa's defaults, so it can be checked against it.
    log_floor: float = 1e-6  # natural log of (mel power + floor); keeps silence finite
    # PCEN (kind "pcen") of E = (mel power + log_floor) * pcen_input_scale, as librosa.pcen:
    # M_t = (1 - b) M_{t-1} + b E_t with b from the time constant, started at M = E_0 so a
    # stream needs no warm-up; out = (E / (eps + M)^gain + bias)^power - bias^power.
    # The smoother follows each band's own noise floor, so a recorder's level and its stationary
    # hum or insect chorus cancel out. The scale is librosa's advice for audio in [-1, 1].
    pcen_time_constant: float = 0.4
    pcen_gain: float = 0.98
    pcen_bias: float = 2.0
    pcen_power: float = 0.5
    pcen_eps: float = 1e-6
    pcen_input_scale: float = 2.0 ** 31

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FrontendConfig":
        """Rebuild from a model's metadata; raise ``FrontendMismatchError`` on anything unknown."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise FrontendMismatchError(f"unknown frontend parameters {unknown}")
        kind = data.get("kind", "logmel")
        if kind not in KNOWN_KINDS:
            raise FrontendMismatchError(f"unknown frontend kind {kind!r} (this edgemon computes {KNOWN_KINDS})")
        return cls(**data)

    @property
    def n_features(self) -> int:
        """Width of one frame of model input."""
        return 2 * self.n_mels if self.kind == "logmel_pcen" else self.n_mels

    def columns_of(self, kind: str) -> tuple[int, int]:
        """The ``[start, stop)`` feature columns that hold ``kind``'s features in this frontend's
        output, so one ``logmel_pcen`` stream can feed log-mel and PCEN models side by side."""
        layout = {"logmel": {"logmel": 0}, "pcen": {"pcen": 0},
                  "logmel_pcen": {"logmel": 0, "pcen": self.n_mels}}[self.kind]
        if kind == self.kind:
            return 0, self.n_features
        if kind not in layout:
            raise FrontendMismatchError(f"a {self.kind} frontend does not compute {kind} features")
        return layout[kind], layout[kind] + self.n_mels

    @property
    def pcen_b(self) -> float:
        """The smoother's coefficient, as librosa derives it from the time constant."""
        t_frames = self.pcen_time_constant * self.sample_rate / self.hop_length
        return float((np.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2))

    def frames_for(self, n_samples: int) -> int:
        """Number of frames ``logmel`` returns for ``n_samples`` samples (centred frames)."""
        return 1 + n_samples // self.hop_length



def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    log_region = hz >= min_log_hz
    mel[log_region] = min_log_mel + np.log(hz[log_region] / min_log_hz) / logstep
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mel
    log_region = mel >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mel[log_region] - min_log_mel))
    return hz


@lru_cache(maxsize=8)
def mel_filterbank(config: FrontendConfig) -> np.ndarray:
    """Triangular Slaney-normalised filters, float32 ``[n_fft // 2 + 1, n_mels]``."""
    fft_hz = np.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(np.array([config.f_min]))[0],
                                     hz_to_mel(np.array([config.f_max]))[0], config.n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    return np.ascontiguousarray(weights.T, dtype=np.float32)


MEL_BAND_FILTERS = 8  # filters per band of ``apply_mel``: fewest multiply-adds, measured 8-64


@lru_cache(maxsize=8)
def _mel_bands(config: FrontendConfig) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """The filterbank as bands of ``MEL_BAND_FILTERS`` adjacent filters, each with the only FFT
    bins its filters weigh: ``(first filter, first bin, end bin, weights [bins, filters])``."""
    weights = mel_filterbank(config)
    bands = []
    for first in range(0, weights.shape[1], MEL_BAND_FILTERS):
        band = weights[:, first:first + MEL_BAND_FILTERS]
        used = np.flatnonzero(band.any(axis=1))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 0)
        bands.append((first, lo, hi, np.ascontiguousarray(band[lo:hi])))
    return tuple(bands)


def apply_mel(power: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """``power @ mel_filterbank(config)``, band by band: a triangular filter weighs a few bins, so
    the dense product is nine parts in ten zeros (a third of the time at 128 bands, one core)."""
    out = np.zeros((len(power), config.n_mels), np.float32)
    for first, lo, hi, band in _mel_bands(config):
        if hi > lo:
            np.matmul(power[:, lo:hi], band, out=out[:, first:first + band.shape[1]])
    return out


@lru_cache(maxsize=8)
def _window(n_fft: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann, float64


def power_spectrogram(samples: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """|STFT|^2 of centred, zero-padded frames: float32 ``[frames, n_fft // 2 + 1]``."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples of shape [n], got {x.shape}")
    pad = config.n_fft // 2
    return _frame_power(np.pad(x, (pad, pad)), config)


def _frame_power(x: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """|rfft|^2 of every whole ``n_fft`` frame of ``x`` at ``hop_length`` (no padding): ``[k, bins]``."""
    n_frames = 0 if len(x) < config.n_fft else 1 + (len(x) - config.n_fft) // config.hop_length
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, config.n_fft), strides=(x.strides[0] * config.hop_length, x.strides[0]),
        writeable=False)
    # float64 frames: numpy's pocketfft is faster in double than in single precision (12.6 vs
    # 14.9 ms per minute of audio, one core, numpy 2.4), and more accurate.
    spectrum = np.fft.rfft(frames * _window(config.n_fft), axis=1)
    parts = spectrum.view(np.float64)
    parts *= parts
    return (parts[:, 0::2] + parts[:, 1::2]).astype(np.float32)


def mel_power(samples: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Mel power spectrogram, float32 ``[frames, n_mels]``; ``samples`` at ``config.sample_rate``."""
    return apply_mel(power_spectrogram(samples, config), config)


def log_mel(samples: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """``ln(mel power + log_floor)``, float32 ``[frames, n_mels]``; the paper's model input.

    ``samples`` is mono float32 in [-1, 1] at ``config.sample_rate``; frames are centred, so
    ``n`` samples give ``1 + n // hop_length`` frames (one frame at 512-sample hop is 32 ms).
    """
    return np.log(mel_power(samples, config) + np.float32(config.log_floor))


SMOOTHER_BLOCK = 64  # frames per matrix product; (1 - b)^64 stays far from underflow


@lru_cache(maxsize=4)
def _smoother_kernel(b: float) -> tuple[np.ndarray, np.ndarray]:
    """``K[t, s] = b (1 - b)^(t - s)`` for ``s <= t`` and ``decay[t] = (1 - b)^(t + 1)``; the
    top-left ``n x n`` corner is the kernel of a shorter block."""
    t = np.arange(SMOOTHER_BLOCK)
    lag = t[:, None] - t[None, :]
    kernel = np.where(lag >= 0, b * (1 - b) ** np.maximum(lag, 0), 0.0)
    return kernel, (1 - b) ** (t + 1)


def _smoother(e: np.ndarray, b: float, start: np.ndarray) -> np.ndarray:
    """``M_t = (1 - b) M_{t-1} + b E_t`` along time for every band, from ``M_{-1} = start``.

    The first-order IIR unrolled over blocks of frames, each one matrix product: the same values
    (float64) as the frame-by-frame loop, which cost more than the FFT on a recorder's CPU.
    """
    out = np.empty_like(e)
    m = np.asarray(start, np.float64)
    kernel, decay = _smoother_kernel(b)
    for i in range(0, len(e), SMOOTHER_BLOCK):
        block = e[i:i + SMOOTHER_BLOCK]
        n = len(block)
        out[i:i + n] = kernel[:n, :n] @ block + decay[:n, None] * m
        m = out[i + n - 1]
    return out


def pcen(energy: np.ndarray, config: FrontendConfig, smooth: np.ndarray | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """PCEN of ``energy`` = mel power + log_floor ``[frames, n_mels]``, continuing from ``smooth``.

    Returns float32 features and the smoother's last row, to pass to the next block of a stream.
    """
    e = np.asarray(energy, np.float64) * config.pcen_input_scale
    out = np.empty(e.shape, np.float32)
    if len(e) == 0:
        return out, smooth
    ms = _smoother(e, config.pcen_b, e[0] if smooth is None else smooth)
    # The smoother's state stays float64 (it carries across a whole stream); the pointwise part
    # runs in float32, in place, whose SIMD logs and exps take about a third less time (values
    # within 4e-6 relative of float64).
    f32 = np.float32
    x = ms.astype(np.float32)
    x += f32(config.pcen_eps)
    np.log(x, out=x)
    x *= f32(-config.pcen_gain)
    np.exp(x, out=x)
    x *= e.astype(np.float32)                       # x = E / (eps + M)^gain
    bias = f32(config.pcen_bias)
    if config.pcen_power == 0.5:
        # (x + b)^0.5 - b^0.5 = x / ((x + b)^0.5 + b^0.5): two square roots instead of a log and
        # an exp, and no cancellation when x << b. A quarter of the time of the general form.
        np.divide(x, np.sqrt(x + bias) + np.sqrt(bias), out=out)
    else:
        power = f32(config.pcen_power)
        out[:] = bias ** power * np.expm1(power * np.log1p(x / bias))
    return out, ms[-1].copy()


def from_mel_power(mel: np.ndarray, config: FrontendConfig, smooth: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Model input from mel power (float32), continuing a PCEN stream from ``smooth``."""
    if config.kind == "logmel":
        return np.log(mel + np.float32(config.log_floor)), None
    normalised, smooth = pcen(mel.astype(np.float64) + config.log_floor, config, smooth)
    if config.kind == "pcen":
        return normalised, smooth
    return np.concatenate([np.log(mel + np.float32(config.log_floor)), normalised], axis=1), smooth


def features_from_log_mel(x: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """The model input from a log-mel made with the same config (training augments log-mel)."""
    if config.kind == "logmel":
        return x
    normalised = pcen(np.exp(np.asarray(x, np.float64)), config)[0]
    return normalised if config.kind == "pcen" else np.concatenate([x, normalised], axis=1)


def features(samples: np.ndarray, config: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """The model input of ``samples``, whichever kind ``config`` names."""
    return from_mel_power(mel_power(samples, config), config)[0]


class StreamingFrontend:
    """``features`` over a stream of sample blocks, frame for frame identical to the one-shot call.

    ``push(block)`` returns the frames whose whole FFT support has arrived; ``finish()`` pads the
    end with zeros as the one-shot call does and returns the rest. Holds under ``n_fft`` samples
    (and, for PCEN, the smoother's last row).
    """

    def __init__(self, config: FrontendConfig = FrontendConfig()):
        self.config = config
        self._pending = np.zeros(config.n_fft // 2, np.float32)  # the leading centre padding
        self._samples_in = 0
        self._smooth: np.ndarray | None = None
        self.frames_out = 0

    def _frames(self, samples: np.ndarray) -> np.ndarray:
        c = self.config
        power = _frame_power(samples, c)
        self._pending = samples[len(power) * c.hop_length:].copy()
        self.frames_out += len(power)
        out, self._smooth = from_mel_power(apply_mel(power, c), c, self._smooth)
        return out

    def push(self, block: np.ndarray) -> np.ndarray:
        """Mono float32 samples at ``config.sample_rate`` -> new frames ``[k, n_mels]``."""
        block = np.asarray(block, dtype=np.float32)
        self._samples_in += len(block)
        return self._frames(np.concatenate([self._pending, block]))

    def finish(self) -> np.ndarray:
        """The remaining frames: ``1 + samples // hop`` in all, as ``features`` gives."""
        c = self.config
        total = c.frames_for(self._samples_in)
        missing = total - self.frames_out
        if missing <= 0:
            return np.zeros((0, c.n_features), np.float32)
        needed = (missing - 1) * c.hop_length + c.n_fft
        tail = np.pad(self._pending, (0, max(0, needed - len(self._pending))))
        return self._frames(tail)[:missing]
