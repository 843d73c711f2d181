"""Hard negatives: background clips that the model calls calls are drawn more in later epochs."""


from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgemon.analysis.frontend import FrontendConfig
from training.augment import AugmentConfig
from training.cli import app
from training.data import Clip, Split, load_split
from training.errors import DataError
from training.model import ModelConfig
from training.recipes import recipe_name
from training.train import OptimConfig, balanced_indices, hard_negative_emphasis, near_call_emphasis, train


def test_emphasis_weighs_clips_within_their_class_and_keeps_classes_balanced():
    targets = np.array([0] * 4 + [1] * 1996)
    emphasis = np.array([10.0, 1, 1, 1] + [1] * 1996)
    drawn = np.concatenate([balanced_indices(targets, np.random.default_rng(s), emphasis) for s in range(20)])
    counts = np.bincount(drawn, minlength=len(targets)) / len(drawn)
    assert abs(counts[:4].sum() - 0.5) < 0.015                    # each class still half the draws
    assert abs(counts[0] / counts[1] - 10) < 1.0                  # the hard one ten times its peers
    same = [balanced_indices(targets, np.random.default_rng(3), None), balanced_indices(targets, np.random.default_rng(3))]
    np.testing.assert_array_equal(*same)                          # off: the draws of before


def test_training_with_hard_negatives_mines_the_background_it_calls_calls(tiny_dataset):
    split = load_split(tiny_dataset, "train")
    optim = OptimConfig(epochs=4, lr=0.003, lr_decay=1.0, gamma=0.0, batch_size=8, hard_negatives=5.0)
    result = train(ModelConfig(hidden=8, layers=1, n_classes=3, n_mels=split.frontend.n_features), optim,
                   AugmentConfig(), split, split, progress=False, log_epochs=False)
    emphasis = hard_negative_emphasis(result.model, split, 5.0, "cpu")
    background = split.targets == 0
    assert np.all(emphasis[~background] == 1.0)
    assert np.all((emphasis[background] >= 1.0) & (emphasis[background] <= 6.0)) and len(result.history) == 4


def _named_split(names: list[str], targets: list[int]) -> Split:
    clips = [Clip(Path(n), ("background", "gibbon_duet")[t], n.split("_")[1] if "_" in n else "") for n, t in zip(names, targets)]
    return Split("named", clips, [np.zeros((4, 2), np.float32)] * len(clips), np.array(targets),
                 ("background", "gibbon_duet"), None, FrontendConfig())


def test_background_near_a_labelled_call_of_its_recording_is_drawn_more():
    split = _named_split([
        "noise_S11_20180312_080003_488.69_502.97_.flac",      # 2.7 s before the duet: near
        "noise_S11_20180312_080003_300.0_310.0_.flac",        # 195.6 s before it: not near
        "noise_S12_20180312_080003_500.0_505.0_.flac",        # the same times, another recording
        "duet_S11_20180312_080003_505.62_512.44_.flac",
        "noise_S11_20180312_080003_630.0_640.0_.flac",        # 117.6 s after it: near
        "a-clip-named-otherwise.flac"], [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(near_call_emphasis(split, 3.0), [4.0, 1, 1, 1, 4.0, 1])
    np.testing.assert_array_equal(near_call_emphasis(split, 3.0, within_s=200.0), [4.0, 4.0, 1, 1, 4.0, 1])


def test_near_call_negatives_on_clips_named_otherwise_is_refused_not_ignored():
    # a user's own clips carry no source recording and times in their names: the option did nothing, silently
    split = _named_split(["AM11_001.WAV", "AM11_002.WAV", "AM12_003.WAV"], [0, 1, 0])
    with pytest.raises(DataError, match="near-call-negatives.*'AM11_001.WAV'.*change nothing"):
        near_call_emphasis(split, 3.0)


def test_the_near_call_recipe_is_named_for_it():
    assert recipe_name("field", near_call_negatives=3.0) == "field-nc3"
    assert recipe_name("field", hard_negatives=4.0, near_call_negatives=2.0, mix_other_recorders=True) == "field-hn4-nc2-xrec"


def test_a_background_share_sets_how_much_of_an_epoch_is_background():
    targets = np.array([0] * 600 + [1] * 100 + [2] * 50 + [3] * 10)
    drawn = np.concatenate([balanced_indices(targets, np.random.default_rng(s), None, 0, 0.5) for s in range(20)])
    share = np.bincount(targets[drawn], minlength=4) / len(drawn)
    assert abs(share[0] - 0.5) < 0.02                              # background: the share asked for
    assert np.all(np.abs(share[1:] - 0.5 / 3) < 0.02)              # the calls split the rest equally
    emphasis = np.ones(len(targets))
    emphasis[0] = 50.0                                              # within background, emphasis still counts
    drawn = np.concatenate([balanced_indices(targets, np.random.default_rng(s), emphasis, 0, 0.5) for s in range(20)])
    assert np.mean(targets[drawn] == 0) == pytest.approx(0.5, abs=0.02)
    assert np.mean(drawn == 0) == pytest.approx(0.5 * 50 / 649, abs=0.01)
    with pytest.raises(ValueError, match="background_share"):
        balanced_indices(targets, np.random.default_rng(0), None, 0, 1.0)


def test_the_background_share_recipe_is_named_for_it_and_checked_on_the_command_line(tmp_path):
    assert recipe_name("field", background_share=0.5) == "field-bg0.5"
    assert recipe_name("field", near_call_negatives=3.0, background_share=0.5) == "field-nc3-bg0.5"
    result = CliRunner().invoke(app, ["cv", "--data", str(tmp_path), "--background-share", "1.5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--background-share must lie in [0, 1), got 1.5" in result.output
    result = CliRunner().invoke(app, ["fit", "--data", str(tmp_path), "--background-share", "-0.1", "--out", str(tmp_path / "f")])
    assert result.exit_code == 2 and "--background-share must lie in [0, 1), got -0.1" in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "f").exists()
