#!/usr/bin/env bash
# Is a setting the search found better than another, or did it win by its training seed? Five
# seeds of each (A and B: trial params as JSON, `scripts/summarise_search.py --write-params`), all
# ten grouped-CV trials at once on one GPU machine, scored by the search's own objective.
#
#   A=runs/search-t21.json B=runs/search-t1.json PACK=runs/borneo-features.npz bash scripts/gpu_seeds.sh
set -u
A=${A:-runs/search-t21.json}; B=${B:-runs/search-t1.json}; PACK=${PACK:-runs/borneo-features.npz}
KILL_S=${KILL_S:-190}; DEVICE=${DEVICE:-cuda}; EPOCHS=${EPOCHS:-20}; PY=${PY:-python3}
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
if [ "$DEVICE" != cpu ]; then
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
rm -rf /tmp/seeds; mkdir -p /tmp/seeds/logs; STORE=sqlite:////tmp/seeds/study.db
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
    --out /tmp/seeds/w$i --storage $STORE --study seeds --objective cv --space field --epochs "$EPOCHS" \
    --average-last 5 --centre-bands --trials 10 --timeout-s 1 --no-start-from-paper --startup-trials 99 \
    --device "$DEVICE" > /tmp/seeds/logs/w$i.log 2>&1 &
done
wait
cp /tmp/seeds/study.db "$OUTDIR/seeds.db"
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
tail -2 /tmp/seeds/logs/w0.log
