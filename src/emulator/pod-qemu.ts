// Stage: the QEMU the launch will exec is in the pod. With qemu_binary_from = "pod" the enter
// helper execs qemu_binary inside QEMU's mount namespace, which is derived from the pod's: a
// pod image without it would fail only after the decision, with the token already burnt. So
// the path is looked up here first, the way the kernel will (inside the pod's root, symlinks
// resolved there, never against the host's root), and must be an executable regular file.
// The pod may still change its files later; the helper then fails with ERR_ENTER_EXEC.
import { closeSync, fstatSync } from 'node:fs'
import { QkError } from './errors.ts'
import { openInPodRoot, type Openat2 } from './secret.ts'

export function checkPodQemu(procRoot: string, pid: number, path: string, ops: Openat2): void {
  const fd = openInPodRoot(procRoot, pid, path, ops)
  if (fd < 0) {
    throw new QkError('ERR_QEMU_MISSING', `qemu_binary ${path} is not in pid ${pid}'s root (errno ${-fd})`, { pid, path })
  }
  try {
    const st = fstatSync(fd)
    if (!st.isFile() || (st.mode & 0o111) === 0) {
      throw new QkError('ERR_QEMU_MISSING', `qemu_binary ${path} in pid ${pid}'s root is not an executable regular file`, { pid, path })
    }
  } finally {
    closeSync(fd)
  }
}
