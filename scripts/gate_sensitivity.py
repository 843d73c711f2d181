"""How much the event gate's two settings matter: its base threshold (windows over it form the
candidate runs) and its L2 strength (``C``), each point chosen on four folds and measured on the
fifth (``training.operating.held_out``), on the raw votes an earlier ``cv-ensemble`` saved.

    PYTHONPATH=. .venv/bin/python scripts/gate_sensitivity.py runs/pair-hp2-t30.votes.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.event_gate import GateRules
from training.field_votes import FieldVotes
from training.operating import held_out

SETTINGS = ((0.30, 0.5), (0.25, 0.5), (0.35, 0.5), (0.40, 0.5), (0.30, 0.1), (0.30, 2.0))   # the default first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("votes", type=Path, help="a cv-ensemble <out>.votes.npz (with member probabilities)")
    parser.add_argument("--targets", type=float, nargs="+", default=[5.0, 10.0, 20.0, 30.0],
                        help="false events per hour of background to choose points for")
    args = parser.parse_args()
    votes = FieldVotes.load(args.votes)
    for base, c in SETTINGS:
        figures, _ = held_out(votes, args.targets, GateRules(base, c))
        print(f"base threshold {base:.2f}, C {c:g}: " + " | ".join(
            f"{t:g} / h -> {o['false_per_hour']:.1f} / h ({o['false_events']}), recall {o['recall']:.3f}"
            for t, o in figures.items()), flush=True)


if __name__ == "__main__":
    main()
