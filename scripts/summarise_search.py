"""Print a search study as a table: states, time, and the best trials with their settings.

For a study of ``edgemon-train hpo --objective cv`` it also prints each trial's held-out window UAR
per fold and the share of held-out background windows called a call.

    python scripts/summarise_search.py sqlite:///runs/hpo-cv/study.db [--study edgemon] [--top 10]
        [--write-params TRIAL FILE]   # that trial's settings, for `edgemon-train fit/cv --params FILE`
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import optuna


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage")
    parser.add_argument("--study", default="edgemon")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--write-params", nargs=2, metavar=("TRIAL", "FILE"))
    args = parser.parse_args()
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    if args.write_params:
        number, path = int(args.write_params[0]), args.write_params[1]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(study.trials[number].params, f, indent=2)
        print(f"trial {number}'s settings written to {path}")
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    print(f"study {args.study}: objective {study.user_attrs.get('objective', 'devel')}; "
          + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))))
    seconds = [t.user_attrs["seconds"] for t in trials if t.state.is_finished() and "seconds" in t.user_attrs]
    if seconds:
        print(f"seconds per finished trial: median {np.median(seconds):.0f}, total {sum(seconds):.0f}")
    complete = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: t.value, reverse=True)
    for t in complete[:args.top]:
        folds = t.user_attrs.get("fold_window_uar")
        extra = ""
        if folds:
            called = np.mean(t.user_attrs["fold_background_called"])
            clip = np.mean(t.user_attrs["fold_clip_uar"])
            extra = (f" ± {np.std(folds):.3f}; clip UAR {clip:.3f}; background windows called {called:.3f}; "
                     f"folds {' '.join(f'{f:.3f}' for f in folds)}")
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        print(f"trial {t.number:3d}: {t.value:.3f}{extra}\n    {params}")


if __name__ == "__main__":
    main()
