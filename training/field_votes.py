"""The field measure's raw votes: what each fold's ensemble votes, window by window, on its held-out
audio (``training.field`` measures any operating point on them without running the models again).

Audio goes through the bundle's ``Analyzer`` (streaming frontend, recorder windows, the
``Ensemble``'s vote) with no thresholds, and the raw window votes are kept, with the members'
probabilities. Per fold, three kinds of held-out audio:

- **background**: the fold's background clips laid end to end;
- **assembled**: the fold's calls in a shuffled order, each followed by background clips (in turn,
  again from the start when used up) until calls fill ``prevalence`` of the time, as on a recorder;
- **clips**: each clip alone.

``FieldVotes`` saves them in one ``.npz`` (``cv-ensemble --votes``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from edgemon.analysis.analyzer import BATCH_SIZE, Analyzer
from edgemon.analysis.bundle import Bundle, load_bundle
from edgemon.analysis.bundle_write import write_bundle
from edgemon.analysis.decisions import Calibration, OperatingPoint, apply_thresholds
from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.merging import BRIDGE, Event, EventMerger, WindowVote
from edgemon.analysis.windows import WindowSpec
from training.data import BACKGROUND, Split
from training.errors import DataError
from training.out_dirs import write_whole
from training.recorder_votes import clip_samples, raw_analyzer, stream_votes

DEFAULT_PREVALENCE = 0.05       # share of an assembled recording's time that is calls


@dataclasses.dataclass
class StreamVotes:
    """Raw window votes (no thresholds) over one stretch of audio of one fold, and its calls.

    ``start``/``frames`` in frontend frames, ``winner`` class indices, ``confidence`` the mean member
    probability of the winner, ``members`` ``[windows, members]`` each member's argmax; ``calls``
    ``[n, 3]`` rows of (start_s, end_s, label index); ``probs`` ``[windows, members, classes]``
    each member's probabilities (absent from votes stored before they were kept)."""

    fold: int
    duration_s: float
    start: np.ndarray
    frames: np.ndarray
    winner: np.ndarray
    confidence: np.ndarray
    members: np.ndarray
    calls: np.ndarray
    probs: np.ndarray | None = None

    @classmethod
    def from_votes(cls, fold: int, duration_s: float, votes: list[WindowVote], calls) -> "StreamVotes":
        n_members = len(votes[0].member_labels) if votes else 0
        return cls(fold, duration_s, np.array([v.start_frame for v in votes], np.int64),
                   np.array([v.frames for v in votes], np.int64), np.array([v.label for v in votes], np.int64),
                   np.array([v.confidence for v in votes], np.float64),
                   np.array([v.member_labels for v in votes], np.int64).reshape(len(votes), n_members),
                   np.asarray(calls, np.float64).reshape(-1, 3),
                   np.array([v.member_probs for v in votes], np.float32) if votes and votes[0].member_probs else None)

    def events(self, merger: EventMerger, only: int | None = None) -> list[Event]:
        """The events the recorder would store from these votes at ``merger``'s operating point;
        with ``only``, just those of that class (faster: its runs depend on its windows alone, so
        every other window is left out but the one after each of its runs, as background)."""
        return merger.merge(self.window_votes(merger, only), self.duration_s)

    def window_votes(self, merger: EventMerger, only: int | None = None) -> list[WindowVote]:
        """The recorder's ``WindowVote``s at ``merger``'s thresholds (``only``: as ``events``)."""
        labels = apply_thresholds(self.winner, self.confidence, merger.labels, merger.point.thresholds,
                                  merger.background)
        keep = np.ones(len(labels), bool)
        if only is not None:
            mine = labels == only
            keep = mine | np.concatenate([[False], mine[:-1]])
            labels = np.where(mine, labels, merger.background)
        probs = self.probs
        votes = [WindowVote(int(self.start[i]), int(self.frames[i]), int(labels[i]), float(self.confidence[i]),
                            tuple(int(m) for m in self.members[i]),
                            () if probs is None else tuple(tuple(map(float, m)) for m in probs[i]))
                 for i in np.flatnonzero(keep)]
        return votes


