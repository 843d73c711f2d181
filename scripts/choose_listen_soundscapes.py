"""Choose the Borneo test clips that the listen tests' soundscapes are made of, for the shipped bundle.

The criterion (devtools/soundscapes.py states it): the bundle finds exactly the soundscape's calls
and nothing else, each starting within 2.5 s of the truth, at every phase of its window grid (eight
tried), on the clips as they are and after a simulated sound-server path (48 kHz 16-bit, 44.1 kHz,
back to 16 kHz) at full and 80 % gain. Run it again whenever the default bundle changes:

    .venv/bin/python scripts/choose_listen_soundscapes.py [--data ../shared/data/borneo]

It prints the background clips that stay silent, the call clips that pass between two of them, and
whether the soundscapes named in devtools/soundscapes.py pass as a whole.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgemon.analysis.analyzer import Analyzer  # noqa: E402
from edgemon.analysis.bundle import default_bundle_path, load_bundle  # noqa: E402
from devtools.soundscapes import PART_A, PART_B, SAMPLE_RATE  # noqa: E402

TOLERANCE_S = 2.5  # the listen test allows 3 s (a hop and the device latency)
PHASES = 8


def sound_server(x: np.ndarray, gain: float) -> np.ndarray:
    """What a call played through a sound server may come back as."""
    y = soxr.resample(x * gain, SAMPLE_RATE, 48000)
    y = np.round(np.clip(y, -1, 1) * 32767) / 32767
    return soxr.resample(soxr.resample(y, 48000, 44100), 44100, SAMPLE_RATE).astype(np.float32)


def variants(x: np.ndarray, hop_s: float):
    """Every phase of the window grid, raw and through the sound server at two gains."""
    for k in range(PHASES):
        shifted = np.concatenate([np.zeros(int(k * hop_s / PHASES * SAMPLE_RATE), np.float32), x])
        lead = len(shifted) - len(x)
        for path in (lambda s: s, lambda s: sound_server(s, 1.0), lambda s: sound_server(s, 0.8)):
            yield lead / SAMPLE_RATE, path(shifted)


def passes(analyzer: Analyzer, clips: list[np.ndarray], labels: list[str]) -> bool:
    """Whether the concatenated ``clips`` give exactly their calls, each close to its start."""
    x = np.concatenate(clips)
    starts = np.cumsum([0] + [len(c) for c in clips[:-1]]) / SAMPLE_RATE
    truth = [(label, s) for label, s in zip(labels, starts) if label != "background"]
    for lead, y in variants(x, analyzer.bundle.hop_s):
        events = analyzer.analyse_blocks([y]).events
        if [e.label for e in events] != [label for label, _ in truth]:
            return False
        if any(abs(e.start_s - lead - s) > TOLERANCE_S for e, (_, s) in zip(events, truth)):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    args = parser.parse_args()
    with open(args.data / "lab" / "test.csv") as f:
        labels = {row["filename"]: row["label"] for row in csv.DictReader(f)}
    audio = {name: soundfile.read(args.data / "audio" / name, dtype="float32")[0] for name in labels}
    analyzer = Analyzer(load_bundle(default_bundle_path()))
    print(f"bundle {analyzer.bundle.bundle_id}")

    silent = [n for n, label in labels.items() if label == "background"
              and passes(analyzer, [audio[n]], ["background"])]
    print(f"background clips silent under every variant: {len(silent)} of "
          f"{sum(1 for v in labels.values() if v == 'background')}")
    for name in silent:
        print(f"  {name}")
    if len(silent) < 2:
        return
    lead, trail = audio[silent[0]], audio[silent[1]]
    for label in sorted({v for v in labels.values() if v != "background"}):
        names = [n for n, v in labels.items() if v == label]
        good = [n for n in names if passes(analyzer, [lead, audio[n], trail], ["background", label, "background"])]
        print(f"{label}: {len(good)} of {len(names)} pass between two silent clips")
        for name in good:
            print(f"  {name}")
    for part_name, part in (("PART_A", PART_A), ("PART_B", PART_B)):
        ok = all(n in labels for n in part) and passes(analyzer, [audio[n] for n in part], [labels[n] for n in part])
        print(f"{part_name} as named in devtools/soundscapes.py: {'passes' if ok else 'FAILS'}")


if __name__ == "__main__":
    main()
