"""Calls cut by file boundaries: what ``edgemon watch`` stores of a soundscape as one recording and
cut into contiguous recordings, at several phases of the cut.

Lays the Borneo test calls of the classes that need several windows (great argus, helmeted and
rhinoceros hornbill) between test background clips, ``--rounds`` times with other neighbours,
writes the soundscape once whole and, for each of ``--phases`` phases, cut into ``--file-s``
recordings (AudioMoth names, one after another), runs the watcher over each directory with a
database of its own, and matches stored detections to calls (same label, any overlap). Prints
the calls the whole recording stores, how many of those each cut loses (summed over phases, those
a boundary cuts among them, and calls lost at one phase at least: the others fall differently on
the 2 s window grid), and calls stored twice (by events in two recordings, not a pair touching at
the boundary). Run it with the code to compare on PYTHONPATH:

    PYTHONPATH=. .venv/bin/python bench/cut_calls.py [--phases 20] [--file-s 60] [--rounds 4]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import logging
import sqlite3
import tempfile
import threading
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
LABELS = ("great_argus", "hornbill_helmeted", "hornbill_rhino")
START = dt.datetime(2026, 2, 1, 6, 0, 0)


def soundscape(data: Path, rounds: int) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Background, call, background, ... with every call ``rounds`` times; the calls' (label, s, s)."""
    with open(data / "lab" / "test.csv") as f:
        rows = list(csv.DictReader(f))
    calls = [r for r in rows if r["label"] in LABELS]
    noise = [r for r in rows if r["label"] == "background"]
    parts, found, at, k = [], [], 0, 0
    for r in range(rounds):
        for call in calls:
            for row in (noise[k % len(noise)], call):
                x, rate = soundfile.read(data / "audio" / row["filename"], dtype="float32")
                assert rate == RATE
                if row is call:
                    found.append((call["label"], at / RATE, (at + len(x)) / RATE))
                parts.append(x)
                at += len(x)
            k += 7   # other neighbours each round
    parts.append(soundfile.read(data / "audio" / noise[k % len(noise)]["filename"], dtype="float32")[0])
    return np.concatenate(parts), found


def write_cut(samples: np.ndarray, out: Path, phase_s: float, file_s: float) -> list[float]:
    """Contiguous recordings: the first ``phase_s`` (when not 0), then ``file_s`` each; their edges (s)."""
    out.mkdir(parents=True)
    edges = [0] + list(np.arange(phase_s, len(samples) / RATE, file_s)) + [len(samples) / RATE]
    for a, b in zip(edges, edges[1:]):
        if b - a <= 0:
            continue
        name = (START + dt.timedelta(seconds=float(a))).strftime("%Y%m%d_%H%M%S") + ".WAV"
        soundfile.write(out / name, samples[int(round(a * RATE)):int(round(b * RATE))], RATE, subtype="PCM_16")
    return edges


def watch(root: Path, db: Path, analyzer) -> list[tuple[str, float, float, str]]:
    """``edgemon watch --until-idle`` over ``root``: (label, start, end in s from START, source)."""
    from edgemon.files.watcher import WatchConfig, Watcher
    from edgemon.storage.store import Store

    with Store(db) as store:
        Watcher(WatchConfig(root=root, settle_s=0, until_idle=True), analyzer, store).run(threading.Event())
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT label, start_utc, end_utc, source FROM detections").fetchall()
    t0 = START.replace(tzinfo=dt.timezone.utc)
    return [(label, (dt.datetime.fromisoformat(s.replace("Z", "+00:00")) - t0).total_seconds(),
             (dt.datetime.fromisoformat(e.replace("Z", "+00:00")) - t0).total_seconds(), src)
            for label, s, e, src in rows]


def matched(calls, events) -> dict[int, list]:
    """Call index -> the events of its label overlapping it."""
    return {i: [e for e in events if e[0] == label and e[1] < end and e[2] > start]
            for i, (label, start, end) in enumerate(calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=20)
    parser.add_argument("--file-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "borneo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from edgemon.analysis.analyzer import make_analyzer

    analyzer = make_analyzer(None)
    samples, calls = soundscape(args.data, args.rounds)
    with tempfile.TemporaryDirectory(prefix="cut_calls") as tmp:
        whole_dir = Path(tmp) / "whole"
        whole_dir.mkdir()
        soundfile.write(whole_dir / (START.strftime("%Y%m%d_%H%M%S") + ".WAV"), samples, RATE, subtype="PCM_16")
        stored = {i for i, evs in matched(calls, watch(whole_dir, Path(tmp) / "whole.db", analyzer)).items() if evs}
        lost_sum, lost_any, twice_sum, kept_sum, across_sum = 0, set(), 0, 0, 0
        for p in range(args.phases):
            phase_s = round(p * args.file_s / args.phases, 3)
            cut = Path(tmp) / f"cut{p}"
            edges = write_cut(samples, cut, phase_s, args.file_s)
            found = matched(calls, watch(cut, Path(tmp) / f"cut{p}.db", analyzer))
            lost = {i for i in stored if not found[i]}
            across = sum(1 for i in lost if any(calls[i][1] < edge < calls[i][2] for edge in edges))
            across_sum += across
            # stored twice: events of one call from two recordings, not a pair touching at the boundary
            twice = sum(1 for i in stored if len({e[3] for e in found[i]}) > 1 and not _touching(found[i]))
            lost_sum, twice_sum, kept_sum = lost_sum + len(lost), twice_sum + twice, kept_sum + len(stored) - len(lost)
            lost_any |= lost
            print(f"phase {phase_s:5.1f} s: lost {len(lost):2d} of {len(stored)} ({across} cut by a boundary), "
                  f"stored twice {twice}", flush=True)
    n = len(stored) * args.phases
    print(f"calls {len(calls)}, stored by the whole recording {len(stored)}; cut into {args.file_s:g} s recordings "
          f"at {args.phases} phases: lost {lost_sum} of {n} ({100 * lost_sum / n:.1f} %; {across_sum} cut by a "
          f"boundary), "
          f"{len(lost_any)} call(s) lost at one phase at least; stored twice {twice_sum}")


def _touching(events) -> bool:
    """Two events of one call that meet at a file boundary (one ends as the other begins)."""
    ordered = sorted(events, key=lambda e: e[1])
    return len(ordered) == 2 and abs(ordered[0][2] - ordered[1][1]) < 0.1


if __name__ == "__main__":
    main()
