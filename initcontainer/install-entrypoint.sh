#!/bin/bash
# The qemu-kube init container: put the node driver onto the node (deploy/daemonset.yaml).
#
#   install-entrypoint.sh [--target DIR] [--sysconf-target DIR] [--config FILE] [--group GID]
#                         [--stage DIR] [--emptydir] [--keys DIR]
#   install-entrypoint.sh --uninstall [--target DIR]
#
#   --target DIR          where the node's PREFIX is mounted (default /target): a hostPath, or an
#                         emptyDir a libvirt container of the same pod mounts at PREFIX
#   --sysconf-target DIR  where the node's SYSCONFDIR is mounted (default /target-etc)
#   --config FILE         the qemu-kube.conf to install (a ConfigMap); it replaces the installed
#                         one on every run. Without it an installed config is kept, and a missing
#                         one is created from etc/qemu-kube.conf (every key at its default).
#   --group GID           numeric gid that may run the front (default $QEMU_GROUP, else 107:
#                         KubeVirt's qemu group). Numeric because the image's group database is
#                         not the node's.
#   --stage DIR           the staged tree (default: stage/ beside initcontainer/ in the image)
#   --keys DIR            the token public keys (a ConfigMap or Secret volume): each regular file
#                         that is not a dotfile is installed as SYSCONFDIR/qemu-kube/NAME
#                         (root:root 0644, atomically), before the config that names them
#   --uninstall           remove the tree from the target (scripts/install.sh --uninstall), then
#                         fail (exit 70) if any setuid or setgid file is left under it; the config
#                         and keys in the sysconfdir stay (deploy/uninstall.yaml, docs/DELIVERY.md)
#   --emptydir            the target is a fresh emptyDir: kubelet makes those 0777, so an *empty*
#                         target that is a mount point of its own is made 0755 first. Only this
#                         pod's containers can reach it, and init containers run before them.
#
# Image layout (initcontainer/Dockerfile), mirroring the repo:
#   /opt/qemu-kube/initcontainer/install-entrypoint.sh   this script
#   /opt/qemu-kube/scripts/install.sh                    does the install (--from-stage)
#   /opt/qemu-kube/etc/qemu-kube.conf                    the default config
#   /opt/qemu-kube/stage/                                initcontainer/make-stage.sh's output
#
# scripts/install.sh --from-stage does the work: the layout, root ownership, the 4755 root:GID
# front, each file replaced atomically (temp + rename; the front last), and refusing (exit 78)
# targets where the target or a directory above it is not root-owned or is writable by
# group/others (root-owned sticky directories allowed, as the front allows them). This script
# adds what only a container must check, before anything is written:
#   - the target exists and is a directory, not a symlink (a missing one: the volume is not mounted);
#   - the target's mount is not nosuid (the setuid bit would silently do nothing).
#   - with --config: the config and the keys pass validate-config.cjs (the front's own parser and
#     key reader; initcontainer/validate-config.ts), so an invalid ConfigMap fails this container
#     and leaves the node as it was.
# Then, in this order: the keys, the tree and the config (install.sh: the front last, the config
# after it), each file replaced atomically.
# Exit codes: 64 usage, 66 missing input, 77 not root, 78 unsafe target or invalid config
# (as scripts/install.sh), 70 a setuid file left after --uninstall.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
die() { printf 'install-entrypoint: %s\n' "$2" >&2; exit "$1"; }

TARGET=/target SYSCONF_TARGET=/target-etc CONFIG= GROUP=${QEMU_GROUP:-107} STAGE=$HERE/stage EMPTYDIR=0 KEYS= UNINSTALL=0
while [ $# -gt 0 ]; do
  case $1 in
    --emptydir) EMPTYDIR=1; shift; continue ;;
    --uninstall) UNINSTALL=1; shift; continue ;;
    --target|--sysconf-target|--config|--group|--stage|--keys) [ $# -ge 2 ] || die 64 "$1 needs a value" ;;
    *) die 64 "unknown argument: $1 (see the header of $0)" ;;
  esac
  case $1 in
    --target) TARGET=$2 ;; --sysconf-target) SYSCONF_TARGET=$2 ;; --config) CONFIG=$2 ;;
    --group) GROUP=$2 ;; --stage) STAGE=$2 ;; --keys) KEYS=$2 ;;
  esac
  shift 2
done

[ "$(id -u)" = 0 ] || die 77 "must run as root (it installs a setuid-root front)"

if [ $UNINSTALL = 1 ]; then
  [ -d "$TARGET" ] && [ ! -L "$TARGET" ] || die 66 "no directory at $TARGET (mount the node's directory there)"
  bash "$HERE/scripts/install.sh" --uninstall --prefix "$TARGET"
  # install.sh removes the emptied PREFIX itself (so mount its parent: deploy/uninstall.yaml).
  left=$( [ ! -e "$TARGET" ] || find "$TARGET" -xdev -perm /6000 -print)
  [ -z "$left" ] || die 70 "setuid/setgid files left under $TARGET: $left"
  echo "install-entrypoint: uninstalled; no setuid or setgid file under $TARGET"
  exit 0
