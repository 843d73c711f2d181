"""Print a search study as a table: states, time, and the best trials with their settings.

For a study of ``edgemon-train hpo --objective cv`` (or ``field``) it also prints each trial's
held-out window UAR per fold and the share of held-out background windows called a call; for
``field``, the held-out trade-off too: false events per hour (events) and event recall at the
points chosen on the other folds for each target.

    python scripts/summarise_search.py sqlite:///runs/hpo-cv/study.db [--study edgemon] [--top 10]
        [--write-params TRIAL FILE]   # that trial's settings, for `edgemon-train fit/cv --params FILE`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import optuna


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("storage", help="Optuna storage URL of the study, e.g. sqlite:///runs/hpo/study.db.")
    parser.add_argument("--study", default="edgemon", help="Study name (default: %(default)s).")
    parser.add_argument("--top", type=int, default=10, help="Print this many best complete trials (default: %(default)s).")
    parser.add_argument("--write-params", nargs=2, metavar=("TRIAL", "FILE"),
                        help="Also write trial TRIAL's settings to FILE, for `edgemon-train fit/cv --params FILE`.")
    args = parser.parse_args()
    if "://" not in args.storage:
        raise SystemExit(f"error: {args.storage}: give a storage URL, e.g. sqlite:///runs/hpo/study.db")
    if args.storage.startswith("sqlite:///") and not Path(args.storage[len("sqlite:///"):]).is_file():
        raise SystemExit(f"error: {args.storage}: no such study database")  # SQLAlchemy would create one
    try:
        study = optuna.load_study(study_name=args.study, storage=args.storage)
    except KeyError:
        raise SystemExit(f"error: {args.storage} holds no study {args.study!r}") from None
    if args.write_params:
        write_params(study, *args.write_params)
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    target = study.user_attrs.get("scoring", {}).get("target_false_per_hour")
    print(f"study {args.study}: objective {study.user_attrs.get('objective', 'devel')}"
          f"{f' (event recall at {target:g} false events / h)' if target else ''}; "
          + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    seconds = [t.user_attrs["seconds"] for t in trials if t.state.is_finished() and "seconds" in t.user_attrs]
    if seconds:
        print(f"seconds per finished trial: median {np.median(seconds):.0f}, total {sum(seconds):.0f}")
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=True)
    for t in complete[:args.top]:
        folds = t.user_attrs.get("fold_window_uar")
        curve = t.user_attrs.get("held_out")
        extra = ""
        if folds:
            called = np.mean(t.user_attrs["fold_background_called"])
            clip = np.mean(t.user_attrs["fold_clip_uar"])
            extra = (f"{'' if curve else f' ± {np.std(folds):.3f}'}; window UAR by fold "
                     f"{' '.join(f'{f:.3f}' for f in folds)}; clip UAR {clip:.3f}; "
                     f"background windows called {called:.3f}")
        if curve:
            extra += "\n    held out, by target: " + "; ".join(
                f"{r['target']:g}: {r['false_per_hour']:.1f} / h ({r['false_events']}) recall "
                f"{'-' if r['recall'] is None else format(r['recall'], '.3f')}" for r in curve)
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        print(f"trial {t.number:3d}: {t.value:.3f}{extra}\n    {params}")


def write_params(study: optuna.Study, number: str, path: str) -> None:
    """A complete or pruned trial's settings to ``path`` (replaced whole, and only once they are known)."""
    kept = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)   # not a failed (interrupted) one
    finished = {t.number: t for t in study.get_trials(deepcopy=False, states=kept) if t.params}
    if not number.isdigit() or int(number) not in finished:
        shown = sorted(finished)
        listed = ", ".join(map(str, shown[:12])) + (f", … ({len(shown)} in all)" if len(shown) > 12 else "")
        raise SystemExit(f"error: trial {number}: not a complete or pruned trial of this study "
                         f"(those: {listed or 'none'})")
    partial = Path(path + ".partial")
    partial.write_text(json.dumps(finished[int(number)].params, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    print(f"trial {number}'s settings written to {path}")


if __name__ == "__main__":
    main()
