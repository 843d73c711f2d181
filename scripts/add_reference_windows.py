"""Give an existing bundle (default: the embedded one) its label names, confidence ceiling and
self-check reference windows, without touching its member models (their sha256 and the bundle id
stay). Run it again only when the bundle's members change.

    .venv/bin/python scripts/add_reference_windows.py [--bundle DIR] [--data ../shared/data/borneo]

It prints the bundle's self-check on this CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgemon.analysis.bundle import default_bundle_path  # noqa: E402
from edgemon.analysis.ensemble import Ensemble  # noqa: E402
from training.bundling import complete_bundle  # noqa: E402
from training.data import DEFAULT_DATA_DIR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--bundle", type=Path, default=default_bundle_path(), metavar="DIR",
                        help="Bundle directory to complete (default: the embedded one, %(default)s).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                        help="Data directory whose train split gives the reference windows (default: %(default)s).")
    args = parser.parse_args()
    bundle = complete_bundle(args.bundle, args.data)
    check = Ensemble(bundle).self_check
    print(json.dumps({"bundle_id": bundle.bundle_id, "confidence_max": bundle.confidence_max,
                      "windows": [w.source for w in bundle.self_check.windows],
                      "self_check": check.summary()}, indent=2))


if __name__ == "__main__":
    main()
