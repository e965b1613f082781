#!/usr/bin/env bash
# pytest-kvm's one entry point for people and CI. Each command does its own set-up,
# idempotently, on a fresh Debian 12 machine: apt packages, the libvirt-qemu user,
# a virtualenv in .venv, and the base images it needs (built with debootstrap from the
# Debian mirror into the cache).
#
#   ./dev.sh examples   boot the default guest and run examples/ in it
#   ./dev.sh test       run the test suite (unit + end-to-end on debian-12 and debian-13)
#   ./dev.sh setup      only the set-up
#
# Extra arguments are passed to pytest. Needs root (re-runs itself with sudo).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

if [ "$(id -u)" -ne 0 ]; then
  # Without a terminal on stdin (CI, nohup, a background job) sudo must not ask for a
  # password: a background job that reads the terminal is stopped, and waits for ever.
  # -n fails at once instead ("a password is required").
  if [ -t 0 ]; then ask=(); else ask=(-n); fi
  exec sudo "${ask[@]}" --preserve-env=PYTEST_KVM_CACHE_DIR,PYTEST_KVM_DEBIAN_MIRROR,CI "$0" "$@"
fi

APT_PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
              libvirt-dev pkg-config debootstrap e2fsprogs openssh-client python3 python3-venv
              python3-dev gcc ansible-core rsync openssh-server socat iproute2
              qemu-system-arm qemu-system-misc qemu-system-ppc)
VENV=.venv

say() { printf '\n==> %s\n' "$*"; }

setup() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  fi
  # libvirt's QEMU driver expects this user even when QEMU runs as root.
  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import pytest_kvm, libvirt, pytest_timeout, xdist, winrm, mkdocs" 2>/dev/null \
     || [ pyproject.toml -nt "$VENV/.installed" ]; then
    say "installing pytest-kvm into $VENV (builds libvirt-python the first time)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test]'
    touch "$VENV/.installed"
  fi
}

images() {
  say "base images: $*"
  "$VENV/bin/pytest-kvm" image build "$@"
}

cmd="${1:-help}"
[ $# -gt 0 ] && shift
case "$cmd" in
  setup)
    setup ;;
  examples)
    setup
    images debian-12
    say "booting guests for examples/"
    exec "$VENV/bin/pytest" examples -v -s -p no:cacheprovider "$@" ;;
  test)
    setup
    images debian-12 debian-13
    say "running the test suite"
    exec "$VENV/bin/pytest" tests -v -p no:cacheprovider --kvm-os debian-12 --kvm-os debian-13 \
      --timeout 1800 --durations 25 "$@" ;;
  *)
    sed -n '2,11p' "$0"; exit 2 ;;
esac
