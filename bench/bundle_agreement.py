"""Agreement of two bundles window by window, e.g. an int8 bundle against its fp32 original.

    python bench/bundle_agreement.py runs/cv-bundle-fp32 edgemon/models/default [--split devel]

Runs both bundles' ensembles over every recorder window of every clip of one split and prints how
often the stored label (vote, then thresholds) agrees, the largest confidence difference, and the
size of each bundle on disk.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.windows import cut_windows
from training.data import load_split


def labels_and_confidence(analyzer: Analyzer, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    votes = analyzer.vote_windows(list(enumerate(windows)))
    return np.array([v.label for v in votes]), np.array([v.confidence for v in votes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    parser.add_argument("--split", default="devel")
    args = parser.parse_args()
    a, b = Analyzer(load_bundle(args.a)), Analyzer(load_bundle(args.b))
    if a.bundle.frontend != b.bundle.frontend or a.bundle.labels != b.bundle.labels:
        raise SystemExit("error: the bundles differ in frontend or labels; nothing to compare")
    split = load_split(args.data, args.split, tuple(a.bundle.labels), a.bundle.frontend)
    agree = total = 0
    max_delta = 0.0
    for features in split.features:
        windows, _ = cut_windows(features, a.spec)
        la, ca = labels_and_confidence(a, windows)
        lb, cb = labels_and_confidence(b, windows)
        agree += int((la == lb).sum())
        total += len(la)
        max_delta = max(max_delta, float(np.abs(ca - cb).max()))
    size = {p: sum(f.stat().st_size for f in p.iterdir()) / 1e6 for p in (args.a, args.b)}
    print(f"{args.split}: {len(split)} clips, {total} windows; stored label agrees on {agree}/{total} "
          f"({agree / total:.1%}); max |delta confidence| {max_delta:.3f}")
    for path, mb in size.items():
        print(f"{path}: {mb:.1f} MB")


if __name__ == "__main__":
    main()
