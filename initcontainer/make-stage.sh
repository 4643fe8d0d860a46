#!/bin/bash
# Build the staged tree the init container image carries (initcontainer/Dockerfile runs this in
# its build stage; test/initcontainer.test.ts runs it too). From a checkout after `npm ci`:
#
#   initcontainer/make-stage.sh --prefix P --sysconfdir S --out DIR
#
# P and S are the paths on the *node* (compiled into the front and the bundle); the Node the
# front execs is P/lib/qemu-kube/node, a copy shipped in the tree, because the node's own Node
# (if any) is unknown. DIR then holds scripts/build.mjs's output plus:
#   DIR/node                                     the Node binary (the one that made the code cache)
#   DIR/node_modules/koffi, DIR/node_modules/@koromix/koffi-linux-*   (install.sh picks the files)
#   DIR/validate-config.cjs                      initcontainer/validate-config.ts, bundled: the
#                                                entrypoint's gate (not installed on the node)
# and is installed with `scripts/install.sh --from-stage DIR` (initcontainer/install-entrypoint.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
die() { printf 'make-stage.sh: %s\n' "$2" >&2; exit "$1"; }

PREFIX= SYSCONFDIR= OUT=
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) PREFIX=${2-} ;;
    --sysconfdir) SYSCONFDIR=${2-} ;;
    --out) OUT=${2-} ;;
    *) die 64 "unknown argument: $1 (usage: $0 --prefix P --sysconfdir S --out DIR)" ;;
  esac
  shift $(($# < 2 ? $# : 2))
done
[ -n "$PREFIX" ] && [ -n "$SYSCONFDIR" ] && [ -n "$OUT" ] || die 64 "usage: $0 --prefix P --sysconfdir S --out DIR"

NODE=$PREFIX/lib/qemu-kube/node
node "$REPO/scripts/build.mjs" --prefix "$PREFIX" --sysconfdir "$SYSCONFDIR" --node "$NODE" --out "$OUT"
# Not for the node: the pod-side launcher, the test fixtures, make's bookkeeping.
rm -rf -- "$OUT/virt-launcher" "$OUT/virt-launcher.cjs" "$OUT/native/fixtures" "$OUT/native/link-mode" "$OUT/native/paths.stamp"

# The code cache is only used by the Node that made it: scripts/code-cache.mjs makes it with
# --node when that runs here (the Dockerfile puts the image's Node there first), else with the
# Node running the build. Ship that same binary.
if [ -x "$NODE" ]; then SRC_NODE=$NODE; else SRC_NODE=$(command -v node); fi
install -m 0755 -- "$SRC_NODE" "$OUT/node"

# The entrypoint's gate, run by DIR/node in the image before anything is written.
"$REPO/node_modules/.bin/esbuild" "$REPO/initcontainer/validate-config.ts" --bundle --platform=node --target=node20 \
  --format=cjs --log-level=warning --outfile="$OUT/validate-config.cjs"

shopt -s nullglob
platform=("$REPO"/node_modules/@koromix/koffi-linux-*)
[ -f "$REPO/node_modules/koffi/package.json" ] && ((${#platform[@]})) ||
  die 66 "koffi is not installed in $REPO/node_modules (run npm ci first)"
rm -rf -- "$OUT/node_modules"
mkdir -p -- "$OUT/node_modules/@koromix"
cp -R -- "$REPO/node_modules/koffi" "$OUT/node_modules/koffi"
cp -R -- "${platform[@]}" "$OUT/node_modules/@koromix/"
