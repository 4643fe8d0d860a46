// One QEMU link connection's message, checked. Protocol (fixed with the node's enter helper):
// the client sends exactly the 8 bytes "QKLINK1\n" with exactly one SCM_RIGHTS fd, a pidfd of
// itself (QEMU once it execs); we reply "k" once we hold it. Anything in the pod can connect,
// so the message is hostile input: every fd that arrived is closed unless it is the one pidfd.
import { fstatSync, readlinkSync } from 'node:fs'
import type { Received } from './libc.ts'

export const LINK_MAGIC = 'QKLINK1\n'

export type Hello = { ok: true; pidfd: number } | { ok: false; reason: string }

/**
 * `peer` is a pidfd of the connecting process (SO_PEERPIDFD), or null where the kernel has none.
 * The pidfd handed over must name that same process: the launcher is root and will SIGKILL it
 * at teardown, and pidfd_open needs no permission, so a QEMU could otherwise hand over a pidfd
 * of libvirtd or of another VM. Same process = same inode (pidfs, Linux >= 6.9; before that all
 * pidfds share one anonymous inode and this check cannot tell them apart).
 */
export function checkHello(msg: Received, close: (fd: number) => void, peer: number | null): Hello {
  const refuse = (reason: string): Hello => {
    for (const fd of msg.fds) close(fd)
    return { ok: false, reason }
  }
  if (msg.data.length === 0) return refuse('connection closed before the hello')
  if (msg.data.toString('latin1') !== LINK_MAGIC) return refuse(`expected the 8 bytes "QKLINK1\\n", got ${msg.data.length} other bytes`)
  if (msg.truncated || msg.foreign) return refuse('expected only SCM_RIGHTS control data')
  if (msg.fds.length !== 1) return refuse(`expected 1 fd, got ${msg.fds.length}`)
  const fd = msg.fds[0]!
  let kind: string
  try {
    kind = readlinkSync(`/proc/self/fd/${fd}`)
  } catch {
    kind = 'unreadable'
  }
  if (kind !== 'anon_inode:[pidfd]') return refuse(`expected a pidfd, got ${kind.startsWith('/') ? 'a file' : JSON.stringify(kind)}`)
  if (peer !== null && fstatSync(fd).ino !== fstatSync(peer).ino) return refuse('expected a pidfd of the connecting process, got another process\'s')
  return { ok: true, pidfd: fd }
}
