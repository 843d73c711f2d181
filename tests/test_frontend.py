"""The numpy frontend against librosa, an independent implementation of the same STFT and mel."""

import numpy as np
import pytest

from edgemon.errors import FrontendMismatchError
from edgemon.frontend import FrontendConfig, log_mel, mel_filterbank, mel_power

librosa = pytest.importorskip("librosa")

CONFIG = FrontendConfig()


def test_filterbank_matches_librosa():
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=0.0, fmax=8000.0)
    np.testing.assert_allclose(mel_filterbank(CONFIG), ref.T, atol=1e-7)


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
    with pytest.raises(FrontendMismatchError, match="pcen"):
        FrontendConfig.from_dict({**CONFIG.to_dict(), "kind": "pcen"})
    with pytest.raises(FrontendMismatchError, match="unknown frontend parameters"):
        FrontendConfig.from_dict({**CONFIG.to_dict(), "dither": 1})


@pytest.mark.parametrize("n_samples, block", [(n, b) for n in (1, 511, 513, 5000, 48017) for b in (1, 7, 512, 4096)
                                               if not (b == 1 and n > 5000)])  # 48k one-sample pushes: slow
def test_streaming_frontend_equals_one_shot(n_samples, block):
    from edgemon.frontend import StreamingLogMel

    x = (0.1 * np.random.default_rng(n_samples).standard_normal(n_samples)).astype(np.float32)
    stream = StreamingLogMel(CONFIG)
    frames = [stream.push(x[i:i + block]) for i in range(0, n_samples, block)] + [stream.finish()]
    np.testing.assert_allclose(np.concatenate(frames), log_mel(x, CONFIG), atol=1e-4)
