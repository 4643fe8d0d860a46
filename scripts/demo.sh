#!/usr/bin/env bash
# `npm run demo`: stock libvirt boots a small VM through qemu-kube into a real pod, the demo
# prints the evidence, then undoes everything. Root only; Debian 12 (scripts/setup.sh installs
# what is missing; `npm run demo` runs it first, and so does this script when run directly).
#
#   bash scripts/demo.sh [--keep | --cleanup]
#
# The demo itself is scripts/demo.ts (it builds on the test helpers), bundled here with esbuild.
# Clean-up happens in the demo on success, error and Ctrl-C; should it die outright (SIGKILL),
# the trap below finishes the job from the demo's state file (scripts/demo.ts --cleanup), which
# stops the qemu-kube agent the demo started first (by its recorded pid and start time).
set -euo pipefail
cd "$(dirname "$0")/.."

if ((EUID != 0)); then
  echo 'demo: must run as root (it installs a setuid binary, makes pods and runs libvirtd)' >&2
  exit 77
fi
[[ ${npm_lifecycle_event:-} == demo ]] || bash scripts/setup.sh

mkdir -p node_modules/.cache
BUNDLE_DIR=$(mktemp -d node_modules/.cache/qk-demo.XXXXXX)
STATE=/run/qemu-kube-demo/state.json

finish() {
  local rc=$?
  child=
  trap '' INT TERM HUP
  # The demo died without cleaning up (its state file is there, not kept, its pid gone).
  if [[ -f $STATE && -f $BUNDLE_DIR/demo.mjs ]] && ! grep -q '"kept": true' "$STATE"; then
    pid=$(sed -n 's/^  "pid": \([0-9]*\),*$/\1/p' "$STATE")  # the top level's, not the pod's
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: the demo (pid $pid) ended without cleaning up; cleaning up now" >&2
      node "$BUNDLE_DIR/demo.mjs" --cleanup || rc=1
    fi
  fi
  rm -rf -- "$BUNDLE_DIR"
  exit "$rc"
}
trap finish EXIT

node_modules/.bin/esbuild scripts/demo.ts --bundle --platform=node --target=node20 --format=esm \
  --outfile="$BUNDLE_DIR/demo.mjs" --log-level=warning \
  "--define:import.meta.dirname=\"$PWD/test/helpers\""
# The demo runs in its own session, so that Ctrl-C does not also kill the commands it runs
# (virsh, the pod's launcher) mid-step: the shell passes the signal on to the demo alone, which
# stops after the current step and undoes everything.
child=
forward() { [[ -n $child ]] && kill "-$1" "$child" 2>/dev/null || true; }
trap 'forward INT' INT
trap 'forward TERM' TERM
trap 'forward HUP' HUP
setsid node "$BUNDLE_DIR/demo.mjs" "$@" &
child=$!
while :; do
  rc=0
  wait "$child" || rc=$?
  kill -0 "$child" 2>/dev/null || break  # wait returned for a trapped signal: keep waiting
done
exit "$rc"
