"""How much of a clip's recorder a model's embedding tells: a linear probe (standardised logistic regression,
5-fold) from each train clip's embedding (its first window) to its recorder, beside the same
probe to its class. A diagnostic for `--recorder-adversary` (docs/results.md).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/recorder_probe.py runs/cv-a/RECIPE/fold0.onnx [...]

Each model is fed the frontend its file name says (``pcen`` in the path: PCEN, else log-mel);
recorders with under 10 train clips are left out. Needs the training extras (scikit-learn).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgemon.analysis.frontend import FrontendConfig
from training.data import DEFAULT_DATA_DIR, load_split
from training.recipes import WINDOW_S, seconds_to_frames

MIN_CLIPS = 10


def probe(features: np.ndarray, targets: np.ndarray) -> float:
    """Mean 5-fold accuracy of a logistic regression from ``features`` to ``targets``."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return float(cross_val_score(model, features, targets, cv=5).mean())


def main(models: list[str]) -> None:
    splits = {}
    for model in models:
        kind = "pcen" if "pcen" in Path(model).as_posix() else "logmel"
        if kind not in splits:
            splits[kind] = load_split(DEFAULT_DATA_DIR, "train", frontend=FrontendConfig(kind=kind))
        split = splits[kind]
        recorders = np.array([c.recorder for c in split.clips])
        keep = np.isin(recorders, [r for r in set(recorders) if (recorders == r).sum() >= MIN_CLIPS])
        session = ort.InferenceSession(model)
        name, frames = session.get_inputs()[0].name, seconds_to_frames(WINDOW_S, split.frontend)
        embedding = np.concatenate([session.run(["embedding"], {name: f[None, :frames].astype(np.float32)})[0]
                                    for f in split.features])[keep]
        chance = max((recorders[keep] == r).mean() for r in set(recorders[keep]))
        print(f"{model}: recorder probe {probe(embedding, recorders[keep]):.3f} (majority {chance:.3f}, "
              f"{len(set(recorders[keep]))} recorders, {keep.sum()} clips); class probe "
              f"{probe(embedding, split.targets[keep]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
