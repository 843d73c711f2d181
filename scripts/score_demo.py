"""Score exported detections against the demo excerpt's truth: event precision and recall.

    python scripts/score_demo.py DETECTIONS.csv [--truth demo-data/truth.csv]

A detection finds a call when both lie in the same recording (by file name), carry the same label
and overlap by any amount; each call is found at most once and each detection finds at most one
call, so a call split into two detections counts one hit and one false detection. Precision: the
share of detections that found a call; recall: the share of calls found. Background rows of the
truth are not calls. Needs only the standard library (the demo runs on the edge install).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path, PurePath
from typing import NamedTuple

DEFAULT_TRUTH = Path(__file__).resolve().parents[1] / "demo-data" / "truth.csv"


class Event(NamedTuple):
    """One call or detection: recording file name, label, start and end in seconds from its start."""
    file: str
    label: str
    start_s: float
    end_s: float


class Score(NamedTuple):
    precision: float   # 0 when there are no detections
    recall: float
    hits: int
    detections: int
    calls: int
    found_by: frozenset[int]   # indices of the detections that found a call


def read_truth(path: Path) -> list[Event]:
    """The calls of a truth CSV (``file,start_s,end_s,label[,clip]``), background left out."""
    with open(path, newline="") as f:
        return [Event(r["file"], r["label"], float(r["start_s"]), float(r["end_s"]))
                for r in csv.DictReader(f) if r["label"] != "background"]


def read_detections(path: Path) -> list[Event]:
    """The detections of an ``edgemon export-detections`` CSV, keyed by the source's file name."""
    with open(path, newline="") as f:
        return [Event(PurePath(r["source"]).name, r["label"], float(r["start_s"]), float(r["end_s"]))
                for r in csv.DictReader(f)]


def score(calls: list[Event], detections: list[Event]) -> Score:
    """Match one to one, greedily, largest overlaps first (ties by order)."""
    pairs = sorted(((min(c.end_s, d.end_s) - max(c.start_s, d.start_s), i, j)
                    for i, c in enumerate(calls) for j, d in enumerate(detections)
                    if c.file == d.file and c.label == d.label), key=lambda p: -p[0])
    found_calls, used = set(), set()
    for overlap, i, j in pairs:
        if overlap > 0 and i not in found_calls and j not in used:
            found_calls.add(i)
            used.add(j)
    hits = len(found_calls)
    return Score(hits / len(detections) if detections else 0.0, hits / len(calls) if calls else 0.0,
                 hits, len(detections), len(calls), frozenset(used))


def verdict(j: int, d: Event, calls: list[Event], s: Score) -> str:
    """What detection ``j`` is, for people: a hit, a second piece of a call, or nothing there."""
    if j in s.found_by:
        return "a call"
    if any(c.file == d.file and c.label == d.label and min(c.end_s, d.end_s) > max(c.start_s, d.start_s)
           for c in calls):
        return "a call, split (counted as false)"
    return "no such call"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detections", type=Path)
    parser.add_argument("--truth", type=Path, default=DEFAULT_TRUTH)
    args = parser.parse_args()
    calls, detections = read_truth(args.truth), read_detections(args.detections)
    s = score(calls, detections)
    print(f"{'file':<22}{'start_s':>8}{'end_s':>8}  {'label':<19}truth")
    for j, d in enumerate(detections):
        print(f"{d.file:<22}{d.start_s:>8.1f}{d.end_s:>8.1f}  {d.label:<19}{verdict(j, d, calls, s)}")
    print(f"{s.hits} of {s.calls} calls found (recall {s.recall:.2f}); {s.hits} of {s.detections} "
          f"detections are calls (precision {s.precision:.2f})")


if __name__ == "__main__":
    main()
