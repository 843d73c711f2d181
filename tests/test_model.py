"""The paper's network, piece by piece."""

import pytest
import torch
from einops import rearrange
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from training.losses import focal_loss
from training.model import (BiLSTM, ModelConfig, NormalisedSoftmaxHead, PrimateBiLSTM,
                            count_parameters, pair_frames)


def test_pairing_stacks_consecutive_frames_and_repeats_the_last_when_odd():
    x = torch.arange(5 * 2, dtype=torch.float32).reshape(1, 5, 2)  # frames 0..4, 2 bins
    paired = pair_frames(x)
    assert paired.shape == (1, 3, 4)
    assert paired[0, 0].tolist() == [0, 1, 2, 3]          # frames 0 and 1 side by side
    assert paired[0, 2].tolist() == [8, 9, 8, 9]          # frame 4 repeated
    # Same as the paper's einops expression on an even-length input (Eq. 3).
    even = torch.randn(3, 8, 4)
    assert torch.equal(pair_frames(even), rearrange(even, "b (t k) f -> b t (k f)", k=2))


def test_pairing_in_a_padded_batch_repeats_each_rows_own_last_frame():
    x = torch.randn(2, 6, 3)
    paired = pair_frames(x, torch.tensor([6, 3]))
    assert torch.equal(paired[1, :2], pair_frames(x[1:, :3])[0])


def test_reversal_within_length_equals_packed_sequences():
    torch.manual_seed(0)
    encoder = BiLSTM(4, 8, layers=2, dropout=0.0).eval()
    reference = encoder.to_bidirectional().eval()
    x, lengths = torch.randn(3, 9, 4), torch.tensor([9, 5, 1])
    with torch.no_grad():
        ours = encoder(x, lengths)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        ref, _ = pad_packed_sequence(reference(packed)[0], batch_first=True, total_length=9)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(ours[i, :n], ref[i, :n], atol=1e-6, rtol=0)


def test_padding_does_not_change_a_clips_output():
    torch.manual_seed(1)
    model = PrimateBiLSTM(ModelConfig(hidden=16, layers=2)).eval()
    x, lengths = torch.randn(3, 11, 128), torch.tensor([11, 7, 1])
    with torch.no_grad():
        batch_logits, _ = model(x, lengths)
        for i, n in enumerate(lengths):
            alone, _ = model(x[i:i + 1, :n])
            torch.testing.assert_close(alone[0], batch_logits[i], atol=1e-5, rtol=0)


def test_parameter_count_of_the_table2_model():
    # Eq. 5 makes the pooled vector 6h wide: 3,811,840 parameters at h=256, l=2 (the paper's
    # "3h -> 2h" first MLP layer would give 3,418,624, its reported ~3.5 M).
    assert count_parameters(PrimateBiLSTM(ModelConfig(hidden=256, layers=2))) == 3_811_840


def test_normalised_softmax_is_cosine_over_tau():
    head = NormalisedSoftmaxHead(dim=3, n_classes=2, tau=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    logits = head(torch.tensor([[10.0, 0, 0]]))
    torch.testing.assert_close(logits, torch.tensor([[2.0, 0.0]]))


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_smaller_above():
    logits, targets = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(focal_loss(logits, targets, 0.0), ce)
    assert focal_loss(logits, targets, 3.0) < ce


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_shortest_inputs_work(frames):
    model = PrimateBiLSTM(ModelConfig(hidden=8, layers=1)).eval()
    logits, embedding = model(torch.randn(2, frames, 128))
    assert logits.shape == (2, 5) and embedding.shape == (2, 8)


def test_centred_bands_ignore_a_windows_level_and_padding():
    torch.manual_seed(2)
    model = PrimateBiLSTM(ModelConfig(hidden=8, layers=1, centre_bands=True)).eval()
    plain = PrimateBiLSTM(ModelConfig(hidden=8, layers=1)).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 9, 128)
    shifted = x + torch.linspace(-20, 5, 128)  # another recorder's gain and spectral colour
    padded = torch.cat([x, torch.full((2, 4, 128), 99.0)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(shifted)[0], model(x)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(model(padded, torch.tensor([9, 9]))[0], model(x)[0], atol=1e-5, rtol=0)
        assert not torch.allclose(plain(shifted)[0], plain(x)[0], atol=1e-3)
