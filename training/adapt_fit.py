"""The ways of adapting a bundle to a site (``CANDIDATES``), each fitted on reviewed windows
(``adapt_windows.ReviewedWindows``): thresholds, the evidence rule, a site head, a site veto.
``training.adapt`` compares them on held-out recordings and writes the one it chooses."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from edgemon.analysis.bundle import Bundle
from edgemon.analysis.decisions import OperatingPoint
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.site_head import Z_CLIP, SiteHead
from edgemon.analysis.site_veto import SiteVeto, window_features
from training.adapt_decisions import decide, event_scores
from training.adapt_windows import ReviewedWindows
from training.adapted_bundle import Correction, parent_point

if TYPE_CHECKING:   # for annotations only: adapt imports this module
    from training.adapt import AdaptConfig

CANDIDATES = ("thresholds", "thresholds+evidence", "head", "head+thresholds", "veto+thresholds+evidence")


def fit_head(data: ReviewedWindows, n_classes: int, config: AdaptConfig, background: int) -> SiteHead:
    """Fit each member's correction on the reviewed detections' windows (each detection weighing
    one, whatever its number of windows, so a few long events do not dominate) and the background
    windows (one each: without them a few wrong detections teach the head little about this
    site's quiet)."""
    weight = 1.0 / np.bincount(data.detection, minlength=len(data.targets))[data.detection]
    probs, embeddings, targets = data.probs, data.embeddings, data.targets[data.detection]
    if data.background_count:
        background = np.full(data.background_count, background)
        probs = np.concatenate([probs, data.extra_probs], axis=1)
        embeddings = np.concatenate([embeddings, data.extra_embeddings], axis=1)
        targets, weight = np.concatenate([targets, background]), np.concatenate([weight, np.ones(len(background))])
    return fit_correction(probs, embeddings, targets, weight, n_classes, config.l2 / len(data.targets), config)


def fit_correction(probs: np.ndarray, embeddings: np.ndarray, targets: np.ndarray, weight: np.ndarray,
                   n_classes: int, penalty: float, config: AdaptConfig, only: int | None = None) -> SiteHead:
    """Each member's correction fitted by penalised cross-entropy (full-batch Adam) on ``N``
    windows: ``probs [M, N, C]``, ``embeddings [M, N, d]``, ``targets [N]``, ``weight [N]``
    (normalised here); weights and bias both pulled towards zero (the parent) by ``penalty``.
    ``only``: correct that class's logit alone (the others stay the parent's)."""
    mask = np.ones(n_classes) if only is None else np.eye(n_classes)[only]
    weight = np.asarray(weight, np.float64) / np.sum(weight)
    onehot = np.eye(n_classes)[targets]
    weights, biases, means, scales = [], [], [], []
    for m in range(probs.shape[0]):
        log_p = np.log(np.maximum(probs[m], 1e-6)).astype(np.float64)
        x = np.concatenate([embeddings[m], log_p], axis=1).astype(np.float64)
        # A unit that barely moved on these reviews (a dead ReLU) must not blow up on other audio.
        std = x.std(axis=0)
        mean, scale = x.mean(axis=0), np.maximum(std, 0.1 * np.median(std) + 1e-3)
        z = np.clip((x - mean) / scale, -Z_CLIP, Z_CLIP)
        w, b = np.zeros((z.shape[1], n_classes)), np.zeros(n_classes)
        state = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
        for step in range(1, config.steps + 1):
            logits = log_p + z @ w + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) * weight[:, None] * mask            # d loss / d logits
            grad_w = z.T @ g + penalty * w
            grad_b = g.sum(axis=0) + penalty * b
            for k, (param, grad) in enumerate(((w, grad_w), (b, grad_b))):
                mom, var = state[2 * k], state[2 * k + 1]
                mom[:] = 0.9 * mom + 0.1 * grad
                var[:] = 0.999 * var + 0.001 * grad ** 2
                param -= config.learning_rate * (mom / (1 - 0.9 ** step)) / (np.sqrt(var / (1 - 0.999 ** step)) + 1e-8)
        weights.append(w)
        biases.append(b)
        means.append(mean)
        scales.append(scale)
    return SiteHead(*(np.asarray(a, np.float32) for a in (weights, biases, means, scales)))


