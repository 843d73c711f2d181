"""Labelled clips in the ComParE layout: ``audio/`` plus ``lab/{train,devel,test}.csv``.

Features come from the one shared frontend (``edgemon.analysis.frontend``), exactly as on the recorder.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgemon.analysis import audio
from edgemon.analysis.frontend import FrontendConfig, from_mel_power, log_mel, mel_power
from edgemon.errors import AudioError
from training.errors import DataError
from training.species import read_label_names

DEFAULT_DATA_DIR = Path("../shared/data/borneo")
BACKGROUND = "background"
CLIP_NAME = re.compile(r"^[^_]+_(?P<source>.+)_(?P<start>[0-9.]+)_(?P<end>[0-9.]+)_\.[A-Za-z0-9]+$")


@dataclasses.dataclass(frozen=True)
class ClipSpan:
    """Where a clip was cut: its source recording and its start and end there, in seconds."""

    source: str
    start: float
    end: float

    def gap_s(self, other: "ClipSpan") -> float:
        """Seconds between two spans of one recording (0 when they touch or overlap)."""
        return max(0.0, other.start - self.end, self.start - other.end)


def clip_span(name: str) -> ClipSpan | None:
    """The span of a ComParE-style clip name ``<label>_<source>_<start>_<end>_.flac``; None for
    a clip named otherwise."""
    match = CLIP_NAME.match(name)
    return match and ClipSpan(match["source"], float(match["start"]), float(match["end"]))


@dataclasses.dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    recorder: str = ""


@dataclasses.dataclass
class Split:
    """One split's clips with their model inputs ``[frames, n_features]`` and label indices.

    With a frontend other than log-mel (PCEN, or both), ``mel`` keeps each clip's log-mel too: training
    augments in the mel domain (mixing and gain are sums and products of mel power) and then
    computes the model input, as the recorder would have.
    """

    name: str
    clips: list[Clip]
    features: list[np.ndarray]
    targets: np.ndarray  # int64 [n]
    labels: tuple[str, ...]
    mel: list[np.ndarray] | None = None
    frontend: FrontendConfig = FrontendConfig()

    @property
    def augmentable(self) -> list[np.ndarray]:
        """What augmentations work on: the log-mel."""
        return self.features if self.mel is None else self.mel

    def __len__(self) -> int:
        return len(self.clips)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.labels))

    def subset(self, indices) -> "Split":
        indices = list(indices)
        return Split(self.name, [self.clips[i] for i in indices], [self.features[i] for i in indices],
                     self.targets[indices], self.labels,
                     None if self.mel is None else [self.mel[i] for i in indices], self.frontend)


def merge(a: Split, b: Split) -> Split:
    mel = None if a.mel is None or b.mel is None else a.mel + b.mel
    return Split(f"{a.name}+{b.name}", a.clips + b.clips, a.features + b.features,
                 np.concatenate([a.targets, b.targets]), a.labels, mel, a.frontend)


def listed_name(clip: Clip, data_dir: Path) -> str:
    """A clip's name as its list gives it (``orangutan/clip01.wav``), for messages."""
    try:
        return clip.path.relative_to(Path(data_dir) / "audio").as_posix()
    except ValueError:
        return str(clip.path)


