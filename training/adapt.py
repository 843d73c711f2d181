"""``edgemon-train adapt``: a bundle adapted to one site from that site's reviewed detections.

A bundle holds int8 ONNX members, not checkpoints, so adaptation works through what they expose:
each member's ``probs`` and ``embedding`` on the windows of every reviewed detection. A site head
(``edgemon.analysis.site_head``: a penalised correction of each member's log-probabilities from its
embedding) is fitted to the verdicts: 'wrong' -> this site's background, 'correct' -> the detected
label, 'relabel' -> the reviewer's label; 'unsure' is left out.

Evaluation holds out whole recordings (grouped folds): the head, the parent, and the fair baseline
(the parent with only its per-class thresholds re-fitted on the same reviews) decide each held-out
detection as the recorder would (member vote, thresholds, most-voted call over the event's
windows). A head whose held-out F1 is below the parent's is refused; otherwise the head fitted on
all reviews is written beside copies of the parent's members, with its provenance in the manifest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgemon.analysis import audio
from edgemon.analysis.bundle import MANIFEST, Bundle, load_bundle, write_bundle
from edgemon.analysis.decisions import apply_thresholds, clip_label
from edgemon.analysis.ensemble import Ensemble, majority_vote
from edgemon.analysis.frontend import StreamingFrontend
from edgemon.analysis.site_head import Z_CLIP, SiteHead, write_site_head
from edgemon.analysis.windows import WindowSpec
from edgemon.errors import AudioError
from edgemon.storage.readonly import recording_path, reviewed
from training.errors import DataError

log = logging.getLogger(__name__)


class AdaptError(DataError):
    """A bundle cannot be adapted from these reviews, or the adapted one is worse than its parent."""


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """The head's fit and its held-out evaluation."""

    folds: int = 4               # held-out folds, grouped by recording (fewer if fewer recordings)
    l2: float = 1000.0           # penalty on the head's weights per reviewed detection; large keeps it near the parent
    steps: int = 300             # full-batch Adam steps
    learning_rate: float = 0.05
    min_reviews: int = 10        # judged detections (not 'unsure') needed at all
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ReviewedWindows:
    """Every window of ``D`` reviewed detections (``N`` windows in all) through ``M`` members.

    ``probs [M, N, C]`` and ``embeddings [M, N, d]`` are the raw members' outputs; ``detection
    [N]`` the window's detection index; ``targets [D]`` the class each detection truly is;
    ``groups [D]`` its recording; ``review_ids [D]`` the review rows used."""

    probs: np.ndarray
    embeddings: np.ndarray
    detection: np.ndarray
    targets: np.ndarray
    groups: list[str]
    review_ids: list[int]

    def subset(self, keep: np.ndarray) -> "ReviewedWindows":
        """The detections where ``keep [D]`` is true, renumbered."""
        new_index = np.cumsum(keep) - 1
        windows = keep[self.detection]
        return ReviewedWindows(self.probs[:, windows], self.embeddings[:, windows],
                               new_index[self.detection[windows]], self.targets[keep],
                               [g for g, k in zip(self.groups, keep) if k],
                               [r for r, k in zip(self.review_ids, keep) if k])


def review_targets(rows: list[dict], labels: tuple[str, ...], background: str) -> list[tuple[dict, int]]:
    """(review row, target class index) for every judged review whose label the bundle knows."""
    out = []
    for row in rows:
        target = {"wrong": background, "correct": row["label"], "relabel": row["new_label"]}.get(row["verdict"])
        if target in labels and row.get("end_s") is not None:
            out.append((row, labels.index(target)))
    return out


def event_windows(start_s: float, end_s: float, spec: WindowSpec, frame_s: float) -> list[int]:
    """First frames of the windows that made up an event (as ``pipeline.Analyzer.merge`` joined
    them): every ``hop`` from the event's first window until its end."""
    first, last_end = int(round(start_s / frame_s)), int(round(end_s / frame_s))
    starts = list(range(first, max(first, last_end - spec.frames) + 1, spec.hop))
    if starts[-1] + spec.frames < last_end:
        starts.append(last_end - spec.frames)
    return starts


