"""Hard negatives: background clips that the model calls calls are drawn more in later epochs."""


import numpy as np

from training.augment import AugmentConfig
from training.data import load_split
from training.model import ModelConfig
from training.train import OptimConfig, balanced_indices, hard_negative_emphasis, train


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
