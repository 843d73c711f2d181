"""The numpy frontend against librosa, an independent implementation of the same STFT and mel."""

import dataclasses

import numpy as np
import pytest

from edgemon.errors import FrontendMismatchError
from edgemon.analysis.frontend import (FrontendConfig, StreamingFrontend, apply_mel, features, features_from_log_mel,
                              log_mel, mel_filterbank, mel_power)

librosa = pytest.importorskip("librosa")

CONFIG = FrontendConfig()
PCEN = FrontendConfig(kind="pcen")
BOTH = FrontendConfig(kind="logmel_pcen")


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(mel_filterbank(CONFIG), ref.T, atol=1e-7)


@pytest.mark.parametrize("config", [CONFIG, FrontendConfig(n_mels=40), FrontendConfig(n_mels=256, f_min=50.0, f_max=4000.0),
                                    FrontendConfig(n_fft=512, n_mels=13)])
def test_the_banded_mel_product_equals_the_dense_one(config):
    power = np.random.default_rng(config.n_mels).random((37, config.n_fft // 2 + 1), dtype=np.float32)
    dense = power @ mel_filterbank(config)
    np.testing.assert_allclose(apply_mel(power, config), dense, rtol=1e-5, atol=1e-7 * dense.max())


@pytest.mark.filterwarnings("ignore:n_fft=1024 is too large")
@pytest.mark.parametrize("n_samples", [1, 511, 512, 1024, 16000, 48123])
def test_mel_power_matches_librosa(n_samples):
    rng = np.random.default_rng(n_samples)
    y = (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
    ref = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=1024, hop_length=512, n_mels=128,
                                         center=True, pad_mode="constant", power=2.0).T
    ours = mel_power(y, CONFIG)
    assert ours.shape == ref.shape == (CONFIG.frames_for(n_samples), 128)
    # Tolerance: float32 FFT vs librosa's; 1e-5 of the spectrum's peak, and 1e-3 in log-mel.
    np.testing.assert_allclose(ours, ref, atol=1e-5 * ref.max())
    np.testing.assert_allclose(log_mel(y, CONFIG), np.log(ref + CONFIG.log_floor), atol=1e-3)


def test_tone_lands_in_the_right_band():
    t = np.arange(16000) / 16000
    features = log_mel((0.5 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32))
    centres = librosa.mel_frequencies(n_mels=130, fmin=0, fmax=8000)[1:-1]
    assert abs(centres[features[5:-5].mean(0).argmax()] - 2000) < 60


def test_silence_is_finite():
    assert np.isfinite(log_mel(np.zeros(5000, np.float32))).all()


def test_config_round_trip_and_refusals():
    assert FrontendConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(FrontendMismatchError, match="cqt"):
        FrontendConfig.from_dict({**CONFIG.to_dict(), "kind": "cqt"})
    old_manifest = {k: v for k, v in CONFIG.to_dict().items() if not k.startswith("pcen")}
    assert FrontendConfig.from_dict(old_manifest) == CONFIG  # bundles from before PCEN still load
    with pytest.raises(FrontendMismatchError, match="unknown frontend parameters"):
        FrontendConfig.from_dict({**CONFIG.to_dict(), "dither": 1})


@pytest.mark.parametrize("n_samples, block", [(n, b) for n in (1, 511, 513, 5000, 48017) for b in (1, 7, 512, 4096)
                                               if not (b == 1 and n > 5000)])  # 48k one-sample pushes: slow
@pytest.mark.parametrize("config", [CONFIG, PCEN, BOTH], ids=["logmel", "pcen", "both"])
def test_streaming_frontend_equals_one_shot(n_samples, block, config):
    x = (0.1 * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)
    stream = StreamingFrontend(config)
    frames = [stream.push(x[i:i + block]) for i in range(0, n_samples, block)] + [stream.finish()]
    np.testing.assert_allclose(np.concatenate(frames), features(x, config), atol=1e-4)


def _chirps(seconds: float = 6.0, level: float = 0.1) -> np.ndarray:
    """Pink-ish noise with a 2 kHz tone burst each second: a stationary floor plus calls."""
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.cumsum(rng.standard_normal(len(t))) * 1e-3
    noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    tone = np.sin(2 * np.pi * 2000 * t) * ((t % 1.0) < 0.2)
    return (level * (noise / noise.std() * 0.2 + tone)).astype(np.float32)


@pytest.mark.parametrize("power", [0.5, 0.25])  # 0.5 takes the square-root form, others the general one
def test_pcen_matches_librosa(power):
    config = dataclasses.replace(PCEN, pcen_power=power)
    y = _chirps()
    energy = mel_power(y, config).astype(np.float64) + config.log_floor
    scaled = (energy * config.pcen_input_scale).T
    ref = librosa.pcen(scaled, sr=16000, hop_length=512, gain=0.98, bias=2.0, power=power,
                       time_constant=0.4, eps=1e-6, zi=(1 - config.pcen_b) * scaled[:, :1]).T
    ours = features(y, config)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * ref.max())
    np.testing.assert_allclose(features_from_log_mel(log_mel(y, config), config), ours, rtol=1e-3, atol=1e-3)


def test_pcen_cancels_level_and_stationary_floor():
    # 20 dB louder: log-mel moves by ln(100) everywhere, PCEN hardly moves (gain 0.98 of the floor).
    quiet, loud = _chirps(level=0.01), _chirps(level=0.1)
    shift = np.abs(log_mel(loud) - log_mel(quiet)).mean()
    pcen_shift = np.abs(features(loud, PCEN) - features(quiet, PCEN)).mean()
    assert shift > 4.0 and pcen_shift < 0.2 * features(loud, PCEN).std()
    # The tone stands out of its band far more than the stationary noise does.
    out = features(loud, PCEN)
    band = np.abs(librosa.mel_frequencies(n_mels=130, fmin=0, fmax=8000)[1:-1] - 2000).argmin()
    frames = np.arange(len(out)) * 512 / 16000
    calling = (frames % 1.0) < 0.2
    assert out[calling, band].mean() > 5 * out[~calling, band].mean()


def test_logmel_pcen_is_both_side_by_side():
    y = _chirps()
    both = features(y, BOTH)
    assert BOTH.n_features == both.shape[1] == 256 and CONFIG.n_features == 128
    np.testing.assert_allclose(both[:, :128], log_mel(y, CONFIG), atol=1e-5)
    np.testing.assert_allclose(both[:, 128:], features(y, PCEN), atol=1e-5)
    np.testing.assert_allclose(features_from_log_mel(log_mel(y), BOTH), both, rtol=1e-3, atol=1e-3)


def test_columns_of_names_each_kinds_place_in_a_combined_stream():
    from edgemon.errors import FrontendMismatchError

    both = FrontendConfig(kind="logmel_pcen")
    assert both.columns_of("logmel") == (0, 128) and both.columns_of("pcen") == (128, 256)
    assert both.columns_of("logmel_pcen") == (0, 256) and FrontendConfig().columns_of("logmel") == (0, 128)
    with pytest.raises(FrontendMismatchError, match="does not compute pcen"):
        FrontendConfig().columns_of("pcen")
