"""The members' vote over windows: majority of argmaxes, ties to the highest mean probability.

Its own module so that what runs after the members (the site veto) judges the class the vote
calls, without importing the ensemble that applies it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Votes:
    """Result of a vote over ``B`` windows by ``M`` members and ``C`` classes."""

    winner: np.ndarray        # int [B]: the voted class index
    confidence: np.ndarray    # float [B]: mean member probability of the voted class
    member_labels: np.ndarray  # int [M, B]: each member's argmax
    mean_probs: np.ndarray    # float [B, C]


def majority_vote(member_probs: np.ndarray) -> Votes:
    """Majority vote of member argmaxes; a tie goes to the tied class of highest mean probability.

    ``member_probs`` is ``[M, B, C]``. Deterministic: equal mean probabilities among tied classes
    fall to the lowest class index.
    """
    member_probs = np.asarray(member_probs, dtype=np.float64)
    n_classes = member_probs.shape[2]
    member_labels = member_probs.argmax(axis=2)                               # [M, B]
    counts = np.stack([(member_labels == c).sum(axis=0) for c in range(n_classes)], axis=1)  # [B, C]
    mean_probs = member_probs.mean(axis=0)                                     # [B, C]
    tied = counts == counts.max(axis=1, keepdims=True)
    winner = np.where(tied, mean_probs, -np.inf).argmax(axis=1)
    confidence = mean_probs[np.arange(len(winner)), winner]
    return Votes(winner=winner, confidence=confidence, member_labels=member_labels,
                 mean_probs=mean_probs)
