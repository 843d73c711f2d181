# Sourced by scripts/setup.sh and scripts/setup-dev.sh (from the repository root): apt packages,
# installed only when missing, and the virtual environment in .venv.

# The edge side and the demo: PortAudio for `edgemon listen`, libsndfile for soundfile.
EDGE_PACKAGES=(libportaudio2 libsndfile1 python3-venv)

# Installs those of the Debian packages "$@" that are not installed yet (sudo unless root).
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "installing with apt: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

# Creates .venv with $PYTHON (default python3) unless it exists, with a current pip.
make_venv() {
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
}