@dataclasses.dataclass
class FieldVotes:
    """Every fold's raw votes: background and assembled streams, and each clip's windows."""

    labels: tuple[str, ...]
    frame_s: float
    background_streams: list[StreamVotes]
    assembled: list[StreamVotes]
    clips: list[StreamVotes]          # one per clip, ``calls`` holding its own label over its length
    clip_targets: np.ndarray
    members: tuple[str, ...] = ()     # what voted (recipe names), when the file says (kept since 2026-12-04)
    # what the votes were made with, when the file says (kept since 2026-12-06): a digest of every
    # fold's member files (recipe names do not tell seeds or epochs apart), and the prevalence
    models_sha256: str = ""
    prevalence: float | None = None
    # The windows' hop: the recorder merges a file's end-aligned last window into the one it nearly
    # repeats (``EventMerger.grow``); without it the measure counted that window as more evidence
    # (a review: clip UAR on test 0.79 here, 0.61 as the recorder stores it). 0: every window counts.
    hop_frames: int = 0
    # Windows per ensemble run (kept since the field measure voted in the recorder's batches): int8
    # members' votes depend on their batch, and votes made in batches of 16 read back with
    # --reuse-votes or --votes were not the recorder's (a review). None: made before, in 16.
    batch_size: int | None = None

    @property
    def member_count(self) -> int:
        return self.clips[0].members.shape[1] if self.clips else 0

    @property
    def background(self) -> int:
        return self.labels.index(BACKGROUND)

    def folds(self) -> list[int]:
        return sorted({s.fold for s in self.background_streams})

    def subset(self, folds) -> "FieldVotes":
        """The votes of these folds only (to choose on some folds and measure on the others)."""
        folds = set(folds)
        clips = np.array([s.fold in folds for s in self.clips], bool)
        return FieldVotes(self.labels, self.frame_s, [s for s in self.background_streams if s.fold in folds],
                          [s for s in self.assembled if s.fold in folds],
                          [s for s, keep in zip(self.clips, clips) if keep], self.clip_targets[clips], self.members,
                          self.models_sha256, self.prevalence, self.hop_frames, self.batch_size)

    def merger(self, point: OperatingPoint, calibration: Calibration = Calibration()) -> EventMerger:
        """The recorder's merge rule for these votes: its hop, and kept runs ``BRIDGE`` windows apart joined."""
        return EventMerger(self.labels, self.background, self.frame_s, point, calibration, hop_frames=self.hop_frames,
                           bridge=BRIDGE if self.hop_frames else 0)

    def save(self, path: Path) -> None:
        """One ``.npz``: the streams' arrays under ``<kind><i>_<field>``."""
        arrays = {"labels": np.array(self.labels), "frame_s": self.frame_s, "clip_targets": self.clip_targets,
                  **({"members": np.array(self.members)} if self.members else {}),
                  **({"models_sha256": np.array(self.models_sha256)} if self.models_sha256 else {}),
                  **({"prevalence": self.prevalence} if self.prevalence is not None else {}),
                  "hop_frames": self.hop_frames,
                  **({"batch_size": self.batch_size} if self.batch_size is not None else {})}
        for kind in ("background_streams", "assembled", "clips"):
            arrays[f"{kind}_n"] = len(getattr(self, kind))
            for i, s in enumerate(getattr(self, kind)):
                for f in dataclasses.fields(StreamVotes):
                    if getattr(s, f.name) is not None:
                        arrays[f"{kind}{i}_{f.name}"] = getattr(s, f.name)
        packed = io.BytesIO()   # written whole: a full disk or a kill left a file --reuse-votes could not open
        np.savez_compressed(packed, **arrays)
        write_whole(Path(path), packed.getvalue())

    @classmethod
    def load(cls, path: Path) -> "FieldVotes":
        try:
            data = np.load(path)
            streams = {kind: [StreamVotes(**{f.name: data[f"{kind}{i}_{f.name}"] for f in dataclasses.fields(StreamVotes)
                                             if f"{kind}{i}_{f.name}" in data.files})
                              for i in range(int(data[f"{kind}_n"]))]
                       for kind in ("background_streams", "assembled", "clips")}
            for kind in streams.values():
                for s in kind:
                    s.fold, s.duration_s = int(s.fold), float(s.duration_s)
            hop = int(data["hop_frames"]) if "hop_frames" in data.files else _regular_hop(streams["background_streams"])
            return cls(tuple(str(x) for x in data["labels"]), float(data["frame_s"]), clip_targets=data["clip_targets"],
                       members=tuple(str(x) for x in data["members"]) if "members" in data.files else (),
                       models_sha256=str(data["models_sha256"]) if "models_sha256" in data.files else "",
                       prevalence=float(data["prevalence"]) if "prevalence" in data.files else None,
                       hop_frames=hop, batch_size=int(data["batch_size"]) if "batch_size" in data.files else None,
                       **streams)
        except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            # EOFError, BadZipFile: a file cut short or empty (a traceback before, a trial)
            raise DataError(f"{path}: not a readable field-votes file ({type(exc).__name__}: {exc})") from exc


