#!/usr/bin/env bash
# Install, upgrade or remove edgemon as a systemd service on Raspberry Pi OS / Debian
# (arm64 or x86-64). One command, safe to run again: every step looks before it changes anything.
#
#   sudo bash deploy/install.sh                   install, or upgrade to this checkout
#   sudo bash deploy/install.sh --uninstall       remove service and program; keep config, data, user
#   sudo bash deploy/install.sh --uninstall --purge   also remove /etc/edgemon and the user
#
# What goes where:
#   /opt/edgemon/venv                 the program with the sync extra (a virtual environment;
#                                     binary wheels only)
#   /etc/edgemon/edgemon.toml         settings (kept on upgrade; the example of the installed
#                                     version lies beside it as edgemon.toml.dist)
#   /var/lib/edgemon                  database and clips, owned by the system user `edgemon`
#                                     (in group `audio`); never removed unless --delete-data
#   /etc/systemd/system/edgemon.service   enabled, and (re)started when systemd runs
#   /etc/systemd/system/edgemon.service.d/sync.conf   deploy/edgemon-sync.conf, only while the
#                                     settings set sync_url (it opens the network to that address)
#
# Options:
#   --root DIR        install into DIR as if it were / (a staging tree, a test): no apt, and
#                     systemctl only as `systemctl --root=DIR`; the venv works only at that path;
#                     DIR must hold etc/passwd and etc/group (the user is made there)
#   --source PATH     what pip installs: a checkout or a wheel (default: this checkout)
#   --wheels DIR      install offline from the wheels in DIR (pip --no-index --find-links DIR)
#   --python PY       interpreter for the virtual environment (default: python3)
#   --mode MODE       watch or listen, written into a new config (default: watch)
#   --device-id ID    recorder/site id written into a new config (default: the hostname and the
#                     first 6 hex digits of /etc/machine-id, e.g. raspberrypi-3f9a2c: every
#                     Raspberry Pi image is called raspberrypi, and merged exports must tell units apart)
#   --print-device-id print the id a new config would get, and exit
#   --sync-drop-in    only put the sync drop-in in place, or remove it, to match sync_url in the
#                     settings (run it after editing sync_url); restarts a running service
#   --no-apt          do not install system packages
#   --no-start        enable the service but do not (re)start it
#   --pip-args ARGS   extra pip arguments (one string)
#   --no-constraints  resolve dependencies afresh instead of at the versions the tests passed with
#                     (constraints.txt beside this checkout, used by default when it is there)
#   --uninstall       remove; with --purge also config and user; with --delete-data also the data
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT=""
SOURCE="$(dirname "$HERE")"
WHEELS=""
PYTHON="python3"
MODE="watch"
MODE_GIVEN=0
DEVICE_ID=""
APT=1
START=1
PIP_ARGS=""
CONSTRAINTS="$(dirname "$HERE")/constraints.txt"
ACTION="install"
PURGE=0
DELETE_DATA=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
    --source) SOURCE="$(realpath "$2")"; shift 2 ;;
    --wheels) WHEELS="$(realpath "$2")"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --mode) MODE="$2"; MODE_GIVEN=1; shift 2 ;;
    --device-id) DEVICE_ID="$2"; shift 2 ;;
    --print-device-id) ACTION="print-device-id"; shift ;;
    --sync-drop-in) ACTION="sync-drop-in"; shift ;;
    --no-apt) APT=0; shift ;;
    --no-start) START=0; shift ;;
    --pip-args) PIP_ARGS="$2"; shift 2 ;;
    --no-constraints) CONSTRAINTS=""; shift ;;
    --uninstall) ACTION="uninstall"; shift ;;
    --purge) PURGE=1; shift ;;
    --delete-data) DELETE_DATA=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$MODE" in watch|listen) ;; *) die "--mode must be watch or listen, not $MODE" ;; esac
[ "$ROOT" = "/" ] && ROOT=""
# Plain characters only: the id goes into TOML, file names of exports and other tools' columns.
ID_CHARS='A-Za-z0-9._:-'
if [ -n "$DEVICE_ID" ] && ! [[ "$DEVICE_ID" =~ ^[$ID_CHARS]{1,64}$ ]]; then
  die "--device-id must be 1-64 letters, digits or . _ : - (got '$DEVICE_ID')"