def fit_thresholds(member_probs: np.ndarray, data: ReviewedWindows, labels: tuple[str, ...],
                   start: OperatingPoint, background: int) -> OperatingPoint:
    """The baseline: ``start`` with its per-class confidence thresholds re-fitted to maximise F1 on
    these reviews (one pass of coordinate ascent over a 0.02 grid); ties keep the threshold nearest
    the parent's (a class the reviews say nothing of keeps its own); its evidence rules are kept."""
    thresholds = dict(start.thresholds)
    for c, label in enumerate(labels):
        if c == background:
            continue
        own, best = thresholds.get(label, 0.0), None
        for t in sorted({own, *np.round(np.linspace(0, 1, 51), 2).tolist()}):
            trial = dataclasses.replace(start, thresholds={**thresholds, label: float(t)})
            f1 = event_scores(decide(member_probs, data.detection, len(data.targets), labels, trial, background),
                              data.targets, background)["f1"]
            rank = (round(f1, 9), -abs(float(t) - own))
            if best is None or rank > best[0]:
                best = (rank, float(t))
        thresholds[label] = best[1]
    return dataclasses.replace(start, thresholds=thresholds)


def fit_operating_point(member_probs: np.ndarray, data: ReviewedWindows, labels: tuple[str, ...],
                        start: OperatingPoint, background: int, thresholds: bool = True,
                        evidence: tuple[int, ...] = (1,), objective=None, summed: tuple[float, ...] = (),
                        opening: tuple[float, ...] = ()) -> OperatingPoint:
    """``start`` with, per class, its confidence threshold (0.02 grid, when ``thresholds``) and the
    fewest windows an event needs (from ``evidence``) chosen together to maximise F1 on these
    reviews, one class at a time (one pass of coordinate ascent); ties keep what is nearest the
    parent's threshold and windows (the parent's own windows are always tried; a class the reviews
    say nothing of keeps both). Then, per class, the summed window confidence an event needs (from
    ``summed``, the parent's, or 0) and the opening level one of its windows must reach (from
    ``opening``, the parent's, or 0), each when given, ties to the parent's; else the parent's are
    kept. ``objective``: another score of ``event_scores``' dict to maximise (a number or a tuple)."""
    objective = objective or (lambda scores: scores["f1"])

    def score(point: OperatingPoint) -> tuple:
        value = objective(event_scores(decide(member_probs, data.detection, len(data.targets), labels, point,
                                              background), data.targets, background))
        return tuple(round(float(x), 9) for x in (value if isinstance(value, tuple) else (value,)))

    point = start
    for c, label in enumerate(labels):
        if c == background:
            continue
        grid = sorted({point.thresholds.get(label, 0.0), *np.round(np.linspace(0, 1, 51), 2).tolist()}) \
            if thresholds else [point.thresholds.get(label, 0.0)]
        best, own_k = None, start.windows_needed(label)
        for k in sorted({own_k, *evidence}):
            for t in grid:
                trial = dataclasses.replace(point, thresholds={**point.thresholds, label: float(t)},
                                            min_windows={**point.min_windows, label: k})
                # ties: nearest the parent's threshold and windows (with one window: then fewer windows)
                rank = (score(trial), -abs(float(t) - start.thresholds.get(label, 0.0)) - abs(k - own_k))
                if best is None or rank > best[0]:
                    best = (rank, trial)
        point = best[1]
        for field, levels in (("min_evidence", summed), ("open_threshold", opening)):
            if levels:   # ties: the parent's level (the reviews cannot tell), then the laxest
                own = float(getattr(start, field).get(label, 0.0))
                trials = [dataclasses.replace(point, **{field: {**getattr(point, field), label: float(v)}})
                          for v in sorted({own, 0.0, *levels})]
                point = max(trials, key=lambda trial: (score(trial), getattr(trial, field).get(label, 0.0) == own,
                                                       -getattr(trial, field).get(label, 0.0)))
    return point   # OperatingPoint drops the entries that hold nothing


