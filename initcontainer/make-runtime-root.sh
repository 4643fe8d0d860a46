#!/bin/bash
# The root filesystem of the installer image's final stage (initcontainer/Dockerfile runs this in
# its build stage): only what install-entrypoint.sh and scripts/install.sh run, each program with
# the libraries `ldd` names and the loader, so the final stage is `FROM scratch` (no base image
# and no second Node: the Node the node runs is the stage's, initcontainer/make-stage.sh).
#
#   initcontainer/make-runtime-root.sh --out DIR [--node FILE]
#
# --node FILE: also the libraries of that Node (the stage's), which validate-config.cjs runs on
# inside the image. The Node itself is not copied (it is in the stage).
set -euo pipefail

die() { printf 'make-runtime-root.sh: %s\n' "$2" >&2; exit "$1"; }
OUT= NODE=
while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=${2-} ;;
    --node) NODE=${2-} ;;
    *) die 64 "unknown argument: $1 (usage: $0 --out DIR [--node FILE])" ;;
  esac
  shift $(($# < 2 ? $# : 2))
done
[ -n "$OUT" ] || die 64 "usage: $0 --out DIR [--node FILE]"

# What the two scripts call (install.sh: its header; the entrypoint: its mount and mode checks),
# plus sha256sum for the log and nsenter for the agent container (deploy/daemonset.yaml).
PROGRAMS=(bash sh cat chmod chown cp cut date dirname basename env find getent id install ln ls mkdir
          mktemp mv printf readlink rm rmdir sed sha256sum sleep stat touch true false uname nsenter)

copy() {  # copy FILE: at its real path, and each symlink on the way as a symlink (the loader:
  local real named  # /lib64/ld-linux-x86-64.so.2 -> /usr/lib64/... -> ../lib/<triplet>/...)
  real=$(readlink -f -- "$1")
  [ -e "$OUT$real" ] || install -D -m "$(stat -c %a -- "$real")" -- "$real" "$OUT$real"
  named=$1
  while [ -L "$named" ]; do
    named=$(readlink -f -- "$(dirname -- "$named")")/$(basename -- "$named")
    [ -L "$named" ] || break
    mkdir -p -- "$OUT$(dirname -- "$named")"
    [ -L "$OUT$named" ] || ln -s -- "$(readlink -- "$named")" "$OUT$named"
    case $(readlink -- "$named") in /*) named=$(readlink -- "$named") ;; *) named=$(dirname -- "$named")/$(readlink -- "$named") ;; esac
  done
}
libs() {  # the ldd libraries and loader of a program
  ldd "$1" 2>/dev/null | sed -nE 's/.*=> (\/[^ ]+).*/\1/p; s/^[[:space:]]*(\/[^ ]+) \(.*/\1/p'
}

mkdir -p -- "$OUT"
# Merged /usr, as Debian's: the top-level links first, so every path ldd names resolves.
for d in bin sbin lib lib64; do
  if [ -L "/$d" ]; then ln -sfn -- "$(readlink "/$d")" "$OUT/$d"; fi
done
for p in "${PROGRAMS[@]}"; do
  f=$(type -P "$p") || die 66 "no $p in the build stage"
  copy "$f"
  for l in $(libs "$f"); do copy "$l"; done
done
if [ -n "$NODE" ]; then
  for l in $(libs "$NODE"); do copy "$l"; done
fi
# getent reads these; a numeric gid needs no entry, but the files must parse.
mkdir -p -- "$OUT/etc" "$OUT/tmp" "$OUT/proc" "$OUT/dev" "$OUT/sys"
chmod 1777 -- "$OUT/tmp"
printf 'root:x:0:0:root:/root:/bin/bash\n' > "$OUT/etc/passwd"
printf 'root:x:0:\n' > "$OUT/etc/group"
printf 'passwd: files\ngroup: files\n' > "$OUT/etc/nsswitch.conf"
