#!/usr/bin/env bash
# Set up the recorder side and the demo on Debian/Ubuntu (or Raspberry Pi OS): PortAudio and
# libsndfile, a virtual environment in .venv, and the package without extras (numpy, onnxruntime,
# soundfile, ...; no torch) at the versions in constraints.txt. Tests and training need more:
# scripts/setup-dev.sh. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

apt_ensure "${EDGE_PACKAGES[@]}"
make_venv
.venv/bin/pip install -q -c constraints.txt -e .
