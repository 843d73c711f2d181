"""Try each fold's class priors re-estimated from its own unlabelled audio (label-shift EM).

The idea: a recorder where a species never calls should raise fewer false alarms of it. The
members were trained on class-balanced draws, so their posteriors assume equal priors; the EM of
Saerens et al. (2002) re-estimates a site's priors from its windows' posteriors and re-weights
them. Here each held-out fold stands for a site: its background stream and its assembled
recordings together (as a recorder would see them over weeks, calls about 5 % of the time) give
the priors; every member's probabilities of that fold are re-weighted and renormalised, the vote
taken again, and the operating point chosen anew on the re-weighted votes
(``training.operating.field_report``, as ``cv-ensemble`` chooses it). Modes:

- ``none``: no re-weighting (the figures of the votes as they are, to compare);
- ``em``: every class re-weighted by its estimated prior over the uniform training prior;
- ``em-calls``: only the call classes against each other, background left as it is (the site's
  mix of species, not its share of calls).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/prior_shift.py runs/choose2/t12-t15.votes.npz em-calls
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from edgemon.analysis.vote import majority_vote
from training.field_votes import FieldVotes, StreamVotes
from training.operating import DEFAULT_RULES, RULES, field_report

FLOOR = 1e-3   # no prior goes below this: a class the EM rules out is still possible


def em_priors(probs: np.ndarray, iterations: int = 500) -> np.ndarray:
    """Saerens' EM: the class priors of windows whose posteriors ``probs`` ``[N, C]`` were
    trained at uniform priors."""
    n_classes = probs.shape[1]
    trained = np.full(n_classes, 1.0 / n_classes)
    prior = trained.copy()
    for _ in range(iterations):
        shifted = probs * (prior / trained)
        shifted /= shifted.sum(1, keepdims=True)
        new = np.maximum(shifted.mean(0), FLOOR)
        new /= new.sum()
        if np.abs(new - prior).max() < 1e-7:
            return new
        prior = new
    return prior


def weights(prior: np.ndarray, background: int, mode: str) -> np.ndarray:
    w = prior * len(prior)
    if mode == "none":
        return np.ones_like(prior)
    if mode == "em-calls":
        calls = np.arange(len(prior)) != background
        w[background] = 1.0
        w[calls] /= w[calls].mean()
    return w


def reweighted(stream: StreamVotes, w: np.ndarray) -> StreamVotes:
    probs = stream.probs.astype(np.float64) * w
    probs /= probs.sum(2, keepdims=True)
    vote = majority_vote(probs.transpose(1, 0, 2))   # [members, windows, classes]
    return dataclasses.replace(stream, winner=vote.winner, confidence=vote.confidence,
                               members=vote.member_labels.T.copy(), probs=probs.astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("votes", help="a cv-ensemble <out>.votes.npz (with member probabilities)")
    parser.add_argument("mode", choices=("none", "em", "em-calls"))
    parser.add_argument("--target", type=float, default=15.0, help="false events per background hour")
    args = parser.parse_args()
    votes = FieldVotes.load(args.votes)
    by_fold = {}
    for fold in votes.folds():
        site = [s for s in votes.background_streams + votes.assembled if s.fold == fold]
        prior = em_priors(np.concatenate([s.probs.mean(1) for s in site]))
        by_fold[fold] = weights(prior, votes.background, args.mode)
        print(f"fold {fold}: priors {np.round(prior, 4).tolist()}, weights {np.round(by_fold[fold], 3).tolist()}")
    shifted = FieldVotes(votes.labels, votes.frame_s,
                         *([reweighted(s, by_fold[s.fold]) for s in kind]
                           for kind in (votes.background_streams, votes.assembled, votes.clips)),
                         votes.clip_targets, votes.members, hop_frames=votes.hop_frames)
    report = field_report(shifted, args.target, None, "", RULES[DEFAULT_RULES])
    expected = report["operating_point"]["expected"]
    keys = ("false_per_hour", "false_events", "precision", "recall", "clip_uar")
    print("own point:", json.dumps({k: expected[k] for k in keys + ("calibration_ece", "at_min_confidence_0.9")}))
    print("chosen on the other folds:", json.dumps({k: expected["chosen_on_other_folds"][k] for k in keys}))


if __name__ == "__main__":
    main()
