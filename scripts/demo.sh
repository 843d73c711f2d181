#!/usr/bin/env bash
# The main job on the embedded defaults: a recorder directory -> detections in SQLite -> CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:-demo}
.venv/bin/python scripts/make_demo_recordings.py "$demo/recordings"
.venv/bin/edgemon watch "$demo/recordings" --db "$demo/detections.db" --until-idle
.venv/bin/edgemon export-detections --db "$demo/detections.db" --output "$demo/detections.csv"
echo "detections: $demo/detections.csv (database: $demo/detections.db)"
cut -d, -f3-6,10,11 "$demo/detections.csv" | column -s, -t | head -25
