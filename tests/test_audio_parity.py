"""One mix and one resampler for files and microphones: the same samples arriving as a recording
(``audio.iter_blocks``, what ``edgemon watch`` analyses) and as live callbacks (what the
``edgemon listen`` worker hands its analysis) reach the analysis identical, sample for sample."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import soundfile

from edgemon.analysis import audio
from edgemon.live.capture import BlockQueue
from edgemon.live.store_writer import StoreWriter
from edgemon.live.worker import ListenConfig, Listener
from tests.watch_helpers import analyzer


class KeepingAnalyzer:
    """The real analyzer; every sample array its streams are pushed is kept, in order."""

    def __init__(self, inner):
        self.inner = inner
        self.bundle = inner.bundle
        self.pushed: list[np.ndarray] = []

    def stream(self, **options):
        return _KeptStream(self.inner.stream(**options), self.pushed)


class _KeptStream:
    def __init__(self, inner, pushed: list[np.ndarray]):
        self.inner, self.pushed = inner, pushed

    def push(self, samples: np.ndarray):
        self.pushed.append(samples.copy())
        return self.inner.push(samples)

    def finish(self):
        return self.inner.finish()

    def __getattr__(self, name: str):      # the rest of the stream (open run, cut) as it is
        return getattr(self.inner, name)


def scene(rate: int, channels: int, seconds: float = 6.0) -> np.ndarray:
    """``[n, channels]`` float32: a different tone plus noise on each channel, so a mix that took
    one channel, or summed instead of averaging, would show."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(7).uniform(-0.1, 0.1, (len(t), channels))
    tones = np.stack([0.4 * np.sin(2 * np.pi * (700 + 900 * c) * t) for c in range(channels)], axis=1)
    return (tones + noise).astype(np.float32)


def live_samples(x: np.ndarray, rate: float, tmp_path) -> np.ndarray:
    """What the live worker analyses of ``x`` ([n, channels] float32, as PortAudio delivers it)
    fed in 0.1 s callbacks of one stream."""
    kept = KeepingAnalyzer(analyzer())
    blocks = BlockQueue(maxsize=10_000)
    listener = Listener(ListenConfig(), kept, blocks, StoreWriter(tmp_path / "d.db"), "live:test",
                        clock_synced=lambda: None)
    n, t = int(rate * 0.1), blocks.clock()
    for at in range(0, len(x), n):
        t += n / rate
        assert blocks.put(1, rate, x[at:at + n], t, float("nan"), False)
    drain = threading.Event()
    drain.set()
    listener.run(drain)
    return np.concatenate(kept.pushed)


@pytest.mark.parametrize("rate, channels, subtype", [(48000, 2, "FLOAT"), (44100, 1, "PCM_16"),
                                                     (16000, 2, "PCM_16")])
def test_a_recording_and_a_live_stream_of_the_same_samples_are_analysed_alike(tmp_path, rate, channels, subtype):
    path = tmp_path / "scene.wav"
    soundfile.write(path, scene(rate, channels), rate, subtype=subtype)
    from_file = np.concatenate(list(audio.iter_blocks(path, block_seconds=10.0)))
    # PortAudio hands the worker float32; libsndfile's float view of 16-bit PCM is x / 32768.
    as_device = soundfile.read(path, dtype="float32", always_2d=True)[0]
    from_live = live_samples(as_device, float(rate), tmp_path)
    assert from_file.dtype == from_live.dtype == np.float32
    assert len(from_file) == len(from_live) == pytest.approx(6.0 * 16000, abs=2)
    np.testing.assert_array_equal(from_live, from_file)


def test_the_mix_averages_channels_and_the_resampler_passes_equal_rates_through():
    stereo = np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)
    np.testing.assert_array_equal(audio.mono(stereo), [0.125, 0.5])
    pcm = np.array([[16384, -8192], [-32768, 0]], np.int16)
    np.testing.assert_array_equal(audio.mono(pcm), [0.125, -0.5])
    x = np.arange(5, dtype=np.float32)
    assert audio.Resampler(16000, 16000).push(x) is x
    chunked = audio.Resampler(48000, 16000)
    out = np.concatenate([chunked.push(part) for part in np.split(scene(48000, 1, 1.0)[:, 0], 4)]
                         + [chunked.push(np.zeros(0, np.float32), last=True)])
    assert len(out) == 16000