def read_label_list(csv_path: Path, audio_dir: Path) -> list[Clip]:
    """Parse a ``filename,label[,recorder,…]`` list; every listed file must exist."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label list not found")
    try:   # utf-8-sig: a list saved by a spreadsheet starts with a byte-order mark
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"filename", "label"} <= set(reader.fieldnames):
                raise DataError(f"{csv_path}: needs the columns 'filename' and 'label'")
            rows = []
            for row in reader:
                # csv leaves a short row's missing cells None: a traceback was all a user saw
                short = [c for c in ("filename", "label") if row[c] is None]
                if short:
                    raise DataError(f"{csv_path}: line {reader.line_num} has no {short[0]} (fewer cells than the "
                                    f"header's columns)")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: not a UTF-8 CSV label list ({str(exc).splitlines()[0]})") from exc
    # NFC: 'ñ' as one letter in one list and as n + combining tilde in another (names from a Mac's
    # folders) were two labels, refused as "'Pyrrhura_ñ' is not one of [..., 'Pyrrhura_ñ']" (a trial);
    # and two recorders, which grouped CV could put on both sides of a fold (a review)
    clips = [Clip(audio_dir / r["filename"], unicodedata.normalize("NFC", r["label"].strip()),
                  unicodedata.normalize("NFC", (r.get("recorder") or "").strip())) for r in rows]
    # as listed, subfolder and all: a set kept as a folder per class was told 'clip01.wav' is
    # missing from audio/ when it was the orangutan/ one (a newcomer trial)
    missing = [r["filename"] for r, c in zip(rows, clips) if not c.path.is_file()]
    if missing:   # repr: a trailing space in a name is otherwise invisible
        raise DataError(f"{csv_path}: {len(missing)} listed file(s) missing from {audio_dir}, "
                        f"first: {missing[0]!r}")
    empty = [c.path.name for c in clips if not c.label]
    if empty:
        raise DataError(f"{csv_path}: empty label for {empty[0]}")
    return clips


def check_recorders(data_dir: Path, lists: tuple[str, ...]) -> None:
    """Refuse, before any audio is read, lists that grouped CV cannot fold by recorder: clips of
    one recorder only (folds within it were clip-level CV, reported as grouped; a review). Clips
    that name no recorder are refused where the folds are made (``cv.grouped_folds``)."""
    data_dir = Path(data_dir)
    recorders = {c.recorder for name in lists
                 for c in read_label_list(data_dir / "lab" / f"{name}.csv", data_dir / "audio") if c.recorder}
    if len(recorders) == 1:
        raise DataError(f"{data_dir / 'lab'}: every clip of {', '.join(f'{n}.csv' for n in lists)} names the one "
                        f"recorder {next(iter(recorders))!r}: grouped cross-validation needs clips from at least "
                        f"2 recorders, to hold each out of its own training")


FEW_FOR_A_CLASS = 5   # a train label with fewer clips that no other list has is taken for a typo


def check_train_labels(data_dir: Path, others: tuple[str, ...], pool: bool = False) -> None:
    """Refuse, before any audio is read, a label of ``lab/train.csv`` that none of the ``others``
    lists has and that has only a few clips: a typo there ("gibbon_solo") became a sixth class
    that the class-balanced sampler gave a sixth of every epoch (found by a newcomer trial). With
    ``pool`` (the pool joins training), a pool clip that one of ``others`` holds out is refused too."""
    data_dir = Path(data_dir)
    train = read_label_list(data_dir / "lab" / "train.csv", data_dir / "audio")
    if not train:
        raise DataError(f"{data_dir / 'lab' / 'train.csv'}: lists no clips")
    lists = {name: read_label_list(data_dir / "lab" / f"{name}.csv", data_dir / "audio") for name in others}
    _check_each_clip_listed_once(data_dir, {"train": train, **lists})
    if pool:   # only then: --no-pool, report and ensemble were refused for a pool they never read (a review)
        _check_pool_holds_out_nothing(data_dir, lists)
    elsewhere = {c.label for clips in lists.values() for c in clips}
    counts: dict[str, int] = {}
    for clip in train:
        counts[clip.label] = counts.get(clip.label, 0) + 1
    if BACKGROUND not in counts:   # else a whole training ran before the bundle refused it
        raise DataError(f"{data_dir / 'lab' / 'train.csv'}: no {BACKGROUND!r} label (labels: "
                        f"{', '.join(sorted(counts))}): the class of clips with none of the calls must be "
                        f"named {BACKGROUND!r}; thresholds, the field measure and the recorder count on it")
    read_label_names(data_dir, set(counts) | elsewhere)   # a malformed names file: refused before training
    odd = sorted(label for label, n in counts.items() if label not in elsewhere and n < FEW_FOR_A_CLASS)
    if odd:
        raise DataError(f"{data_dir / 'lab' / 'train.csv'}: label {odd[0]!r} ({counts[odd[0]]} clip(s)) is in no "
                        f"other list ({', '.join(f'{n}.csv' for n in others)}): a typo? Known there: "
                        f"{', '.join(sorted(elsewhere))}")


def _check_each_clip_listed_once(data_dir: Path, lists: dict[str, list[Clip]]) -> None:
    """A clip in two lists, or twice in one: a test.csv copied from train.csv was scored as held
    out (its inflated UAR kept in the model as test_uar), and a clip listed twice with two labels
    taught both (a newcomer trial)."""
    seen: dict[Path, str] = {}
    for name, clips in lists.items():
        for clip in clips:
            where = seen.get(clip.path.resolve())
            if where is not None:
                again = f"twice in {name}.csv" if where == name else f"in {where}.csv and {name}.csv"
                raise DataError(f"{data_dir / 'lab'}: {listed_name(clip, data_dir)!r} is listed {again}: each clip "
                                f"belongs in one list, once")
            seen[clip.path.resolve()] = name


def _check_pool_holds_out_nothing(data_dir: Path, held_out: dict[str, list[Clip]]) -> None:
    """The pool joins training (``fit``, each cv fold's training side), so none of its clips may be
    one of the ``held_out`` lists' (devel, test): a pool row naming a test clip was trained on and
    scored as held out, and one naming a devel clip under another recorder joined the training side
    of the fold that held it out (a review). Pool clips that are train clips are what it is for."""
    path = Path(data_dir) / "lab" / f"{POOL}.csv"
    if path.is_file():
        pool = read_label_list(path, Path(data_dir) / "audio")
        for name, clips in held_out.items():
            _check_each_clip_listed_once(data_dir, {name: clips, POOL: pool})


def clip_features(clip: Clip, frontend: FrontendConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode (any rate, any channel count); the model input, and the log-mel when that differs.

    Errors name the clip.
    """
    try:
        samples = audio.load(clip.path, frontend.sample_rate)
    except AudioError as exc:
        raise DataError(str(exc)) from exc
    if frontend.kind == "logmel":
        return log_mel(samples, frontend), None
    mel = mel_power(samples, frontend)  # one STFT for both the model input and its log-mel
    return from_mel_power(mel, frontend)[0], np.log(mel + np.float32(frontend.log_floor))


def load_split(data_dir: Path, name: str, labels: tuple[str, ...] | None = None,
               frontend: FrontendConfig = FrontendConfig(), workers: int = 2) -> Split:
    """Read ``lab/<name>.csv`` and compute every clip's features.

    ``labels`` fixes the class order (the train split defines it when omitted: background first,
    then the others sorted); a label outside it is an error naming the clip.
    """
    data_dir = Path(data_dir)
    clips = read_label_list(data_dir / "lab" / f"{name}.csv", data_dir / "audio")
    if not clips:
        raise DataError(f"{data_dir / 'lab' / f'{name}.csv'}: lists no clips")
    if labels is None:
        found = sorted({c.label for c in clips})
        labels = tuple(([BACKGROUND] if BACKGROUND in found else []) + [l for l in found if l != BACKGROUND])
    index = {label: i for i, label in enumerate(labels)}
    for clip in clips:
        if clip.label not in index:
            raise DataError(f"{data_dir / 'lab' / f'{name}.csv'}: {listed_name(clip, data_dir)}: label "
                            f"{clip.label!r} is not one of {list(labels)}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        computed = list(pool.map(lambda c: clip_features(c, frontend), clips))
    targets = np.array([index[c.label] for c in clips], dtype=np.int64)
    inputs = [f for f, _ in computed]
    mel = None if frontend.kind == "logmel" else [m for _, m in computed]
    return Split(name, clips, inputs, targets, tuple(labels), mel, frontend)


def check_same_labels(model_labels, data_labels, models: str, data_dir: Path | None) -> None:
    """Refuse to score models on a data set whose classes are not theirs, in their order: outputs
    are compared with targets by index, so other classes give a wrong UAR or an IndexError."""
    if tuple(model_labels) != tuple(data_labels):
        raise DataError(f"{models} were trained on the labels {list(model_labels)}, --data {data_dir} has "
                        f"{list(data_labels)}: give the --data they were trained on")


def data_identity(data_dir: Path) -> dict:
    """What a model was trained on: the sha256 of each label list (audio names are inside)."""
    lab = Path(data_dir) / "lab"
    return {"data_dir": Path(data_dir).name,
            **{p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(lab.glob("*.csv"))}}


POOL = "pool"


def load_pool(data_dir: Path, labels: tuple[str, ...], frontend: FrontendConfig = FrontendConfig(),
              required: bool = False) -> Split | None:
    """``lab/pool.csv``: train-only clips (extra background and duets) cut from train recordings
    or from recordings in no split, so they may join training and the training side of grouped CV
    without leaking. ``None`` when the data set has no pool and ``required`` is off."""
    if not (Path(data_dir) / "lab" / f"{POOL}.csv").is_file() and not required:
        return None
    return load_split(data_dir, POOL, labels, frontend)


def without_recorders(split: Split, recorders) -> Split:
    """The clips of ``split`` whose recorder is not one of ``recorders`` (a fold's held-out ones):
    pool clips of a recorder under validation must stay out of that fold's training."""
    recorders = set(recorders)
    return split.subset([i for i, c in enumerate(split.clips) if (c.recorder or c.path.name) not in recorders])
