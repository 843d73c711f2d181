"""Training speed on the Borneo train split: seconds per epoch and clips per second.

Runs the project's own ``train()`` with the paper's Table 2 setting (h=256, l=2, batch 32) for a
few epochs on the CPU and, when one is present, on a CUDA GPU; whole clips, as in the paper, and
with the field recipe's 4 s crops. Prints one line per device and recipe.

    python bench/train_speed.py [--epochs 2] [--data ../shared/data/borneo]
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch

from training.augment import AugmentConfig
from training.data import load_split
from training.model import ModelConfig
from training.train import OptimConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    train_split = load_split(args.data, "train")
    devel = load_split(args.data, "devel", train_split.labels).subset(range(8))  # eval cost aside
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"train split: {len(train_split)} clips; torch {torch.__version__}; "
          f"cpu threads {torch.get_num_threads()} of {os.cpu_count()}")
    recipes = {"whole clips (paper)": AugmentConfig(), "4 s crops (field)": AugmentConfig(crop_frames=125)}
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        for recipe, aug in recipes.items():
            result = train(ModelConfig(n_classes=len(train_split.labels)),
                           OptimConfig(epochs=args.epochs, device=device), aug, train_split, devel,
                           progress=False)
            seconds = statistics.median(h["train_seconds"] for h in result.history)
            print(f"{name:>24} | {recipe:<20} | {seconds:7.2f} s/epoch | "
                  f"{len(train_split) / seconds:7.1f} clips/s")


if __name__ == "__main__":
    main()
