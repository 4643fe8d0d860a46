#!/bin/bash
# Install qemu-kube on a node (run as root, from a checkout with node_modules installed):
#
#   scripts/install.sh --prefix P --sysconfdir S --group G [--node N] [--config FILE]
#   scripts/install.sh --uninstall --prefix P
#   scripts/install.sh --from-stage DIR --prefix P --sysconfdir S --group G [--config FILE] [--replace-config]
#
# --from-stage DIR (the init container, initcontainer/install-entrypoint.sh): install the tree
# initcontainer/make-stage.sh built, with no build and no checkout: the build output, koffi and
# the Node binary come from DIR (DIR/node is installed as P/lib/qemu-kube/node, --node is not
# used). P and S are then where the node's prefix and sysconfdir are mounted; the paths the front
# trusts are the ones DIR was built for.
# --replace-config: replace an existing S/qemu-kube.conf with --config FILE (atomically) instead
# of keeping it, for a FILE that is the source of truth (a ConfigMap).
# G may be a numeric gid (needs no group database: a container's is not the node's).
#
# Layout (docs/CHAIN.md):
#   P/bin/qemu-kube                              root:G     4755  the setuid front (world-executable:
#                                                                  each VM runs as its own uid, no
#                                                                  group names them all; Node's first
#                                                                  check is the uid against vm_uid_range)
#   P/libexec/qemu-kube/qemu-kube-enter          root:root  0755
#   P/lib/qemu-kube/qemu-kube.cjs                root:root  0644  the launch path
#   P/lib/qemu-kube/qemu-kube.cjs.cache          root:root  0644  its V8 code cache (if the build made one)
#   P/lib/qemu-kube/qemu-kube-cli.cjs            root:root  0644  operator commands
#   P/lib/qemu-kube/node_modules/{koffi,@koromix/koffi-linux-ARCH}   root:root, only what loads
#   P/lib/qemu-kube/node                         root:root  0755  --from-stage only
#   S/qemu-kube.conf                             root:root  0644  only if it does not exist yet (or --replace-config)
#
# The front refuses to run unless every file it trusts, and every directory above each, is
# root-owned and not writable by group/others; this script refuses (exit 78) to install into a
# tree where that does not hold, so an install never yields a front that will not start.
# Exit codes: 64 usage, 66 missing input, 77 not root, 78 unsafe tree, 70 build failed.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)

die() { printf 'install.sh: %s\n' "$2" >&2; exit "$1"; }
usage() { die 64 "$1 (usage: $0 --prefix P --sysconfdir S --group G [--node N] [--config FILE] | --uninstall --prefix P)"; }

