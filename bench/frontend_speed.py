"""Streaming frontend cost per kind: seconds to turn 600 s of 16 kHz audio into model input, fed in
1 s blocks as the recorder feeds it, on one thread (log-mel, PCEN, both side by side).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/frontend_speed.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from edgemon.analysis.frontend import KNOWN_KINDS, FrontendConfig, StreamingFrontend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rate = FrontendConfig().sample_rate
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(args.seconds * rate))).astype(np.float32)
    print(f"{args.seconds:g} s of audio in 1 s blocks; best of {args.repeats}")
    for kind in KNOWN_KINDS:
        best = float("inf")
        for _ in range(args.repeats):
            stream = StreamingFrontend(FrontendConfig(kind=kind))
            started = time.perf_counter()
            for i in range(0, len(audio), rate):
                stream.push(audio[i:i + rate])
            stream.finish()
            best = min(best, time.perf_counter() - started)
        print(f"{kind:12s} {best:6.3f} s  ({args.seconds / best:7.0f}x real time)")


if __name__ == "__main__":
    main()