def _regular_hop(streams: list[StreamVotes]) -> int:
    """The hop of votes saved before they carried it: the commonest step between window starts
    (the end-aligned last window is the only other)."""
    steps = np.concatenate([np.diff(s.start) for s in streams] or [np.zeros(0, np.int64)])
    steps = steps[steps > 0]
    return int(np.bincount(steps).argmax()) if len(steps) else 0


def fold_bundle(models: list[Path], labels: list[str], frontend: FrontendConfig, window_s: float, hop_s: float,
                out: Path) -> Bundle:
    """A bundle of one fold's member models (their columns of ``frontend``, as ``bundle`` makes
    them), no thresholds: the fold's ensemble exactly as a recorder would load it."""
    from training.onnx_export import read_columns

    members = []
    for i, model in enumerate(models):
        if not Path(model).is_file():
            raise DataError(f"{model}: fold model missing")
        members.append(read_columns(Path(model), out.parent / f"{out.name}-{i}.onnx", frontend))
    return load_bundle(write_bundle(out, members, labels, frontend=frontend, window_s=window_s, hop_s=hop_s).path)


def assemble(calls: list[int], backgrounds: list[int], durations: dict[int, float], prevalence: float,
             rng: np.random.Generator) -> list[int]:
    """An order of clips: calls shuffled, each after background clips (in a shuffled turn, shuffled
    anew each time it is used up) until the calls fill about ``prevalence`` of the time. A fresh
    turn each pass: one turn cycled repeated each run of clips, and with it each false event
    that runs across their joins, 16-34 times in a fold."""
    if not backgrounds:
        return []
    calls = list(rng.permutation(calls))
    turn: list[int] = []
    order, position, gap = [], 0, 0.0
    for call in calls + [None]:
        want = gap
        while want > 0 or not order:   # background first, so no call starts the recording
            if position == len(turn):
                turn, position = list(rng.permutation(backgrounds)), 0
            clip = turn[position]
            position += 1
            order.append(clip)
            want -= durations[clip]
        if call is not None:
            order.append(call)
            gap = durations[call] * (1 - prevalence) / prevalence
    return order


