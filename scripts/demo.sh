#!/usr/bin/env bash
# The main job on the embedded defaults, from a bare clone: the demo excerpt committed in
# demo-data/ (three AudioMoth-named recordings of Bornean rainforest) -> detections in SQLite ->
# CSV, then the detections held against the excerpt's truth.
#   bash scripts/demo.sh [OUT_DIR]     (default: demo/; DEMO_PYTHON: the interpreter, default .venv's)
set -euo pipefail
out=${1:-$(dirname "$0")/../demo}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PYTHON=${DEMO_PYTHON:-.venv/bin/python}

"$PYTHON" -m edgemon watch demo-data/recordings --db "$out/detections.db" --until-idle
"$PYTHON" -m edgemon export-detections --db "$out/detections.db" --output "$out/detections.csv"
echo "detections: $out/detections.csv (database: $out/detections.db)"
"$PYTHON" scripts/score_demo.py "$out/detections.csv" --truth demo-data/truth.csv
