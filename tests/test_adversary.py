"""The recorder adversary: its gradient into the model is reversed, and it needs recorders."""

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.adversary import RecorderAdversary, ramp, recorder_ids
from training.augment import AugmentConfig
from training.cli import app
from training.data import load_split
from training.errors import DataError
from training.model import ModelConfig
from training.train import OptimConfig, train


def test_the_model_gets_the_recorder_guess_gradient_reversed_and_scaled():
    torch.manual_seed(0)
    adversary = RecorderAdversary(6, 3)
    embedding = torch.randn(5, 6, requires_grad=True)
    recorders = torch.tensor([0, 1, 2, -100, 1])  # -100: a clip with no recorder, ignored
    adversary.loss(embedding, recorders, 0.5).backward()
    reversed_grad = embedding.grad.clone()
    plain = embedding.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(adversary.net(plain), recorders, ignore_index=-100).backward()
    assert torch.allclose(reversed_grad, -0.5 * plain.grad)
    assert torch.count_nonzero(reversed_grad[3]) == 0


def test_the_schedule_starts_at_nothing_and_grows_towards_one():
    values = [ramp(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0 and all(a < b for a, b in zip(values, values[1:])) and 0.99 < values[-1] < 1


def test_recorders_become_indices_and_a_split_without_them_is_refused(tiny_dataset):
    split = load_split(tiny_dataset, "train")
    ids, count = recorder_ids(split)
    names = sorted({c.recorder for c in split.clips})
    assert count == len(names) >= 2
    assert [names[i] for i in ids] == [c.recorder for c in split.clips]
    nameless = dataclasses.replace(split, clips=[dataclasses.replace(c, recorder="") for c in split.clips])
    with pytest.raises(DataError, match="recorder-adversary needs the training clips' recorders"):
        recorder_ids(nameless)


def test_training_with_the_adversary_changes_the_model_and_exports_it_alone(tiny_dataset, tmp_path):
    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    model = ModelConfig(hidden=8, layers=1, n_classes=3)

    def run(weight):
        return train(model, OptimConfig(epochs=2, batch_size=8, lr=0.01, seed=0, recorder_adversary=weight),
                     AugmentConfig(), train_split, devel, progress=False)

    plain, faint, adversarial = run(0.0), run(1e-12), run(1.0)
    assert "adversary_loss" not in plain.history[0]
    assert all(0 < h["adversary_loss"] < 10 for h in adversarial.history)
    faint, adversarial = faint.model.state_dict(), adversarial.model.state_dict()
    assert plain.model.state_dict().keys() == adversarial.keys()   # the export holds the classifier alone
    # The same draws and the same adversary, only its reversed gradient's weight differs: the model does.
    assert any(not torch.equal(faint[k], adversarial[k]) for k in faint)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(out), "--hidden", "16",
                                      "--layers", "1", "--epochs", "2", "--quiet", "--recorder-adversary", "0.5"])
    assert result.exit_code == 0, result.output
    assert (out / "bundle" / "manifest.json").is_file()
