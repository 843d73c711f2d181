"""Where the held-out false events come from: background clips near a labelled call, or far from any.

Reads a ``<out>.votes.npz`` of ``edgemon-train cv-ensemble`` and the JSON whose operating point to
apply (its ``field.operating_point``), runs every held-out background clip alone through the
recorder's merger at that point, and splits the background by how far each clip lies from the
nearest labelled call of the same source recording (train, devel and pool lists; the
times are in the clip names). Prints false events per hour near and far, and the clips with an
event, nearest first. ``--spectrograms PNG CLIP...`` draws log-mel images of the named clips.

    PYTHONPATH=. .venv/bin/python scripts/background_near_calls.py runs/cvens.votes.npz runs/rules-hysteresis-t30.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from edgemon.analysis.decisions import OperatingPoint
from training.cv import folds_with_pool, grouped_folds_of
from training.data import BACKGROUND, clip_span, read_label_list
from training.field_votes import FieldVotes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "borneo"
LISTS = ("train", "devel", "pool")   # never the test list: it stays unseen until the end


def labelled_calls(data: Path) -> dict[str, list]:
    """Source recording -> (span, label) of every labelled call of ``LISTS``."""
    calls: dict[str, list] = {}
    for name in LISTS:
        for clip in read_label_list(data / "lab" / f"{name}.csv", data / "audio"):
            span = clip_span(clip.path.name)
            if span and clip.label != BACKGROUND:
                calls.setdefault(span.source, []).append((span, clip.label))
    return calls


def nearest_call(name: str, calls) -> tuple[float, str | None]:
    """Seconds between the clip and the nearest labelled call of its recording (0: touching)."""
    span = clip_span(name)
    mine = calls.get(span.source, []) if span else []
    return min(((span.gap_s(c), label) for c, label in mine), default=(float("inf"), None))


def held_out_clips(votes: FieldVotes, data: Path) -> list:
    """The clips of ``votes.clips``, in order: train + devel in cv's folds, and the pool's clips in
    their recorders' folds when the votes hold them (``cv-ensemble``'s default since 2026-12-04)."""
    clips = [c for name in ("train", "devel")   # train + devel, merged as cv merges them
             for c in read_label_list(data / "lab" / f"{name}.csv", data / "audio")]
    targets = [votes.labels.index(c.label) for c in clips]
    folds = grouped_folds_of([c.recorder for c in clips], np.array(targets))
    if len(votes.clip_targets) > len(clips):
        pool = read_label_list(data / "lab" / "pool.csv", data / "audio")
        held = [sorted({clips[i].recorder for i in va}) for _, va in folds]
        folds = folds_with_pool(held, folds, len(clips), [c.recorder for c in pool])
        clips, targets = clips + pool, targets + [votes.labels.index(c.label) for c in pool]
    order = np.concatenate([va for _, va in folds])
    if not np.array_equal(votes.clip_targets, np.array(targets)[order]):
        raise SystemExit("these votes are not of train + devel (+ pool) in cv's folds (another data set or seed?)")
    return [clips[i] for i in order]


def background_clips(votes: FieldVotes, point: OperatingPoint, data: Path) -> list[dict]:
    """Each held-out background clip: the events the point stores on it alone, the nearest call,
    and whether it comes from a recording no labelled list holds (another night)."""
    source = lambda clip: getattr(clip_span(clip.path.name), "source", clip.path.name)
    train_recordings = {source(c) for name in ("train", "devel")
                        for c in read_label_list(data / "lab" / f"{name}.csv", data / "audio")}
    merger, calls, out = votes.merger(point), labelled_calls(data), []
    for stream, clip in zip(votes.clips, held_out_clips(votes, data)):
        if clip.label == BACKGROUND:
            gap, label = nearest_call(clip.path.name, calls)
            out.append({"clip": clip, "events": [e.label for e in stream.events(merger)],
                        "hours": stream.duration_s / 3600, "gap_s": gap, "nearest": label,
                        "other_night": source(clip) not in train_recordings})
    return out


def spectrograms(png: Path, clips: list[str], data: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile

    from edgemon.analysis.frontend import log_mel

    fig, axes = plt.subplots(len(clips), 1, figsize=(10, 1.9 * len(clips)), squeeze=False)
    for ax, name in zip(axes[:, 0], clips):
        samples, rate = soundfile.read(data / "audio" / name, dtype="float32")
        image = log_mel(samples)
        ax.imshow(image.T, origin="lower", aspect="auto", cmap="magma", extent=[0, len(samples) / rate, 0, 128],
                  vmin=np.percentile(image, 5), vmax=image.max())
        ax.set_title(name, fontsize=8)
        ax.set_ylabel("mel band", fontsize=8)
    axes[-1, 0].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(png, dpi=60)
    from PIL import Image   # matplotlib's own dependency: 64 colours keep the figure small

    Image.open(png).convert("RGB").quantize(colors=64).save(png, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("votes", type=Path)
    parser.add_argument("point", type=Path, help="a cv-ensemble JSON: its field.operating_point is applied")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--spectrograms", nargs="+", metavar=("PNG", "CLIP"))
    args = parser.parse_args()
    if args.spectrograms:
        spectrograms(Path(args.spectrograms[0]), args.spectrograms[1:], args.data)
    try:
        stored = json.loads(args.point.read_text())["field"]["operating_point"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"{args.point}: not a cv-ensemble result with a field operating point "
                         f"({type(exc).__name__}: {exc})")
    point = OperatingPoint.from_manifest({"operating_point": stored}, stored["thresholds"])
    clips = background_clips(FieldVotes.load(args.votes), point, args.data)
    total = sum(len(c["events"]) for c in clips), sum(c["hours"] for c in clips)
    print(f"{len(clips)} held-out background clips, {total[1]:.3f} h, {total[0]} events at the point "
          f"({total[0] / total[1]:.1f} / h), each clip alone")
    for limit in (120, 600):
        for name, part in (("near", [c for c in clips if c["gap_s"] <= limit]),
                           ("far", [c for c in clips if c["gap_s"] > limit])):
            events, hours = sum(len(c["events"]) for c in part), sum(c["hours"] for c in part)
            print(f"  {name:>4} (nearest labelled call {'<=' if name == 'near' else '>'} {limit} s): "
                  f"{len(part)} clips, {hours:.3f} h, {events} events, {events / max(hours, 1e-9):.1f} / h")
    for name, part in (("from a labelled recording", [c for c in clips if not c["other_night"]]),
                       ("from a recording in no list (another night)", [c for c in clips if c["other_night"]])):
        events, hours = sum(len(c["events"]) for c in part), sum(c["hours"] for c in part)
        print(f"  {name}: {len(part)} clips, {hours:.3f} h, {events} events, {events / max(hours, 1e-9):.1f} / h")
    print("clips with an event, nearest labelled call first:")
    for c in sorted((c for c in clips if c["events"]), key=lambda c: c["gap_s"]):
        print(f"  {c['clip'].recorder} {','.join(c['events'])}: nearest call {c['gap_s']:.0f} s "
              f"({c['nearest']}) {c['clip'].path.name}")


if __name__ == "__main__":
    main()
