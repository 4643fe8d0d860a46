#!/usr/bin/env bash
# The one set-up step `npm test`, `npm run demo` and `npm run bench` run first. Idempotent and
# fast when everything is in place (no output then); one line per step it has to do; loud and
# non-zero when a step fails (the step's own output is printed then).
#
#   1. apt packages (root only): QEMU, libvirt, podman, a C toolchain with a static libc,
#      util-linux, iproute2, procps, mmdebstrap (the delivery tests' offline Debian base image,
#      scripts/delivery-base-image.mjs). `apt-get update` runs once, and only when something is
#      missing.
#   2. the users and groups libvirt needs without libvirt-daemon-system, and /dev/kvm as Debian's
#      udev rule would leave it (root only).
#   3. `npm ci` when node_modules is missing or older than package-lock.json. Install scripts
#      are skipped: esbuild runs from its @esbuild/<platform> package and koffi loads from
#      @koromix/koffi-<platform> without them, and koffi's script could fetch from outside the
#      npm registry.
#   4. `npm run build` when dist/ is missing or older than anything it is built from.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  podman runc catatonit gcc libc6-dev make util-linux iproute2 procps mmdebstrap)
# What `npm run build` writes; the first is rewritten by every build and serves as its stamp.
BUILT=(dist/qemu-kube.cjs dist/qemu-kube-cli.cjs dist/virt-launcher.cjs dist/virt-launcher
  dist/native/front dist/native/enter dist/native/fixtures/pause dist/native/fixtures/reporter)
BUILT_FROM=(src native test/fixtures scripts/build.mjs scripts/code-cache.mjs package-lock.json)

LOG=$(mktemp /tmp/qk-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT

# run STEP CMD...: CMD's output goes to the log; on failure the log is shown and we stop.
run() {
  local step=$1
  shift
  if ! "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup: FAILED: $step: $* (its output is above)" >&2
    exit 1
  fi
}

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == 'install ok installed' ]] || echo "$p"
  done
}

if ! command -v dpkg-query >/dev/null; then
  echo 'setup: note: not a Debian system, not checking apt packages'
else
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]})); then
    if ((EUID != 0)); then
      echo "setup: note: not root, not installing: ${missing[*]}"
    else
      echo "setup: apt-get install ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      run 'apt-get update' apt-get update -q
      run 'apt-get install' apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
  fi
fi

if ((EUID == 0)); then
  # libvirt-daemon (without -system) creates neither; libvirtd refuses to start without the
  # libvirt-qemu group even when qemu.conf names another one.
  getent group kvm >/dev/null || run 'groupadd kvm' groupadd -r kvm
  getent group libvirt-qemu >/dev/null || run 'groupadd libvirt-qemu' groupadd -r libvirt-qemu
  if ! id libvirt-qemu >/dev/null 2>&1; then
    echo 'setup: creating user libvirt-qemu'
    run 'useradd libvirt-qemu' useradd -r -g kvm -G libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  fi
  mkdir -p /etc/libvirt /var/log/libvirt
  # Debian's udev rule for /dev/kvm, which nothing applies without udev. Domains here are TCG, but
  # with /dev/kvm unusable by the qemu user libvirt re-probes QEMU on nearly every call (seconds).
  if [[ -c /dev/kvm && $(stat -c %G:%a /dev/kvm) != kvm:66? ]]; then
    run 'chgrp kvm /dev/kvm' chgrp kvm /dev/kvm
    run 'chmod g+rw /dev/kvm' chmod g+rw /dev/kvm
  fi
fi

if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo 'setup: npm ci'
  run 'npm ci' npm ci --ignore-scripts --no-audit --no-fund
fi

stale_build() {
  local f
  for f in "${BUILT[@]}"; do [[ -e $f ]] || return 0; done
  [[ -n $(find "${BUILT_FROM[@]}" -newer "${BUILT[0]}" -not -path 'native/build/*' -print -quit) ]]
}
if stale_build; then
  echo 'setup: npm run build'
  run 'npm run build' npm run build
fi
