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
import csv
import json
import re
from pathlib import Path

import numpy as np

from edgemon.analysis.decisions import OperatingPoint
from training.cv import grouped_folds_of
from training.field import FieldVotes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "borneo"
LISTS = ("train", "devel", "pool")   # never the test list: it stays unseen until the end


def clip_span(filename: str) -> tuple[float, float]:
    """Start and end (s) of a clip in its source recording, from its name ``…_START_END_.flac``."""
    match = re.search(r"_([0-9.]+)_([0-9.]+)_\.flac$", filename)
    if not match:
        raise SystemExit(f"{filename}: no start and end times in the name")
    return float(match.group(1)), float(match.group(2))


def labelled_calls(data: Path) -> dict[str, list[tuple[float, float, str]]]:
    calls: dict[str, list[tuple[float, float, str]]] = {}
    for name in LISTS:
        with open(data / "lab" / f"{name}.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["label"] != "background":
                    calls.setdefault(row["source_recording"], []).append((*clip_span(row["filename"]), row["label"]))
    return calls


def nearest_call(row: dict, calls) -> tuple[float, str | None]:
    """Seconds between the clip and the nearest labelled call of its recording (0: touching)."""
    start, end = clip_span(row["filename"])
    gaps = [(max(0.0, c0 - end, start - c1), label) for c0, c1, label in calls.get(row["source_recording"], [])]
    return min(gaps, default=(float("inf"), None))


def background_clips(votes: FieldVotes, point: OperatingPoint, data: Path) -> list[dict]:
    """Each held-out background clip: its row, the events the point stores on it alone, the nearest call."""
    with open(data / "lab" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(data / "lab" / "devel.csv", newline="") as f:
        rows += list(csv.DictReader(f))     # train + devel, merged as cv merges them
    targets = np.array([votes.labels.index(r["label"]) for r in rows])
    order = np.concatenate([va for _, va in grouped_folds_of([r["recorder"] for r in rows], targets)])
    if not np.array_equal(votes.clip_targets, targets[order]):
        raise SystemExit("these votes are not of train + devel in cv's folds (another data set or seed?)")
    merger, calls, out = votes.merger(point), labelled_calls(data), []
    for clip, i in zip(votes.clips, order):
        if targets[i] == votes.background:
            gap, label = nearest_call(rows[i], calls)
            out.append({"row": rows[i], "events": [e.label for e in clip.events(merger)],
                        "hours": clip.duration_s / 3600, "gap_s": gap, "nearest": label})
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
    stored = json.loads(args.point.read_text())["field"]["operating_point"]
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
    print("clips with an event, nearest labelled call first:")
    for c in sorted((c for c in clips if c["events"]), key=lambda c: c["gap_s"]):
        print(f"  {c['row']['recorder']} {','.join(c['events'])}: nearest call {c['gap_s']:.0f} s "
              f"({c['nearest']}) {c['row']['filename']}")


if __name__ == "__main__":
    main()
