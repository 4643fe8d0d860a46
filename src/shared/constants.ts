// The constants and hints that the C front and the TypeScript both carry, said once. The TS
// imports this file; scripts/build.mjs renders native/qk-constants.h from it
// (scripts/constants-header.mjs), and test/shared/constants.test.ts fails when the checked-in
// header is not what this file renders. Plain values only: the header generator reads them
// as data. Strings must stay within printable ASCII without `"` or `\` (C string literals).

export const SHARED = {
  /** Largest launch token, in bytes, both as KUBEVIRT_SECRET and as the pod's secret file. */
  MAX_TOKEN_BYTES: 16 * 1024,
  /** KUBEVIRT_VM_UUID / KUBEVIRT_VM_NAME and virt-launcher's -kubevirt.vm.*: anchored. */
  ID_PATTERN: '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$',
  /** Longest agent request (docs/CHAIN.md section 3). */
  AGENT_MAX_REQUEST: 256 * 1024,
  /** The KUBEVIRT_* variables the front keeps; every other variable is wiped. */
  KEPT_ENV: ['KUBEVIRT_VM_UUID', 'KUBEVIRT_VM_NAME', 'KUBEVIRT_SECRET'],
  /** Build defaults (scripts/build.mjs --prefix, --sysconfdir, --node). */
  DEFAULT_PREFIX: '/var/lib/kubevirt/qemu-kube',
  DEFAULT_SYSCONFDIR: '/etc/kubevirt',
  DEFAULT_NODE: '/usr/bin/node',
  /** Where the launch token sits inside the pod (config pod_secret_path, launcher -secret-path). */
  DEFAULT_POD_SECRET_PATH: '/var/run/kubevirt/qemu-kube/token',
  /** The launcher's QEMU link socket (config pod_link_socket, launcher -qemu-link). */
  DEFAULT_QEMU_LINK: '/var/run/kubevirt-private/qemu-kube/launcher.sock',
  DEFAULT_STATE_DIR: '/run/qemu-kube',
  /** Hints an operator reads from either side. */
  HINT_USAGE: 'run `qemu-kube help` for the operator commands (on a node `qemu-kube --help` is QEMU\'s: libvirt passes dashed QEMU arguments)',
  HINT_CONFIG_UNSAFE: 'the config and every directory above it must be owned by root and not writable by group or others: chown root: FILE && chmod 0644 FILE',
} as const

export const ID_RE = new RegExp(SHARED.ID_PATTERN)