def fit_veto(data: ReviewedWindows, background: int, config: AdaptConfig) -> SiteVeto:
    """The site veto of these reviews: windows of wrong detections and the background windows
    beside them as this site's background, windows of right (or relabelled) ones as its calls."""
    window_targets = data.targets[data.detection]
    features = window_features(data.embeddings)
    site_background = [features[window_targets == background]]
    if data.background_count:
        site_background.append(window_features(data.extra_embeddings))
    site_background = np.concatenate(site_background)
    if len(site_background) > config.veto_max_windows:
        site_background = site_background[np.linspace(0, len(site_background) - 1, config.veto_max_windows).astype(int)]
    calls = window_targets != background
    return SiteVeto(site_background.astype(np.float32), features[calls].astype(np.float32), window_targets[calls],
                    background, config.veto_k, config.veto_min_similarity, config.veto_unconfirmed_similarity)


def fit_candidate(name: str, bundle: Bundle, ensemble: Ensemble, data: ReviewedWindows,
                  config: AdaptConfig, head: SiteHead | None = None) -> tuple[Correction, OperatingPoint]:
    """One way of adapting, fitted on ``data``: (site head, site veto or None; operating point).
    'thresholds' is the parent with its per-class thresholds re-fitted (the baseline);
    'thresholds+evidence' the parent with thresholds and the fewest windows an event needs
    re-fitted together; 'head' a site head with the parent's operating point; 'head+thresholds' a
    site head and thresholds re-fitted on its output; 'veto+thresholds+evidence' a site veto after
    the operating point 'thresholds+evidence' fits. ``head``: one already fitted on ``data``."""
    background = bundle.labels.index(bundle.background_label)
    parent = parent_point(bundle)
    if name == "thresholds":
        return None, fit_thresholds(_parent_probs(ensemble, data), data, bundle.labels, parent, background)
    if name == "thresholds+evidence":
        return None, fit_operating_point(_parent_probs(ensemble, data), data, bundle.labels, parent, background,
                                         evidence=config.evidence)
    if name == "veto+thresholds+evidence":
        # The point is fitted before the veto (on what the parent's head, if any, says): the veto
        # then removes what resembles known false alarms; fitted after it on these same reviews,
        # the veto would hide every reviewed false alarm and loosen the thresholds.
        return fit_veto(data, background, config), fit_operating_point(_head_probs(ensemble, data), data, bundle.labels,
                                                                       parent, background, evidence=config.evidence)
    if name not in CANDIDATES:
        raise ValueError(f"unknown adaptation {name!r}: choose one of {', '.join(CANDIDATES)}")
    head = head or fit_head(data, len(bundle.labels), config, background)
    if name == "head":
        return head, parent
    return head, fit_thresholds(head.member_probs(data.probs, data.embeddings), data, bundle.labels, parent,
                                background)


def candidate_probs(ensemble: Ensemble, correction: Correction, data: ReviewedWindows) -> np.ndarray:
    """What the members of the bundle a candidate writes say (``adapted_bundle.written_corrections``)."""
    if correction is None:
        return _parent_probs(ensemble, data)
    if isinstance(correction, SiteVeto):
        return correction.member_probs(_head_probs(ensemble, data), data.embeddings)
    return correction.member_probs(data.probs, data.embeddings)


def _parent_probs(ensemble: Ensemble, data: ReviewedWindows) -> np.ndarray:
    """What the parent bundle's members say, its own site head and veto included if it has them."""
    return ensemble.site_corrected(data.probs, data.embeddings)


def _head_probs(ensemble: Ensemble, data: ReviewedWindows) -> np.ndarray:
    """What the parent's members say through its site head (if any), before any site veto."""
    if ensemble.site_head is None:
        return data.probs
    return ensemble.site_head.member_probs(data.probs, data.embeddings)
