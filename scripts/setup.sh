#!/usr/bin/env bash
# Set up edgemon for development on Debian/Ubuntu (or Raspberry Pi OS): system libraries, a
# virtual environment in .venv, the CPU build of torch (pinned, so nothing downloads a multi-GB
# CUDA build) and the package with its training and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# pulseaudio, pulseaudio-utils and libasound2-plugins: the virtual audio device (a user-mode
# PulseAudio null sink recorded through ALSA's `pulse` device) that the listen tests start.
# systemd: `systemd-analyze verify/security` and `systemctl --root` for the deployment tests
# (systemd need not run); util-linux's unshare and passwd's useradd come with every Debian.
SYSTEM_PACKAGES=(libportaudio2 libsndfile1 python3-venv postgresql
                 pulseaudio pulseaudio-utils libasound2-plugins systemd)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# GPU users: install your CUDA torch into .venv first and set EDGEMON_TORCH="" to keep it.
# constraints.txt: the tested versions of everything else (the package itself keeps ranges).
.venv/bin/pip install -q -c constraints.txt ${EDGEMON_TORCH-torch==2.13.0} -e '.[train,dev]'