fi

NAME=edgemon
USER_NAME=edgemon
PREFIX=/opt/edgemon
VENV=$PREFIX/venv
CONF_DIR=/etc/edgemon
CONF=$CONF_DIR/edgemon.toml
STATE=/var/lib/edgemon
UNIT=/etc/systemd/system/$NAME.service
DROP_IN_DIR=/etc/systemd/system/$NAME.service.d
DROP_IN=$DROP_IN_DIR/sync.conf
UNIT_CHANGED=0   # set when the unit or its drop-in changed: systemd must reload
SYSTEM_PACKAGES=(python3-venv libsndfile1 libportaudio2)

r() { echo "$ROOT$1"; }   # a path inside the target root

default_device_id() {   # the target's hostname + a short, stable suffix from its machine id
  local host="" id=""
  host="$(head -n 1 "$(r /etc/hostname)" 2>/dev/null || true)"
  [ -z "$host" ] && [ -z "$ROOT" ] && host="$(hostname 2>/dev/null || true)"
  host="$(printf '%s' "${host:-edgemon}" | tr -c "$ID_CHARS" '-' | cut -c 1-57)"
  for f in /etc/machine-id /var/lib/dbus/machine-id; do
    id="$(head -c 32 "$(r $f)" 2>/dev/null || true)"
    [[ "$id" =~ ^[0-9a-f]{32}$ ]] && break
    id=""
  done
  if [ -n "$id" ]; then echo "$host-${id:0:6}"; else echo "$host"; fi
}

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ]; }

systemctl_() {   # systemctl on the target: live, or offline on --root
  command -v systemctl >/dev/null || return 0
  if [ -n "$ROOT" ]; then systemctl --root="$ROOT" "$@"; else systemctl "$@"; fi
}

user_exists() { grep -q "^$USER_NAME:" "$(r /etc/passwd)" 2>/dev/null; }

prefix_args() { [ -n "$ROOT" ] && echo "--prefix $ROOT" || true; }

check_platform() {
  local arch
  arch="$(uname -m)"
  case "$arch" in
    aarch64|arm64|x86_64|amd64) ;;
    armv7l|armv6l) die "32-bit ARM ($arch): onnxruntime publishes no wheels for it; install the 64-bit Raspberry Pi OS" ;;
    *) die "unsupported machine $arch (supported: aarch64, x86_64)" ;;
  esac
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is older than Python 3.11"
}

install_system_packages() {
  if [ "$APT" = 0 ] || [ -n "$ROOT" ]; then return; fi
  local missing=() p
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
}

ensure_user() {
  # shellcheck disable=SC2046
  if ! grep -q "^audio:" "$(r /etc/group)" 2>/dev/null; then
    groupadd $(prefix_args) --system audio
  fi
  if ! user_exists; then
    say "creating system user $USER_NAME (groups: $USER_NAME, audio)"
    # shellcheck disable=SC2046
    useradd $(prefix_args) --system --user-group --groups audio --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin --comment "edgemon species detector" "$USER_NAME"
  elif ! grep -E "^audio:" "$(r /etc/group)" | grep -qE "[:,]$USER_NAME(,|$)"; then
    # shellcheck disable=SC2046
    usermod $(prefix_args) --append --groups audio "$USER_NAME"
  fi
}

user_ids() {   # "UID:GID" of the service's user in the (--root) passwd; empty when there is none
  awk -F: -v u="$USER_NAME" '$1 == u {print $3 ":" $4}' "$(r /etc/passwd)"
}

