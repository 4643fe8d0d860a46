// The listening end of the QEMU link: a unix stream socket in the pod's filesystem. QEMU (via
// the node's enter helper) runs as the VM's uid, not as root, so the directory is 0755 and the
// socket 0666; the pod's mount namespace is what keeps other pods' processes away from it.
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs'
import { dirname } from 'node:path'
import { errnoOf, QkError } from '../emulator/errors.ts'
import type { Libc } from './libc.ts'

export function openLinkSocket(libc: Libc, path: string): number {
  const dir = dirname(path)
  try {
    // chmod only what we made: umask may have narrowed it, and QEMU must traverse it.
    if (mkdirSync(dir, { recursive: true, mode: 0o755 }) !== undefined) chmodSync(dir, 0o755)
  } catch (e) {
    throw new QkError('ERR_OS', `cannot create ${dir} for -qemu-link: ${errnoOf(e) ?? 'error'}`, { path: dir })
  }
  removeStale(path)
  const fd = libc.listenUnix(path, 16)
  if (fd < 0) throw new QkError('ERR_OS', `cannot listen on -qemu-link ${path}: errno ${-fd}`, { path, errno: -fd })
  try {
    chmodSync(path, 0o666)
  } catch (e) {
    libc.close(fd)
    throw new QkError('ERR_OS', `cannot chmod -qemu-link ${path} to 0666: ${errnoOf(e) ?? 'error'}`, { path })
  }
  return fd
}

// A socket left by an earlier launcher of this pod (a container restart) blocks bind with
// EADDRINUSE. Anything that is not a socket is not ours to delete.
function removeStale(path: string): void {
  let st
  try {
    st = lstatSync(path)
  } catch {
    return
  }
  if (!st.isSocket()) throw new QkError('ERR_OS', `-qemu-link ${path} exists and is not a socket; not removing it`, { path })
  unlinkSync(path)
}
