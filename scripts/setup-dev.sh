#!/usr/bin/env bash
# Set up everything for the tests and training on Debian/Ubuntu: what scripts/setup.sh installs,
# the services the tests start for real, torch 2.13.0 and the package's train and dev extras (every
# package at the version in constraints.txt). Safe to run again.
#
#   bash scripts/setup-dev.sh          the CPU build of torch (see below)
#   bash scripts/setup-dev.sh --gpu    torch 2.13.0 as the configured index serves it (PyPI: the
#                                      CUDA build on Linux x86-64); a CUDA torch 2.13.0 already in
#                                      .venv is kept
#   EDGEMON_TORCH_INDEX=URL            take torch 2.13.0 from that wheel index instead, e.g.
#                                      https://download.pytorch.org/whl/cu128
#   EDGEMON_TORCH=SPEC                 install SPEC as torch; empty: keep the torch in .venv
#
# The CPU build, without ever waiting long for a network (scripts/choose_torch.sh): when pip can
# already get torch==2.13.0+cpu from what it is configured with (a local wheel directory or mirror,
# as on CI), that is used; else, when torch's CPU wheel index answers within 5 s, torch alone comes
# from there; else torch==2.13.0 comes from the configured index, with a warning (on PyPI that is a
# CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

for arg in "$@"; do
  case "$arg" in
    --gpu) ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "error: unknown option $arg (expected --gpu)" >&2; exit 2 ;;
  esac
done

# postgresql: the shared Optuna study test; pulseaudio, pulseaudio-utils, libasound2-plugins: the
# virtual audio device (a user-mode PulseAudio null sink recorded through ALSA's `pulse` device)
# that the listen tests start; systemd: `systemd-analyze verify/security` and `systemctl --root`
# for the deployment tests (systemd need not run); chromium and chromium-driver: the review page's
# browser tests (selenium is given /usr/bin/chromedriver, so it fetches nothing). util-linux's
# unshare and passwd's useradd, which the fault and deployment tests use, come with every Debian.
apt_ensure "${EDGE_PACKAGES[@]}" postgresql pulseaudio pulseaudio-utils libasound2-plugins systemd \
  chromium chromium-driver
bash scripts/setup.sh

if [ -n "${EDGEMON_TORCH+set}" ]; then
  torch=(${EDGEMON_TORCH})
else
  choice=$(bash scripts/choose_torch.sh "$@")
  read -r spec index <<< "$choice"
  if [ -n "$index" ]; then
    echo "torch from $index"
    # torch alone from there (--no-deps): its dependencies come with the rest, as constrained.
    .venv/bin/pip install -q --no-deps --index-url "$index" "$spec"
  fi
  torch=("$spec")
fi
.venv/bin/pip install -q -c constraints.txt "${torch[@]}" -e '.[train,dev]'