ensure_dirs() {
  install -d -m 0755 "$(r $PREFIX)" "$(r $CONF_DIR)" "$(r /etc/systemd/system)"
  install -d -m 0750 "$(r $STATE)"
  if [ "$(id -u)" = 0 ]; then
    local ids uid stray
    ids="$(user_ids)"
    uid="${ids%:*}"
    chown "$ids" "$(r $STATE)"
    # Data kept from an earlier install (--uninstall --purge removes the user, never the data) is
    # owned by the old user's ids, which another system user may have been given since: hand it to
    # this one, or the unit cannot open its database. systemd's StateDirectory= looks at the top
    # only, which is the new user's. Files root made there are left to root.
    # -xdev: a file system mounted below (a clips card) is not walked (a vfat one refuses chown).
    stray="$(find "$(r $STATE)" -xdev -mindepth 1 ! -uid "$uid" ! -uid 0 | wc -l)"
    if [ "$stray" -gt 0 ]; then
      say "handing $stray file(s) in $STATE (database, clips) to user $USER_NAME ($ids): an earlier user's"
      find "$(r $STATE)" -xdev -mindepth 1 ! -uid "$uid" ! -uid 0 -exec chown -h "$ids" {} +
    fi
  fi
}

venv_python_version() { "$(r $VENV)/bin/python" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true; }

ensure_venv() {
  local want have
  want="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  have="$(venv_python_version)"
  if [ -n "$have" ] && [ "$have" != "$want" ]; then
    say "Python changed ($have -> $want): recreating the virtual environment"
    rm -rf "$(r $VENV)"
  fi
  if [ -x "$(r $VENV)/bin/python" ] && ! "$(r $VENV)/bin/python" -I -m pip --version >/dev/null 2>&1; then
    # Debian's python3 without python3-venv leaves a venv with no pip behind, as does a creation cut
    # short: every later run then failed with "No module named pip", python3-venv installed or not.
    say "the virtual environment $VENV has no pip (its creation failed or was cut short): recreating it"
    rm -rf "$(r $VENV)"
  fi
  if [ ! -x "$(r $VENV)/bin/python" ]; then
    say "creating virtual environment $VENV (Python $want)"
    if ! "$PYTHON" -m venv "$(r $VENV)"; then
      rm -rf "$(r $VENV)"
      die "could not create the virtual environment $VENV with $PYTHON (see above; on Debian: apt-get install python3-venv)"
    fi
  fi
  local before after
  before="$(installed_version)"
  local pip=("$(r $VENV)/bin/python" -m pip install --quiet --upgrade --only-binary=:all:)
  [ -n "$WHEELS" ] && pip+=(--no-index --find-links "$WHEELS")
  # The versions the tests last passed with (pyproject.toml gives lower bounds only: a Pi would
  # otherwise get whatever is newest on the day it is installed).
  [ -n "$CONSTRAINTS" ] && [ -f "$CONSTRAINTS" ] && pip+=(-c "$CONSTRAINTS")
  # shellcheck disable=SC2206
  [ -n "$PIP_ARGS" ] && pip+=($PIP_ARGS)
  # With the sync extra (the PostgreSQL driver, a binary wheel): setting sync_url later must not
  # leave a unit that refuses to start for want of it.
  if [ -n "$WHEELS" ] && [ "$SOURCE" = "$(dirname "$HERE")" ]; then
    "${pip[@]}" "edgemon[sync]"   # offline: the edgemon wheel comes from the wheelhouse too
  elif [ -d "$SOURCE" ]; then
    # A checkout is built from a copy without its build/: pip builds in place, and setuptools
    # packs whatever build/lib holds from an earlier run, so a module or bundle file the new
    # version removed was installed again (and root's build/ and *.egg-info stayed in the checkout).
    local copy
    copy="$(mktemp -d)"
    # (and without what training and tests leave there: runs/ alone can hold gigabytes)
    tar -C "$SOURCE" --exclude=./build --exclude=./.git --exclude=./.venv --exclude='./*.egg-info' \
        --exclude=./runs --exclude=./demo --exclude=./dist --exclude=./.cache --exclude=./.pytest_cache \
        --exclude=__pycache__ -cf - . \
      | tar -C "$copy" -xf -
    "${pip[@]}" "$copy[sync]" || { rm -rf "$copy"; exit 1; }
    rm -rf "$copy"
  else
    "${pip[@]}" "$SOURCE[sync]"
  fi
  "$(r $VENV)/bin/edgemon" --help >/dev/null || die "the installed edgemon does not start"
  after="$(installed_version)"
  if [ -z "$before" ]; then say "installed edgemon $after"
  elif [ "$before" != "$after" ]; then say "upgraded edgemon $before -> $after"
  else say "edgemon $after reinstalled from $SOURCE"; fi
}

