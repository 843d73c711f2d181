"""Grouped cross-validation: no recorder on both sides of a fold; every recipe on the same folds."""

import json

import numpy as np

from training.augment import AugmentConfig
from training.cv import Recipe, cross_validate, grouped_folds, merge
from training.data import load_split
from training.model import ModelConfig
from training.train import OptimConfig


def test_folds_never_share_a_recorder_and_cover_every_clip(tiny_dataset):
    data = merge(load_split(tiny_dataset, "train"), load_split(tiny_dataset, "devel"))
    folds = grouped_folds(data, k=2)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen) == list(range(len(data)))
    for tr, va in folds:
        assert not {data.clips[i].recorder for i in tr} & {data.clips[i].recorder for i in va}


def test_cross_validate_scores_baseline_and_network_on_the_same_folds(tiny_dataset, tmp_path):
    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    net = Recipe("net", ModelConfig(hidden=8, layers=1), OptimConfig(epochs=3, lr=0.003, lr_decay=1.0, gamma=0.0,
                                                                     batch_size=8), AugmentConfig())
    summary = cross_validate([Recipe("baseline"), net], data, k=2, out=tmp_path)
    assert set(summary["recipes"]) == {"baseline", "net"}
    assert len(summary["recipes"]["net"]["mean_curve"]) == 3
    assert 1 <= summary["recipes"]["net"]["epoch"] <= 3
    for r in summary["recipes"].values():
        assert len(r["fold_uar"]) == 2 and 0 <= r["uar_mean"] <= 1
        assert np.array(r["confusion"]).sum() == len(data)   # pooled over folds: every clip once
    assert summary["recipes"]["baseline"]["uar_mean"] > 0.6   # tones vs noise, across recorders
    assert json.loads((tmp_path / "cv.json").read_text())["k"] == 2
    assert (tmp_path / "cv_confusion_net.png").is_file()