fi
[[ $GROUP =~ ^[0-9]+$ ]] || die 64 "--group/QEMU_GROUP must be a numeric gid, got: $GROUP"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die 66 "no config at $CONFIG (is the ConfigMap mounted?)"
[ -z "$KEYS" ] || [ -d "$KEYS" ] || die 66 "no key directory at $KEYS (is the key volume mounted?)"

for d in "$TARGET" "$SYSCONF_TARGET"; do
  [ -L "$d" ] && die 78 "refusing: $d is a symlink (mount the volume there)"
  case $d in "$TARGET"/*) continue ;; esac  # a sysconfdir inside the target is created by install.sh
  [ -d "$d" ] || die 66 "no directory at $d (mount the node's directory there)"
done
REAL_TARGET=$(readlink -e -- "$TARGET")

# The mount holding REAL_TARGET: the longest mount point above it in /proc/self/mountinfo (the
# last one listed wins, it is the one on top). Sets MNT_POINT and MNT_OPTS (per-mount options).
MNT_POINT= MNT_OPTS=
while read -r _ _ _ _ mp opts _; do
  mp=$(printf '%b' "${mp//\\/\\0}")  # mountinfo escapes space, tab, newline, \ as \ooo
  case $REAL_TARGET/ in
    "${mp%/}"/*) [ ${#mp} -lt ${#MNT_POINT} ] || { MNT_POINT=$mp MNT_OPTS=$opts; } ;;
  esac
done < /proc/self/mountinfo
[[ ,$MNT_OPTS, != *,nosuid,* ]] ||
  die 78 "refusing: $TARGET is on a nosuid mount ($MNT_POINT: $MNT_OPTS); the front's setuid bit would be ignored"

if [ $EMPTYDIR = 1 ] && [ "$MNT_POINT" = "$REAL_TARGET" ] && [ "$(stat -c %u:%a -- "$REAL_TARGET")" = 0:777 ] &&
   [ -z "$(ls -A -- "$REAL_TARGET")" ]; then
  echo "install-entrypoint: $TARGET is a fresh emptyDir (0777, empty): making it 0755"
  chmod 0755 -- "$REAL_TARGET"
fi

if [ -n "$CONFIG" ]; then
  # The node paths the config names: the ones the stage was built for.
  verdict=$("$STAGE/node" "$STAGE/validate-config.cjs" --config "$CONFIG" --sysconfdir "${QK_SYSCONFDIR:-$SYSCONF_TARGET}" \
    --sysconf-target "$SYSCONF_TARGET" ${KEYS:+--keys "$KEYS"}) || die 78 "refusing the config, nothing installed: $verdict"
  echo "install-entrypoint: config ok: $verdict"
fi

# What install.sh refuses, checked here too because the keys are written before it runs: every
# existing component of both targets (as written and resolved) root-owned, and not group/other
# writable unless a sticky directory.
safe_tree() {
  local p cur comp uid hex mode
  for p in "$1" "$(readlink -m -- "$1")"; do
    cur=
    IFS=/ read -ra comps <<< "${p#/}"
    for comp in "" "${comps[@]}"; do
      [ -z "$comp" ] && [ -n "$cur" ] && continue
      cur=${cur%/}/$comp
      [ -e "$cur" ] || break
      read -r uid hex < <(stat -c '%u %f' -- "$cur")
      mode=$((16#$hex))
      [ "$uid" = 0 ] || die 78 "refusing: $cur is owned by uid $uid, not root"
      if (( mode & 022 )) && ! (( (mode & 0170000) == 0040000 && (mode & 01000) )) && (( (mode & 0170000) != 0120000 )); then
        die 78 "refusing: $cur is writable by group or others (mode $(printf '%04o' $((mode & 07777))))"
      fi
    done
  done
}

if [ -n "$KEYS" ]; then
  safe_tree "$TARGET"
  safe_tree "$SYSCONF_TARGET"
  kdir=$SYSCONF_TARGET/qemu-kube
  if [ -L "$kdir" ] || { [ -e "$kdir" ] && [ ! -d "$kdir" ]; }; then die 78 "refusing: $kdir exists and is not a directory"; fi
  [ -d "$kdir" ] || install -d -o root -g root -m 0755 -- "$kdir"
  for f in "$KEYS"/*; do
    name=${f##*/}
    [ -f "$f" ] || continue  # the volume's ..data link is a dotfile, not matched by *
    install -o root -g root -m 0644 -- "$f" "$kdir/.$name.new"
    mv -fT -- "$kdir/.$name.new" "$kdir/$name"
    echo "install-entrypoint: key $kdir/$name ($(sha256sum < "$kdir/$name" | cut -c1-16))"
  done
fi

echo "install-entrypoint: installing $STAGE into $TARGET (the node's ${QK_PREFIX:-PREFIX}) and $SYSCONF_TARGET (${QK_SYSCONFDIR:-SYSCONFDIR}), front root:$GROUP 4755"
exec bash "$HERE/scripts/install.sh" --from-stage "$STAGE" --prefix "$TARGET" --sysconfdir "$SYSCONF_TARGET" --group "$GROUP" \
  ${CONFIG:+--config "$CONFIG" --replace-config}