installed_version() {
  "$(r $VENV)/bin/python" -I -c 'import importlib.metadata as m; print(m.version("edgemon"))' 2>/dev/null || true
}

ensure_config() {
  local example="$HERE/edgemon.toml"
  if [ ! -f "$(r $CONF)" ]; then
    local id="${DEVICE_ID:-$(default_device_id)}"
    say "writing $CONF (mode = $MODE, device_id = $id)"
    sed -e "s/^mode = .*/mode = \"$MODE\"/" -e "s/^device_id = .*/device_id = \"$id\"/" "$example" > "$(r $CONF).tmp"
    chmod 0644 "$(r $CONF).tmp"
    mv "$(r $CONF).tmp" "$(r $CONF)"
  fi
  # The example of the installed version, beside the admin's file, to compare after an upgrade.
  cmp -s "$example" "$(r $CONF).dist" 2>/dev/null || install -m 0644 "$example" "$(r $CONF).dist"
  # A setting the new version cannot read must stop the upgrade here, not loop the service.
  local shown
  shown="$("$(r $VENV)/bin/edgemon" config --config "$(r $CONF)" --json)" \
    || die "$CONF is not valid for this version (see the error above); fix it and run again"
  # An existing file is never rewritten: say so when --mode or --device-id asked for other values
  # (a unit re-run with --mode listen went on watching, and the installer said nothing).
  local kept
  kept="$(printf '%s' "$shown" | "$PYTHON" -c 'import json, sys; s = json.load(sys.stdin)
print(s["mode"]["value"]); print(s["device_id"]["value"])')"
  if [ "$MODE_GIVEN" = 1 ] && [ "$MODE" != "$(sed -n 1p <<<"$kept")" ]; then
    say "warning: $CONF is kept as it is, with mode = \"$(sed -n 1p <<<"$kept")\": --mode $MODE is not written into it (set mode there, then systemctl restart $NAME)"
  fi
  if [ -n "$DEVICE_ID" ] && [ "$DEVICE_ID" != "$(sed -n 2p <<<"$kept")" ]; then
    say "warning: $CONF is kept as it is, with device_id = \"$(sed -n 2p <<<"$kept")\": --device-id $DEVICE_ID is not written into it (set device_id there, then systemctl restart $NAME)"
  fi
}

sync_url() {   # the settings' sync_url ('' when unset), read by the installed edgemon itself
  local shown
  # Not piped: settings edgemon refuses (it says why in one line) gave json.load nothing to read,
  # and its traceback after that line.
  shown="$("$(r $VENV)/bin/edgemon" config --config "$(r $CONF)" --json)" || return 1
  printf '%s' "$shown" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["sync_url"]["value"] or "")'
}

url_address() {   # the URL's host when it is an IP address ('' for a host name)
  "$PYTHON" -c 'import ipaddress, sys, urllib.parse
host = urllib.parse.urlsplit(sys.argv[1]).hostname or ""
try:
    print(ipaddress.ip_address(host))
except ValueError:
    print("")' "$1"
}

ensure_sync_drop_in() {
  # The unit keeps the network closed; only a recorder that syncs gets the drop-in, opened to the
  # fleet database's address alone.
  local url address want
  url="$(sync_url)" || die "cannot read sync_url from $CONF (see the error above); fix it and run again"
  if [ -z "$url" ]; then
    if [ -e "$(r $DROP_IN)" ]; then
      rm -f "$(r $DROP_IN)"
      rmdir "$(r $DROP_IN_DIR)" 2>/dev/null || true
      UNIT_CHANGED=1
      say "removed $DROP_IN (no sync_url in $CONF: the network stays closed)"
    fi
    return
  fi
  address="$(url_address "$url")"
  if [ -z "$address" ]; then
    # A host name needs its address and the resolver's in IPAddressAllow=, which only the admin
    # knows: keep a drop-in already edited, and say what to do.
    if [ ! -e "$(r $DROP_IN)" ]; then
      install -d -m 0755 "$(r $DROP_IN_DIR)"
      install -m 0644 "$HERE/edgemon-sync.conf" "$(r $DROP_IN)"
      UNIT_CHANGED=1
    fi
    say "warning: sync_url names a host, not an IP address: set IPAddressAllow= in $DROP_IN to the fleet database's address (and the DNS resolver's), or put the address in sync_url"
    return
  fi
  want="$(sed "s|^IPAddressAllow=.*|IPAddressAllow=$address|" "$HERE/edgemon-sync.conf")"
  if [ "$want" != "$(cat "$(r $DROP_IN)" 2>/dev/null)" ]; then
    install -d -m 0755 "$(r $DROP_IN_DIR)"
    printf '%s\n' "$want" > "$(r $DROP_IN).tmp"
    chmod 0644 "$(r $DROP_IN).tmp"
    mv "$(r $DROP_IN).tmp" "$(r $DROP_IN)"
    UNIT_CHANGED=1
    say "installed $DROP_IN (network open to $address only, for sync)"
  fi
}

