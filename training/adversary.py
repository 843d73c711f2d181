"""A recorder adversary (domain-adversarial training, Ganin et al. 2016): a small classifier
guesses each training clip's recorder from the model's embedding, and the gradient it sends back
into the model is reversed, so the model learns an embedding that says less about where it was
recorded. Background from recorders never heard is what the field measure counts as false
events; a place-blind embedding is one way to be quieter there. Training only: the exported
model is the classifier alone."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from training.data import Split
from training.errors import DataError


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.scale * grad, None


def recorder_ids(split: Split) -> tuple[np.ndarray, int]:
    """Each clip's recorder as an index (-100, ignored by the loss, where a clip names none) and
    how many recorders there are. Raises ``DataError`` when fewer than two recorders are named."""
    names = sorted({c.recorder for c in split.clips if c.recorder})
    if len(names) < 2:
        raise DataError("--recorder-adversary needs the training clips' recorders (a recorder column "
                         f"naming at least two; found {len(names)})")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index.get(c.recorder, -100) for c in split.clips], np.int64), len(names)


def ramp(progress: float) -> float:
    """DANN's schedule: 0 at the start of training, towards 1 at the end (``progress`` in 0..1),
    so the classifier learns the classes before the adversary pulls at its embedding."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


class RecorderAdversary(nn.Module):
    def __init__(self, dim: int, recorders: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ELU(), nn.Linear(dim, recorders))

    def loss(self, embedding: torch.Tensor, recorders: torch.Tensor, scale: float) -> torch.Tensor:
        """Cross-entropy of the recorder guess; the model's share of its gradient is reversed and
        scaled by ``scale``."""
        return nn.functional.cross_entropy(self.net(_ReverseGradient.apply(embedding, scale)), recorders,
                                           ignore_index=-100)
