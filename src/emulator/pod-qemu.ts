// Stage: the QEMU the launch will exec is in the pod. With qemu_binary_from = "pod" the enter
// helper execs qemu_binary inside QEMU's mount namespace, which is derived from the pod's: a
// pod image without it would fail only after the decision, with the token already burnt. So
// the path is looked up here first, the way the kernel will (inside the pod's root, symlinks
// resolved there, never against the host's root), and must be an executable regular file.
// The pod may still change its files later; the helper then fails with ERR_ENTER_EXEC.
import { closeSync, constants, fstatSync, openSync } from 'node:fs'
import { QkError, errnoOf } from './errors.ts'
import type { Openat2 } from './secret.ts'
import { O_PATH, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS } from './sys.ts'

export function checkPodQemu(procRoot: string, pid: number, path: string, ops: Openat2): void {
  let root: number
  try {
    root = openSync(`${procRoot}/${pid}/root`, O_PATH | constants.O_DIRECTORY)
  } catch (err) {
    throw new QkError('ERR_OS', `open(${procRoot}/${pid}/root) failed: ${errnoOf(err) ?? 'error'}`, { pid })
  }
  let fd: number
  try {
    fd = ops.openat2(root, path, O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
  } finally {
    closeSync(root)
  }
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