ensure_unit() {
  local unit="$HERE/$NAME.service" changed=$UNIT_CHANGED
  if ! cmp -s "$unit" "$(r $UNIT)"; then
    install -m 0644 "$unit" "$(r $UNIT)"
    changed=1
    say "installed $UNIT"
  fi
  if systemd_running; then
    [ "$changed" = 1 ] && systemctl daemon-reload
    systemctl enable --quiet "$NAME.service"
    if [ "$START" = 1 ]; then
      systemctl restart "$NAME.service"
      say "started $NAME.service (journalctl -u $NAME -f; $VENV/bin/edgemon status)"
    fi
  else
    systemctl_ enable --quiet "$NAME.service" 2>/dev/null \
      || { install -d "$(r /etc/systemd/system/multi-user.target.wants)"
           ln -sfn "$UNIT" "$(r /etc/systemd/system/multi-user.target.wants/$NAME.service)"; }
    say "enabled $NAME.service (systemd is not running here: not started)"
  fi
}

precheck_settings() {
  # An upgrade checks the settings with the version it is about to install, before installing it:
  # checked after, settings the new version refuses stopped the install with the new program
  # already in place, and the service looped at its next restart (a review). The new package is
  # imported from the source (a checkout, or the wheel unpacked) beside the installed dependencies;
  # where that cannot import (new dependencies), ensure_config checks after the install, as before.
  [ -f "$(r $CONF)" ] && [ -n "$(installed_version)" ] || return 0
  local new="" unpacked="" whl=""
  # In ensure_venv's order: with --wheels and no --source, the wheelhouse's edgemon is what pip
  # installs, not the checkout this script lies in (which was checked instead).
  if [ -n "$WHEELS" ] && [ "$SOURCE" = "$(dirname "$HERE")" ]; then
    whl="$(find "$WHEELS" -maxdepth 1 -name 'edgemon-*.whl' | sort -V | tail -n 1)"
  elif [ -d "$SOURCE/edgemon" ]; then
    new="$SOURCE"
  elif [ -f "$SOURCE" ] && [[ "$SOURCE" == *.whl ]]; then
    whl="$SOURCE"
  fi
  if [ -z "$new" ]; then
    [ -n "$whl" ] || return 0
    unpacked="$(mktemp -d)"
    "$PYTHON" -m zipfile -e "$whl" "$unpacked" || { rm -rf "$unpacked"; return 0; }
    new="$unpacked"
  fi
  local ok=0 importable=0 python
  python="$(r $VENV)/bin/python"
  # From inside the new tree: `python -m` puts the working directory first, and run from a checkout
  # of another version it imported that one. What `edgemon config` imports, not edgemon.config
  # alone: a new version whose command line needs a dependency not installed yet failed the check
  # with ModuleNotFoundError, and the upgrade was refused as if the settings were at fault.
  if (cd "$new" && PYTHONPATH="$new" "$python" -c 'import edgemon.cli, edgemon.sync.service') >/dev/null 2>&1; then
    importable=1
    (cd "$new" && PYTHONPATH="$new" "$python" -m edgemon config --config "$(r $CONF)") >/dev/null && ok=1
  fi
  [ -n "$unpacked" ] && rm -rf "$unpacked"
  if [ "$importable" = 1 ] && [ "$ok" = 0 ]; then
    die "$CONF is not valid for the version this would install (see the error above): nothing was changed, edgemon $(installed_version) stays; fix the settings and run again"
  fi
}

