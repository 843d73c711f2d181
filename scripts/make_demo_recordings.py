"""Build the demo excerpt committed in demo-data/ from the Borneo test clips (deterministic).

    python scripts/make_demo_recordings.py [--data ../shared/data/borneo] [--out demo-data]

Writes ``OUT/recordings/YYYYMMDD_HHMMSS.flac`` (AudioMoth-style names, read as UTC; 16 kHz mono
16-bit FLAC), each made of test-split clips laid end to end with every call between two background
clips, and ``OUT/truth.csv`` (``file,start_s,end_s,label,clip``: where every clip lies, background
included, and which Borneo clip it is). Only maintainers run this, to rebuild the excerpt; the demo
and its tests read the committed files. Data: Clink et al. (2023), doi 10.5281/zenodo.7562095 (see
demo-data/README.md).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile

RATE = 16000
RECORDINGS = 3
# Calls in the whole excerpt, every call type of the embedded bundle; 12 calls and 15 backgrounds
# of 6-20 s make about 4 minutes of audio, ~4.5 MB of FLAC: small enough to commit.
CALLS = {"gibbon_duet": 4, "great_argus": 3, "hornbill_helmeted": 3, "hornbill_rhino": 2}
SEED = 13


def choose(clips: list[dict], rng: np.random.Generator) -> list[list[dict]]:
    """Per recording, the clips in order: background, call, background, ..., background."""
    calls = [c for label, n in CALLS.items()
             for c in rng.choice([c for c in clips if c["label"] == label], n, replace=False)]
    calls = [calls[i] for i in rng.permutation(len(calls))]
    per = len(calls) // RECORDINGS
    backgrounds = list(rng.choice([c for c in clips if c["label"] == "background"],
                                  len(calls) + RECORDINGS, replace=False))
    recordings = []
    for r in range(RECORDINGS):
        order = [backgrounds.pop()]
        for call in calls[r * per:(r + 1) * per]:
            order += [call, backgrounds.pop()]
        recordings.append(order)
    return recordings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    parser.add_argument("--out", type=Path, default=Path("demo-data"))
    args = parser.parse_args()
    lab = args.data / "lab" / "test.csv"
    if not lab.is_file():
        raise SystemExit(f"error: {lab}: rebuilding the excerpt needs the Borneo data set")
    with open(lab) as f:
        clips = list(csv.DictReader(f))
    (args.out / "recordings").mkdir(parents=True, exist_ok=True)
    truth = [("file", "start_s", "end_s", "label", "clip")]
    for r, order in enumerate(choose(clips, np.random.default_rng(SEED))):
        name, parts, offset = f"201803{r + 1:02d}_060000.flac", [], 0
        for clip in order:
            x, rate = soundfile.read(args.data / "audio" / clip["filename"], dtype="int16")
            assert rate == RATE and x.ndim == 1, clip["filename"]
            truth.append((name, f"{offset / RATE:.3f}", f"{(offset + len(x)) / RATE:.3f}", clip["label"],
                          clip["filename"]))
            parts.append(x)
            offset += len(x)
        # int16 in, PCM_16 out: the samples are the clips' own, bit for bit.
        soundfile.write(args.out / "recordings" / name, np.concatenate(parts), RATE, format="FLAC",
                        subtype="PCM_16", compression_level=1.0)
    with open(args.out / "truth.csv", "w", newline="") as f:
        csv.writer(f).writerows(truth)
    print(f"{RECORDINGS} recordings in {args.out / 'recordings'}; clips listed in {args.out / 'truth.csv'}")


if __name__ == "__main__":
    main()
