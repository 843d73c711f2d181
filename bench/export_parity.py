"""Export parity of a trained run: onnxruntime vs torch, and int8 vs fp32, on real devel clips.

    python bench/export_parity.py runs/table2-field [--data ../shared/data/borneo]

Prints the largest absolute difference in probabilities and embeddings between the torch
checkpoint and its ONNX export at several input lengths (odd, even, one frame), and the
agreement of a dynamically quantised int8 copy with fp32 on every devel clip and 4 s window.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.windows import WindowSpec, cut_windows
from training.data import load_split
from training.model import ModelConfig, PrimateBiLSTM
from training.onnx_export import quantize_int8


def load_model(run: Path) -> tuple[PrimateBiLSTM, dict]:
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    model = PrimateBiLSTM(ModelConfig(**checkpoint["config"]["model"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint["config"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    args = parser.parse_args()
    model, config = load_model(args.run)
    fp32 = ort.InferenceSession(str(args.run / "model.onnx"), providers=["CPUExecutionProvider"])
    devel = load_split(args.data, "devel", tuple(config["labels"]))
    longest = max(devel.features, key=len)
    print("frames | max |probs diff| | max |embedding diff|   (onnxruntime fp32 vs torch)")
    for frames in (1, 2, 3, 63, 124, 125, 251, len(longest)):
        x = longest[None, :frames]
        with torch.no_grad():
            logits, embedding = model(torch.from_numpy(x))
        probs, emb = fp32.run(["probs", "embedding"], {"logmel": x})
        print(f"{frames:6d} | {np.abs(probs - torch.softmax(logits, 1).numpy()).max():.2e}"
              f"          | {np.abs(emb - embedding.numpy()).max():.2e}")
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = quantize_int8(args.run / "model.onnx", Path(tmp) / "int8.onnx")
        int8 = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
        size = (args.run / "model.onnx").stat().st_size / 1e6, int8_path.stat().st_size / 1e6
        spec = WindowSpec.from_seconds(config["window_s"], config["hop_s"],
                                       FrontendConfig.from_dict(config["frontend"]))
        clips = [f[None] for f in devel.features]
        windows = [cut_windows(f, spec)[0] for f in devel.features]
        for name, inputs in (("devel clips", clips), ("devel 4 s windows", windows)):
            a = np.concatenate([fp32.run(["probs"], {"logmel": x})[0] for x in inputs])
            b = np.concatenate([int8.run(["probs"], {"logmel": x})[0] for x in inputs])
            print(f"int8 vs fp32 on {len(a)} {name}: argmax agreement {np.mean(a.argmax(1) == b.argmax(1)):.4f}, "
                  f"max |probs diff| {np.abs(a - b).max():.4f}")
        print(f"size: fp32 {size[0]:.1f} MB, int8 {size[1]:.1f} MB")


if __name__ == "__main__":
    main()
