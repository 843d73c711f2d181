"""Unweighted Average Recall, per-class recall, confusion matrices (scikit-learn's) and their plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, recall_score


def _check_indices(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> None:
    """scikit-learn drops examples whose class is not among ``labels``; a wrong index is a bug here."""
    for values in (np.asarray(targets), np.asarray(predictions)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"class indices must lie in 0..{n_classes - 1}, got {np.unique(values).tolist()}")


def confusion(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``, int64 ``[n_classes, n_classes]``; class indices 0..n_classes-1."""
    _check_indices(targets, predictions, n_classes)
    return confusion_matrix(targets, predictions, labels=np.arange(n_classes)).astype(np.int64)


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for a class with no examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def uar(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``targets`` (the ComParE measure); class indices
    0..n_classes-1."""
    _check_indices(targets, predictions, n_classes)
    present = np.unique(targets)
    # Macro recall over the present classes only: an absent class has no recall to average.
    return float(recall_score(targets, predictions, labels=present, average="macro", zero_division=0))


def metrics(targets: np.ndarray, predictions: np.ndarray, labels: tuple[str, ...]) -> dict:
    """UAR, each label's recall (None for a label absent from ``targets``), the confusion matrix
    ``[true, predicted]`` as lists, the labels and the number of examples."""
    matrix = confusion(targets, predictions, len(labels))
    recall = recall_score(targets, predictions, labels=np.arange(len(labels)), average=None,
                          zero_division=np.nan)
    return {"uar": uar(targets, predictions, len(labels)),
            "recall": {l: (None if np.isnan(r) else float(r)) for l, r in zip(labels, recall)},
            "confusion": matrix.tolist(), "labels": list(labels), "n": int(len(targets))}


def plot_confusion(matrix: np.ndarray, labels, path: Path, title: str) -> None:
    """Row-normalised confusion matrix (percent of each true class) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    percent = 100 * matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{percent[i, j]:.1f}\n({int(matrix[i, j])})", ha="center", va="center",
                    fontsize=8, color="white" if percent[i, j] > 60 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path, results: dict[str, dict], prefix: str = "") -> None:
    """``results`` maps split name -> ``metrics(...)``; writes metrics JSON and confusion PNGs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for split, m in results.items():
        plot_confusion(np.array(m["confusion"]), m["labels"], run_dir / f"{prefix}confusion_{split}.png",
                       f"{prefix or 'model '}{split}: UAR {m['uar']:.3f}")
    (run_dir / f"{prefix}metrics.json").write_text(json.dumps(results, indent=2) + "\n")
