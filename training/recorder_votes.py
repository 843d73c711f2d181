"""Window votes as the recorder computes them: the one path by which training scores a bundle.

Audio goes through the bundle's own ``Analyzer`` (``edgemon.analysis.analyzer``): its ``Ensemble``, which
refuses a bundle that fails its checks, the streaming frontend, the recorder's windows and the
majority vote, with no operating point, so every window's raw vote is kept. ``fit``, the
search's ensemble, ``cv``, ``cv-ensemble`` and ``score`` all vote through ``stream_votes``; the
field measure (``training.field``) lays held-out clips end to end on the same path.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from threadpoolctl import threadpool_limits

from edgemon.analysis import audio
from edgemon.analysis.analyzer import BATCH_SIZE, Analyzer
from edgemon.analysis.merging import WindowVote
from edgemon.analysis.bundle import Bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint
from edgemon.errors import AudioError
from training.data import Clip, Split
from training.errors import DataError
from training.evaluate import metrics
from training.thresholds import clip_labels


def raw_analyzer(bundle: Bundle, batch_size: int = BATCH_SIZE) -> Analyzer:
    """The bundle's analyzer with no thresholds and single-window events: raw votes to keep. It
    batches windows as ``edgemon watch`` does: with batches of 16 (the recorder's are 8) a review
    found int8 votes up to 0.0026 from the recorder's and a window's label changed by a threshold,
    so the field measure and the points chosen on it read other votes than the recorder stores."""
    analyzer = Analyzer(bundle, batch_size=batch_size)
    analyzer.merger = dataclasses.replace(analyzer.merger, point=OperatingPoint({}), calibration=Calibration())
    return analyzer


def clip_samples(clip: Clip, rate: int) -> np.ndarray:
    """A clip's audio, mono float32 at ``rate`` Hz; an unreadable file is a ``DataError`` naming it."""
    try:
        return audio.load(clip.path, rate)
    except AudioError as exc:
        raise DataError(str(exc)) from exc


def stream_votes(analyzer: Analyzer, pieces: list[np.ndarray]) -> tuple[list[WindowVote], float]:
    """Every window vote over ``pieces`` (mono float32 at the bundle's rate) laid end to end as one
    recording, and its duration in seconds."""
    stream = analyzer.stream(keep_votes=True)
    for samples in pieces:
        stream.push(samples)
    stream.finish()
    return stream.votes, stream.duration_s


def clip_windows(bundle: Bundle, split: Split) -> dict[str, np.ndarray]:
    """Each clip of ``split`` alone through ``bundle`` as the recorder runs it: its windows' clip
    index, winner and confidence (float32), before thresholds, in the layout of
    ``training.thresholds`` (as ``training.field.windows_of`` gives them)."""
    analyzer = raw_analyzer(bundle)
    clip, winner, confidence = [], [], []
    # One BLAS thread, as on the recorder (see ``training.field_votes.field_votes``).
    with threadpool_limits(1):
        for i, c in enumerate(split.clips):
            votes, _ = stream_votes(analyzer, [clip_samples(c, bundle.frontend.sample_rate)])
            clip.append(np.full(len(votes), i))
            winner.append(np.array([v.label for v in votes], np.int64))
            confidence.append(np.array([v.confidence for v in votes], np.float32))
    return {"clip": np.concatenate(clip), "winner": np.concatenate(winner), "confidence": np.concatenate(confidence)}


def windowed_metrics(bundle: Bundle, split: Split) -> dict:
    """UAR as the recorder sees it: the bundle's windows, the ensemble's vote, one label per clip
    (``training.evaluate.metrics`` of those labels)."""
    windows = clip_windows(bundle, split)
    background = bundle.labels.index(bundle.background_label)
    predictions = clip_labels(windows["winner"], windows["confidence"], windows["clip"], len(split), background)
    return metrics(split.targets, predictions, split.labels)
