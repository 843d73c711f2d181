#!/usr/bin/env bash
# Does the edge install resolve to binary wheels on linux aarch64 (a 64-bit Raspberry Pi) for each
# Python a Pi runs? Nothing may compile on a Pi. Downloads, with --only-binary=:all:, the edge
# dependencies of pyproject.toml and of the recorder's optional extras (sync, review; not
# train/dev) for each target, and lists what came.
#
#   bash deploy/check_wheels.sh                     # aarch64, Python 3.11 (bookworm) and 3.13 (trixie)
#   EXTRAS="" bash deploy/check_wheels.sh           # the core edge install only
#   PYTHONS="3.12" ARCH=x86_64 bash deploy/check_wheels.sh
#
# Needs network access to the package index. Exit status 1 if any target fails to resolve.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHONS=${PYTHONS:-"3.11 3.13"}
ARCH=${ARCH:-aarch64}
# glibc of the targets: Raspberry Pi OS bookworm has 2.36 (Python 3.11), trixie 2.41 (Python 3.13).
declare -A GLIBC=([3.11]=36 [3.12]=39 [3.13]=41)
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

EXTRAS=${EXTRAS-"sync review"}
mapfile -t DEPS < <(EXTRAS="$EXTRAS" "$PYTHON" -c '
import os, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + [d for e in os.environ["EXTRAS"].split() for d in project["optional-dependencies"][e]]
print("\n".join(deps))')

status=0
for py in $PYTHONS; do
  platforms=(--platform "manylinux2014_$ARCH")
  for minor in $(seq 17 "${GLIBC[$py]:-36}"); do platforms+=(--platform "manylinux_2_${minor}_$ARCH"); done
  dest=$(mktemp -d)
  echo "== linux $ARCH, Python $py (glibc up to 2.${GLIBC[$py]:-36}): ${DEPS[*]}"
  # At the versions install.sh installs (constraints.txt), which must have wheels for the target too.
  if "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$dest" --only-binary=:all: -c constraints.txt \
       --python-version "$py" --implementation cp "${platforms[@]}" "${DEPS[@]}" 2>"$dest.err"; then
    (cd "$dest" && ls -1 *.whl | sed 's/^/   /')
    echo "   OK: $(ls "$dest" | wc -l) wheels, no source distribution"
  else
    grep -v "WARNING: Location" "$dest.err" | tail -5 | sed 's/^/   /'
    echo "   FAILED: some dependency has no binary wheel for this target"
    status=1
  fi
  rm -rf "$dest" "$dest.err"
done
exit $status
