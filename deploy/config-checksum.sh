#!/bin/bash
# Writes the config-checksum annotation of deploy/daemonset.yaml
# (pod template metadata): sha256 over qemu-kube-configmap.yaml and
# qemu-kube-keys.yaml, in that order, its first 32 hex digits (a change trigger, not a proof;
# podman's kube play refuses annotation values over 63 characters). A changed annotation changes the pod template, so
# `kubectl apply -f deploy/` after an edit rolls the DaemonSet node by node (maxUnavailable 1),
# and a node whose init container refuses the new ConfigMap stops the rollout there.
#
#   deploy/config-checksum.sh            rewrite the annotation in place
#   deploy/config-checksum.sh --check    exit 1 if it is stale (test/delivery/manifests.test.ts)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
sum=sha256:$(cat "$HERE/qemu-kube-configmap.yaml" "$HERE/qemu-kube-keys.yaml" | sha256sum | cut -c1-32)
line="        qemu-kube.kubevirt.io/config-checksum: \"$sum\""
if [ "${1-}" = --check ]; then
  grep -qxF -- "$line" "$HERE/daemonset.yaml" || { echo "config-checksum.sh: stale; want $sum (run deploy/config-checksum.sh)" >&2; exit 1; }
  exit 0
fi
sed -i -E "s|^        qemu-kube.kubevirt.io/config-checksum: .*$|$line|" "$HERE/daemonset.yaml"
echo "config-checksum.sh: $sum"
