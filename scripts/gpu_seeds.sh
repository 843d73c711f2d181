#!/usr/bin/env bash
# Is a setting the search found better than another, or did it win by its training seed? Five
# seeds of each (A and B: trial params as JSON, `scripts/summarise_search.py --write-params`), all
# ten grouped-CV trials at once on one GPU machine, scored by the search's own objective.
#
#   A=runs/search-t21.json B=runs/search-t1.json PACK=runs/borneo-features.npz bash scripts/gpu_seeds.sh
set -u
A=${A:-runs/search-t21.json}; B=${B:-runs/search-t1.json}; PACK=${PACK:-runs/borneo-features.npz}
KILL_S=${KILL_S:-190}; DEVICE=${DEVICE:-cuda}; EPOCHS=${EPOCHS:-20}; PY=${PY:-python3}
for f in "$PACK" "$A" "$B"; do [ -f "$f" ] || { echo "error: $f not found" >&2; exit 1; }; done
OUTDIR=${OUT:-$(mktemp -d)}; mkdir -p "$OUTDIR"; SITE=$(mktemp -d); WORK=$(mktemp -d)
if [ -d .whl ] && [ "$DEVICE" != cpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE:$PWD
fi
# Both settings must be of one search space, the one the workers search (a missing parameter
# would be drawn at random): field when the params hold its augmentations.
SPACE=$($PY - "$A" "$B" <<'PYEOF'
import sys
from edgemon.analysis.frontend import FrontendConfig
from training.hpo import read_params, settings_from_params
spaces = set()
for path in sys.argv[1:]:
    try:
        spaces.add(settings_from_params(read_params(path), FrontendConfig())[0])
    except ValueError as exc:
        sys.exit(f"error: {path}: {exc}")
if len(spaces) > 1:
    sys.exit(f"error: {sys.argv[1]} and {sys.argv[2]} are settings of different search spaces")
print(spaces.pop())
PYEOF
) || exit 1
export PYTHONUNBUFFERED=1
mkdir -p "$WORK/logs"; STORE=sqlite:///$WORK/study.db
$PY - "$STORE" "$A" "$B" <<'PYEOF' || exit 1
import json, sys, optuna
study = optuna.create_study(study_name="seeds", storage=sys.argv[1], direction="maximize")
study.set_user_attr("objective", "cv")
for _ in range(5):
    for path in sys.argv[2:]:
        study.enqueue_trial(json.load(open(path)), user_attrs={"setting": path}, skip_if_exists=False)
PYEOF
for i in $(seq 0 9); do
  OMP_NUM_THREADS=1 timeout -s KILL "$KILL_S" $PY -m training hpo --features "$PACK" \
    --out "$WORK/w$i" --storage $STORE --study seeds --objective cv --space "$SPACE" --epochs "$EPOCHS" \
    --average-last 5 --centre-bands --trials 10 --timeout-s 1 --no-start-from-paper --startup-trials 99 \
    --device "$DEVICE" > "$WORK/logs/w$i.log" 2>&1 &
done
wait
cp "$WORK/study.db" "$OUTDIR/seeds.db"
$PY - "$STORE" "$A" "$B" <<'PYEOF' | tee "$OUTDIR/seeds.txt"
import sys, numpy as np, optuna
study = optuna.load_study(study_name="seeds", storage=sys.argv[1])
for name in sys.argv[2:]:
    done = [t for t in study.trials if t.user_attrs.get("setting") == name and t.state.name == "COMPLETE"]
    v = [t.value for t in done]
    bg = [np.mean(t.user_attrs["fold_background_called"]) for t in done]
    print(name, len(v), "window UAR", np.round(v, 3), "mean", round(float(np.mean(v)), 3) if v else None,
          "background called", round(float(np.mean(bg)), 3) if bg else None)
PYEOF
tail -2 "$WORK/logs/w0.log"
echo "results in $OUTDIR"
