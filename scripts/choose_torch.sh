#!/usr/bin/env bash
# Which torch scripts/setup-dev.sh installs, decided without ever waiting long for a network.
# Prints the requirement and, when torch alone must come from another wheel index, that index:
#   torch==2.13.0+cpu                                       pip already gets it as configured
#   torch==2.13.0+cpu https://download.pytorch.org/whl/cpu  from torch's CPU wheel index
#   torch==2.13.0                                           --gpu, or the CPU index did not answer
#   torch==2.13.0 URL                                       EDGEMON_TORCH_INDEX=URL
# Usage: bash scripts/choose_torch.sh [--gpu]. PIP (default .venv/bin/pip) is the pip asked;
# EDGEMON_TORCH_CPU_INDEX replaces the CPU wheel index's address (the tests serve their own).
set -euo pipefail
VERSION=2.13.0
CPU_INDEX=${EDGEMON_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
read -ra pip <<< "${PIP:-.venv/bin/pip}"

# Whether pip gets a requirement from its configuration alone (a local wheel directory or mirror
# answers in ~2 s), asked without retries and bounded; its warnings about skipped index locations
# are not for the user.
pip_can_get() {
  timeout 30 "${pip[@]}" install -q --dry-run --no-deps --retries 0 --timeout 5 "$1" >/dev/null 2>&1
}
# Whether a URL answers within 5 s (coreutils' timeout also bounds a hanging DNS look-up).
answers() {
  timeout 5 "${PYTHON:-python3}" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)" \
    "$1" >/dev/null 2>&1
}

if [ "${1-}" = --gpu ] || [ -n "${EDGEMON_TORCH_INDEX-}" ]; then
  echo "torch==$VERSION ${EDGEMON_TORCH_INDEX-}"
elif pip_can_get "torch==$VERSION+cpu"; then
  echo "torch==$VERSION+cpu"
elif answers "$CPU_INDEX/torch/"; then
  echo "torch==$VERSION+cpu $CPU_INDEX"
else
  echo "warning: $CPU_INDEX did not answer within 5 s; torch==$VERSION comes from the configured" \
       "index instead (on PyPI a CUDA build; EDGEMON_TORCH_INDEX chooses an index)" >&2
  echo "torch==$VERSION"
fi