def _recording_frames(path: Path, frontend, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """The frontend's frames ``[a, b)`` of each range, computed over the whole recording as the
    recorder streams it (PCEN's smoother depends on what came before)."""
    stream, pieces, offset = StreamingFrontend(frontend), [[] for _ in ranges], 0
    blocks = audio.iter_blocks(path, 60.0, frontend.sample_rate)
    for frames in (*(stream.push(b) for b in blocks), stream.finish()):
        for i, (a, b) in enumerate(ranges):
            lo, hi = max(a, offset), min(b, offset + len(frames))
            if lo < hi:
                pieces[i].append(frames[lo - offset:hi - offset])
        offset += len(frames)
    return [np.concatenate(p) if p else np.zeros((0, frontend.n_features), np.float32) for p in pieces]


def reviewed_windows(bundle: Bundle, ensemble: Ensemble, reviews_db: Path, recordings: Path | None) -> ReviewedWindows:
    """Run the bundle's members over the windows of every usable reviewed detection."""
    targets = review_targets(reviewed(reviews_db), bundle.labels, bundle.background_label)
    spec = WindowSpec.from_seconds(bundle.window_s, bundle.hop_s, bundle.frontend)
    frame_s = bundle.frontend.hop_length / bundle.frontend.sample_rate
    by_recording: dict[str, list[tuple[dict, int]]] = defaultdict(list)
    for row, target in targets:
        by_recording[row["source"]].append((row, target))
    probs, embeddings, detection, target_list, groups, review_ids = [], [], [], [], [], []
    for source, items in sorted(by_recording.items()):
        path = recording_path({"source": source, "file_path": items[0][0].get("file_path")}, recordings)
        if path is None:
            log.warning("%s: recording not found, its %d review(s) left out", source, len(items))
            continue
        starts = [event_windows(r["start_s"], r["end_s"], spec, frame_s) for r, _ in items]
        ranges = [(s[0], s[-1] + spec.frames) for s in starts]
        try:
            spans = _recording_frames(path, bundle.frontend, ranges)
        except AudioError as exc:
            log.warning("%s: %s; its reviews left out", source, exc)
            continue
        for (row, target), window_starts, (a, _), frames in zip(items, starts, ranges, spans):
            windows = [frames[s - a:s - a + spec.frames] for s in window_starts]
            windows = [w for w in windows if len(w) >= 2]
            if not windows:
                continue
            p, e = _member_outputs(ensemble, windows)
            probs.append(p)
            embeddings.append(e)
            detection += [len(target_list)] * p.shape[1]
            target_list.append(target)
            groups.append(source)
            review_ids.append(row["id"])
    if not target_list:
        raise AdaptError(f"{reviews_db}: no reviewed detection of this bundle's labels with its recording "
                         f"found (give --recordings DIR)")
    return ReviewedWindows(np.concatenate(probs, axis=1), np.concatenate(embeddings, axis=1),
                           np.asarray(detection), np.asarray(target_list), groups, review_ids)


def _member_outputs(ensemble: Ensemble, windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw members' ``probs [M, W, C]`` and ``embedding [M, W, d]`` of windows (grouped by length)."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    probs, embeddings = [None] * len(windows), [None] * len(windows)
    for length in sorted({len(w) for w in windows}):
        idx = [i for i in order if len(windows[i]) == length]
        feed = {"logmel": np.stack([windows[i] for i in idx]).astype(np.float32)}
        outputs = [s.run(["probs", "embedding"], feed) for s in ensemble.sessions]
        for j, i in enumerate(idx):
            probs[i] = np.stack([o[0][j] for o in outputs])
            embeddings[i] = np.stack([o[1][j] for o in outputs])
    return np.stack(probs, axis=1), np.stack(embeddings, axis=1)


def fit_head(data: ReviewedWindows, n_classes: int, config: AdaptConfig) -> SiteHead:
    """Fit each member's correction by penalised cross-entropy (full-batch Adam), weights and bias
    both pulled towards zero (the parent). Each detection weighs the same whatever its number of
    windows, so a few long events do not dominate."""
    window_target = data.targets[data.detection]
    weight = 1.0 / np.bincount(data.detection, minlength=len(data.targets))[data.detection]
    weight /= weight.sum()
    onehot = np.eye(n_classes)[window_target]
    weights, biases, means, scales = [], [], [], []
    for m in range(data.probs.shape[0]):
        log_p = np.log(np.maximum(data.probs[m], 1e-6)).astype(np.float64)
        x = np.concatenate([data.embeddings[m], log_p], axis=1).astype(np.float64)
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
            g = (p - onehot) * weight[:, None]                   # d loss / d logits
            grad_w = z.T @ g + config.l2 * w / len(data.targets)
            grad_b = g.sum(axis=0) + config.l2 * b / len(data.targets)
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


def decide(member_probs: np.ndarray, detection: np.ndarray, n_detections: int, labels: tuple[str, ...],
           thresholds: dict, background: int) -> np.ndarray:
    """Each detection's label as the recorder would give it: members' majority vote per window, the
    per-class thresholds, then the most-voted call over the event's windows (background: dropped)."""
    votes = majority_vote(member_probs)
    window_labels = apply_thresholds(votes.winner, votes.confidence, labels, thresholds, background)
    return np.array([clip_label(window_labels[detection == d], votes.confidence[detection == d], background)
                     for d in range(n_detections)])


def event_scores(predicted: np.ndarray, truth: np.ndarray, background: int) -> dict:
    """F1 of kept detections: a kept detection of its true class is a hit, any other kept one a false
    alarm, a call not kept with its class a miss. Also the share of true false alarms still kept."""
    kept = predicted != background
    hits = int((kept & (predicted == truth)).sum())
    false_alarms = int((kept & (predicted != truth)).sum())
    misses = int(((truth != background) & (predicted != truth)).sum())
    background_total = int((truth == background).sum())
    return {"f1": 2 * hits / max(1, 2 * hits + false_alarms + misses), "hits": hits,
            "false_alarms": false_alarms, "misses": misses,
            "recall": hits / max(1, hits + misses),
            "background_kept": int((kept & (truth == background)).sum()) / max(1, background_total)}


def fit_thresholds(member_probs: np.ndarray, data: ReviewedWindows, labels: tuple[str, ...],
                   start: dict, background: int) -> dict:
    """The baseline: per-class confidence thresholds re-fitted to maximise F1 on these reviews
    (one pass of coordinate ascent over a 0.02 grid)."""
    thresholds = dict(start)
    for c, label in enumerate(labels):
        if c == background:
            continue
        best = (-1.0, thresholds.get(label, 0.0))
        for t in sorted({thresholds.get(label, 0.0), *np.round(np.linspace(0, 1, 51), 2).tolist()}):
            trial = {**thresholds, label: float(t)}
            f1 = event_scores(decide(member_probs, data.detection, len(data.targets), labels, trial, background),
                              data.targets, background)["f1"]
            if f1 > best[0] + 1e-9:
                best = (f1, float(t))
        thresholds[label] = best[1]
    return thresholds


def grouped_folds(groups: list[str], k: int) -> list[np.ndarray]:
    """Boolean held-out masks over detections: whole recordings per fold, balanced by count."""
    counts = defaultdict(int)
    for g in groups:
        counts[g] += 1
    k = min(k, len(counts))
    fold_of, sizes = {}, [0] * k
    for g in sorted(counts, key=lambda g: (-counts[g], g)):
        fold_of[g] = int(np.argmin(sizes))
        sizes[fold_of[g]] += counts[g]
    return [np.array([fold_of[g] == f for g in groups]) for f in range(k)]


CANDIDATES = ("thresholds", "head", "head+thresholds")


def fit_candidate(name: str, bundle: Bundle, ensemble: Ensemble, data: ReviewedWindows,
                  config: AdaptConfig) -> tuple[SiteHead | None, dict]:
    """One way of adapting, fitted on ``data``: (site head or None, thresholds). 'thresholds' is
    the parent with its per-class thresholds re-fitted (the baseline); 'head' a site head with the
    parent's thresholds; 'head+thresholds' a site head and thresholds re-fitted on its output."""
    background = bundle.labels.index(bundle.background_label)
    if name == "thresholds":
        return None, fit_thresholds(_parent_probs(ensemble, data), data, bundle.labels, bundle.thresholds, background)
    head = fit_head(data, len(bundle.labels), config)
    if name == "head":
        return head, dict(bundle.thresholds)
    return head, fit_thresholds(head.member_probs(data.probs, data.embeddings), data, bundle.labels,
                                bundle.thresholds, background)


def _candidate_probs(ensemble: Ensemble, head: SiteHead | None, data: ReviewedWindows) -> np.ndarray:
    return _parent_probs(ensemble, data) if head is None else head.member_probs(data.probs, data.embeddings)


def held_out_comparison(bundle: Bundle, ensemble: Ensemble, data: ReviewedWindows, config: AdaptConfig) -> dict:
    """The parent and every candidate, each fitted without the held-out recordings and scored on
    them (``event_scores``), pooled over the grouped folds."""
    labels, background = bundle.labels, bundle.labels.index(bundle.background_label)
    predicted = {name: np.full(len(data.targets), background) for name in ("parent", *CANDIDATES)}
    for held_out in grouped_folds(data.groups, config.folds):
        train, test = data.subset(~held_out), data.subset(held_out)
        if len(train.targets) == 0:
            continue
        n = len(test.targets)
        predicted["parent"][held_out] = decide(_parent_probs(ensemble, test), test.detection, n, labels,
                                               bundle.thresholds, background)
        head = fit_head(train, len(labels), config)   # fitted once, shared by both head candidates
        fitted = {"thresholds": fit_candidate("thresholds", bundle, ensemble, train, config),
                  "head": (head, dict(bundle.thresholds)),
                  "head+thresholds": (head, fit_thresholds(head.member_probs(train.probs, train.embeddings),
                                                           train, labels, bundle.thresholds, background))}
        for name, (h, thresholds) in fitted.items():
            predicted[name][held_out] = decide(_candidate_probs(ensemble, h, test), test.detection, n, labels,
                                               thresholds, background)
    return {name: event_scores(p, data.targets, background) for name, p in predicted.items()}


def _parent_probs(ensemble: Ensemble, data: ReviewedWindows) -> np.ndarray:
    """What the parent bundle's members say, its own site head included if it has one."""
    if ensemble.site_head is None:
        return data.probs
    return ensemble.site_head.member_probs(data.probs, data.embeddings)


def adapt_bundle(bundle_path: Path, reviews_db: Path, recordings: Path | None, out: Path,
                 config: AdaptConfig = AdaptConfig()) -> dict:
    """Adapt the bundle at ``bundle_path`` to the site of ``reviews_db`` and write it to ``out``.

    Every candidate (``CANDIDATES``) is scored on held-out recordings; the best one, refitted on
    all reviews, is written, unless it is worse than the parent there. Returns a summary: reviews
    used, held-out scores, the candidate chosen and the new bundle's id. Raises AdaptError (and
    writes nothing) when the reviews are too few, come from one recording, or nothing beats the
    parent."""
    started = time.monotonic()
    bundle = load_bundle(bundle_path)
    ensemble = Ensemble(bundle)
    data = reviewed_windows(bundle, ensemble, Path(reviews_db), recordings)
    if len(data.targets) < config.min_reviews:
        raise AdaptError(f"{reviews_db}: {len(data.targets)} usable review(s), need at least {config.min_reviews}")
    if len(set(data.groups)) < 2:
        raise AdaptError(f"{reviews_db}: reviews come from one recording; held-out evaluation needs two or more")
    scores = held_out_comparison(bundle, ensemble, data, config)
    chosen = max(CANDIDATES, key=lambda name: (scores[name]["f1"], -CANDIDATES.index(name)))
    if scores[chosen]["f1"] < scores["parent"]["f1"]:
        raise AdaptError(f"every adaptation is worse than its parent on held-out recordings "
                         f"(best F1 {scores[chosen]['f1']:.3f} < {scores['parent']['f1']:.3f}); no bundle written")
    head, thresholds = fit_candidate(chosen, bundle, ensemble, data, config)
    provenance = {
        "parent_bundle": bundle.bundle_id, "method": chosen,
        "adapted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reviews": {"database": str(Path(reviews_db).resolve()), "used": len(data.review_ids),
                    "review_ids": data.review_ids, "recordings": len(set(data.groups)),
                    "targets": {bundle.labels[c]: int((data.targets == c).sum()) for c in range(len(bundle.labels))}},
        "held_out": scores, "config": dataclasses.asdict(config),
    }
    new = _write_adapted(bundle, head, Path(out), provenance, thresholds)
    return {"bundle_id": new.bundle_id, "path": str(new.path), "parent_bundle": bundle.bundle_id,
            "method": chosen, "reviews_used": len(data.review_ids), "recordings": len(set(data.groups)),
            "held_out": scores, "wall_s": round(time.monotonic() - started, 1)}


def _write_adapted(parent: Bundle, head: SiteHead | None, out: Path, provenance: dict,
                   thresholds: dict | None = None) -> Bundle:
    """Parent's members (+ the head, if any) + a manifest naming them with ``thresholds`` (default:
    the parent's), assembled beside ``out`` and renamed into place, so a reader never sees a
    bundle without its head."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.adapt.", dir=out.parent))
    try:
        inner = staging / "bundle"
        members = [dataclasses.asdict(m) for m in parent.members]
        write_bundle(inner, parent.member_paths, list(parent.labels), frontend=parent.frontend,
                     window_s=parent.window_s, hop_s=parent.hop_s,
                     devel_uars=[m["devel_uar"] for m in members], test_uars=[m["test_uar"] for m in members],
                     thresholds=thresholds or parent.thresholds, background_label=parent.background_label,
                     precision=members[0]["precision"])
        manifest = json.loads((inner / MANIFEST).read_text())
        identity = [m["sha256"] for m in manifest["members"]] + [json.dumps(manifest["thresholds"], sort_keys=True)]
        if head is not None:
            manifest["site_head"] = write_site_head(head, inner)
            identity.append(manifest["site_head"]["sha256"])
        digest = hashlib.sha256("".join(identity).encode())
        manifest.update(bundle_id=f"{out.name}-{digest.hexdigest()[:12]}", adapted=provenance)
        for key in ("source_runs", "trained_on"):
            if key in parent.manifest:
                manifest[key] = parent.manifest[key]
        (inner / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        Ensemble(load_bundle(inner))   # the recorder can open it, head included
        if out.exists():
            old = staging / "old"
            os.replace(out, old)
        os.replace(inner, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_bundle(out)