check_config_readable() {
  # The service reads the settings as its user, the checks here run as root: a file copied in as
  # root's 0600 passed the install, then the unit failed at every start, every 15 s (a review).
  # Said before the program is replaced. ACLs are not read.
  [ -f "$(r $CONF)" ] || return 0
  local ids uid gid mode owner group
  ids="$(user_ids)"
  [ -n "$ids" ] || return 0
  uid="${ids%:*}" gid="${ids#*:}"
  read -r mode owner group < <(stat -L -c '%a %u %g' "$(r $CONF)")
  mode=$((8#$mode))
  local member=0   # the file's group is the user's own, or one it belongs to (audio, say)
  if [ "$group" = "$gid" ] || awk -F: -v g="$group" -v u="$USER_NAME" \
      '$3 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 } END { exit !found }' \
      "$(r /etc/group)"; then
    member=1
  fi
  if (( mode & 4 )) || { [ "$owner" = "$uid" ] && (( mode & 0400 )); } || { [ "$member" = 1 ] && (( mode & 040 )); }; then
    return 0
  fi
  die "$CONF cannot be read by user $USER_NAME, which the service runs as (mode $(printf '%o' "$mode"), owner $owner:$group): chmod 0644 $CONF, or chgrp $USER_NAME and chmod 0640 it, and run again"
}

do_install() {
  check_platform
  install_system_packages
  ensure_user
  ensure_dirs
  check_config_readable
  precheck_settings
  ensure_venv
  ensure_config
  ensure_sync_drop_in
  ensure_unit
  say "done: program $VENV, settings $CONF, data $STATE"
}

do_uninstall() {
  if systemd_running; then
    systemctl disable --now --quiet "$NAME.service" 2>/dev/null || true
  else
    systemctl_ disable --quiet "$NAME.service" 2>/dev/null || true
  fi
  rm -f "$(r /etc/systemd/system/multi-user.target.wants/$NAME.service)" "$(r $UNIT)" "$(r $DROP_IN)"
  rmdir "$(r $DROP_IN_DIR)" 2>/dev/null || true
  systemd_running && systemctl daemon-reload
  rm -rf "$(r $PREFIX)"
  say "removed the service and $PREFIX"
  if [ "$PURGE" = 1 ]; then
    rm -rf "$(r $CONF_DIR)"
    # shellcheck disable=SC2046
    if user_exists; then userdel $(prefix_args) "$USER_NAME"; fi
    # shellcheck disable=SC2046
    if grep -q "^$USER_NAME:" "$(r /etc/group)"; then groupdel $(prefix_args) "$USER_NAME"; fi
    say "removed $CONF_DIR and user $USER_NAME"
  fi
  if [ "$DELETE_DATA" = 1 ]; then
    rm -rf "$(r $STATE)"
    say "deleted $STATE (database and clips), as asked"
  elif [ -d "$(r $STATE)" ]; then
    say "kept $STATE (database and clips); --delete-data removes it"
  fi
}

if [ "$ACTION" = print-device-id ]; then echo "${DEVICE_ID:-$(default_device_id)}"; exit 0; fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo), or give --root DIR"; fi
# The service's user is made with groupadd/useradd --prefix, which edit the tree's own account
# files: a bare DIR gave their "cannot lock /etc/group; try again later" (a newcomer trial).
if [ -n "$ROOT" ] && [ "$ACTION" = install ]; then
  for f in passwd group; do
    [ -f "$ROOT/etc/$f" ] || die "--root $ROOT has no etc/$f: give a tree that holds an /etc with its passwd and group (e.g. copied from a Raspberry Pi OS image)"
  done
fi
if [ "$ACTION" = sync-drop-in ]; then
  ensure_sync_drop_in
  if systemd_running && [ "$UNIT_CHANGED" = 1 ]; then
    systemctl daemon-reload
    systemctl try-restart "$NAME.service"
  fi
  exit 0
fi
if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