PREFIX= SYSCONFDIR= GROUP= NODE=/usr/bin/node CONFIG= UNINSTALL=0 FROM_STAGE= REPLACE_CONFIG=0
while [ $# -gt 0 ]; do
  case $1 in
    --from-stage) [ $# -ge 2 ] || usage "$1 needs a value"; FROM_STAGE=$2; shift 2 ;;
    --replace-config) REPLACE_CONFIG=1; shift ;;
    --prefix|--sysconfdir|--group|--node|--config)
      [ $# -ge 2 ] || usage "$1 needs a value"
      case $1 in
        --prefix) PREFIX=$2 ;; --sysconfdir) SYSCONFDIR=$2 ;; --group) GROUP=$2 ;;
        --node) NODE=$2 ;; --config) CONFIG=$2 ;;
      esac
      shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --sysconfdir=*) SYSCONFDIR=${1#*=}; shift ;;
    --group=*) GROUP=${1#*=}; shift ;;
    --node=*) NODE=${1#*=}; shift ;;
    --config=*) CONFIG=${1#*=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) usage "unknown argument: $1" ;;
  esac
done

[ "$(id -u)" = 0 ] || die 77 "must run as root (the front is installed setuid root)"

abs_path() {  # the same character set native/Makefile accepts for compiled-in paths
  [[ $2 == /* ]] || usage "$1 must be an absolute path: $2"
  [[ $2 =~ ^[A-Za-z0-9/._+@-]+$ ]] || usage "$1 may contain only [A-Za-z0-9/._+@-]: $2"
  [[ /$2/ != */../* && /$2/ != */./* ]] || usage "$1 must not contain . or .. components: $2"
}

# One existing path component: root-owned; a directory not writable by group/others unless it
# is sticky (like /tmp); a symlink is judged by its owner (its mode means nothing).
check_node() {
  local uid hex mode type
  read -r uid hex < <(stat -c '%u %f' -- "$1")
  mode=$((16#$hex)); type=$((mode & 0170000))
  [ "$uid" = 0 ] || die 78 "refusing: $1 is owned by uid $uid, not root"
  [ $type = $((0120000)) ] && return 0
  if (( mode & 022 )) && ! (( type == 0040000 && (mode & 01000) )); then
    die 78 "refusing: $1 is writable by group or others (mode $(printf '%04o' $((mode & 07777))))"
  fi
}

# Every existing component of a path as written, and of its resolved form (symlinks followed).
check_tree() {
  local p cur comp
  for p in "$1" "$(readlink -m -- "$1")"; do
    check_node /
    cur=
    IFS=/ read -ra comps <<< "${p#/}"
    for comp in "${comps[@]}"; do
      [ -n "$comp" ] || continue
      cur=$cur/$comp
      [ -e "$cur" ] || [ -L "$cur" ] || break
      check_node "$cur"
    done
  done
}

# A directory of the layout: created 0755 root if missing; if present (a previous install, or
# the operator's sysconfdir) left as it is, but only accepted as a plain, safe directory.
own_dir() {
  if [ -L "$1" ] || { [ -e "$1" ] && [ ! -d "$1" ]; }; then
    die 78 "refusing: $1 exists and is not a directory"
  fi
  [ -d "$1" ] || install -d -o root -g root -m 0755 -- "$1"
  check_node "$1"
}

# Atomic replace: a VM starting during a re-install sees the old file or the new one.
put() {  # put MODE GROUP SRC DEST
  local tmp
  tmp=$(dirname -- "$4")/.$(basename -- "$4").new
  rm -f -- "$tmp"
  install -o root -g "$2" -m "$1" -- "$3" "$tmp"
  mv -fT -- "$tmp" "$4"
}

abs_path --prefix "$PREFIX"
BIN=$PREFIX/bin LIBEXEC=$PREFIX/libexec/qemu-kube LIB=$PREFIX/lib/qemu-kube

if [ $UNINSTALL = 1 ]; then
  check_tree "$PREFIX"
  rm -f -- "$BIN/qemu-kube" "$BIN/.qemu-kube.new"
  rm -rf -- "$LIBEXEC" "$LIB"
  for d in "$BIN" "$PREFIX/libexec" "$PREFIX/lib" "$PREFIX"; do
    [ -d "$d" ] && rmdir --ignore-fail-on-non-empty -- "$d"
  done
  echo "install.sh: removed qemu-kube from $PREFIX (the config in the sysconfdir is left in place)"
  exit 0
fi

abs_path --sysconfdir "$SYSCONFDIR"
abs_path --node "$NODE"
[ -n "$GROUP" ] || usage "--group is required (the group libvirt runs QEMU as, e.g. kvm or qemu)"
[[ $GROUP =~ ^[0-9]+$ ]] || getent group "$GROUP" > /dev/null || usage "no such group: $GROUP"
CONF_DEST=$SYSCONFDIR/qemu-kube.conf
[ -n "$CONFIG" ] || CONFIG=$REPO/etc/qemu-kube.conf

case $(uname -m) in
  x86_64|amd64) ARCH=x64 ;;
  aarch64|arm64) ARCH=arm64 ;;
  *) die 64 "unsupported architecture $(uname -m)" ;;
esac
MODULES=$REPO/node_modules
if [ -n "$FROM_STAGE" ]; then
  [ -d "$FROM_STAGE" ] || die 66 "no staged tree at $FROM_STAGE"
  MODULES=$FROM_STAGE/node_modules
fi
KOFFI_SRC=$MODULES/koffi
KOFFI_NATIVE_SRC=$MODULES/@koromix/koffi-linux-$ARCH
[ -f "$KOFFI_SRC/package.json" ] && [ -f "$KOFFI_NATIVE_SRC/linux_$ARCH/koffi.node" ] ||
  die 66 "koffi is not installed in $MODULES (run npm ci first)"

# Everything that will be trusted must sit in a root-controlled tree, before anything changes.
check_tree "$PREFIX"
check_tree "$SYSCONFDIR"
if [ -z "$FROM_STAGE" ]; then
  check_tree "$NODE"
  [ -f "$NODE" ] || die 66 "no Node binary at $NODE (use --node)"
fi
if [ -e "$CONF_DEST" ] || [ -L "$CONF_DEST" ]; then
  [ -f "$CONF_DEST" ] || die 78 "refusing: $CONF_DEST is not a regular file"
fi
if [ $REPLACE_CONFIG = 1 ] || [ ! -e "$CONF_DEST" ]; then
  [ -f "$CONFIG" ] || die 66 "no config to install: $CONFIG (use --config FILE)"
fi

if [ -n "$FROM_STAGE" ]; then
  STAGE=$FROM_STAGE
  [ -f "$STAGE/node" ] || die 70 "the staged tree has no node binary: $STAGE/node"
else
  STAGE=$(mktemp -d)
  trap 'rm -rf -- "$STAGE"' EXIT
  (cd "$REPO" && node scripts/build.mjs --prefix "$PREFIX" --sysconfdir "$SYSCONFDIR" --node "$NODE" --out "$STAGE") ||
    die 70 "build failed"
fi
for f in native/front native/enter qemu-kube.cjs qemu-kube-cli.cjs; do
  [ -f "$STAGE/$f" ] || die 70 "build did not produce $STAGE/$f"
done

for d in "$PREFIX" "$BIN" "$PREFIX/libexec" "$LIBEXEC" "$PREFIX/lib" "$LIB" "$SYSCONFDIR"; do
  own_dir "$d"
done

# koffi: only the files its loader requires (index.cjs -> src/koffi/index.cjs ->
# src/koffi/src/static.cjs -> @koromix/koffi-linux-ARCH -> {linux,musl}_ARCH/koffi.node).
# Each file by rename into the live directory, never a swap of node_modules itself: a swap is
# two renames (old out, new in), and a standalone launch whose front checks koffi.node between
# them is refused (measured with the swap, test/delivery/upgrade-inflight.test.ts: 1 of 436
# launches, ERR_FRONT_UNSAFE_PATH "lib/qemu-kube/node_modules: open: No such file or directory").
# The front itself stays last below, so a launch may still pair an old front with newer pieces
# (docs/DELIVERY.md, "Upgrade in flight").
# Files of an older layout that are no longer shipped go after, when nothing names them.
NM=$LIB/node_modules
rm -rf -- "$LIB/.node_modules.new" "$LIB/.node_modules.old"  # left by the older swap
if [ -L "$NM" ] || { [ -e "$NM" ] && [ ! -d "$NM" ]; }; then die 78 "refusing: $NM exists and is not a directory"; fi
KEEP=()
nm_put() {  # nm_put SRC REL: SRC as NM/REL, root 0644, its directories root 0755
  local d
  d=$(dirname -- "$NM/$2")
  [ -d "$d" ] || install -d -o root -g root -m 0755 -- "$d"
  put 0644 root "$1" "$NM/$2"
  KEEP+=("$NM/$2")
}
for f in package.json LICENSE.txt index.cjs index.js src/koffi/index.cjs src/koffi/index.js \
         src/koffi/src/static.cjs src/koffi/src/static.js; do
  nm_put "$KOFFI_SRC/$f" "koffi/$f"
done
for f in package.json index.js linux_$ARCH/koffi.node musl_$ARCH/koffi.node; do
  [ -f "$KOFFI_NATIVE_SRC/$f" ] || continue
  nm_put "$KOFFI_NATIVE_SRC/$f" "@koromix/koffi-linux-$ARCH/$f"
done
while IFS= read -r -d '' f; do
  case " ${KEEP[*]} " in *" $f "*) ;; *) rm -f -- "$f" ;; esac
done < <(find "$NM" \( -type f -o -type l \) -print0)
find "$NM" -mindepth 1 -depth -type d -empty -delete
find "$NM" -type d -exec chmod 0755 {} + -exec chown root:root {} +

# The front last: it only ever points at pieces that are already in place.
# The code cache before the bundle it belongs to; the bundle ignores a cache made for other code.
# A staged Node before both: V8 rejects a cache made by another Node (compiles from source then).
if [ -n "$FROM_STAGE" ]; then put 0755 root "$STAGE/node" "$LIB/node"; fi
if [ -f "$STAGE/qemu-kube.cjs.cache" ]; then
  put 0644 root "$STAGE/qemu-kube.cjs.cache" "$LIB/qemu-kube.cjs.cache"
else
  rm -f -- "$LIB/qemu-kube.cjs.cache"
fi
put 0644 root "$STAGE/qemu-kube.cjs" "$LIB/qemu-kube.cjs"
put 0644 root "$STAGE/qemu-kube-cli.cjs" "$LIB/qemu-kube-cli.cjs"
put 0755 root "$STAGE/native/enter" "$LIBEXEC/qemu-kube-enter"
put 4755 "$GROUP" "$STAGE/native/front" "$BIN/qemu-kube"

if [ -e "$CONF_DEST" ] && [ $REPLACE_CONFIG = 0 ]; then
  echo "install.sh: kept the existing $CONF_DEST"
  check_node "$CONF_DEST"
else
  put 0644 root "$CONFIG" "$CONF_DEST"
fi

echo "install.sh: installed qemu-kube in $PREFIX (front: $BIN/qemu-kube, root:$GROUP 4755)"
