"""Assemble AudioMoth-style recordings from the Borneo test clips, for the demo.

    python scripts/make_demo_recordings.py OUT_DIR [--data ../shared/data/borneo] [--files 3]

Each file is 16-bit 16 kHz WAV named ``YYYYMMDD_HHMMSS.WAV`` (UTC), made of consecutive clips;
``OUT_DIR/truth.csv`` lists the calls and where they are. Data: Clink et al. (2023),
doi 10.5281/zenodo.7562095 (see ../shared/data/borneo/README.md). Nothing is copied into the
repository.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--clips", type=int, default=12)
    args = parser.parse_args()
    lab = args.data / "lab" / "test.csv"
    if not lab.is_file():
        raise SystemExit(f"error: {lab}: the demo needs the Borneo data set beside the repository")
    with open(lab) as f:
        clips = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    args.out.mkdir(parents=True, exist_ok=True)
    truth = [("file", "label", "start_s", "end_s", "clip")]
    for i in range(args.files):
        name, parts, offset = f"201803{i + 1:02d}_060000.WAV", [], 0.0
        for row in (clips[j] for j in rng.choice(len(clips), args.clips, replace=False)):
            x, rate = soundfile.read(args.data / "audio" / row["filename"], dtype="float32")
            if row["label"] != "background":
                truth.append((name, row["label"], f"{offset:.2f}", f"{offset + len(x) / rate:.2f}", row["filename"]))
            parts.append(x)
            offset += len(x) / rate
        soundfile.write(args.out / name, np.concatenate(parts), 16000, subtype="PCM_16")
    with open(args.out / "truth.csv", "w", newline="") as f:
        csv.writer(f).writerows(truth)
    print(f"{args.files} recordings in {args.out}; the calls they hold are listed in {args.out / 'truth.csv'}")


if __name__ == "__main__":
    main()
