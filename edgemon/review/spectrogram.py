"""Spectrogram images drawn on the server: numpy STFT and a minimal PNG writer (zlib), so the
recorder needs no plotting library."""

from __future__ import annotations

import struct
import zlib

import numpy as np

# A perceptually ordered dark-blue -> green -> yellow ramp (viridis' end points and mid-points).
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)
SILENCE_TOP_DB = -30.0   # dB of a bin's power (full-scale sine: about +42 with these frames)
MARK_ROWS = 6    # the strip under the spectrogram that marks the detection
PALETTE = np.stack([np.interp(np.linspace(0, 4, 256), np.arange(5), _ANCHORS[:, c]) for c in range(3)],
                   axis=1).astype(np.uint8)  # [256, 3]


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 ``[height, width, 3]`` -> PNG file bytes (8-bit RGB, no interlace, filter 0)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + chunk(b"IEND", b""))


def spectrogram_rgb(samples: np.ndarray, rate: int, *, mark: tuple[float, float] | None = None,
                    n_fft: int = 512, hop: int = 128, max_hz: float = 8000.0, width: int = 600,
                    dynamic_db: float = 70.0) -> np.ndarray:
    """Mono float32 samples at ``rate`` Hz -> uint8 ``[bins up to max_hz + MARK_ROWS, width, 3]``:
    log power, low frequencies at the bottom, the loudest ``dynamic_db`` dB shown. Below it a dark
    strip where ``mark`` (start, end seconds) is white, so the detection stands out from its rolls."""
    samples = np.asarray(samples, np.float32)
    if len(samples) < n_fft:
        samples = np.pad(samples, (0, n_fft - len(samples)))
    window = np.hanning(n_fft).astype(np.float32)
    count = (len(samples) - n_fft) // hop + 1                            # frames in the excerpt
    # Time resampled to a fixed width so every row of the page lines up: only the frames shown
    # are computed (all of them, a minute at 96 kHz held 560 MiB at once: a review).
    columns = np.minimum((np.arange(width) * count / width).astype(int), count - 1)
    shown, column_of = np.unique(columns, return_inverse=True)
    frames = samples[(shown * hop)[:, None] + np.arange(n_fft)] * window   # [<= width, n_fft]
    bins = int(np.searchsorted(np.fft.rfftfreq(n_fft, 1 / rate), min(max_hz, rate / 2), side="right"))
    power = np.abs(np.fft.rfft(frames, axis=1)[:, :bins]) ** 2
    db = 10 * np.log10(power + 1e-12)
    # The loudest level shown is at least SILENCE_TOP_DB: silence stays dark (normalised to its
    # own loudest bin, digital silence was drawn bright yellow: a review).
    top = max(float(db.max()), SILENCE_TOP_DB)
    level = np.clip((db - (top - dynamic_db)) / dynamic_db, 0, 1)
    image = PALETTE[(level[column_of].T[::-1] * 255).astype(np.uint8)]   # [bins, width, 3]
    strip = np.full((MARK_ROWS, width, 3), 40, np.uint8)
    if mark is not None:
        seconds = len(samples) / rate
        x0, x1 = (int(np.clip(t / seconds * width, 0, width)) for t in mark)
        strip[1:, x0:max(x1, x0 + 1)] = 255
    return np.concatenate([image, strip])


def spectrogram_png(samples: np.ndarray, rate: int, mark: tuple[float, float] | None = None) -> bytes:
    return png_bytes(spectrogram_rgb(samples, rate, mark=mark))
