"""One save-run: fit and every search trial write a run directory the same way, and a saved
model (a run's or a cv fold's) says what it was trained with."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch

from edgemon.analysis.frontend import FrontendConfig
from tests.conftest import TINY_LABELS
from training.augment import AugmentConfig
from training.model import ModelConfig, PrimateBiLSTM
from training.runs import run_config, save_run
from training.train import OptimConfig


def test_a_saved_run_reloads_into_the_model_it_exported(tmp_path):
    torch.manual_seed(1)
    model = PrimateBiLSTM(ModelConfig(hidden=8, layers=1, n_classes=3)).eval()
    config = run_config(model.config, OptimConfig(epochs=2), AugmentConfig(p_mix=0.5), FrontendConfig(),
                        TINY_LABELS, 0.5, 0.25, trial=7)
    path = save_run(tmp_path / "run", model, config, best_epoch=2, provenance={"devel_uar": 0.75})
    assert path == tmp_path / "run" / "model.onnx"
    as_json = json.loads(json.dumps(config))   # tuples (the SNR range) become lists
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == as_json

    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["config"] == config and checkpoint["best_epoch"] == 2
    again = PrimateBiLSTM(ModelConfig(**checkpoint["config"]["model"])).eval()
    again.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(2, 20, 128)
    with torch.no_grad():
        expected = torch.softmax(again(x)[0], 1).numpy()
    probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"logmel": x.numpy()})[0]
    np.testing.assert_allclose(probs, expected, atol=1e-4)

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["hyperparameters"]) == as_json
    assert json.loads(meta["labels"]) == list(TINY_LABELS) and meta["devel_uar"] == "0.75"