def analyse_fold(analyzer: Analyzer, split: Split, indices, fold: int, prevalence: float = DEFAULT_PREVALENCE,
                 seed: int = 0) -> tuple[StreamVotes, StreamVotes, list[StreamVotes]]:
    """One fold's held-out clips ``indices`` of ``split`` through ``analyzer`` (raw): its background
    stream, its assembled stream and each clip alone."""
    rate = analyzer.bundle.frontend.sample_rate
    background = split.labels.index(BACKGROUND)
    samples = {int(i): clip_samples(split.clips[i], rate) for i in indices}
    durations = {i: len(s) / rate for i, s in samples.items()}
    backgrounds = [i for i in samples if split.targets[i] == background]
    calls = [i for i in samples if split.targets[i] != background]
    if not backgrounds:
        raise DataError(f"fold {fold + 1}: no held-out background clips to measure false events on")
    clips = []
    for i, s in samples.items():
        votes, duration = stream_votes(analyzer, [s])
        clips.append(StreamVotes.from_votes(fold, duration, votes, [(0.0, duration, int(split.targets[i]))]))
    votes, duration = stream_votes(analyzer, [samples[i] for i in backgrounds])
    background_stream = StreamVotes.from_votes(fold, duration, votes, [])
    order = assemble(calls, backgrounds, durations, prevalence, np.random.default_rng(seed + fold))
    truth, t = [], 0.0
    for i in order:
        if split.targets[i] != background:
            truth.append((t, t + durations[i], int(split.targets[i])))
        t += durations[i]
    votes, duration = stream_votes(analyzer, [samples[i] for i in order])
    return background_stream, StreamVotes.from_votes(fold, duration, votes, truth), clips


def field_votes(bundles: list[Bundle], split: Split, folds, prevalence: float = DEFAULT_PREVALENCE,
                seed: int = 0) -> FieldVotes:
    """Raw votes of each fold's bundle on that fold's held-out clips (``folds``: (train, validation)
    index pairs into ``split``); with one bundle and one fold of every clip, a whole split."""
    streams = ([], [], [])
    order = []
    # One BLAS thread, as on the recorder: the frontend's small products gain nothing from more,
    # and on a busy machine waiting threads made them ten times slower (measured here).
    with threadpool_limits(1):
        for k, (bundle, (_, va)) in enumerate(zip(bundles, folds)):
            analyzer = raw_analyzer(bundle)
            for kind, got in zip(streams, analyse_fold(analyzer, split, va, k, prevalence, seed)):
                kind.extend(got if isinstance(got, list) else [got])
            order.extend(int(i) for i in va)
    frame_s = bundles[0].frontend.hop_length / bundles[0].frontend.sample_rate
    hop = WindowSpec.from_seconds(bundles[0].window_s, bundles[0].hop_s, bundles[0].frontend).hop
    return FieldVotes(tuple(split.labels), frame_s, streams[0], streams[1], streams[2], split.targets[order],
                      hop_frames=hop, batch_size=BATCH_SIZE)


def fold_field_votes(models_per_fold: list[list[Path]], frontends: list[FrontendConfig], split: Split, folds,
                     window_s: float, hop_s: float, prevalence: float = DEFAULT_PREVALENCE) -> FieldVotes:
    """Raw votes of each fold's ensemble (``models_per_fold[k]``: its members' ONNX files, trained on
    ``frontends``) over that fold's held-out clips, through a bundle of them."""
    from training.bundling import shared_frontend

    frontend = shared_frontend(frontends, models_per_fold[0][0])
    with tempfile.TemporaryDirectory() as tmp:
        bundles = [fold_bundle(models, list(split.labels), frontend, window_s, hop_s, Path(tmp) / f"fold{k}")
                   for k, models in enumerate(models_per_fold)]
        votes = field_votes(bundles, split, folds, prevalence)
    votes.models_sha256, votes.prevalence = models_digest(models_per_fold), prevalence
    return votes


def models_digest(models_per_fold: list[list[Path]]) -> str:
    """One sha256 over every fold's member files, in order: what made a votes file."""
    digest = hashlib.sha256()
    for models in models_per_fold:
        for model in models:
            digest.update(Path(model).read_bytes())
    return digest.hexdigest()
