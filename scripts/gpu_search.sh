#!/usr/bin/env bash
# A grouped-CV search (`edgemon-train hpo --objective cv`) on one GPU machine: WORKERS processes
# share one SQLite study; each starts no trial after STOP_S seconds and is killed at KILL_S.
# The audio need not travel: the feature pack does (`edgemon-train pack-features --out $PACK`).
# Wheels the machine lacks (optuna and its needs, soundfile, soxr) may travel in .whl/.
#
#   PACK=runs/borneo-features.npz WORKERS=12 STOP_S=300 KILL_S=470 bash scripts/gpu_search.sh
#
# Writes study.db, logs.tgz and summary.txt to $OUT (default: a new temporary directory).
set -u
PACK=${PACK:-runs/borneo-features.npz}
WORKERS=${WORKERS:-12}; STOP_S=${STOP_S:-300}; KILL_S=${KILL_S:-470}; DEVICE=${DEVICE:-cuda}; EPOCHS=${EPOCHS:-20}
[ -f "$PACK" ] || { echo "error: no feature pack at $PACK (edgemon-train pack-features --out $PACK)" >&2; exit 1; }
OUTDIR=${OUT:-$(mktemp -d)}; mkdir -p "$OUTDIR"; SITE=$(mktemp -d); WORK=$(mktemp -d)
if [ -d .whl ] && [ "$DEVICE" != cpu ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH=$SITE:$PWD
fi
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null; nproc
$PY -c "import torch, optuna; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'optuna', optuna.__version__)" || exit 1
mkdir -p "$WORK/logs"; STORE=sqlite:///$WORK/study.db
started=$(date +%s)
for i in $(seq 0 $((WORKERS-1))); do
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout -s KILL "$KILL_S" $PY -m training hpo --features "$PACK" \
    --out "$WORK/w$i" --storage $STORE --objective cv --space field --epochs "$EPOCHS" --average-last 5 \
    --centre-bands --trials 400 --timeout-s "$STOP_S" --seed "$i" --device "$DEVICE" --startup-trials 8 \
    --heartbeat-s 30 > "$WORK/logs/w$i.log" 2>&1 &
  sleep 1
done
wait
echo "workers done after $(( $(date +%s) - started )) s"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>/dev/null
cp "$WORK/study.db" "$OUTDIR/study.db" || { tail -5 "$WORK/logs/w0.log"; exit 1; }
tar czf "$OUTDIR/logs.tgz" -C "$WORK" logs
$PY scripts/summarise_search.py "$STORE" --top 12 | tee "$OUTDIR/summary.txt" || exit 1
tail -3 "$WORK/logs/w0.log"
echo "results in $OUTDIR"
